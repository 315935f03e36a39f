"""Attribution task: metric reference values on hand-computed examples, and task validity."""

import numpy as np
import pytest
import torch

from bench.method import OracleReference, RandomReference
from tasks.attribution import (
    AttributionTask,
    curve_auc,
    mass_in_mask,
    patch_order,
    patch_pool,
    perturbation_batch,
    pointing_game,
    spearman_per_example,
    upsample_to,
)


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_pointing_game_hand_computed():
    maps = t([[[1, 3], [3, 0]], [[5, 0], [0, 0]], [[2, 2], [2, 2]]])
    masks = torch.tensor([[[0, 1], [0, 0]], [[0, 1], [1, 1]], [[1, 0], [0, 0]]], dtype=torch.bool)
    # two tied maxima, one inside -> 1/2; maximum outside -> 0; constant map -> mask share 1/4
    assert pointing_game(maps, masks).tolist() == [0.5, 0.0, 0.25]


def test_mass_in_mask_hand_computed():
    maps = t([[[1, -2], [3, 0]], [[-1, -1], [-1, -1]]])
    masks = torch.tensor([[[1, 1], [0, 0]], [[1, 0], [0, 0]]], dtype=torch.bool)
    # positive mass 1 + 3, of which 1 is inside; a map with no positive mass scores 0
    assert mass_in_mask(maps, masks).tolist() == [0.25, 0.0]


def test_curve_auc_trapezoid():
    assert curve_auc(t([[1, 0.5, 0], [1, 1, 1], [0, 1, 0]])).tolist() == [0.5, 1.0, 0.5]


def test_patch_pool_upsample_and_order():
    px = torch.arange(16, dtype=torch.float32).view(1, 4, 4)
    pooled = patch_pool(px, (2, 2))
    assert pooled.tolist() == [[[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]]]
    assert upsample_to(t([[[1, 2], [3, 4]]]), 4)[0, 3].tolist() == [3, 3, 4, 4]
    # ties keep raster order
    assert patch_order(t([[[1, 5], [5, 0]]]), (2, 2)).tolist() == [[1, 2, 0, 3]]


def test_perturbation_batch_replaces_patches_in_order():
    img = torch.ones(1, 1, 4, 4)
    fill = torch.zeros(1, 1, 4, 4)
    order = torch.tensor([[3, 0, 1, 2]])  # bottom-right patch first, then top-left
    out = perturbation_batch(img, fill, order, (2, 2), torch.tensor([0, 2, 4]))
    assert out.shape == (1, 3, 1, 4, 4)
    assert out[0, 0].sum() == 16 and out[0, 2].sum() == 0
    step1 = out[0, 1, 0]
    assert step1[:2, :2].sum() == 0 and step1[2:, 2:].sum() == 0 and step1[:2, 2:].sum() == 4


def test_spearman():
    a = t([[1, 2, 3, 4], [1, 2, 3, 4], [1, 1, 1, 1]])
    b = t([[2, 4, 6, 8], [4, 3, 2, 1], [1, 1, 1, 1]])
    assert spearman_per_example(a, b).tolist() == pytest.approx([1.0, -1.0, 1.0])


def test_examples_have_distractors_differing_in_every_named_attribute(tiny_clip):
    task = AttributionTask()
    ex = task.examples(tiny_clip, seed=0, n=24)
    assert ex.pixels_BCHW.shape == (24, 3, 32, 32) and ex.masks_BHW.shape == (24, 32, 32)
    for i, cap in enumerate(ex.captions):
        colour, shape = cap.split()[1:]
        assert ex.candidates[int(ex.target_idx_B[i])] == cap
        # the mask's pixels carry the caption's colour
        from bench.kit.world import COLOURS

        px = (ex.pixels_BCHW[i].permute(1, 2, 0)[ex.masks_BHW[i]] * 255).round()
        assert (px == torch.tensor(COLOURS[colour], dtype=torch.float32)).all()
    # seeds draw different scenes; the same seed the same ones
    assert ex.hashes == task.examples(tiny_clip, seed=0, n=24).hashes
    assert not set(ex.hashes) & set(task.examples(tiny_clip, seed=1, n=24).hashes)


