"""Attribution's fairer metrics on hand-built examples (1.3, issue 20, item 5): the standard
any-hit pointing game, the randomisation check on absolute maps (Spearman and SSIM), ROAD's
noisy linear imputation (its banded solver against a general sparse solve), the four curves
scored in one shared pass against each curve alone, and one real cell whose rows reproduce its
metrics; and 1.4's full-resolution curves (issue 21, item 5): the stratified ladder's estimate
is unbiased for the exact trapezoid area and equals it with a point per step."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from bench.kit.imageops import box_blur
from tasks.attribution import (
    ROAD_NEIGHBOURS,
    AttributionConfig,
    AttributionTask,
    curve_auc,
    ladder_auc,
    linear_impute,
    linear_impute_batch,
    max_normalised_abs,
    patch_order,
    patch_pool,
    perturbation_batch,
    pointing_game,
    pointing_game_any,
    road_batch,
    spearman_per_example,
    ssim_per_example,
    stratified_ladder,
)


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_pointing_game_any_vs_expected_tie_credit():
    # three tied maxima, one inside the mask
    maps = t([[[3, 3], [3, 0]], [[0, 1], [0, 0]], [[2, 2], [2, 2]]])
    masks = torch.tensor([[[1, 0], [0, 0]], [[1, 0], [0, 1]], [[0, 0], [0, 1]]], dtype=torch.bool)
    assert pointing_game_any(maps, masks).tolist() == [1.0, 0.0, 1.0]  # Quantus' PointingGame
    assert pointing_game(maps, masks).tolist() == pytest.approx([1 / 3, 0.0, 1 / 4])  # ours: expected credit


def test_spearman_abs_against_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 16)), rng.standard_normal((3, 16))
    got = spearman_per_example(torch.from_numpy(np.abs(a)), torch.from_numpy(np.abs(b)))
    want = [spearmanr(np.abs(x), np.abs(y)).statistic for x, y in zip(a, b)]
    assert got.tolist() == pytest.approx(want)
    # hand-computed: ranks of |[-4, 1, 2, -3]| = [4, 1, 2, 3] vs [1, 2, 3, 4]: 1 - 6·(9+1+1+1)/(4·15) = -0.2
    assert float(spearman_per_example(t([[-4, 1, 2, -3]]).abs(), t([[1, 2, 3, 4]]))[0]) == pytest.approx(-0.2)


def test_anticorrelation_is_credited_by_signed_but_not_absolute_check():
    trained = t([[[4, 3], [-1, -2]]])
    anti = -trained  # the randomised model's map: the same map, sign flipped
    corr_anti = trained + t([[[0.1, 0.0], [0.0, 0.0]]])  # a randomised map correlated with the trained one
    signed = lambda a, b: float(spearman_per_example(a.flatten(1), b.flatten(1))[0])
    absolute = lambda a, b: float(spearman_per_example(a.abs().flatten(1), b.abs().flatten(1))[0])
    # signed ("lower is better"): anticorrelation looks like a perfect pass
    assert signed(trained, anti) == pytest.approx(-1.0)
    assert signed(trained, anti) < signed(trained, corr_anti)
    # on absolute maps both are the same map: no credit for flipping the sign
    assert absolute(trained, anti) == pytest.approx(1.0)
    assert not absolute(trained, anti) < absolute(trained, corr_anti)
    ssim = lambda a, b: float(ssim_per_example(max_normalised_abs(a), max_normalised_abs(b))[0])
    assert ssim(trained, anti) == pytest.approx(1.0)


def test_randomisation_checks_give_no_credit_for_anticorrelating_magnitudes():
    """Non-negative maps (attention rollout, Grad-CAM, RISE) make |maps| = maps, so the absolute
    maps alone do not stop a randomised map that *anticorrelates* from looking like a perfect
    pass; the main columns count each example's similarity in magnitude."""
    from tasks.attribution import randomisation_checks

    trained = torch.arange(64, dtype=torch.float64).view(1, 8, 8)  # non-negative
    anti = 63 - trained  # the randomised model's map: magnitudes reversed
    same = trained.clone()
    indep = torch.from_numpy(np.random.default_rng(0).permutation(64).reshape(1, 8, 8).astype(float))
    got = {name: randomisation_checks(trained, r, (8, 8), 8) for name, r in
           (("anti", anti), ("same", same), ("indep", indep))}
    rho = {k: float(v["randomization_spearman_abs"][0]) for k, v in got.items()}
    assert rho["anti"] == pytest.approx(1.0) and rho["same"] == pytest.approx(1.0)  # both: not sensitive
    assert rho["indep"] < 0.3  # a map that changed: near 0, the best score
    assert float(got["anti"]["randomization_corr"][0]) == pytest.approx(-1.0)  # the signed column would reward it
    ssim = {k: float(v["randomization_ssim"][0]) for k, v in got.items()}
    assert ssim["same"] == pytest.approx(1.0) and all(x >= 0 for x in ssim.values())


