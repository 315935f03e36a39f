"""Attribution 1.3's fairer metrics on hand-built examples (issue 20, item 5): the standard
any-hit pointing game, the randomisation check on absolute maps (Spearman and SSIM), ROAD's
noisy linear imputation (its banded solver against a general sparse solve), the four curves
scored in one shared pass against each curve alone, and one real cell whose rows reproduce its
metrics."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from bench.imageops import box_blur
from tasks.attribution import (
    ROAD_NEIGHBOURS,
    AttributionTask,
    curve_auc,
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


def test_four_curves_from_one_pass_equal_each_curve_scored_alone():
    """score() scores each distinct image once (the clean image and the fully imputed one are
    shared between curves); the AUCs equal those of each curve scored on its own."""
    rng = np.random.default_rng(5)
    B, S, grid = 3, 4, (4, 4)
    pixels = torch.from_numpy(rng.random((B, 3, 16, 16))).float()
    maps = torch.from_numpy(rng.random((B, *grid))).float()
    hashes = ["0a1b", "ffee", "1234"]
    w = torch.from_numpy(rng.random((3, 16, 16))).float()

    def prob(px, idx):  # any deterministic function of the image
        return torch.sigmoid((px * w).flatten(1).mean(1) * 4 - 2 + 0.1 * idx)

    task = AttributionTask()
    task.config = type(task.config)(steps=S)
    task.target_probability = lambda model, ex, seed=0: prob

    class Ex:
        pass

    ex = Ex()
    ex.pixels_BCHW, ex.masks_BHW, ex.hashes = pixels, torch.zeros(B, 16, 16, dtype=torch.bool), hashes
    # not a model: score() reads only its batch size (5: chunks that split examples' images)
    out = task.score(SimpleNamespace(batch_size=5), ex, maps, grid, seed=7)
    order = patch_order(maps, grid)
    idx = torch.arange(B).repeat_interleave(S + 1)
    seeds = [[7, 17, int(h, 16)] for h in hashes]
    curves = {
        "deletion_auc": perturbation_batch(pixels, torch.zeros_like(pixels), order, grid, S),
        "insertion_auc": perturbation_batch(box_blur(pixels, task.config.blur_kernel), pixels, order, grid, S),
        "road_deletion_auc": road_batch(pixels, order, grid, S, seeds),
        "road_insertion_auc": road_batch(pixels, order.flip(1), grid, S, seeds),
    }
    for name, images in curves.items():
        want = curve_auc(prob(images.flatten(0, 1), idx).view(B, S + 1))
        assert torch.allclose(out[name], want, atol=1e-6), name


def test_road_batch_imputes_the_ordered_patches_with_seeded_noise():
    rng = np.random.default_rng(3)
    px = torch.from_numpy(rng.random((2, 3, 8, 8))).float()
    order = torch.tensor([[3, 0, 1, 2], [0, 1, 2, 3]])
    out = road_batch(px, order, (2, 2), steps=2, noise_seeds=[[0, 1], [0, 2]])  # removes 0, 2, 4 patches
    assert out.shape == (2, 3, 3, 8, 8)
    assert torch.equal(out[:, 0], px)  # step 0: nothing removed
    step1 = out[0, 1]
    removed = np.zeros((8, 8), dtype=bool)
    removed[4:, 4:] = removed[:4, :4] = True  # patches 3 and 0
    assert torch.equal(step1[:, ~torch.from_numpy(removed)], px[0][:, ~torch.from_numpy(removed)])
    noiseless = torch.from_numpy(linear_impute(px[0].double().numpy(), removed)).float()
    diff = (step1 - noiseless)[:, torch.from_numpy(removed)]
    assert 0 < float(diff.abs().max()) < 0.06 and float(diff.std()) == pytest.approx(0.01, rel=0.35)
    again = road_batch(px, order, (2, 2), steps=2, noise_seeds=[[0, 1], [0, 2]])
    assert torch.equal(out, again)  # the seeds fix the noise


def test_patch_pool_of_absolute_maps():
    px = t([[[1, -1], [2, -2]]])
    assert patch_pool(px.abs(), (1, 1)).item() == 6.0 and patch_pool(px, (1, 1)).item() == 0.0


def test_real_cell_rows_reproduce_metrics(saliency_store):
    from bench.store import Store
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
