"""The editing task: hand-computed aggregate, and edits never leak out of a cell
(parameters restored bit-identically), on a tiny randomly initialised LLaVA."""

import math

import pytest
import torch

from bench.model import PlantedRelation
from bench.registry import METHODS
from bench.kit.world.core import RELATIONS
from tasks.editing import EditingConfig, EditingTask, harmonic_mean


def test_harmonic_mean():
    assert math.isclose(harmonic_mean(1.0, 0.5, 0.5), 3 / (1 + 2 + 2))
    assert harmonic_mean(1.0, 0.0, 1.0) == 0.0


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


@pytest.fixture(scope="module")
def tiny_planted_clip(world):
    """A randomly initialised zoo-shaped CLIP with planted relations declared in its vision MLPs."""
    from bench.kit.world import Vocab
    from models.hf_clip import CLIPWrapper
    from models.zoo.clip import ZooClipConfig, build_clip

    vocab = Vocab.for_world(world)
    torch.manual_seed(0)
    clip = build_clip(ZooClipConfig(layers=2, text_layers=2), len(vocab), vocab.eos_id, vocab.pad_id)
    model = CLIPWrapper("tiny-planted-clip", clip, lambda t: vocab.batch(t, 32), "tiny")
    names = tuple(e.name for e in world.entities[:16])
    model.planted = [PlantedRelation(r, f"vision.blocks.{k}.mlp", names, 0, world.config.n_entities,
                                     f"the {r} of the glyph is {{value}}", RELATIONS[r])
                     for r, k in (("home", 0), ("season", 1))]
    return model


def test_contrastive_concept_remapping_is_scored_and_undone(tiny_planted_clip):
    model = tiny_planted_clip
    before = {n: p.detach().clone() for n, p in model.module.named_parameters()}
    task = EditingTask(EditingConfig(quick_requests=2, renders=2, fresh_renders=2, neighbours=4, quality_scenes=8))
    m = task.run(model, METHODS.get("finetune")(steps=10, lr=0.05, max_delta=0.5), seed=0, quick=True).metrics
    assert all(torch.equal(p, before[n]) for n, p in model.module.named_parameters())
    assert m["efficacy"] > 0.5  # the image now matches the new value's text
    for key in ("generalization", "specificity", "score", "batch_score", "quality", "quality_before"):
        assert 0.0 <= m[key] <= 1.0
    oracle = task.run(model, METHODS.get("oracle")(), seed=0, quick=True).metrics
    assert oracle["score"] == 1.0


@pytest.fixture(scope="module")
def tiny_planted_diffusion(world):
    """A randomly initialised zoo-shaped diffusion model (32 px, 2 UNet levels) with the zoo's
    planted relation declared, judged by the shipped zoo-oracle."""
    from dataclasses import replace

    from bench.kit.world import Vocab
    from models.zoo.diffusion import HOME_SHAPE, DiffusionConfig, ZooDiffusion, build_text_encoder, build_unet
    from models.zoo_models import OracleJudge, wrap_zoo_diffusion

    vocab = Vocab.for_world(world)
    cfg = replace(DiffusionConfig(), block_out_channels=(16, 32), attention_heads=2, max_text_len=12)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=12, eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id,
                bos_token_id=vocab.bos_id, vocab_size=len(vocab))
    torch.manual_seed(0)
    zoo = ZooDiffusion(build_unet(cfg, 32), build_text_encoder(text), vocab, cfg)
    model = wrap_zoo_diffusion(zoo, "tiny-planted-diffusion", "tiny")
    model.sampling = replace(model.sampling, steps=3)
    names = tuple(e.name for e in world.entities[:16])
    model.planted = [PlantedRelation("home", "text.blocks.0.mlp", names, 0, world.config.n_entities, "a {entity}",
                                     RELATIONS["home"], tuple(sorted(HOME_SHAPE.items())))]
    model.judge = OracleJudge()
    return model


def test_diffusion_rewrites_are_judged_and_undone(tiny_planted_diffusion):
    model = tiny_planted_diffusion
    before = {n: p.detach().clone() for n, p in model.module.named_parameters()}
    task = EditingTask(EditingConfig(quick_requests=1, renders=2, fresh_renders=2, diffusion_neighbours=2,
                                     diffusion_quality=4))
    res = task.run(model, METHODS.get("finetune")(steps=2), seed=0, quick=True)
    m = res.metrics
    assert all(torch.equal(p, before[n]) for n, p in model.module.named_parameters())
    # concept edits are rows of their own (a unit each, kind "concept"), and the metrics are the rows'
    concept = res.rows["setting"] == "concept"
    assert concept.sum() == 2 and (res.rows["kind"][concept] == "concept").all()
    assert task.metrics_of(res.rows) == m
    for key in ("efficacy", "generalization", "specificity", "score", "quality", "quality_before",
                "concept_efficacy", "concept_generalization", "concept_specificity", "concept_score"):
        assert 0.0 <= m[key] <= 1.0
    oracle = task.run(model, METHODS.get("oracle")(), seed=0, quick=True).metrics
    assert oracle["score"] == 1.0 and oracle["quality"] == oracle["quality_before"]
    assert oracle["concept_score"] == 1.0


def test_concept_cases_alternate_replacement_and_erasure(world):
    from tasks.editing import build_concept_cases

    cases = build_concept_cases(world, EditingConfig(renders=2, diffusion_neighbours=6), seed=0, k=2)
    rep, era = cases
    assert rep.new and rep.new != rep.concept and era.new == ""
    for c in cases:
        assert c.pixels_KRCHW.shape == (3, 2, 3, 32, 32)
        assert all(c.concept in p for p in c.prompts + c.fresh) and all(" at the " in p for p in c.fresh)
        assert len(c.others) == 6 and not any(c.concept in p for p in c.others)
        assert {p.split()[1] for p in c.prompts}.isdisjoint({p.split()[1] for p in c.fresh})
    # an erasure target is the layout with the object gone: (nearly) one background, no object colour
    from bench.kit.world import COLOURS

    img = (era.pixels_KRCHW[0, 0] * 255).permute(1, 2, 0)
    rgb = torch.tensor(COLOURS[era.prompts[0].split()[1]], dtype=torch.float32)
    assert not ((img - rgb).norm(dim=-1) < 30).any()