def _ssim_reference(a, b, k=7):
    """Wang et al. (2004) SSIM written out window by window: uniform k × k window, valid
    positions, sample (co)variances, K1 = 0.01, K2 = 0.03, L = 1 (scikit-image's defaults)."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for i in range(a.shape[0] - k + 1):
        for j in range(a.shape[1] - k + 1):
            x, y = a[i:i + k, j:j + k].ravel(), b[i:i + k, j:j + k].ravel()
            mx, my = x.mean(), y.mean()
            vx, vy = x.var(ddof=1), y.var(ddof=1)
            cxy = ((x - mx) * (y - my)).sum() / (x.size - 1)
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_against_window_by_window_reference():
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 10, 12)), rng.random((2, 10, 12))
    got = ssim_per_example(torch.from_numpy(a), torch.from_numpy(b))
    assert got.tolist() == pytest.approx([_ssim_reference(x, y) for x, y in zip(a, b)], abs=1e-12)
    # identical maps: 1 (a constant map included); a map against its complement: negative
    same = torch.from_numpy(np.stack([a[0], np.full((10, 12), 0.3)]))
    assert ssim_per_example(same, same).tolist() == pytest.approx([1.0, 1.0])
    assert float(ssim_per_example(torch.from_numpy(a[:1]), torch.from_numpy(1 - a[:1]))[0]) < 0


def test_max_normalised_abs():
    out = max_normalised_abs(t([[[-4, 2], [0, 1]], [[0, 0], [0, 0]]]))
    assert out.tolist() == [[[1.0, 0.5], [0.0, 0.25]], [[0.0, 0.0], [0.0, 0.0]]]


def _neighbour_average(img_CHW):
    """Each pixel's weighted average of its in-image neighbours, with ROAD's weights."""
    C, H, W = img_CHW.shape
    num, den = np.zeros((C, H, W)), np.zeros((H, W))
    for dr, dc, w in ROAD_NEIGHBOURS:
        for r in range(H):
            for c in range(W):
                if 0 <= r + dr < H and 0 <= c + dc < W:
                    num[:, r, c] += w * img_CHW[:, r + dr, c + dc]
                    den[r, c] += w
    return num / den


def test_linear_imputation_solves_the_neighbour_average_system():
    rng = np.random.default_rng(2)
    img = rng.random((3, 8, 8))
    removed = np.zeros((8, 8), dtype=bool)
    removed[2:5, 3:7] = True  # a removed block
    removed[7, 0] = True  # and a corner pixel
    out = linear_impute(img, removed)
    assert np.array_equal(out[:, ~removed], img[:, ~removed])  # kept pixels unchanged
    assert np.abs(out - _neighbour_average(out))[:, removed].max() < 1e-12  # the residual
    assert not np.allclose(out[:, removed], img[:, removed])
    # nothing kept: the per-channel mean; nothing removed: the image
    assert np.allclose(linear_impute(img, np.ones((8, 8), bool)), img.mean((1, 2))[:, None, None])
    assert np.array_equal(linear_impute(img, np.zeros((8, 8), bool)), img)


def _sparse_impute(img_CHW, removed_HW):
    """The imputation as a general sparse solve (scipy.sparse, SuperLU), ROAD's reference route."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    C, H, W = img_CHW.shape
    r, c = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    rows, cols, vals = [], [], []
    for dr, dc, w in ROAD_NEIGHBOURS:
        ok = (r + dr >= 0) & (r + dr < H) & (c + dc >= 0) & (c + dc < W)
        rows.append((r * W + c)[ok])
        cols.append(((r + dr) * W + c + dc)[ok])
        vals.append(np.full(int(ok.sum()), w))
    Wm = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(H * W, H * W))
    out = img_CHW.astype(np.float64).copy()
    flat, rem = out.reshape(C, -1), removed_HW.reshape(-1)
    R, K = np.flatnonzero(rem), np.flatnonzero(~rem)
    A = (sp.diags(np.asarray(Wm.sum(1)).ravel()[R]) - Wm[R][:, R]).tocsc()
    flat[:, R] = np.asarray(spsolve(A, Wm[R][:, K] @ flat[:, K].T)).reshape(len(R), C).T
    return out


