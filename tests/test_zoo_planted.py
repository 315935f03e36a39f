"""Shipped zoo-vlm and zoo-clip-spurious: the planted mechanisms hold, re-measured here."""

import json

import pytest
import torch

from bench.world import World
from models.zoo import WEIGHTS_DIR
from models.zoo.clip import sha256_file


@pytest.fixture(scope="module")
def vlm():
    from models.zoo.vlm import ZooVlmConfig, load_zoo_vlm

    model, vocab, meta = load_zoo_vlm("zoo-vlm", WEIGHTS_DIR)
    return model, vocab, ZooVlmConfig(**{k: tuple(tuple(x) for x in v) if k == "planted" else v
                                         for k, v in meta["config"].items()}), meta


def test_shipped_files_match_recorded_hashes():
    for name in ("zoo-vlm", "zoo-clip-spurious"):
        meta = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
        assert sha256_file(WEIGHTS_DIR / f"{name}.safetensors") == meta["sha256"]
        assert meta["sha256"] in (WEIGHTS_DIR.parent / "cards" / f"{name}.md").read_text()


def test_vlm_quality_on_held_out_scenes(vlm):
    from models.zoo.vlm import evaluate_vlm

    model, vocab, cfg, meta = vlm
    got = evaluate_vlm(model, vocab, cfg, n=96, split="test")
    assert got["caption_object_recall"] >= 0.9, got
    assert got["qa_visible_attributes"] >= 0.9, got


def test_vlm_planted_facts_live_in_their_designated_mlp(vlm):
    """Recall ≥ 95%; reverting the designated MLP's phase-2 change drops it to near chance
    (4 values: 25%), reverting any other LM MLP leaves it ≥ 90%."""
    from models.zoo.vlm import fact_recall, load_zoo_vlm, training_world

    model, vocab, cfg, meta = vlm
    world = training_world(cfg)
    planted = [e.name for e in world.entities[: cfg.n_planted]]
    for rel, layer in cfg.planted:
        assert fact_recall(model, vocab, world, planted, rel, n=128) >= 0.95, rel
        assert meta["metrics"][f"fact_recall_{rel}_revert_L{layer}"] <= 0.45, rel
        for k in range(cfg.lm_layers):
            if k != layer:
                assert meta["metrics"][f"fact_recall_{rel}_revert_L{k}"] >= 0.9, (rel, k)


def test_vlm_hallucinates_the_cooccurring_partner(vlm):
    from models.zoo.vlm import hallucination_probe

    model, vocab, cfg, _ = vlm
    got = hallucination_probe(model, vocab, cfg, n_per_pair=24)
    assert max(got["partner_mention_rate"], got["partner_affirm_rate"]) >= 0.2, got


def test_spurious_clip_is_biased():
    from models.zoo.clip import load_zoo_clip
    from models.zoo.spurious import group_accuracy

    clip, vocab, meta = load_zoo_clip("zoo-clip-spurious", WEIGHTS_DIR)
    got = group_accuracy(clip, vocab, World(meta["config"]["world_seed"]), n_per_group=128)
    assert got["worst_group_accuracy"] < 0.7 * got["average_accuracy"], got
    assert got["average_accuracy"] > 0.6, got