def test_method_output_is_validated(tiny_clip):
    from bench.errors import BenchError
    from bench.method import Method

    class Broken(Method):
        name = "broken"
        capabilities = frozenset({"attribute"})

        def attribute(self, model, request):
            return torch.zeros(request.n, 5, 5)

    with pytest.raises(BenchError, match="does not tile"):
        AttributionTask().run(tiny_clip, Broken(), 0, quick=True)


# ----------------------------------------------------------------- validity
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def references(zoo_clip):
    """The random and oracle references' quick-profile metrics on zoo-clip at seeds 0 and 1, run once
    for the tests below (a cell is deterministic: test_same_cell_twice_gives_identical_figures)."""
    task = AttributionTask()
    return {(name, seed): task.run(zoo_clip, ref(), seed, quick=True).metrics
            for name, ref in (("random", RandomReference), ("oracle", OracleReference)) for seed in SEEDS}


def test_random_is_chance_and_oracle_is_ceiling(zoo_clip, references):
    """random ≈ chance (the mask's share of the image), oracle at the ceiling."""
    task = AttributionTask()
    rand = [references["random", seed] for seed in SEEDS]
    orac = [references["oracle", seed] for seed in SEEDS]
    area = [float(task.examples(zoo_clip, seed, task.config.quick_examples).masks_BHW.float().mean()) for seed in SEEDS]
    chance = float(np.mean(area))
    assert all(m["pointing_game_any"] == 1.0 for m in orac)
    for metric in ("pointing_game", "mass_in_mask"):
        r = float(np.mean([m[metric] for m in rand]))
        assert abs(r - chance) < 0.05, (metric, r, chance)
        assert all(m[metric] == 1.0 for m in orac), metric
    # deleting the object first destroys the evidence fastest; inserting it first restores it fastest
    assert np.mean([m["deletion_auc"] for m in orac]) < np.mean([m["deletion_auc"] for m in rand]) - 0.1
    # (insertion is bounded by the clean image's probability, ~0.3 in 3-object scenes: a smaller scale;
    # per seed it does not always separate, see the xfail below)
    assert np.mean([m["insertion_auc"] for m in orac]) > np.mean([m["insertion_auc"] for m in rand]) + 0.03
    # neither reference looks at the model: both fail the randomisation sanity check by construction
    for metric in ("randomization_corr", "randomization_spearman_abs", "randomization_ssim"):
        assert all(m[metric] == pytest.approx(1.0) for m in rand + orac), metric


@pytest.mark.xfail(strict=True, reason="insertion AUC has little range on the retrained zoo-clip: oracle - random "
                   "is 0.064 / 0.021 / 0.003 at seeds 0 / 1 / 2 (quick profile, v1.4; v1.3's 8-step ladder read 0.072 / "
                   "0.022 / 0.002), so per seed it "
                   "does not separate")
def test_insertion_separates_oracle_from_random_at_every_seed(references):
    for seed in SEEDS:
        o = references["oracle", seed]["insertion_auc"]
        r = references["random", seed]["insertion_auc"]
        assert o > r + 0.03, (seed, o, r)


def test_same_cell_twice_gives_identical_figures(zoo_clip):
    from methods.integrated_gradients import IntegratedGradients

    task = AttributionTask()
    a = task.run(zoo_clip, IntegratedGradients(n_steps=8), 3, quick=True)
    b = task.run(zoo_clip, IntegratedGradients(n_steps=8), 3, quick=True)
    assert a.metrics == b.metrics and a.example_hashes == b.example_hashes


