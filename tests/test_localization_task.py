"""The localization task's metrics by hand, and its examples' counterfactual construction."""

import math

import torch

from bench.model import PlantedRelation
from bench.world import World, WorldConfig
from tasks.localization import build_examples, rank_metrics


def test_rank_metrics_hand_computed():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.2],   # planted 1: top, rr 1, auroc 1
                           [0.5, 0.1, 0.4, 0.3],   # planted 2: rank 2, auroc 2/3
                           [0.2, 0.2, 0.0, 0.0]])  # planted 0: tied with site 1
    planted = torch.tensor([1, 2, 0])
    m = rank_metrics(scores, planted)
    assert math.isclose(m["top1"], (1 + 0 + 0.5) / 3)
    assert math.isclose(m["mrr"], (1 + 0.5 + (1 + 0.5) / 2) / 3)
    assert math.isclose(m["auroc"], (1 + 2 / 3 + (2 + 0.5) / 3) / 3)


def test_uniform_scores_are_chance():
    m = rank_metrics(torch.zeros(5, 4), torch.tensor([0, 1, 2, 3, 0]))
    assert math.isclose(m["top1"], 0.25) and math.isclose(m["auroc"], 0.5)
    assert math.isclose(m["mrr"], (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_examples_pair_each_glyph_with_a_counterfactual_of_another_answer():
    world = World(0, WorldConfig(n_entities=64))
    names = tuple(e.name for e in world.entities[:32])
    rels = [PlantedRelation(r, f"lm.blocks.{k}.mlp", names, 0, 64, f"what is the {r} of the glyph?",
                            ("a", "b")) for r, k in (("home", 1), ("season", 3))]
    ex = build_examples(rels, 8, seed=0)
    assert ex.prompts[:2] == ["what is the home of the glyph?", "what is the season of the glyph?"]
    assert all(a != b for a, b in zip(ex.answers, ex.alternatives))
    assert ex.planted_site[:2] == ["lm.blocks.1.mlp", "lm.blocks.3.mlp"]
    assert not torch.equal(ex.clean_BCHW, ex.corrupt_BCHW)
    again = build_examples(rels, 8, seed=0)
    assert torch.equal(again.clean_BCHW, ex.clean_BCHW) and again.hashes == ex.hashes
    assert build_examples(rels, 8, seed=1).hashes != ex.hashes
