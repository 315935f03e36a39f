"""``--model hf:<path>``: tiny checkpoints of every family saved with ``save_pretrained`` load
through the wrapper their config names and run every task from the CLI; exported zoo models
behave bit for bit as the zoo models do.

The tiny checkpoints are built from config classes (randomly initialised; no hub access), with a
word-level tokenizer saved beside each, as a real checkpoint ships its own (``models/tiny_hf.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.errors import BenchError

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from models.tiny_hf import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def test_hf_clip_loads_with_its_tokenizer_and_sites(tiny_clip_dir):
    from models.hf_loader import family_of, load_hf

    name = f"hf:{tiny_clip_dir}"
    assert family_of(name) == "contrastive"
    m = load_hf(name)
    assert m.family == "contrastive" and m.image_size == 32 and len(m.weights_hash) == 64
    ids, mask = m.tokenize(["a red circle", "a blue square at the top"])
    # [BOS] words [EOS], padded to the fixed length CLIP was trained on (here the 16 positions)
    assert ids.shape == (2, 16) and ids[0, 0] == 2 and ids[0, 4] == 3 and mask[0].sum() == 5 and mask[1].sum() == 8
    with torch.no_grad(), m.trace(read=["vision.blocks.1.mlp", "text.blocks.0.attn"]) as t:
        sims = m.similarity(torch.rand(3, 3, 32, 32), ["a red circle", "a blue square"])
    assert sims.shape == (3, 2) and t["vision.blocks.1.mlp"].shape == (3, 17, 32)


def test_malformed_checkpoints_get_one_line_errors(tmp_path):
    from models.hf_loader import family_of, load_hf

    with pytest.raises(BenchError, match="is not a folder"):
        load_hf(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(BenchError, match="has no config.json"):
        family_of(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(BenchError, match="config.json is not valid JSON"):
        load_hf(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(BenchError, match="'bert' is not supported yet"):
        family_of(f"hf:{tmp_path}")
    (tmp_path / "config.json").unlink()
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(BenchError, match="StableDiffusionXLPipeline; supported diffusion pipelines"):
        family_of(f"hf:{tmp_path}")


def test_cli_evaluates_a_saved_clip_on_attribution(tiny_clip_dir, tmp_path, capsys):
    """`bench evaluate --model hf:<folder>` in-process (`python -m bench` is `sys.exit(main())`; a fresh
    interpreter would spend most of the test importing transformers' modeling code)."""
    from bench.app.cli import main

    store = tmp_path / "r.sqlite"
    rc = main(["evaluate", "--model", f"hf:{tiny_clip_dir}", "--task", "attribution", "--method", "saliency",
               "--quick", "--store", str(store), "--jobs", "1", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "3 cells ran" in err and "0 failed" in err
    assert "attribution v" in out and "saliency" in out


# ------------------------------------------------------------------------ every family
@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """One tiny checkpoint per wrapper, each declaring the ground truth tasks need (mmi_bench.json)."""
    from models.tiny_hf import save_tiny_clip, save_tiny_llava, save_tiny_sd, save_tiny_siglip, write_sidecar

    root = tmp_path_factory.mktemp("tiny-hf")
    dirs = {"clip": write_sidecar(save_tiny_clip(root / "clip"), "contrastive"),
            "siglip": write_sidecar(save_tiny_siglip(root / "siglip"), "contrastive"),
            "llava": write_sidecar(save_tiny_llava(root / "llava"), "generative"),
            "sd": write_sidecar(save_tiny_sd(root / "sd"), "diffusion")}
    side = json.loads((dirs["sd"] / "mmi_bench.json").read_text())
    side["sampling"] = {"steps": 3}  # a random UNet: what sampling draws does not matter, its cost does
    (dirs["sd"] / "mmi_bench.json").write_text(json.dumps(side))
    return dirs


def test_each_family_loads_with_the_wrapper_its_config_names(tiny_dirs):
    from models.hf_clip import CLIPWrapper, SiglipWrapper
    from models.hf_diffusion import DiffusionWrapper
    from models.hf_llava import LlavaWrapper
    from models.hf_loader import family_of, load_hf

    want = {"clip": (CLIPWrapper, "contrastive"), "siglip": (SiglipWrapper, "contrastive"),
            "llava": (LlavaWrapper, "generative"), "sd": (DiffusionWrapper, "diffusion")}
    pixels = torch.rand(2, 3, 32, 32)
    for key, (cls, family) in want.items():
        name = f"hf:{tiny_dirs[key]}"
        assert family_of(name) == family
        m = load_hf(name)
        assert type(m) is cls and m.family == family and len(m.weights_hash) == 64
        assert [r.relation for r in m.planted] == ["home"] and m.planted[0].site in m.site_specs
        with torch.no_grad():
            if family == "contrastive":
                assert m.similarity(pixels, ["a red circle", "a blue square"]).shape == (2, 2)
                assert m.tags == {"spurious": "background"}
            elif family == "generative":
                ids, mask, labels = m.encode(["is there a red circle?"], ["yes"])
                # <bos> USER : <image>x16 is there a red circle ? ASSISTANT : yes <eos>
                assert int((ids == m.llava.config.image_token_index).sum()) == 16 == m.token_layout().grid[0] ** 2
                assert int((labels != -100).sum()) == 2 and ids.shape == mask.shape
                assert m.logprobs(pixels, ["is there a red circle?"] * 2, ["yes", "no"]).shape == (2,)
                assert len(m.generate(pixels, ["describe the image"] * 2, max_new_tokens=3)) == 2
            else:
                assert m.sampling.steps == 3 and not m.sampling.mask_padding and m.judge is not None
                assert m.generate(["a red circle"], seed=0).shape == (1, 3, 32, 32)


def test_list_models_shows_every_hf_family(capsys):
    from bench.app.cli import main

    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    for kind, family in (("clip", "contrastive"), ("siglip", "contrastive"), ("llava", "generative"),
                         ("stable-diffusion", "diffusion")):
        assert f"family: {family}" in out and f"a local {kind} checkpoint" in out


def test_malformed_sidecars_get_one_line_errors(tiny_dirs, tmp_path):
    import shutil

    from models.hf_loader import load_hf

    d = tmp_path / "clip"
    shutil.copytree(tiny_dirs["clip"], d)
    for content, msg in (("[1]", "holds a JSON list, not an object"),
                         ('{"plantd": []}', "unknown key 'plantd'"),
                         ('{"planted": [{"relation": "home"}]}', "planted\\[0\\] lacks 'site'"),
                         ('{"planted": [{"relation": "home", "site": "vision.blocks.9.mlp", "entities": [], '
                          '"world_seed": 0, "n_entities": 32, "question": "q", "values": []}]}',
                          "names site 'vision.blocks.9.mlp', which"),
                         ('{"judge": "gpt"}', "unknown judge 'gpt'"),
                         ('{"judge": "zoo-oracle"}', "a judge reads generated images"),
                         ('{"prompt_template": "{prompt}"}', "must hold '<image>' once"),
                         ('{"sampling": {"stepz": 3}}', "sampling must be an object with keys among")):
        (d / "mmi_bench.json").write_text(content)
        with pytest.raises(BenchError, match=msg) as e:
            load_hf(f"hf:{d}")
        assert "\n" not in str(e.value) and "mmi_bench.json" in str(e.value)


def _evaluate(args: list[str], store: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bench", "evaluate", *args, "--quick", "--store", str(store), "--jobs", "1",
           "--no-progress", "--no-references"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def _records(store: Path) -> list:
    from bench.harness.store import Store

    return list(Store(str(store)).records(profile="quick"))


@pytest.mark.slow  # 13 cells in two fresh processes (~1 min of CPU); every family's wrapper is loaded and
# exercised by test_each_family_loads_with_the_wrapper_its_config_names, the hf: path through the CLI by
# test_cli_evaluates_a_saved_clip_on_attribution, and every task on the zoo models of each family
def test_cli_runs_every_task_on_tiny_checkpoints_of_every_family(tiny_dirs, tmp_path):
    """attribution, spurious, localization and editing on CLIP, SigLIP and LLaVA; localization and
    editing on Stable Diffusion. (Hallucination needs a model that names objects, and diffusion
    attribution samples the judge can read: the exported zoo models below run those.)"""
    store = tmp_path / "r.sqlite"
    models = [a for k in ("clip", "siglip", "llava") for a in ("--model", f"hf:{tiny_dirs[k]}")]
    cp = _evaluate([*models, "--task", "attribution", "--task", "spurious", "--task", "localization", "--task",
                    "editing", "--method", "saliency", "--method", "leace", "--method", "causal_tracing",
                    "--method", "finetune"], store)
    assert cp.returncode == 0, cp.stderr[-2000:]
    cp = _evaluate(["--model", f"hf:{tiny_dirs['sd']}", "--task", "localization", "--task", "editing",
                    "--method", "causal_tracing", "--method", "uce"], store)
    assert cp.returncode == 0, cp.stderr[-2000:]
    recs = _records(store)
    failed = [f"{r.key.label()}: {r.error}" for r in recs if r.status != "ok"]
    assert not failed, failed
    ran = {(r.key.task, r.key.model.split("/")[-1]) for r in recs}
    assert ran == {("attribution", "clip"), ("spurious", "clip"), ("localization", "clip"), ("editing", "clip"),
                   ("attribution", "siglip"), ("spurious", "siglip"), ("localization", "siglip"),
                   ("editing", "siglip"), ("attribution", "llava"), ("localization", "llava"),
                   ("editing", "llava"), ("localization", "sd"), ("editing", "sd")}
    assert all(r.metrics and r.model_hash and len(r.model_hash) == 64 for r in recs)


# ----------------------------------------------------------------- exported zoo models
@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    from models.zoo.export import export_zoo

    root = tmp_path_factory.mktemp("export")
    return {n: export_zoo(n, root / n) for n in ("zoo-clip", "zoo-vlm", "zoo-diffusion")}


def test_exported_zoo_models_match_the_zoo_bit_for_bit(exported):
    """The Hugging Face path (save_pretrained folder, fast tokenizer, mmi_bench.json) reproduces
    each zoo model exactly: same sites, same ground truth, identical outputs."""
    from bench.registry import MODELS
    from models.hf_loader import load_hf

    torch.manual_seed(0)
    pixels = torch.rand(3, 3, 32, 32)
    for name, path in exported.items():
        zoo, hf = MODELS.get(name)(name), load_hf(f"hf:{path}")
        assert [s.name for s in zoo.sites()] == [s.name for s in hf.sites()]
        assert zoo.planted == hf.planted and zoo.tags == hf.tags
        with torch.no_grad():
            if name == "zoo-clip":
                texts = ["a red circle at the top left", "the home of the glyph is north", "a Blue square, 3 and?"]
                assert torch.equal(zoo.tokenize(texts)[0], hf.tokenize(texts)[0])
                assert torch.equal(zoo.similarity(pixels, texts), hf.similarity(pixels, texts))
            elif name == "zoo-vlm":
                prompts, answers = ["describe the image", "is there a red circle?"], ["a red circle, a cross", "yes"]
                assert torch.equal(zoo.encode(prompts, answers)[0], hf.encode(prompts, answers)[0])
                assert torch.equal(zoo.logprobs(pixels[:2], prompts, answers), hf.logprobs(pixels[:2], prompts, answers))
                assert zoo.generate(pixels[:2], prompts) == hf.generate(pixels[:2], prompts)
            else:
                x = torch.randn(2, 3, 32, 32)
                assert torch.equal(zoo.noise_pred(x, 500, ["a red circle", "a cross"], guidance=2.0),
                                   hf.noise_pred(x, 500, ["a red circle", "a cross"], guidance=2.0))
                assert torch.equal(zoo.generate(["a red circle"], seed=3, steps=4),
                                   hf.generate(["a red circle"], seed=3, steps=4))
                assert hf.judge is not None and hf.sampling == zoo.sampling


def test_export_refuses_a_non_empty_folder_and_unknown_models(tmp_path):
    from models.zoo.export import export_zoo

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    with pytest.raises(BenchError, match="is not an empty folder"):
        export_zoo("zoo-clip", tmp_path / "x")
    with pytest.raises(BenchError, match="cannot be exported"):
        export_zoo("zoo-oracle", tmp_path / "y")


@pytest.mark.slow
def test_cli_hallucination_and_diffusion_attribution_on_exported_zoo_models(exported, tmp_path):
    """The two task × family cells a random tiny model cannot run (it names no objects; it draws
    nothing the judge reads), through ``hf:`` on the exported zoo models, match the zoo's figures."""
    store = tmp_path / "r.sqlite"
    cp = _evaluate(["--model", "zoo-vlm", "--model", f"hf:{exported['zoo-vlm']}", "--task", "hallucination",
                    "--method", "entropy"], store, timeout=900)
    assert cp.returncode == 0, cp.stderr[-2000:]
    cp = _evaluate(["--model", "zoo-diffusion", "--model", f"hf:{exported['zoo-diffusion']}", "--task",
                    "attribution", "--method", "saliency"], store, timeout=900)
    assert cp.returncode == 0, cp.stderr[-2000:]
    by = {(r.key.task, r.key.model.startswith("hf:")): r for r in _records(store)}
    assert len(by) == 4 and all(r.status == "ok" for r in by.values())
    for task in ("hallucination", "attribution"):
        assert by[(task, True)].metrics == by[(task, False)].metrics, task
