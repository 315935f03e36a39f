"""The editing task: hand-computed aggregate, and edits never leak out of a cell
(parameters restored bit-identically), on a tiny randomly initialised LLaVA."""

import math

import pytest
import torch

from bench.model import PlantedRelation
from bench.registry import METHODS
from bench.world import World, WorldConfig
from bench.world.core import RELATIONS
from models.zoo.vlm import ZooVlmConfig
from tasks.editing import EditingConfig, EditingTask, harmonic_mean


def test_harmonic_mean():
    assert math.isclose(harmonic_mean(1.0, 0.5, 0.5), 3 / (1 + 2 + 2))
    assert harmonic_mean(1.0, 0.0, 1.0) == 0.0


@pytest.fixture(scope="module")
def tiny_planted_llava(make_tiny_llava):
    model = make_tiny_llava()
    cfg = ZooVlmConfig()
    world = World(0, WorldConfig(n_entities=cfg.n_entities))
    names = tuple(e.name for e in world.entities[:32])
    model.planted = [PlantedRelation(r, f"lm.blocks.{k}.mlp", names, 0, cfg.n_entities,
                                     f"what is the {r} of the glyph?", RELATIONS[r])
                     for r, k in (("home", 0), ("season", 1))]
    return model


def test_finetune_edits_are_undone_bit_identically(tiny_planted_llava):
    model = tiny_planted_llava
    before = {n: p.detach().clone() for n, p in model.module.named_parameters()}
    task = EditingTask(EditingConfig(quick_requests=2, renders=2, fresh_renders=2, neighbours=4, quality_scenes=4))
    m = task.run(model, METHODS.get("finetune")(steps=5, lr=0.05), seed=0, quick=True).metrics
    assert all(torch.equal(p, before[n]) for n, p in model.module.named_parameters())
    for key in ("efficacy", "generalization", "specificity", "score", "batch_score", "quality"):
        assert 0.0 <= m[key] <= 1.0
    # a strong edit of a random model takes: the new answers become its answers on the shown renders
    assert m["efficacy"] > 0.5


def test_references_are_chance_and_ceiling(tiny_planted_llava):
    task = EditingTask(EditingConfig(quick_requests=4, renders=4, fresh_renders=4, neighbours=8, quality_scenes=4))
    oracle = task.run(tiny_planted_llava, METHODS.get("oracle")(), seed=0, quick=True).metrics
    rnd = task.run(tiny_planted_llava, METHODS.get("random")(), seed=0, quick=True).metrics
    assert oracle["score"] == 1.0 and oracle["batch_score"] == 1.0
    assert 0.05 < rnd["score"] < 0.5  # four values per relation: chance is 1/4