def test_banded_imputation_matches_a_general_sparse_solve():
    rng = np.random.default_rng(4)
    imgs = rng.random((6, 3, 12, 16))
    removed = np.zeros((6, 12, 16), dtype=bool)
    for n in range(6):  # unions of random 4 × 4 patches, and one isolated pixel
        for p in rng.permutation(12)[: n + 3]:
            removed[n, 4 * (p // 4): 4 * (p // 4) + 4, 4 * (p % 4): 4 * (p % 4) + 4] = True
    removed[0, 0, 15] = True
    got = linear_impute_batch(imgs, removed)
    for n in range(6):
        assert np.abs(got[n] - _sparse_impute(imgs[n], removed[n])).max() < 1e-12
        assert np.array_equal(got[n], linear_impute(imgs[n], removed[n]))


def _synthetic_scoring(B: int = 3, grid: tuple[int, int] = (4, 4)):
    rng = np.random.default_rng(5)
    pixels = torch.from_numpy(rng.random((B, 3, 16, 16))).float()
    maps = torch.from_numpy(rng.random((B, *grid))).float()
    hashes = ["0a1b", "ffee", "1234", "beef", "0042"][:B]
    w = torch.from_numpy(rng.random((3, 16, 16))).float()

    def prob(px, idx):  # any deterministic function of the image
        return torch.sigmoid((px * w).flatten(1).mean(1) * 4 - 2 + 0.1 * idx)

    ex = SimpleNamespace(pixels_BCHW=pixels, masks_BHW=torch.zeros(B, 16, 16, dtype=torch.bool), hashes=hashes)
    return pixels, maps, hashes, prob, ex


def _task(prob, **config):
    task = AttributionTask(AttributionConfig(**config))
    task.target_probability = lambda model, ex, seed=0: prob
    return task


def test_four_curves_from_one_pass_equal_each_curve_scored_alone():
    """score() scores each distinct image once (the clean image and the fully imputed one are
    shared between curves); each AUC equals its curve scored on its own at the drawn counts, and
    with a point per ladder step it is the exact trapezoid over all P + 1 points."""
    B, grid = 3, (4, 4)
    P = grid[0] * grid[1]
    pixels, maps, hashes, prob, ex = _synthetic_scoring(B, grid)
    order = patch_order(maps, grid)
    every = torch.arange(P + 1)  # every point of the ladder
    seeds = [[7, 17, int(h, 16)] for h in hashes]
    out = _task(prob, curve_points=P - 1).score(SimpleNamespace(batch_size=5), ex, maps, grid, seed=7)

    def scored(images):
        return prob(images.flatten(0, 1), torch.arange(B).repeat_interleave(images.shape[1])).view(B, -1)

    p0 = prob(pixels, torch.arange(B))[:, None]
    # ROAD's noise is drawn per example for the points a curve scores: MoRF's 1…P (the last, everything
    # removed, shared with LeRF), LeRF's 1…P − 1 from its own seeds
    morf = scored(road_batch(pixels, order, grid, torch.arange(1, P + 1), seeds))
    lerf = scored(road_batch(pixels, order.flip(1), grid, torch.arange(1, P), [[*s, 1] for s in seeds]))
    exact = {
        "deletion_auc": scored(perturbation_batch(pixels, torch.zeros_like(pixels), order, grid, every)),
        "insertion_auc": scored(perturbation_batch(box_blur(pixels, 7), pixels, order, grid, every)),
        "road_deletion_auc": torch.cat([p0, morf], 1),
        "road_insertion_auc": torch.cat([p0, lerf, morf[:, -1:]], 1),
    }
    for name, curve in exact.items():
        assert curve.shape == (B, P + 1)
        assert torch.allclose(out[name], curve_auc(curve), atol=1e-6), name

    # the default: 3 drawn interior points per curve, each curve scored alone at those counts
    out = _task(prob, curve_points=3).score(SimpleNamespace(batch_size=5), ex, maps, grid, seed=7)
    lad = {c: stratified_ladder(P, 3, [[7, 29, i, int(h, 16)] for h in hashes])
           for i, c in enumerate(("black", "blur", "morf", "lerf"))}
    full, none = torch.full((B, 1), P), torch.zeros(B, 1, dtype=torch.long)
    p0 = p0[:, 0]
    morf = road_batch(pixels, order, grid, torch.cat([lad["morf"].counts_BJ, full], 1), seeds)
    lerf = road_batch(pixels, order.flip(1), grid, lad["lerf"].counts_BJ, [[*s, 1] for s in seeds])
    dele = perturbation_batch(pixels, torch.zeros_like(pixels), order, grid, torch.cat([lad["black"].counts_BJ, full], 1))
    ins = perturbation_batch(box_blur(pixels, 7), pixels, order, grid, torch.cat([none, lad["blur"].counts_BJ], 1))

    sd, si, sm, sl = scored(dele), scored(ins), scored(morf), scored(lerf)
    want = {"deletion_auc": ladder_auc(p0, sd[:, :-1], sd[:, -1], lad["black"]),
            "insertion_auc": ladder_auc(si[:, 0], si[:, 1:], p0, lad["blur"]),
            "road_deletion_auc": ladder_auc(p0, sm[:, :-1], sm[:, -1], lad["morf"]),
            "road_insertion_auc": ladder_auc(p0, sl, sm[:, -1], lad["lerf"])}
    for name, v in want.items():
        assert torch.allclose(out[name], v.float(), atol=1e-6), name


def test_stratified_ladder_is_unbiased_and_paired():
    """Each interior count of a stratum is drawn with probability 1/n_j and weighted n_j, so the
    estimate's expectation is the exact trapezoid area; with a point per step no draw is made."""
    P = 16
    curve = torch.from_numpy(np.random.default_rng(1).random(P + 1))  # any curve shape
    exact = float(curve_auc(curve[None])[0])
    lad = stratified_ladder(P, 4, [[s] for s in range(4000)])
    assert lad.weights_J.tolist() == [4.0, 4.0, 4.0, 3.0] and lad.counts_BJ.shape == (4000, 4)
    strata = [range(1, 5), range(5, 9), range(9, 13), range(13, 16)]
    assert all(int(k) in strata[j] for row in lad.counts_BJ for j, k in enumerate(row))
    est = ladder_auc(curve[0].expand(4000), curve[lad.counts_BJ], curve[P].expand(4000), lad)
    assert float(est.mean()) == pytest.approx(exact, abs=4 * float(est.std()) / 4000 ** 0.5)
    # the expectation, enumerated: the mean over each stratum's counts, weighted by its size
    inner = sum(float(curve[list(st)].mean()) * len(st) for st in strata)
    assert (float(curve[0] + curve[P]) / 2 + inner) / P == pytest.approx(exact, abs=1e-12)
    # every point its own stratum: the exact area, no draw
    full = stratified_ladder(P, P - 1, [[0], [1]])
    assert full.counts_BJ.tolist() == [list(range(1, P))] * 2
    assert float(ladder_auc(curve[:1], curve[None, 1:P], curve[P:], full)[0]) == pytest.approx(exact, abs=1e-12)
    # the same seed list draws the same counts (every method of a cell sees the same points)
    assert torch.equal(stratified_ladder(P, 4, [[3, 9]]).counts_BJ, stratified_ladder(P, 4, [[3, 9]]).counts_BJ)


def test_road_batch_imputes_the_ordered_patches_with_seeded_noise():
    rng = np.random.default_rng(3)
    px = torch.from_numpy(rng.random((2, 3, 8, 8))).float()
    order = torch.tensor([[3, 0, 1, 2], [0, 1, 2, 3]])
    out = road_batch(px, order, (2, 2), torch.tensor([0, 2, 4]), noise_seeds=[[0, 1], [0, 2]])  # removes 0, 2, 4 patches
    assert out.shape == (2, 3, 3, 8, 8)
    assert torch.equal(out[:, 0], px)  # step 0: nothing removed
    step1 = out[0, 1]
    removed = np.zeros((8, 8), dtype=bool)
    removed[4:, 4:] = removed[:4, :4] = True  # patches 3 and 0
    assert torch.equal(step1[:, ~torch.from_numpy(removed)], px[0][:, ~torch.from_numpy(removed)])
    noiseless = torch.from_numpy(linear_impute(px[0].double().numpy(), removed)).float()
    diff = (step1 - noiseless)[:, torch.from_numpy(removed)]
    assert 0 < float(diff.abs().max()) < 0.06 and float(diff.std()) == pytest.approx(0.01, rel=0.35)
    again = road_batch(px, order, (2, 2), torch.tensor([0, 2, 4]), noise_seeds=[[0, 1], [0, 2]])
    assert torch.equal(out, again)  # the seeds fix the noise


def test_patch_pool_of_absolute_maps():
    px = t([[[1, -1], [2, -2]]])
    assert patch_pool(px.abs(), (1, 1)).item() == 6.0 and patch_pool(px, (1, 1)).item() == 0.0


def test_real_cell_rows_reproduce_metrics(saliency_store):
    from bench.harness.store import Store
    from tasks.attribution import AttributionTask

    # the cell as `bench evaluate` ran and stored it (shared with test_inspect; the rows round-trip the
    # store bit for bit: rows_checks)
    with Store(saliency_store) as st:
        (rec,) = list(st.records(task="attribution", model="zoo-clip", method="saliency", seed=0, profile="quick",
                                 rows=True))
    assert rec.status == "ok", rec.error
    task = AttributionTask()
    assert task.metrics_of(rec.rows) == rec.metrics
    for name in ("pointing_game_any", "road_deletion_auc", "road_insertion_auc", "randomization_spearman_abs",
                 "randomization_ssim", "randomization_corr"):
        assert name in rec.metrics and np.isfinite(rec.metrics[name]), name
    # the main randomisation columns count each example's similarity in magnitude: no credit for anticorrelating
    for name in ("randomization_spearman_abs", "randomization_ssim"):
        vals = rec.rows[name][~np.isnan(rec.rows[name])]
        assert len(vals) and (vals >= 0).all(), name
    assert set(rec.metrics) == {m.name for m in task.spec.metrics}
