"""Device discipline that a CPU-only machine can check (issue 24).

Under the runner's device-discipline mode (``Runtime(meta_check=True)``) every method call runs with
``meta`` as torch's default device while the model sits on the CPU: a tensor a method creates
without the model's device lands on ``meta`` and cannot mix with the model's tensors, so the cell
fails loudly here as it would on a GPU. The fast tests show that the mode catches such a method and
passes a disciplined one; the sweep (``-m slow``) runs every (task, method, family) of the default
plan under it. Also: ``--device`` forms, and ``cuda`` on a machine without one as one line."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.app.cli import main
from bench.errors import BenchError
from bench.harness import runner
from leaderboard.publish import default_plan


def _cell(task: str, method: str, model: str) -> runner.Cell:
    cells = runner.plan([task], [method], [model], [0], quick=True).cells
    assert len(cells) == 1
    return dataclasses.replace(cells[0], runtime=runner.Runtime(meta_check=True))


def test_device_forms_and_a_missing_gpu_is_one_line(tmp_path, capsys):
    for ok in ("cpu", "cuda", "cuda:1", "mps", "auto"):
        assert runner.check_device(ok) == ok
    for bad in ("gpu", "cuda:x", "cpu:0", ""):
        with pytest.raises(BenchError, match="unknown device"):
            runner.check_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(BenchError, match="sees no CUDA GPU"):
            runner.resolve_device("cuda:0")
        assert runner.resolve_device("auto") in ("cpu", "mps")
        store = tmp_path / "r.sqlite"
        assert main(["evaluate", "--task", "attribution", "--model", "zoo-clip", "--method", "saliency", "--quick",
                     "--device", "cuda", "--store", str(store), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: device 'cuda' is not available here")
        assert not store.exists()


def test_the_mode_catches_a_tensor_made_without_the_model_device():
    """A saliency that builds its baseline with a bare ``torch.zeros`` (no ``device=``) passes on
    the CPU without the mode, and fails under it; the registered saliency passes under it."""
    from methods.saliency import Saliency

    class Careless(Saliency):
        def attribute(self, model, request):  # type: ignore[no-untyped-def]
            maps = super().attribute(model, request)
            return maps + torch.zeros(maps.shape)  # forgets device=maps.device

    from bench.harness import discipline

    task = discipline.sweep_task("attribution")  # the quick profile's code path on fewer examples
    model = runner.place_model("zoo-clip", "cpu")
    ok = task.run(model, runner.guard_method(Careless(), meta_check=False), 0, quick=True)
    assert ok.metrics
    with pytest.raises((RuntimeError, NotImplementedError)):
        task.run(model, runner.guard_method(Careless(), meta_check=True), 0, quick=True)


def test_the_mode_judges_method_code_and_spares_task_callbacks_and_libraries():
    """The frame that calls a factory decides: this test's code (a method's own code) gets meta; a
    library's factory call (captum's integrated gradients, torch.distributions) keeps the real default;
    a task's callback handed to a method (the localization task's ``evaluate``, which the old
    whole-call meta default turned into NaN scores) runs on the host, and the cell's figures under the
    mode are those without it, bit for bit."""
    from captum.attr import IntegratedGradients

    from bench.harness import discipline

    lin = torch.nn.Linear(3, 1)
    with runner.device_check(True):
        assert torch.zeros(2).is_meta and torch.arange(3).is_meta and torch.tensor([1.0]).is_meta
        assert not torch.zeros(2, device="cpu").is_meta
        assert not torch.as_tensor(torch.ones(2, device="cpu")).is_meta  # keeps its data's device
        assert not torch.distributions.Normal(0.0, 1.0).loc.is_meta  # torch's own Python code
        x = torch.ones(2, 3, device="cpu")
        attr = IntegratedGradients(lin).attribute(x, baselines=torch.zeros_like(x), n_steps=4)
        assert not attr.is_meta and torch.isfinite(attr).all()
    assert not torch.zeros(2).is_meta  # off outside the block
    assert discipline.classify(discipline.__file__) == discipline.HOST_SIDE
    assert discipline.classify(str(discipline.ROOT / "tasks" / "localization.py")) == discipline.HOST_SIDE
    assert discipline.classify(str(discipline.ROOT / "methods" / "saliency.py")) == discipline.METHOD_SIDE
    assert discipline.classify(str(discipline.ROOT / "bench" / "kit" / "steering.py")) == discipline.SHARED_CODE
    assert discipline.classify(torch.__file__) == discipline.THIRD_PARTY
    for label in ("localization/zoo-clip/causal_tracing/seed=0", "attribution/zoo-clip/integrated_gradients/seed=0"):
        cell = next(c for c in discipline.triples(default_plan()) if c.label == label)
        row = discipline.sweep_cell(cell)
        assert row["status"] == "ok" and "sent_to_meta" not in row, row


def test_steering_coefficients_are_host_bookkeeping_moved_where_applied():
    """``steering.add`` with a number: its coefficient is made on the CPU (``device="cpu"``) and moved
    to the site's device when applied, so an edit made under the mode applies outside it (it used to be
    a meta tensor, which the editing task's scoring could not copy back)."""
    from bench.kit import steering

    d = steering.Direction("x", torch.ones(4, device="cpu"), "test")
    with runner.device_check(True):
        fn = steering.add(d, 0.5)
    out = fn(torch.zeros(2, 4))
    assert torch.equal(out, torch.full((2, 4), 0.5))


