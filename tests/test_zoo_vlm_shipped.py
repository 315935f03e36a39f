"""The shipped zoo-vlm: quality bar, planted hallucination and planted-knowledge validity,
re-measured on the shipped weights with the code that recorded the card's figures."""

import json

import pytest
import torch

from models.zoo import WEIGHTS_DIR
from models.zoo.io import sha256_file
from models.zoo.vlm import (
    _load_mlp,
    _mlp,
    config_from_meta,
    evaluate_vlm,
    fact_recall,
    hallucination_probe,
    load_zoo_vlm,
    phase1_key,
    qa_token_accuracy,
    training_world,
)

CHANCE = 0.25  # four values per relation
NEAR_CHANCE = CHANCE + 0.15


@pytest.fixture(scope="module")
def vlm():
    torch.set_num_threads(1)
    model, vocab, meta = load_zoo_vlm("zoo-vlm", WEIGHTS_DIR)
    cfg = config_from_meta(meta)
    world = training_world(cfg)
    planted = [e.name for e in world.entities[: cfg.n_planted]]
    return model, vocab, meta, cfg, world, planted


def test_shipped_hash_matches_the_record():
    meta = json.loads((WEIGHTS_DIR / "zoo-vlm.json").read_text())
    assert sha256_file(WEIGHTS_DIR / "zoo-vlm.safetensors") == meta["sha256"]


# The re-measurements below are slow (5-10 s of CPU each, ~30 s together): `bench zoo verify`, which CI
# runs before the tests, re-measures the shipped model's quality and fact recall (and the audit's revert
# test); the recorded figures are checked against the bars in the default run.
def test_quality_bar_recorded(vlm):
    m = vlm[2]["metrics"]
    assert m["caption_object_recall"] >= 0.9 and m["qa_visible_attributes"] >= 0.9  # after phase 1
    assert m["after_planting_qa_visible_attributes"] >= 0.9 and m["after_planting_caption_object_recall"] >= 0.9


@pytest.mark.slow
def test_quality_bar_remeasured(vlm):
    model, vocab, meta, cfg, _, _ = vlm
    got = evaluate_vlm(model, vocab, cfg, n=64, split="test")
    assert got["caption_object_recall"] >= 0.85 and got["qa_visible_attributes"] >= 0.9


@pytest.mark.slow
def test_planted_hallucination_is_measured_as_recorded(vlm):
    """The card's partner-hallucination rates of the shipped weights re-measure (exactly on the
    machine that recorded them; greedy answers near the yes/no boundary may flip elsewhere)."""
    model, vocab, meta, cfg, _, _ = vlm
    got = hallucination_probe(model, vocab, cfg)
    for k in ("partner_mention_rate", "partner_affirm_rate"):
        assert abs(got[k] - meta["metrics"][f"after_planting_{k}"]) <= 0.02, k


def test_planted_hallucination_reaches_the_issue_bar(vlm):
    """The absent partner is affirmed (or mentioned) in at least 20% of probe scenes, while
    POPE on random negatives stays accurate; adversarial (partner) negatives are the hardest."""
    m = vlm[2]["metrics"]
    for pre in ("", "after_planting_"):  # phase 1 and shipped
        assert max(m[f"{pre}partner_mention_rate"], m[f"{pre}partner_affirm_rate"]) >= 0.2
        assert m[f"{pre}pope_random_accuracy"] >= 0.9
        assert m[f"{pre}pope_adversarial_accuracy"] < m[f"{pre}pope_random_accuracy"]
    assert m["after_planting_pope_random_accuracy"] >= 0.95  # the shipped model


@pytest.mark.xfail(strict=True, reason="the retrained phase-1 zoo-vlm answers POPE's random negatives at 0.943")
def test_phase1_pope_random_accuracy_reaches_095(vlm):
    assert vlm[2]["metrics"]["pope_random_accuracy"] >= 0.95


@pytest.mark.slow  # its recorded counterparts: test_reverting_any_other_plant_keeps_recall_at_the_issue_bar,
# test_mean_ablation_validity_with_control_recorded, and test_zoo_audit's recorded revert test
@pytest.mark.parametrize("index", [0, 1])
def test_planted_fact_lives_in_its_designated_mlp(vlm, index):
    model, vocab, meta, cfg, world, planted = vlm
    rel, layer = cfg.planted[index]
    assert fact_recall(model, vocab, world, planted, rel, n=96) >= 0.95
    saved = {n: p.detach().clone() for n, p in _mlp(model, layer).named_parameters()}
    _load_mlp(model, layer, {n: meta["phase1"][phase1_key(layer, n)] for n in saved})
    try:
        assert fact_recall(model, vocab, world, planted, rel, n=96) <= NEAR_CHANCE
        for other, _ in cfg.planted:  # the other relation barely depends on this plant
            if other != rel:
                assert fact_recall(model, vocab, world, planted, other, n=96) >= 0.85
    finally:
        _load_mlp(model, layer, saved)
    assert fact_recall(model, vocab, world, planted, rel, n=96) >= 0.95  # restored


def test_reverting_any_other_plant_keeps_recall_at_the_issue_bar(vlm):
    m = vlm[2]["metrics"]
    cfg = vlm[3]
    for rel, layer in cfg.planted:
        for other, other_layer in cfg.planted:
            if other != rel:
                assert m[f"fact_recall_{rel}_revert_L{other_layer}"] >= 0.9


def test_mean_ablation_validity_with_control_recorded(vlm):
    _, _, meta, cfg, _, _ = vlm
    m = meta["metrics"]
    designated = {layer for _, layer in cfg.planted}
    for rel, layer in cfg.planted:
        assert m[f"fact_recall_{rel}_meanablate_L{layer}"] <= NEAR_CHANCE
    # an MLP that holds no plant and carries little else can be ablated without losing the facts
    spare = [k for k in range(cfg.lm_layers) if k not in designated and m[f"control_qa_meanablate_L{k}"] >= 0.9]
    assert spare
    for k in spare:
        for rel, _ in cfg.planted:
            assert m[f"fact_recall_{rel}_meanablate_L{k}"] >= 0.9


@pytest.mark.slow
def test_control_is_remeasurable(vlm):
    model, vocab, meta, cfg, _, _ = vlm
    assert abs(qa_token_accuracy(model, vocab, cfg) - meta["metrics"]["control_qa"]) <= 0.02