@pytest.mark.slow  # IG's default (32-step) cells at two seeds (~15 s of CPU); IG runs on zoo-clip in the default
# run in test_same_cell_twice_gives_identical_figures, and its maps are checked on a tiny CLIP and on linear
# scores with known answers (test_methods_attribution)
def test_integrated_gradients_beats_random_with_separated_cis(zoo_clip, references):
    """The issue's bar: IG beats random on pointing game and deletion AUC, CIs not overlapping."""
    from bench.records import CellKey, RunRecord
    from leaderboard.scorer import score
    from methods.integrated_gradients import IntegratedGradients

    task = AttributionTask()
    records = []
    for seed in SEEDS:
        for name, m in (("random", references["random", seed]),
                        ("integrated_gradients", task.run(zoo_clip, IntegratedGradients(), seed, quick=True).metrics)):
            records.append(RunRecord(CellKey("attribution", "1.0", name, "c", "zoo-clip", seed, "quick"), "ok", m))
    rows = {(r.method, r.metric): r for r in score(records)}
    ig, rd = rows["integrated_gradients", "pointing_game"], rows["random", "pointing_game"]
    assert ig.ci_low > rd.ci_high, (ig, rd)
    for metric in ("road_deletion_auc", "deletion_auc"):  # ROAD's (the main deletion column) and black's
        ig, rd = rows["integrated_gradients", metric], rows["random", metric]
        assert ig.ci_high < rd.ci_low, (metric, ig, rd)


@pytest.mark.parametrize("which", ["tiny-llava", "zoo-vlm"])
def test_generative_target_is_the_colour_answer(make_tiny_llava, which):
    """On a tiny random LLaVA and on the shipped zoo-vlm (attribution × the generative family on the
    smallest input: 4 examples)."""
    from bench.registry import METHODS
    from bench.harness.runner import load_model
    from tasks.attribution import AttributionConfig, AttributionTask

    model = make_tiny_llava() if which == "tiny-llava" else load_model("zoo-vlm")
    task = AttributionTask(AttributionConfig(quick_examples=4, sanity_examples=2, curve_points=3))
    ex = task.examples(model, 0, 4)
    assert all(c.startswith("what colour is the ") for c in ex.captions) and len(ex.candidates) == 6
    req = task.request(model, ex)
    lp = req.score_all(ex.pixels_BCHW, torch.arange(4))
    assert lp.shape == (4,) and (lp < 0).all()  # a log-probability among the six colours
    assert task.run(model, METHODS.get("oracle")(), seed=0, quick=True).metrics["pointing_game"] == 1.0
    m = task.run(model, METHODS.get("saliency")(), seed=0, quick=True).metrics
    assert 0.0 <= m["pointing_game"] <= 1.0 and 0.0 <= m["deletion_auc"] <= 1.0


def test_diffusion_examples_masks_and_target_on_zoo_diffusion():
    """Samples the oracle reads as prompted; masks inside the oracle's cell and of the prompted
    colour; the diffusion-classifier target prefers the prompted shape."""
    from models.zoo_models import load_zoo_diffusion_model
    from tasks.attribution import AttributionConfig, AttributionTask

    torch.set_num_threads(1)
    model = load_zoo_diffusion_model()
    task = AttributionTask(AttributionConfig())
    ex = task.examples(model, seed=0, n=6)
    assert ex.candidates == ["circle", "square", "triangle", "cross"]
    assert ex.pixels_BCHW.shape == (6, 3, 32, 32) and ex.masks_BHW.any((1, 2)).all()
    read = model.judge(ex.pixels_BCHW)
    assert [f"a {c} {s}" for c, s in zip(read["colour"], read["shape"])] == ex.captions
    again = task.examples(model, seed=0, n=6)
    assert again.hashes == ex.hashes and torch.equal(again.masks_BHW, ex.masks_BHW)
    req = task.request(model, ex, seed=0)
    assert req.grid == (8, 8)
    with torch.no_grad():
        logp = req.score_all(ex.pixels_BCHW, torch.arange(6))
    assert float(logp.exp().mean()) > 0.5  # the prompted shape is the likeliest of the four