@pytest.mark.parametrize("label", ["editing/zoo-clip/steering/seed=0", "localization/zoo-vlm/logit_lens/seed=0"])
def test_the_offenders_the_sweep_found_stay_fixed(label):
    """The two cells the sweep failed before their fixes (steering's calibrated edit carried a meta
    coefficient into the task's scoring; logit_lens indexed its trace with a device-less ``arange``,
    which gave NaN scores) run under the mode, nothing sent to meta, same figures as without it."""
    from bench.harness import discipline

    row = discipline.sweep_cell(next(c for c in discipline.triples(default_plan()) if c.label == label))
    assert row["status"] == "ok" and "sent_to_meta" not in row, row


@pytest.mark.parametrize("method", ["random", "oracle", "saliency", "input_x_gradient"])
def test_attribution_on_zoo_clip_is_disciplined(method):
    rec = runner.run_cell(_cell("attribution", method, "zoo-clip"))
    assert rec.status == "ok", rec.error
    assert rec.device == "cpu" and rec.provenance["weights_dtype"] == "float32"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["contrastive", "generative", "diffusion"])
def test_every_task_method_family_of_the_default_plan_is_disciplined(family):
    """Every (task, method, family) of the published default plan, one quick cell each with the sweep's
    smaller sizes (:data:`bench.harness.discipline.SWEEP_PROFILE`: the same code path, fewer examples),
    runs under the mode and gives the figures it gives without it, bit for bit."""
    from bench.harness import discipline, runner as r

    cells = [c for c in discipline.triples(default_plan()) if r.model_family(c.model) == family]
    assert cells
    rows = [discipline.sweep_cell(c) for c in cells]
    bad = [f"{row['cell']}: {row['status']}: {row.get('error')} (sent to meta: {row.get('sent_to_meta')})"
           for row in rows if row["status"] != "ok"]
    assert not bad, f"{len(bad)} of {len(cells)} {family} cells are not device-disciplined:\n" + "\n".join(bad)


def test_weights_in_a_reduced_dtype_are_reloaded_not_cast_back():
    """``place_model`` puts the weights in the asked dtype (as ``--dtype bfloat16`` on a GPU does), and
    going back to float32 loads them again rather than casting bfloat16 values up (lossy)."""
    before = {k: v.clone() for k, v in runner.place_model("zoo-clip", "cpu").module.state_dict().items()}
    reduced = runner.place_model("zoo-clip", "cpu", "bfloat16")
    assert {p.dtype for p in reduced.module.parameters()} == {torch.bfloat16}
    back = runner.place_model("zoo-clip", "cpu", "float32")
    assert back is not reduced
    after = back.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
