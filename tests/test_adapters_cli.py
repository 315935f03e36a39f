"""Every architecture an adapter loads runs every task of its family from the CLI,
``python -m bench evaluate --model hf:FOLDER``, on a tiny checkpoint built from config classes and
saved with ``save_pretrained`` (``models/tiny_hf.py``), with one cheap method per task, and a real
figure comes out (a finite main score in the store, not only exit code 0).

Two cells need a trained model, so a tiny random one gets the task's one-line refusal, asserted
here: hallucination detection needs a model that names objects ("made no hallucination ..."), and
diffusion attribution needs samples the judge can read ("... show the prompted object"); the
exported zoo models run both through ``hf:`` (tests/test_hf_loader.py).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.registry import TASKS, resolve
from models import adapters

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
METHOD = {"attribution": "saliency", "localization": "causal_tracing", "editing": "finetune",
          "spurious": "leace", "hallucination": "entropy"}
# the architectures added with the adapters (CLIP, SigLIP, LLaVA-1.5 and SD: tests/test_hf_loader.py)
NEW = ["llava_next", "llava_onevision", "paligemma", "qwen2_vl", "qwen2_5_vl", "siglip2", "pixart", "sd3", "flux"]
REFUSED = {"hallucination": "made no hallucination", ("attribution", "diffusion"): "show the prompted object"}


def _tasks(family: str) -> list[str]:
    return [t for t in TASKS.names() if family in TASKS.entry(t).meta["families"]]


def _folder(name: str, root: Path) -> Path:
    import json

    from models.tiny_hf import write_sidecar

    a = adapters.get(name)
    folder = write_sidecar(resolve(a.tiny)(root / name), a.family)
    if a.family == "diffusion":  # a random denoiser: what sampling draws does not matter, its cost does
        side = json.loads((folder / "mmi_bench.json").read_text())
        (folder / "mmi_bench.json").write_text(json.dumps({**side, "sampling": {"steps": 3}}))
    return folder


def _evaluate(model: str, tasks: list[str], store: Path) -> subprocess.CompletedProcess:
    args = [a for t in tasks for a in ("--task", t, "--method", METHOD[t])]
    cmd = [sys.executable, "-m", "bench", "evaluate", "--model", model, *args, "--quick", "--seed", "0",
           "--store", str(store), "--jobs", "1", "--no-progress", "--no-references"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ENV)


def _check(store: Path, model: str, tasks: list[str], family: str) -> None:
    from bench.harness.store import Store

    recs = {r.key.task: r for r in Store(str(store)).records(status=None, profile="quick") if r.key.model == model}
    for t in tasks:
        r = recs[t]
        refused = REFUSED.get(t) or REFUSED.get((t, family))
        if refused:
            assert r.status == "failed" and refused in (r.error or ""), (t, r.error)
            continue
        main = TASKS.entry(t).meta["main_score"]
        assert r.status == "ok", (t, r.error)
        assert r.metrics and math.isfinite(r.metrics[main]), (t, r.metrics)
        assert r.key.method == METHOD[t] and len(r.model_hash) == 64


@pytest.mark.slow  # (every new architecture's tasks run from the CLI below, also slow: CI runs both)
def test_cli_runs_attribution_on_a_tiny_paligemma(tmp_path):
    """The fast guard: one new architecture, one task, through the real CLI process."""
    folder = _folder("paligemma", tmp_path)
    store = tmp_path / "r.sqlite"
    cp = _evaluate(f"hf:{folder}", ["attribution"], store)
    assert cp.returncode == 0, cp.stderr[-2000:]
    assert "attribution v" in cp.stdout and "saliency" in cp.stdout
    _check(store, f"hf:{folder.resolve()}", ["attribution"], "generative")


@pytest.mark.slow  # ~45 s per architecture (every task of its family in a fresh process)
@pytest.mark.parametrize("name", NEW)
def test_cli_runs_every_task_of_its_family(name, tmp_path):
    a = adapters.get(name)
    folder = _folder(name, tmp_path)
    tasks = _tasks(a.family)
    store = tmp_path / "r.sqlite"
    cp = _evaluate(f"hf:{folder}", tasks, store)
    # a refused cell (see the module docstring) makes the exit code non-zero; the records say why
    assert cp.returncode in (0, 1), cp.stderr[-2000:]
    _check(store, f"hf:{folder.resolve()}", tasks, a.family)


@pytest.mark.slow
def test_diffusion_methods_on_a_diffusion_transformer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """UCE and cross-attention maps find a DiT's cross-attention sites by kind under its denoiser
    tower (``dit``), and UCE reads the context the keys and values are computed from (PixArt
    projects the T5 states first): a replacement maps the edited word's value toward the target's."""
    import torch

    from bench.capabilities import AttributionRequest, EditRequest
    from bench.harness.runner import load_model
    from methods.cross_attention import CrossAttention
    from methods.uce import UCE
    from models.tiny_hf import save_tiny_pixart

    model = load_model(f"hf:{save_tiny_pixart(tmp_path / 'pixart')}")
    assert model.denoiser_tower == "dit"  # type: ignore[attr-defined]
    S = model.image_size  # type: ignore[attr-defined]
    maps = CrossAttention().attribute(model, AttributionRequest(
        torch.rand(2, 3, S, S), lambda p, i: p.sum((1, 2, 3)), (4, 4),
        prompts=["a red circle", "a blue square"], target_words=["circle", "square"]))
    assert maps.shape[0] == 2 and bool(torch.isfinite(maps).all()) and float(maps.abs().sum()) > 0

    site = model.layer_sites("dit", "cross_v")[0]
    v_proj = model.module.get_submodule(model.site_specs[site].module)

    @torch.no_grad()
    def value_of(prompt: str, word: str) -> torch.Tensor:
        enc = model.encode_prompts([prompt])  # type: ignore[attr-defined]
        pos = model.prompt_token_positions([prompt], word)[0]  # type: ignore[attr-defined]
        return v_proj(model.cross_attention_context(enc.hidden_BLD))[0, pos].mean(0)  # type: ignore[attr-defined]

    target = value_of("a red square", "square")
    gap_before = float((value_of("a red circle", "circle") - target).norm())
    UCE(preserve_scale=0.0).edit(model, EditRequest(torch.rand(1, 2, 3, S, S), ["a red circle"], ["circle"], ["square"],
                                                    values=[("circle", "square")]))
    gap_after = float((value_of("a red circle", "circle") - target).norm())
    assert gap_after < 0.5 * gap_before, (gap_before, gap_after)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_diffusion_methods_on_a_joint_attention_transformer(name, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """On SD3 and Flux (MMDiT) every diffusion method either supports the model or refuses in one line, and
    the refusals are the ones the architecture explains: UCE/TIME (no fixed text key/value inputs in
    joint attention). DAAM reads the cross block of the joint maps: a word's map is non-negative,
    finite and differs between words of the same prompt."""
    import torch

    from bench.capabilities import AttributionRequest
    from bench.harness.runner import load_model
    from bench.registry import METHODS
    from methods.cross_attention import CrossAttention
    model = load_model(f"hf:{resolve(adapters.get(name).tiny)(tmp_path / name)}")
    assert model.denoiser_tower == "dit" and model.prediction_type == "flow_prediction"  # type: ignore[attr-defined]
    reasons = {}
    for n in METHODS.names():
        cls = resolve(METHODS.entry(n).target)
        if "diffusion" in getattr(cls, "families", ()):
            reasons[n] = cls().supports(model)
    assert reasons["cross_attention"] is None
    assert "joint attention" in (reasons["uce"] or "") and "\n" not in (reasons["uce"] or "")
    assert all(r is None or (r and "\n" not in r) for r in reasons.values()), reasons
    S = model.image_size  # type: ignore[attr-defined]
    px = torch.rand(1, 3, S, S, generator=torch.Generator().manual_seed(0))
    maps = [CrossAttention().attribute(model, AttributionRequest(px, lambda p, i: p.sum((1, 2, 3)), (4, 4),
                                                                 prompts=["a red circle"], target_words=[w]))
            for w in ("red", "circle")]
    for m in maps:
        assert m.shape == (1, S, S) and bool(torch.isfinite(m).all()) and float(m.min()) >= 0 and float(m.sum()) > 0
    assert not torch.allclose(maps[0], maps[1])
