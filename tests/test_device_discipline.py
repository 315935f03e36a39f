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

    task = runner.make_task("attribution")
    model = runner.place_model("zoo-clip", "cpu")
    ok = task.run(model, runner.guard_method(Careless(), meta_check=False), 0, quick=True)
    assert ok.metrics
    with pytest.raises((RuntimeError, NotImplementedError)):
        task.run(model, runner.guard_method(Careless(), meta_check=True), 0, quick=True)


@pytest.mark.parametrize("method", ["random", "oracle", "saliency", "input_x_gradient"])
def test_attribution_on_zoo_clip_is_disciplined(method):
    rec = runner.run_cell(_cell("attribution", method, "zoo-clip"))
    assert rec.status == "ok", rec.error
    assert rec.device == "cpu" and rec.provenance["weights_dtype"] == "float32"


def _default_triples() -> list[runner.Cell]:
    """One cell (seed 0, quick) per (task, method, family) of the published default plan."""
    from leaderboard.publish import default_plan

    seen: dict[tuple[str, str, str | None], runner.Cell] = {}
    for c in default_plan():
        seen.setdefault((c.task, c.method, runner.model_family(c.model)), c)
    return list(seen.values())


@pytest.mark.slow
def test_every_task_method_family_of_the_default_plan_is_disciplined():
    failures = []
    cells = _default_triples()
    assert cells
    for c in cells:
        rec = runner.run_cell(dataclasses.replace(c, runtime=runner.Runtime(meta_check=True)))
        if rec.status != "ok":
            failures.append(f"{c.label}: {rec.error}")
    assert not failures, f"{len(failures)} of {len(cells)} cells are not device-disciplined:\n" + "\n".join(failures)


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
