from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def world():
    from bench.kit.world import World

    return World(0)


@pytest.fixture(scope="session")
def tiny_clip(world):
    """A randomly initialised zoo-shaped CLIP (2 layers per tower): fast, real code path."""
    from bench.kit.world import Vocab
    from models.hf_clip import CLIPWrapper
    from models.zoo.clip import ZooClipConfig, build_clip

    vocab = Vocab.for_world(world)
    torch.manual_seed(0)
    clip = build_clip(ZooClipConfig(layers=2, text_layers=2), len(vocab), vocab.eos_id, vocab.pad_id)
    return CLIPWrapper("tiny-clip", clip, lambda t: vocab.batch(t, 32), "tiny")


@pytest.fixture(scope="session")
def zoo_clip():
    """The shipped, trained zoo-clip."""
    from models.zoo_models import load_zoo_clip_model

    return load_zoo_clip_model("zoo-clip")


@pytest.fixture(scope="session")
def saliency_store(tmp_path_factory):
    """A results store holding one real cell, run once through ``bench evaluate`` for every test that
    reads it: attribution/zoo-clip/saliency, seed 0, quick profile, with its per-example rows. Tests may
    add records of other keys; none changes this one."""
    from bench.app.cli import main

    path = tmp_path_factory.mktemp("saliency") / "results.sqlite"
    assert main(["evaluate", "--task", "attribution", "--model", "zoo-clip", "--method", "saliency", "--seed", "0",
                 "--quick", "--no-references", "--no-progress", "--no-table", "--jobs", "1", "--store", str(path)]) == 0
    return path


def _build_tiny_llava():  # type: ignore[no-untyped-def]
    from transformers import CLIPVisionConfig

    from models.hf_llava import LlavaWrapper
    from models.zoo.vlm import ZooVlmConfig, build_vlm, training_world, vlm_vocab, wrapper_io

    torch.manual_seed(0)
    cfg = ZooVlmConfig(lm_width=32, lm_layers=2, lm_heads=4, lm_mlp=64)
    vocab = vlm_vocab(training_world(cfg))
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          image_size=32, patch_size=8)
    llava = build_vlm(cfg, vocab, vc)
    enc, dec, pre = wrapper_io(vocab, llava.config.image_seq_length)
    return LlavaWrapper("tiny-llava", llava, enc, dec, pre, "tiny", vocab.eos_id, vocab.pad_id)


@pytest.fixture(scope="session")
def make_tiny_llava():
    """A builder of fresh, randomly initialised zoo-shaped LLaVAs (2 LM layers): fast, real code path."""
    return _build_tiny_llava


@pytest.fixture(scope="module")
def tiny_planted_llava(make_tiny_llava):
    """A tiny LLaVA declaring the zoo-vlm's two planted relations (in its LM MLPs 0 and 1): for
    tasks that read and edit facts. One per test module; tasks restore any edit."""
    from bench.model import PlantedRelation
    from bench.kit.world import World, WorldConfig
    from bench.kit.world.core import RELATIONS

    model = make_tiny_llava()
    world = World(0, WorldConfig(n_entities=64))
    names = tuple(e.name for e in world.entities[:32])
    model.planted = [PlantedRelation(r, f"lm.blocks.{k}.mlp", names, 0, 64, f"what is the {r} of the glyph?",
                                     RELATIONS[r]) for r, k in (("home", 0), ("season", 1))]
    return model


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    """Name the install command of a test skipped for a missing system package (the browser test
    without Chromium, outside CI) even under plain ``pytest -q``, which lists no skip reasons."""
    if "s" in getattr(terminalreporter, "reportchars", ""):
        return  # -rs already prints every reason
    notes = []
    for rep in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(rep, "longrepr", None)
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr or "")
        if "apt-get install" in reason:
            notes.append(f"SKIPPED {rep.nodeid}: {reason.removeprefix('Skipped: ')}")
    if notes:
        terminalreporter.write_sep("-", "skipped for a missing system package")
        for line in notes:
            terminalreporter.write_line(line)
