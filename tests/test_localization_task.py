"""The localization task's metrics by hand, and its examples' counterfactual construction."""

import math

import pytest
import torch

from bench.model import PlantedRelation
from bench.kit.world import World, WorldConfig
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


def test_top_site_per_relation_uses_mean_within_example_rank():
    from tasks.localization import top_site_per_relation

    scores = torch.tensor([[0.0, 9.0, 1.0],    # home: site b best
                           [0.0, 0.1, 0.2],    # season: site c best (scale does not matter)
                           [5.0, 6.0, 0.0],    # home: b best
                           [0.3, 0.0, 0.4]])   # season: c best
    top = top_site_per_relation(scores, ["home", "season", "home", "season"], ["a", "b", "c"])
    assert top == {"home": "b", "season": "c"}


def test_localization_informs_editing_is_measured_and_undone(tiny_planted_llava):
    from bench.registry import METHODS
    from tasks.localization import LocalizationConfig, LocalizationTask

    model = tiny_planted_llava
    before = {n: p.detach().clone() for n, p in model.module.named_parameters()}
    task = LocalizationTask(LocalizationConfig(quick_examples=4, quick_edit_requests=1, edit_renders=2, edit_fresh=2,
                                               edit_neighbours=3, edit_steps=3, edit_lr=0.05))
    m = task.run(model, METHODS.get("causal_tracing")(), seed=0, quick=True).metrics
    assert all(torch.equal(p, before[n]) for n, p in model.module.named_parameters())
    for k in ("edit_at_top", "edit_at_planted"):
        assert 0.0 <= m[k] <= 1.0
    if m["edit_at_planted"] > 0:
        assert math.isclose(m["edit_ratio"], m["edit_at_top"] / m["edit_at_planted"])
    oracle = task.run(model, METHODS.get("oracle")(), seed=0, quick=True).metrics
    assert oracle["top1"] == 1.0 and oracle["edit_at_top"] == oracle["edit_at_planted"]


@pytest.fixture(scope="module")
def zoo_diffusion():
    from models.zoo_models import load_zoo_diffusion_model

    return load_zoo_diffusion_model()


def test_diffusion_examples_and_metric_on_zoo_diffusion(zoo_diffusion):
    """The clean prompt explains the render with the entity's planted shape better than the
    counterfactual's render; the corrupt prompt does not (the planted fact is real)."""
    from tasks.localization import build_diffusion_examples, diffusion_evaluate

    rel = zoo_diffusion.planted[0]
    assert rel.site == "text.blocks.0.mlp" and rel.question == "a {entity}" and dict(rel.renders)["north"] == "circle"
    ex = build_diffusion_examples(zoo_diffusion, rel, 16, seed=0, draws=2)
    assert all(c != k for c, k in zip(ex.clean_prompts, ex.corrupt_prompts))
    assert not torch.equal(ex.x0_good_NCHW, ex.x0_bad_NCHW)
    evaluate = diffusion_evaluate(zoo_diffusion, ex)
    clean, _ = evaluate("clean")
    corrupt, _ = evaluate("corrupt")
    assert clean.shape == (16,) and float((clean > 0).double().mean()) >= 0.8
    assert float(corrupt.mean()) < float(clean.mean())
    twice, _ = evaluate("clean", copies=2)
    assert torch.allclose(twice.view(2, 16), clean.expand(2, 16), atol=1e-5)
