"""The shipped zoo: hashes, quality bar, deterministic retraining."""

import json
from dataclasses import replace

import pytest
import torch

from bench.kit.world import World
from models.zoo import WEIGHTS_DIR
from models.zoo.clip import ZooClipConfig, load_zoo_clip, train_clip, zero_shot_accuracy
from models.zoo.io import sha256_file


def test_shipped_weights_match_their_card():
    meta = json.loads((WEIGHTS_DIR / "zoo-clip.json").read_text())
    assert sha256_file(WEIGHTS_DIR / "zoo-clip.safetensors") == meta["sha256"]
    card = (WEIGHTS_DIR.parent / "cards" / "zoo-clip.md").read_text()
    assert meta["sha256"] in card


def test_zoo_clip_quality_bar():
    """Zero-shot shape and colour accuracy on held-out scenes, single prompt per class: ≥ 90% each."""
    clip, vocab, meta = load_zoo_clip("zoo-clip", WEIGHTS_DIR)
    acc = zero_shot_accuracy(clip, vocab, World(meta["config"]["world_seed"]), n=512, split="test")
    assert acc["zero_shot_colour"] >= 0.9, acc
    assert acc["zero_shot_shape"] >= 0.9, acc


def test_training_is_deterministic_from_its_seed():
    cfg = replace(ZooClipConfig(), steps=3, batch_size=16, threads=1)
    logs: list[str] = []

    def small_eval(model, vocab, world, n, split):  # the real zero-shot evaluation, on 16 scenes (not 256, 1024)
        return zero_shot_accuracy(model, vocab, world, n=16, split=split)

    a, _, _ = train_clip(cfg, log=logs.append, eval_fn=small_eval)
    b, _, _ = train_clip(cfg, log=logs.append, eval_fn=small_eval)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c, _, _ = train_clip(replace(cfg, seed=1), log=logs.append, eval_fn=small_eval)
    assert not all(torch.equal(sa[k], c.state_dict()[k]) for k in sa)


def test_spurious_clip_ships_with_its_bias():
    """Worst-group accuracy well below average (under 70% of it), re-measured on 128 scenes a group."""
    from models.zoo.spurious import group_accuracy

    meta = json.loads((WEIGHTS_DIR / "zoo-clip-spurious.json").read_text())
    assert sha256_file(WEIGHTS_DIR / "zoo-clip-spurious.safetensors") == meta["sha256"]
    clip, vocab, _ = load_zoo_clip("zoo-clip-spurious", WEIGHTS_DIR)
    got = group_accuracy(clip, vocab, World(meta["config"]["world_seed"]), n_per_group=128)
    assert got["worst_group_accuracy"] < 0.7 * got["average_accuracy"], got
    assert got["average_accuracy"] > 0.6, got


@pytest.mark.parametrize("name", ["zoo-clip", "zoo-vlm", "zoo-diffusion"])
def test_phase2_only_refuses_weights_whose_phase1_config_changed(name, tmp_path):
    """`bench zoo train NAME --phase2-only` keeps phase 1 from the weights: if the current config
    would train another phase 1, the result could not be reproduced, so it is refused."""
    import shutil

    from bench.errors import BenchError
    from models.zoo.train import train

    src = tmp_path / "src"
    src.mkdir()
    for ext in ("json", "safetensors"):
        shutil.copy(WEIGHTS_DIR / f"{name}.{ext}", src)
    meta = json.loads((src / f"{name}.json").read_text())
    meta["config"]["seed"] += 1
    (src / f"{name}.json").write_text(json.dumps(meta))
    with pytest.raises(BenchError, match=r"config.s .*\bseed\b.* changed since phase 1"):
        train(name, out=tmp_path / "out", phase2_only=src)
    assert not (tmp_path / "out" / f"{name}.safetensors").exists()
