"""Attribution fidelity: do a method's maps point at the evidence the model uses?

Setting: a multi-object scene whose target object differs from every distractor in
colour *and* shape, so only the target's pixels support the target. Ground truth is
that object's mask.

- Contrastive models: the caption of the target ("a red circle").
- Generative models: the answer token of "what colour is the <shape>?" (the target's
  colour), as the log-softmax of its logit among the six colour words.

- Diffusion models: a generated image of "a <colour> <shape>" (kept when the model's
  judge, zoo-oracle, reads the prompted colour and shape); the target is the shape
  token, as the diffusion-classifier log-probability of the prompt among the prompts
  that differ from it only in the shape word (Li et al., 2023: minus the denoising error
  at shared timestep/noise draws, softmaxed over the candidates). Ground truth: the
  generated object's region, segmented by the judge (the grid cell it reads the object
  in) and the prompted colour (pixels within 60 of its RGB value in that cell).

For contrastive models, the explained target is the caption's image–text similarity, contrasted against
the captions of every colour × shape combination: the log-softmax of the scaled
cosine similarities, i.e. the log-probability of the caption in zero-shot
classification. (A raw CLIP similarity carries an image-dependent offset shared by
all captions; on zoo-clip, maps of the raw similarity explain that offset and put
large *negative* attribution on the target object — ``target="similarity"``
keeps that variant available.) Deletion and insertion curves follow the target's
probability among the same captions (the "class probability" of RISE, Petsiuk et
al., 2018). All metrics are computed per example and averaged: each cell returns one row per
scene (its resampling unit) with every per-example value, and
:meth:`AttributionTask.metrics_from_rows` averages them (v1.2: metrics from rows; deletion and
insertion AUC are no longer normalised, since the mask is no optimal perturbation order and a
method can beat the oracle there).

v1.4 (issue 21, item 5): the deletion/insertion curves are areas of the full one-patch-per-step
curve (65 points on the 8 × 8 grid), estimated without bias from 7 stratified points per curve at
v1.3's cost (the ladder is described below); v1.3's 9-point trapezoid overstated steep curves.

v1.3 (issue 20, item 5: an independent recomputation with Quantus 0.6.0 found three metrics that
graded unfairly):

- The randomisation check compared *signed* maps, scored "lower is better", so a map that
  anticorrelates with the randomised model's map earned credit (on zoo-clip integrated gradients
  and occlusion sat at −0.04 / −0.02, and at 0.45 / 0.46 on absolute maps). Adebayo et al. (2018)
  and Quantus' ``ModelParameterRandomisation`` compare absolute maps: the main randomisation
  columns are now ``randomization_spearman_abs`` and ``randomization_ssim``, each example's
  similarity taken in magnitude, so no map earns credit for anticorrelating; the signed
  ``randomization_corr`` stays as a secondary column.
- Deletion filled removed patches with black, which is integrated gradients' baseline, and
  occlusion's map *is* the black-patch drop on the same grid: deletion partly graded occlusion
  against its own objective. ROAD (Rong et al., 2022, "A consistent and efficient evaluation
  strategy for attribution methods", ICML) removes pixels by noisy linear imputation, which is no
  method's baseline: ``road_deletion_auc`` is the leaderboard's main deletion column (listed
  before the black-fill one) and ``road_insertion_auc`` its companion; the black-fill
  ``deletion_auc`` and the blur ``insertion_auc`` stay as secondary columns, comparable with
  RISE-style figures.
- The pointing game credited the share of tied maxima inside the mask; the standard one
  (Zhang et al., 2018; Quantus' ``PointingGame``) counts a hit if any maximum is inside. Ours is
  kept as the main score, named the "expected tie credit" pointing game, and the standard one is
  reported beside it as ``pointing_game_any``.

Metrics (maps are compared at pixel resolution; patch-level maps are upsampled):

- ``pointing_game`` ↑, main score, the "expected tie credit" pointing game (Zhang et al.,
  2016, "Top-down neural attention by excitation backprop"): 1 if the map's maximum lies inside
  the mask. Ties are broken uniformly at random *in expectation*: the score is the fraction of
  the maximal pixels that lie inside the mask. No tolerance margin (the objects are small).
- ``pointing_game_any`` ↑ (the standard pointing game, Zhang et al., 2018, IJCV; Quantus'
  ``PointingGame``): 1 if *any* maximal pixel lies inside the mask. Equal to the above when the
  maximum is unique; a constant map scores 1 whenever the mask is non-empty.
- ``mass_in_mask`` ↑ (the "energy-based pointing game" of Score-CAM, Wang et al.,
  2020): positive attribution inside the mask divided by all positive attribution.
- ``road_deletion_auc`` ↓ (main deletion column) and ``road_insertion_auc`` ↑, not normalised
  (ROAD, Rong et al., 2022): patches are removed in decreasing (MoRF) / increasing (LeRF, the
  reversed order) order of the map summed per patch, on the same ladder as below; a
  removed pixel is replaced by ROAD's linear imputation — the weighted average of its 8
  in-image neighbours (weights 1/6 direct, 1/12 diagonal, as ROAD's reference
  ``NoisyLinearImputer``), removed ones included, i.e. the exact solution of a linear system,
  solved anew at every step (the imputation depends on the removed set; one banded Cholesky
  solve per image for all channels, :func:`linear_impute_batch`) — plus Gaussian noise of standard deviation 0.01 (the pixel range is 1) on the removed pixels, seeded
  by (seed, example hash). With every patch removed nothing is known: the image becomes its
  per-channel mean. Area under the probability-vs-fraction curve as below: a MoRF curve that
  falls fast is good (lower), a LeRF curve that stays high is good (higher).
- ``deletion_auc`` ↓ and ``insertion_auc`` ↑, secondary (Petsiuk et al., 2018, RISE): patches
  are removed (set to black) / inserted (into a blurred copy of the image) in
  decreasing order of the map summed per patch, one patch per step; the area under the
  probability-vs-fraction curve (trapezoid rule on [0, 1], estimated as below). Black is
  integrated gradients' baseline and occlusion's own fill: read these with that in mind.

All four curves are scored at the full resolution of the patch grid, P + 1 points (P = 64 on the
8 × 8 grid: one patch per step), and their area is the trapezoid rule on those points,
``(f_0/2 + f_1 + … + f_{P−1} + f_P/2) / P``. v1.3 used 9 points (8 patches per step), and a coarse
trapezoid overstates a steep curve's area: v1.3's 17 points read IG's deletion AUC on zoo-clip
at about 1.5× the full-resolution value. Scoring all P + 1 images per curve costs P/8 times v1.3's
forward rows, which on zoo-diffusion (8 denoiser passes per image) is hours per grid; so by default
(v1.4, ``curve_points`` = 7) the interior sum ``f_1 + … + f_{P−1}`` is *estimated without bias* by
stratified sampling (Monte-Carlo integration over the ladder, e.g. Owen, 2013, "Monte Carlo theory,
methods and examples", ch. 8; the same idea as RISE's sampled masks, applied to the ladder): the
P − 1 interior counts are split into 7 consecutive strata of near-equal size n_j (9 each on the
8 × 8 grid), one count k_j is drawn uniformly in each stratum, and ``Σ_j n_j f_{k_j}`` replaces the
sum. Its expectation over the draws is exactly the full-resolution area, for any curve shape; the
end points (nothing and everything removed) are always scored. The draws are seeded by (seed,
example hash, curve), so every method is scored at the same counts of the same example (paired
comparisons stay paired) and the same command gives the same figure. The sampling adds per-example
variance, which the bootstrap intervals over examples include. The four curves cost
4·(``curve_points`` + 1) forward rows per example, v1.3's 32 at the default; ``curve_points`` ≥ P − 1
scores every point (the exact full-resolution curve, P/8 times the rows). Measured on zoo-clip's
quick profile (32 examples, seed 0), stratified minus exact, paired over examples, 95% bootstrap
interval: of 20 (method, curve) pairs over integrated gradients, saliency, occlusion, random and
oracle, 19 intervals contain 0 (the other, IG insertion, −0.013 [−0.023, −0.004] on an AUC of
0.30: one in 20 is what 95% intervals give), while v1.3's 9-point black-fill deletion read IG at
0.0187 against the exact 0.0090 (+0.0097 [0.0051, 0.0147]), occlusion at 0.0165 against 0.0047
and the oracle at 0.0340 against 0.0241 (random: −0.0002, its curve being nearly straight). The
draw adds per-example spread, 0.05–0.74 of the spread between examples (median ≈ 0.2), which the
intervals carry. Scoring cost: 1.9–2.2 s per zoo-clip cell for the four curves, 16–20 s exact.
Every distinct image of every example is scored once, in one batched pass: the unperturbed image
(the first point of the black and both ROAD curves, the last of the insertion curve) and the
fully imputed one (the last point of both ROAD curves) are each scored once.
- ``randomization_spearman_abs`` ↓ and ``randomization_ssim`` ↓, not normalised (Adebayo et
  al., 2018, "Sanity checks for saliency maps", full model randomisation; as Quantus'
  ``ModelParameterRandomisation``), on the ``sanity_examples`` first rows: the same method's
  map on a freshly initialised copy of the model is compared with its map on the trained model.
  Spearman: rank correlation of the patch-pooled *absolute* maps (constant maps: 1 if equal,
  else 0). SSIM (Wang et al., 2004): of the two absolute maps at pixel resolution (patch-level
  maps upsampled by nearest neighbour, as above), each divided by its own maximum (an all-zero
  map stays zero); K1 = 0.01, K2 = 0.03, L = 1, a uniform 7 × 7 window over the valid positions,
  sample covariances (scikit-image's ``structural_similarity`` defaults). Each example counts
  the *magnitude* of its similarity (``|ρ|``, ``|SSIM|``): a randomised map whose magnitudes
  anticorrelate with the trained map's is as determined by something other than the learned
  weights as one that correlates, so neither earns credit (the signed values would rank a map
  first for anticorrelating, which the absolute maps alone do not prevent: attention rollout's
  non-negative maps reach ρ = −0.20 on zoo-clip). A map that depends on the model changes when
  the model is randomised: lower is better, 0 is best. A map that ignores the model (random,
  oracle) scores 1 on both by construction.
- ``randomization_corr`` ↓, secondary: the signed Spearman correlation of the patch-pooled
  maps (v1.2's check). It rewards a map that *anticorrelates* with its randomised counterpart,
  which says nothing about sensitivity to the model: kept only for comparison with v1.2.

Real data (``--data masks=instances.json``, object masks as in COCO, Lin et al., 2014;
fields in :func:`bench.kit.realdata.load_masks`): each row is an example, in file order, up to
``n_examples`` (``quick_examples`` in the quick profile); the ground truth is the row's mask.
Images are resized bilinearly to the model's input size and masks by nearest neighbour; a
row whose mask vanishes at that size is skipped. Contrastive models: the target is the
log-probability of the caption ``data_prompt`` ("a photo of a {object}") among the captions
of every distinct object of the file (at least two), as for the world's captions.
Generative models: the question ``data_question`` ("what colour is the {object}?", the
world's question with the object's name); the file gives no colour, so the target is the
model's own answer on the unperturbed image, its most likely word among ``data_answers``
(the world's colour words), explained as the log-softmax of that word's logit among them.
Diffusion models are not supported with data (the task explains their own samples).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.capabilities import AttributionRequest
from bench.errors import BenchError
from bench.kit.imageops import box_blur
from bench.method import Method
from bench.model import ContrastiveModel, DiffusionModel, GenerativeModel, Model, judge_identity
from bench.kit.realdata import stack_images
from bench.samples import Rows, make_rows, wmean
from bench.kit.shared import ProcessMemo
from bench.task import CellResult, MetricSpec, Task, TaskSpec, example_hash, input_size
from bench.kit.world import COLOURS, POSITIONS, SHAPES, World, WorldConfig


@dataclass(frozen=True)
class AttributionConfig:
    n_examples: int = 64
    quick_examples: int = 32
    # every diffusion row is scored through the denoiser (4 prompts × draws per evaluation): the
    # quick profile keeps fewer of them
    quick_diffusion_examples: int = 16
    # interior points scored per deletion/insertion curve (black, blur, ROAD MoRF and LeRF), one drawn
    # in each of as many strata of the full one-patch-per-step ladder (an unbiased estimate of its
    # area); >= P - 1 (63 on an 8 x 8 grid) scores every point. v1.3: a fixed 8-step ladder.
    curve_points: int = 7
    blur_kernel: int = 7
    sanity_examples: int = 16
    world_seed: int = 0
    # "logprob": log-softmax of the caption's similarity against every colour × shape caption;
    # "similarity": the raw scaled cosine similarity.
    target: str = "logprob"
    diffusion_draws: int = 2  # (timestep, noise) draws of the diffusion-classifier score
    diffusion_grid: tuple[int, int] = (8, 8)  # patch grid of the deletion/insertion curves
    colour_tolerance: float = 60.0  # RGB distance that segments the generated object
    # real data (masks): the contrastive caption, the generative question and its candidate answers
    data_prompt: str = "a photo of a {object}"
    data_question: str = "what colour is the {object}?"
    data_answers: tuple[str, ...] = tuple(COLOURS)


@dataclass
class AttributionExamples:
    pixels_BCHW: torch.Tensor
    masks_BHW: torch.Tensor  # bool, ground truth
    captions: list[str]
    target_idx_B: torch.Tensor  # index of the caption among the candidates
    candidates: list[str]
    hashes: list[str]


# ------------------------------------------------------------------ metrics
def upsample_to(maps_BHW: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-neighbour upsampling of patch-level maps to ``size × size`` pixels."""
    if maps_BHW.shape[-1] == size and maps_BHW.shape[-2] == size:
        return maps_BHW
    if size % maps_BHW.shape[-1] or size % maps_BHW.shape[-2]:
        raise BenchError(f"an attribution map of shape {tuple(maps_BHW.shape[1:])} does not tile a {size}px image")
    return F.interpolate(maps_BHW[:, None].float(), size=(size, size), mode="nearest")[:, 0]


def patch_pool(maps_BHW: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Sum a pixel-level map within each patch of ``grid`` (identity for patch-level maps)."""
    if tuple(maps_BHW.shape[-2:]) == tuple(grid):
        return maps_BHW.float()
    return F.adaptive_avg_pool2d(maps_BHW[:, None].float(), grid)[:, 0] * (
        maps_BHW.shape[-1] * maps_BHW.shape[-2] / (grid[0] * grid[1]))


def pointing_game(maps_BHW: torch.Tensor, masks_BHW: torch.Tensor) -> torch.Tensor:
    """Fraction of each map's maximal pixels that fall inside the mask, per example."""
    flat = maps_BHW.flatten(1).float()
    top = flat == flat.max(dim=1, keepdim=True).values
    inside = masks_BHW.flatten(1)
    return (top & inside).sum(1).float() / top.sum(1).float()


def pointing_game_any(maps_BHW: torch.Tensor, masks_BHW: torch.Tensor) -> torch.Tensor:
    """The standard pointing game (Zhang et al., 2018; Quantus' ``PointingGame``): 1 if *any* of
    the map's maximal pixels lies inside the mask, else 0, per example."""
    flat = maps_BHW.flatten(1).float()
    top = flat == flat.max(dim=1, keepdim=True).values
    return (top & masks_BHW.flatten(1)).any(1).float()


def mass_in_mask(maps_BHW: torch.Tensor, masks_BHW: torch.Tensor) -> torch.Tensor:
    """Share of positive attribution inside the mask, per example (0 if nothing is positive)."""
    pos = maps_BHW.flatten(1).float().clamp(min=0)
    total = pos.sum(1)
    inside = (pos * masks_BHW.flatten(1)).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=1e-12), torch.zeros_like(total))


def curve_auc(curve_BK: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under curves sampled at evenly spaced fractions of [0, 1]."""
    k = curve_BK.shape[1] - 1
    return (curve_BK[:, 1:] + curve_BK[:, :-1]).sum(1) / (2 * k)


@dataclass(frozen=True)
class CurveLadder:
    """Where a curve of ``P`` one-patch steps is scored: the interior counts ``counts_BJ`` (one per
    stratum and example) and each stratum's size ``weights_J``; see :func:`ladder_auc`."""

    P: int
    counts_BJ: torch.Tensor  # long, patches removed/inserted at each scored interior point
    weights_J: torch.Tensor  # float64, n_j: how many ladder points the j-th scored point stands for


def stratified_ladder(P: int, points: int, seeds: list[Any]) -> CurveLadder:
    """The interior counts 1 … P − 1 split into ``min(points, P − 1)`` consecutive strata of
    near-equal size; one count drawn uniformly in each stratum per example, from
    ``np.random.default_rng(seeds[b])``. With ``points >= P − 1`` every count is its own stratum:
    the exact ladder, no draw."""
    J = max(0, min(points, P - 1))
    strata = np.array_split(np.arange(1, P), J) if J else []
    counts = np.empty((len(seeds), J), dtype=np.int64)
    for b, sd in enumerate(seeds):
        rng = np.random.default_rng(sd)
        for j, st in enumerate(strata):
            counts[b, j] = st[0] if len(st) == 1 else st[int(rng.integers(len(st)))]
    return CurveLadder(P, torch.from_numpy(counts), torch.tensor([float(len(st)) for st in strata],
                                                                  dtype=torch.float64))


def ladder_auc(first_B: torch.Tensor, inner_BJ: torch.Tensor, last_B: torch.Tensor,
               ladder: CurveLadder) -> torch.Tensor:
    """``(f_0/2 + Σ_j n_j f_{k_j} + f_P/2) / P``: the trapezoid area of the P + 1-point curve whose
    interior sum is estimated by one point per stratum (unbiased: each count of a stratum of size
    n_j is drawn with probability 1/n_j and weighted n_j); exact when every stratum is one count."""
    inner = inner_BJ.double() @ ladder.weights_J if ladder.weights_J.numel() else torch.zeros_like(first_B).double()
    return ((first_B.double() + last_B.double()) / 2 + inner) / ladder.P


def patch_order(maps_BHW: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch indices by decreasing pooled attribution; ties keep raster order (stable sort)."""
    pooled = patch_pool(maps_BHW, grid).flatten(1)
    return torch.sort(-pooled, dim=1, stable=True).indices


def perturbation_batch(
    pixels_BCHW: torch.Tensor, fill_BCHW: torch.Tensor, order_BP: torch.Tensor, grid: tuple[int, int],
    counts: torch.Tensor,
) -> torch.Tensor:
    """Images ``[B, K, C, H, W]`` in which the first ``counts[k]`` (or, per example,
    ``counts[b, k]``) patches of ``order`` come from ``fill`` instead of ``pixels``."""
    B, C, H, W = pixels_BCHW.shape
    gh, gw = grid
    P = gh * gw
    counts_BK = counts.long().expand(B, -1) if counts.ndim == 1 else counts.long()
    K = counts_BK.shape[1]
    rank_BP = torch.empty_like(order_BP)
    rank_BP.scatter_(1, order_BP, torch.arange(P).expand(B, P))
    use_fill_BKP = rank_BP[:, None, :] < counts_BK[:, :, None]
    m = use_fill_BKP.view(B, K, gh, gw).float()
    m = m.repeat_interleave(H // gh, dim=2).repeat_interleave(W // gw, dim=3)[:, :, None]
    return pixels_BCHW[:, None] * (1 - m) + fill_BCHW[:, None] * m


# ROAD's neighbour weights (Rong et al., 2022, reference NoisyLinearImputer): 1/6 for the four
# direct neighbours, 1/12 for the four diagonal ones
ROAD_NEIGHBOURS = ((-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
                   (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12))


def _one_blas_thread() -> Any:
    """A context in which BLAS/LAPACK run on one thread (the cells already fix torch's threads; a
    small banded solve on several threads mostly waits for them)."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _neighbour_sums(x_NCHW: np.ndarray) -> np.ndarray:
    """``Σ_j w_j x_j`` over each pixel's in-image neighbours, with ROAD's weights (a 3 × 3
    convolution with zero padding, in float64)."""
    N, C, H, W = x_NCHW.shape
    k = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    for dr, dc, w in ROAD_NEIGHBOURS:
        k[0, 0, 1 + dr, 1 + dc] = w
    x = torch.from_numpy(np.ascontiguousarray(x_NCHW, dtype=np.float64)).reshape(N * C, 1, H, W)
    return F.conv2d(x, k, padding=1).reshape(N, C, H, W).numpy()


def linear_impute_batch(images_NCHW: np.ndarray, removed_NHW: np.ndarray) -> np.ndarray:
    """ROAD's linear imputation of each image: every removed pixel equals the weighted average
    (ROAD's weights) of its in-image neighbours, removed or not; the kept pixels are unchanged.
    That is the linear system ``(D − W)[R, R] x_R = W[R, K] v_K`` (``W`` the neighbour weights,
    ``D`` their row sums, ``R``/``K`` the removed/kept pixels), solved exactly for all channels at
    once. It is symmetric positive definite and, in raster order, banded (half-bandwidth W + 1),
    so each image is one banded Cholesky solve (LAPACK ``pbsv``, single-threaded: about 0.5 ms
    for a 32 px image) instead of a general sparse LU. With every pixel removed the system is
    singular: the image becomes its per-channel mean."""
    N, C, H, W = images_NCHW.shape
    out = images_NCHW.astype(np.float64)  # a copy
    flat = out.reshape(N, C, H * W)
    kept = (~removed_NHW)[:, None].astype(np.float64)
    rhs = _neighbour_sums(out * kept).reshape(N, C, H * W)  # W[:, K] v_K for every pixel
    deg = _neighbour_sums(np.ones((1, 1, H, W))).reshape(-1)
    r, c = np.divmod(np.arange(H * W), W)
    # the neighbours later in raster order (the upper triangle): raster offset, weight, in-image
    later = ((1, 1 / 6, c < W - 1), (W - 1, 1 / 12, (r < H - 1) & (c > 0)), (W, 1 / 6, r < H - 1),
             (W + 1, 1 / 12, (r < H - 1) & (c < W - 1)))
    from scipy.linalg.lapack import dpbsv

    kd = W + 1
    pos = np.empty(H * W, dtype=np.int64)
    with _one_blas_thread():
        for n in range(N):
            rem = removed_NHW[n].reshape(-1)
            if not rem.any():
                continue
            if rem.all():
                flat[n] = flat[n].mean(1, keepdims=True)
                continue
            R = np.flatnonzero(rem)
            pos[R] = np.arange(len(R))
            ab = np.zeros((kd + 1, len(R)))  # upper banded storage: ab[kd + i - j, j] = A[i, j]
            ab[kd] = deg[R]
            for d, w, inside in later:
                i = R[inside[R]]
                i = i[rem[i + d]]
                ab[kd + pos[i] - pos[i + d], pos[i + d]] = -w
            _, x, info = dpbsv(ab, rhs[n][:, R].T, lower=0, overwrite_ab=1)
            if info:
                raise BenchError(f"ROAD imputation: banded Cholesky failed (info {info})")
            flat[n][:, R] = x.T
    return out


def linear_impute(image_CHW: np.ndarray, removed_HW: np.ndarray) -> np.ndarray:
    """:func:`linear_impute_batch` of one image."""
    return linear_impute_batch(image_CHW[None], np.asarray(removed_HW, dtype=bool)[None])[0]


def road_batch(pixels_BCHW: torch.Tensor, order_BP: torch.Tensor, grid: tuple[int, int], counts: torch.Tensor,
               noise_seeds: list[Any], noise: float = 0.01) -> torch.Tensor:
    """Images ``[B, K, C, H, W]`` in which the first ``counts[k]`` (or ``counts[b, k]``) patches of
    ``order`` are removed by ROAD's noisy linear imputation (:func:`linear_impute_batch` plus
    Gaussian noise of standard deviation ``noise`` × the pixel range, 1, on the imputed pixels only,
    drawn from ``noise_seeds[b]`` per example). The imputation depends on the removed set, so every
    point is solved on its own."""
    B, C, H, W = pixels_BCHW.shape
    # which pixels each point removes: perturbation_batch's mask, with 1 as the fill
    removed_BKHW = perturbation_batch(torch.zeros(B, 1, H, W), torch.ones(B, 1, H, W), order_BP, grid,
                                      counts)[:, :, 0].numpy() > 0.5
    K = removed_BKHW.shape[1]
    px = np.repeat(pixels_BCHW.double().numpy()[:, None], K, axis=1)
    out = linear_impute_batch(px.reshape(B * K, C, H, W), removed_BKHW.reshape(B * K, H, W)).reshape(px.shape)
    for b in range(B):
        eps = np.random.default_rng(noise_seeds[b]).standard_normal((K, C, H, W))
        out[b] += noise * eps * removed_BKHW[b][:, None]
    return torch.from_numpy(out).to(pixels_BCHW.dtype)


def _box_filter(x_BHW: np.ndarray, k: int) -> np.ndarray:
    """Mean over every ``k × k`` window that fits inside the image (valid positions)."""
    c = np.cumsum(np.cumsum(np.pad(x_BHW, ((0, 0), (1, 0), (1, 0))), 1), 2)
    return (c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]) / (k * k)


def ssim_per_example(a_BHW: torch.Tensor, b_BHW: torch.Tensor, win: int = 7) -> torch.Tensor:
    """Mean SSIM (Wang et al., 2004) of each pair of maps in [0, 1]: K1 = 0.01, K2 = 0.03, data
    range L = 1, a uniform ``win × win`` window (7, or the largest odd size that fits) over
    the valid positions, sample covariances — scikit-image's ``structural_similarity`` defaults."""
    a, b = a_BHW.double().numpy(), b_BHW.double().numpy()
    k = min(win, a.shape[-1], a.shape[-2])
    k -= 1 - k % 2
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ma, mb = _box_filter(a, k), _box_filter(b, k)
    cov = k * k / (k * k - 1) if k > 1 else 1.0
    va = cov * (_box_filter(a * a, k) - ma * ma)
    vb = cov * (_box_filter(b * b, k) - mb * mb)
    vab = cov * (_box_filter(a * b, k) - ma * mb)
    s = ((2 * ma * mb + c1) * (2 * vab + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return torch.from_numpy(s.mean(axis=(1, 2)))


def max_normalised_abs(maps_BHW: torch.Tensor) -> torch.Tensor:
    """``|map|`` divided by its own maximum (an all-zero map stays zero)."""
    a = maps_BHW.abs().double()
    top = a.flatten(1).max(1).values[:, None, None]
    return torch.where(top > 0, a / top.clamp(min=1e-300), torch.zeros_like(a))


def randomisation_checks(maps_BHW: torch.Tensor, rmaps_BHW: torch.Tensor, grid: tuple[int, int],
                         size: int) -> dict[str, torch.Tensor]:
    """Per example, the trained model's maps against the randomised model's (see the module
    docstring): ``randomization_spearman_abs`` = |ρ| of the patch-pooled absolute maps,
    ``randomization_ssim`` = |SSIM| of the max-normalised absolute maps at pixel resolution,
    ``randomization_corr`` = the signed ρ of the patch-pooled maps (secondary)."""
    # magnitudes: a randomised map anticorrelated with the trained one is no evidence of sensitivity
    return {
        "randomization_spearman_abs": spearman_per_example(patch_pool(maps_BHW.abs(), grid).flatten(1),
                                                           patch_pool(rmaps_BHW.abs(), grid).flatten(1)).abs(),
        "randomization_ssim": ssim_per_example(max_normalised_abs(upsample_to(maps_BHW, size)),
                                               max_normalised_abs(upsample_to(rmaps_BHW, size))).abs(),
        "randomization_corr": spearman_per_example(patch_pool(maps_BHW, grid).flatten(1),
                                                   patch_pool(rmaps_BHW, grid).flatten(1)),
    }


def spearman_per_example(a_BP: torch.Tensor, b_BP: torch.Tensor) -> torch.Tensor:
    from scipy.stats import spearmanr  # here: importing scipy.stats costs the leaderboard ~1.5 s

    out = []
    for x, y in zip(a_BP.numpy(), b_BP.numpy()):
        if np.all(x == x[0]) or np.all(y == y[0]):
            out.append(1.0 if np.array_equal(x, y) else 0.0)  # constant maps: rank correlation undefined
        else:
            out.append(float(spearmanr(x, y).statistic))
    return torch.tensor(out)


# --------------------------------------------------------------------- task
_DIFFUSION_EXAMPLES = ProcessMemo(size=2)


class AttributionTask(Task):
    spec = TaskSpec(
        name="attribution",
        version="1.4",
        families=frozenset({"contrastive", "generative", "diffusion"}),
        capability="attribute",
        main_score="pointing_game",
        metrics=(
            MetricSpec("pointing_game", "higher",
                       "maximum of the map inside the object's mask (expected tie credit)"),
            MetricSpec("pointing_game_any", "higher",
                       "any maximal pixel inside the object's mask (standard pointing game)"),
            MetricSpec("mass_in_mask", "higher", "share of positive attribution inside the mask"),
            # the mask is no optimal deletion/insertion order (a method can beat the oracle): not normalised.
            # ROAD's imputation is nobody's baseline: the main deletion/insertion columns
            MetricSpec("road_deletion_auc", "lower",
                       "AUC of target probability as top patches are imputed (ROAD, MoRF; main deletion column)",
                       normalise=False),
            MetricSpec("road_insertion_auc", "higher",
                       "AUC of target probability as bottom patches are imputed (ROAD, LeRF)", normalise=False),
            MetricSpec("deletion_auc", "lower", "AUC of target probability as top patches are blacked out",
                       normalise=False),
            MetricSpec("insertion_auc", "higher", "AUC of target probability as top patches are inserted into a blur",
                       normalise=False),
            MetricSpec("randomization_spearman_abs", "lower",
                       "|rank correlation| of |maps| on trained vs re-initialised model", normalise=False),
            MetricSpec("randomization_ssim", "lower",
                       "|SSIM| of max-normalised |maps| on trained vs re-initialised model", normalise=False),
            MetricSpec("randomization_corr", "lower",
                       "signed rank correlation of maps on trained vs re-initialised model (rewards anticorrelation)",
                       normalise=False),
        ),
    )

    data_kinds = ("masks",)
    reads_judge = True  # diffusion samples: the model's judge, or the one --judge names
    # what the task scores against, on the zoo and on a real checkpoint (`bench list tasks`)
    ground_truth = {
        "zoo": "the world's exact object masks",
        "real": "COCO-style object masks (--data masks=PATH); deletion/insertion curves need none",
    }

    def __init__(self, config: AttributionConfig | None = None) -> None:
        self.config = config or AttributionConfig()

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if not reason and self.data:
            if isinstance(model, DiffusionModel):
                return (f"task 'attribution' reads no data files for diffusion models like {model.name!r} "
                        "(it explains their own samples)")
            objects = {r.object for r in self.data["masks"].records}
            if isinstance(model, ContrastiveModel) and len(objects) < 2:
                return (f"task 'attribution' contrasts each caption with the other objects' captions; "
                        f"{self.data['masks'].source.path} names only {len(objects)} object")
        if not reason and isinstance(model, DiffusionModel) and model.judge is None:
            return f"task 'attribution' needs a judge (an image classifier) to read {model.name!r}'s samples"
        return reason

    # ------------------------------------------------------------ examples
    def examples(self, model: Model, seed: int, n: int, split: str = "test") -> AttributionExamples:
        """``n`` scenes whose target object differs from every distractor in colour and shape.

        Scene indices start at ``seed * 1_000_000`` so seeds draw disjoint scenes. For
        generative models the target's caption is replaced by the question about its colour.
        """
        if self.data:
            return self.data_examples(model, n)
        if isinstance(model, DiffusionModel):
            # sampling and judging are the same for every method of a (model, seed): once per process
            return _DIFFUSION_EXAMPLES.get((model.name, model.weights_hash, judge_identity(model), seed, n, split,
                                            self.config),
                                           lambda: self.diffusion_examples(model, seed, n))
        generative = isinstance(model, GenerativeModel)
        size = input_size(model)
        world = World(self.config.world_seed, WorldConfig(image_size=size, min_objects=2, max_objects=3))
        rng = np.random.default_rng([seed, 11])
        cands = list(COLOURS) if generative else [f"a {c} {s}" for c in COLOURS for s in SHAPES]
        pix, masks, caps, tgt, hashes = [], [], [], [], []
        i = seed * 1_000_000
        while len(caps) < n:
            scene = world.scene(split, i)
            i += 1
            ok = [k for k, o in enumerate(scene.objects)
                  if all(p.colour != o.colour and p.shape != o.shape for j, p in enumerate(scene.objects) if j != k)]
            if not ok:
                continue
            k = ok[int(rng.integers(len(ok)))]
            o = scene.objects[k]
            cap = f"what colour is the {o.shape}?" if generative else f"a {o.colour} {o.shape}"
            pix.append(scene.image_HWC)
            masks.append(scene.masks_NHW[k])
            caps.append(cap)
            tgt.append(cands.index(o.colour if generative else cap))
            hashes.append(hashlib.sha256(scene.image_HWC.tobytes() + cap.encode()).hexdigest()[:16])
        pixels = torch.from_numpy(np.stack(pix)).permute(0, 3, 1, 2).float() / 255.0
        return AttributionExamples(pixels, torch.from_numpy(np.stack(masks)), caps, torch.tensor(tgt), cands, hashes)

    def data_examples(self, model: Model, n: int) -> AttributionExamples:
        """The first ``n`` rows of the masks file whose mask survives resizing to the model's input
        size, with the target of the module docstring's "Real data" paragraph."""
        cfg, loaded = self.config, self.data["masks"]
        size = input_size(model)
        rows, masks = [], []
        for r in loaded.records:
            if len(rows) >= n:
                break
            m = r.mask.tensor(size)
            if m.any():  # a mask too thin for the model's resolution has no pixel to point at
                rows.append(r)
                masks.append(m)
        if not rows:
            raise BenchError(f"{loaded.source.path}: no mask keeps a pixel at the model's {size}px input size")
        pixels = stack_images([r.image for r in rows], size)
        hashes = [example_hash(loaded.file_digest(r.image.path), r.object,
                               loaded.file_digest(r.mask.path) if r.mask.path is not None
                               else repr(r.mask.polygons or r.mask.bbox)) for r in rows]
        if isinstance(model, GenerativeModel):
            caps = [cfg.data_question.format(object=r.object) for r in rows]
            cands = list(cfg.data_answers)
            ex = AttributionExamples(pixels, torch.stack(masks), caps, torch.zeros(len(rows), dtype=torch.long),
                                     cands, hashes)
            # the model's own answer is the target: the answer position does not depend on the answer
            logits = self._answer_logits(model, ex)
            with torch.no_grad():
                ex.target_idx_B = torch.cat([logits(pixels[i : i + model.batch_size],
                                                    torch.arange(i, min(i + model.batch_size, len(rows))))
                                             .argmax(-1) for i in range(0, len(rows), model.batch_size)])
            return ex
        objects = sorted({r.object for r in loaded.records})
        cands = [cfg.data_prompt.format(object=o) for o in objects]
        return AttributionExamples(pixels, torch.stack(masks), [cands[objects.index(r.object)] for r in rows],
                                   torch.tensor([objects.index(r.object) for r in rows]), cands, hashes)

    def diffusion_examples(self, model: DiffusionModel, seed: int, n: int) -> AttributionExamples:
        """Samples of "a <colour> <shape>" in which the judge reads both; the mask is the judge's
        grid cell intersected with the pixels near the prompted colour (see the module docstring)."""
        if model.judge is None:
            raise BenchError(f"task 'attribution' needs a judge to read {model.name!r}'s samples")
        rng = np.random.default_rng([seed, 13])
        size = model.image_size
        cell = size / 3
        pix, masks, caps, tgt, hashes = [], [], [], [], []
        for attempt in range(8):
            specs = [(list(COLOURS)[int(rng.integers(len(COLOURS)))], SHAPES[int(rng.integers(len(SHAPES)))])
                     for _ in range(n)]
            images = model.generate([f"a {c} {sh}" for c, sh in specs], seed=seed * 1_000 + attempt)
            read = model.judge(images)
            for b, (c, sh) in enumerate(specs):
                if read["shape"][b] != sh or read["colour"][b] != c or len(caps) >= n:
                    continue
                r, k = divmod(POSITIONS.index(read["position"][b]), 3)
                in_cell = torch.zeros(size, size, dtype=torch.bool)
                in_cell[int(r * cell): int((r + 1) * cell), int(k * cell): int((k + 1) * cell)] = True
                rgb = torch.tensor(COLOURS[c], dtype=torch.float32)[:, None, None]
                near = (images[b] * 255 - rgb).norm(dim=0) < self.config.colour_tolerance
                if not (near & in_cell).any():
                    continue
                pix.append(images[b])
                masks.append(near & in_cell)
                caps.append(f"a {c} {sh}")
                tgt.append(SHAPES.index(sh))
                hashes.append(hashlib.sha256(images[b].numpy().tobytes() + caps[-1].encode()).hexdigest()[:16])
            if len(caps) >= n:
                break
        if len(caps) < n:
            raise BenchError(f"only {len(caps)} of {n} samples of {model.name!r} show the prompted object "
                             f"(judged by its oracle); attribution needs them")
        return AttributionExamples(torch.stack(pix), torch.stack(masks), caps, torch.tensor(tgt), list(SHAPES), hashes)

    def _diffusion_logits(self, model: DiffusionModel, ex: AttributionExamples, seed: int) -> Any:
        """``fn(pixels_NCHW, idx_N) -> [N, 4]``: minus the summed denoising error of the image under
        each prompt that differs from the example's only in the shape word (a diffusion
        classifier's log-likelihood up to a constant), averaged over fixed (timestep, noise) draws."""
        R = self.config.diffusion_draws
        g = torch.Generator().manual_seed(seed * 7919 + 5)
        B = ex.pixels_BCHW.shape[0]
        noise_RBCHW = torch.randn((R, B, *model.sample_shape), generator=g)
        T = model.num_train_timesteps
        t_RB = torch.randint(int(0.2 * T), int(0.6 * T), (R, B), generator=g)
        colours = [c.split(" ")[1] for c in ex.captions]
        V = len(SHAPES)

        def fn(pixels_NCHW: torch.Tensor, idx_N: torch.Tensor) -> torch.Tensor:
            idx = idx_N.long()
            N = len(idx)
            x0 = model.to_sample(pixels_NCHW).repeat_interleave(V, 0).repeat(R, 1, 1, 1)
            noise = torch.cat([noise_RBCHW[r][idx].repeat_interleave(V, 0) for r in range(R)])
            t = torch.cat([t_RB[r][idx].repeat_interleave(V) for r in range(R)])
            prompts = [f"a {colours[int(i)]} {sh}" for i in idx for sh in SHAPES] * R
            err = model.denoising_error_B(x0, noise, t, prompts).view(R, N, V).mean(0)
            return -err * float(np.prod(model.sample_shape))

        return fn

    @staticmethod
    def _answer_logits(model: GenerativeModel, ex: AttributionExamples) -> Any:
        """``fn(pixels_NCHW, idx_N) -> [N, n_candidates]`` logits of the candidate answer words."""
        inp = model.answer_inputs(ex.captions, [ex.candidates[int(t)] for t in ex.target_idx_B])
        cand_ids = model.word_token_ids(ex.candidates)

        def fn(pixels_NCHW: torch.Tensor, idx_N: torch.Tensor) -> torch.Tensor:
            idx = idx_N.long()
            logits = model.forward_tokens(pixels_NCHW, inp.ids_BL[idx], inp.mask_BL[idx])
            return logits[torch.arange(len(idx)), inp.pos_B[idx]][:, cand_ids]

        return fn

    def candidate_logits(self, model: Model, ex: AttributionExamples, seed: int = 0) -> Any:
        """``fn(pixels_NCHW, idx_N) -> [N, n_candidates]``: the logits the target is read from —
        scaled caption similarities (contrastive), answer-word logits (generative), or the
        diffusion classifier over the shape prompts (diffusion)."""
        if isinstance(model, DiffusionModel):
            return self._diffusion_logits(model, ex, seed)
        if isinstance(model, GenerativeModel):
            return self._answer_logits(model, ex)
        assert isinstance(model, ContrastiveModel)
        with torch.no_grad():
            text_TD = model.encode_text(ex.candidates)
        return lambda pixels_NCHW, idx_N: model.similarity_to(model.encode_image(pixels_NCHW), text_TD)

    def request(self, model: Model, ex: AttributionExamples, seed: int = 0) -> AttributionRequest:
        logits = self.candidate_logits(model, ex, seed)
        raw = isinstance(model, ContrastiveModel) and self.config.target == "similarity"

        def score(pixels_NCHW: torch.Tensor, idx_N: torch.Tensor) -> torch.Tensor:
            tgt = ex.target_idx_B[idx_N.long()][:, None]
            out = logits(pixels_NCHW, idx_N)
            return (out if raw else out.log_softmax(-1)).gather(1, tgt)[:, 0]

        # the word naming the target object: the shape, last word of "a red circle" / "what colour is the circle?"
        words = [c.rstrip("?").split(" ")[-1] for c in ex.captions]
        if isinstance(model, DiffusionModel):
            # each row costs 4 prompts × draws denoiser passes (and their backward): small chunks
            per_row = len(SHAPES) * self.config.diffusion_draws
            return AttributionRequest(ex.pixels_BCHW, score, self.config.diffusion_grid,
                                      batch_size=max(1, model.batch_size // per_row), prompts=list(ex.captions),
                                      target_words=words)
        return AttributionRequest(ex.pixels_BCHW, score, model.token_layout().grid, batch_size=model.batch_size,
                                  prompts=list(ex.captions), target_words=words)

    def target_probability(self, model: Model, ex: AttributionExamples, seed: int = 0) -> Any:
        """The target's probability among the candidates (what deletion/insertion curves follow)."""
        logits = self.candidate_logits(model, ex, seed)

        def prob(pixels_NCHW: torch.Tensor, idx_N: torch.Tensor) -> torch.Tensor:
            return logits(pixels_NCHW, idx_N).softmax(-1).gather(1, ex.target_idx_B[idx_N.long()][:, None])[:, 0]

        return prob

    # --------------------------------------------------------------- maps
    def reference_maps(self, bound: str | None, ex: AttributionExamples, grid: tuple[int, int],
                       seed: int) -> torch.Tensor:
        """A reference's maps: the object's mask (``"ceiling"``), else uniform noise (``"chance"``)."""
        if bound == "ceiling":
            return ex.masks_BHW.float()
        g = torch.Generator().manual_seed(seed * 7919 + 1)
        return torch.rand((ex.pixels_BCHW.shape[0], *grid), generator=g)

    def maps_for(self, method: Method, model: Model, req: AttributionRequest, ex: AttributionExamples,
                 seed: int) -> torch.Tensor:
        if method.reference:
            return self.reference_maps(method.bound, ex, req.grid, seed)
        maps = method.attribute(model, req)
        if not isinstance(maps, torch.Tensor) or maps.ndim != 3 or maps.shape[0] != req.n:
            shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise BenchError(f"method {method.name!r} returned maps of shape {shape}; expected [{req.n}, H, W]")
        maps = maps.detach().float()
        if not torch.isfinite(maps).all():
            raise BenchError(f"method {method.name!r} returned non-finite attribution values")
        return maps

    # ---------------------------------------------------------------- run
    def score(self, model: Model, ex: AttributionExamples, maps: torch.Tensor,
              grid: tuple[int, int], seed: int = 0) -> dict[str, torch.Tensor]:
        size = ex.pixels_BCHW.shape[-1]
        px = upsample_to(maps, size)
        out = {"pointing_game": pointing_game(px, ex.masks_BHW), "pointing_game_any": pointing_game_any(px, ex.masks_BHW),
               "mass_in_mask": mass_in_mask(px, ex.masks_BHW)}
        order = patch_order(maps, grid)
        prob = self.target_probability(model, ex, seed)
        B = ex.pixels_BCHW.shape[0]
        P = grid[0] * grid[1]
        pixels = ex.pixels_BCHW
        blurred = box_blur(pixels, self.config.blur_kernel)
        # each curve's interior points, drawn per (seed, example, curve): every method is scored at the
        # same counts of the same example
        lad = {c: stratified_ladder(P, self.config.curve_points, [[seed, 29, i, int(h, 16)] for h in ex.hashes])
               for i, c in enumerate(("black", "blur", "morf", "lerf"))}
        full_B1 = torch.full((B, 1), P)
        dele = perturbation_batch(pixels, torch.zeros_like(pixels), order, grid,
                                  torch.cat([lad["black"].counts_BJ, full_B1], 1))
        ins = perturbation_batch(blurred, pixels, order, grid, torch.cat([torch.zeros_like(full_B1),
                                                                          lad["blur"].counts_BJ], 1))
        # ROAD: MoRF removes the most relevant patches first, LeRF the least relevant (the reversed order)
        seeds = [[seed, 17, int(h, 16)] for h in ex.hashes]  # the same example draws the same noise
        morf = road_batch(pixels, order, grid, torch.cat([lad["morf"].counts_BJ, full_B1], 1), seeds)
        lerf = road_batch(pixels, order.flip(1), grid, lad["lerf"].counts_BJ, [[*s, 1] for s in seeds])
        # Every image is scored once, in one batched pass: the unperturbed image starts the black
        # and both ROAD curves and ends the insertion one (each of them is exactly the image), and
        # with every patch removed MoRF and LeRF show the same image (the mean plus noise): scored once.
        parts = [pixels[:, None], dele, ins, morf, lerf]
        sizes = [p.shape[1] for p in parts]
        images = torch.cat(parts, 1).flatten(0, 1)  # [B · rows, C, H, W], example-major
        idx = torch.arange(B).repeat_interleave(sum(sizes))
        # Chunks of the model's batch size (64 for the zoo; a diffusion row is 4 prompts × draws denoiser
        # passes, so 8 rows): measured on this project's 2-core CPU, one thread, a row costs at 256 rows
        # (the v1.3 chunk) 1.4× (zoo-clip), 1.6× (zoo-vlm) and 1.2× (zoo-diffusion, 256 passes) what it costs
        # at 64; rows came out bit-identical at every chunk tried (8–256) on the three zoo families.
        per_row = len(SHAPES) * self.config.diffusion_draws if isinstance(model, DiffusionModel) else 1
        req = AttributionRequest(pixels, prob, grid, batch_size=max(1, model.batch_size // per_row))
        with torch.inference_mode():
            scored = req.score_all(images, idx)
        p0, p_del, p_ins, p_morf, p_lerf = scored.view(B, -1).split(sizes, 1)
        p0 = p0[:, 0]
        out["deletion_auc"] = ladder_auc(p0, p_del[:, :-1], p_del[:, -1], lad["black"]).float()
        out["insertion_auc"] = ladder_auc(p_ins[:, 0], p_ins[:, 1:], p0, lad["blur"]).float()
        out["road_deletion_auc"] = ladder_auc(p0, p_morf[:, :-1], p_morf[:, -1], lad["morf"]).float()
        out["road_insertion_auc"] = ladder_auc(p0, p_lerf, p_morf[:, -1], lad["lerf"]).float()
        return out

    def run(self, model: Model, method: Method, seed: int, quick: bool = False) -> CellResult:
        n = self.config.n_examples if not quick else (
            self.config.quick_diffusion_examples if isinstance(model, DiffusionModel) else self.config.quick_examples)
        ex = self.examples(model, seed, n)
        req = self.request(model, ex, seed)
        torch.manual_seed(seed)
        maps = self.maps_for(method, model, req, ex, seed)
        per_ex = self.score(model, ex, maps, req.grid, seed)

        # Sanity check on a subset: the same method on a re-initialised model.
        k = min(self.config.sanity_examples, n)
        sub = AttributionExamples(ex.pixels_BCHW[:k], ex.masks_BHW[:k], ex.captions[:k], ex.target_idx_B[:k],
                                  ex.candidates, ex.hashes[:k])
        rand_model = model.randomized(seed + 12345)
        rand_model.batch_size = model.batch_size
        torch.manual_seed(seed)
        rmaps = self.maps_for(method, rand_model, self.request(rand_model, sub, seed), sub, seed)
        sanity = randomisation_checks(maps[:k], rmaps, req.grid, ex.pixels_BCHW.shape[-1])
        cols = {}
        for name, v in sanity.items():
            cols[name] = torch.full((len(ex.hashes),), float("nan"), dtype=torch.float64)
            cols[name][:k] = v.double()
        rows = make_rows(example=[f"{i:04d}:{h}" for i, h in enumerate(ex.hashes)], hash=ex.hashes,
                         **{name: v for name, v in per_ex.items()}, **cols)
        return self.result(rows, {"maps": maps, "captions": ex.captions})

    def metrics_from_rows(self, rows: Rows, w_BN: np.ndarray) -> dict[str, np.ndarray]:
        """Each metric is the weighted mean of its per-example column (the three randomisation
        columns over the ``sanity_examples`` rows that carry them)."""
        return {m.name: wmean(rows[m.name], w_BN) for m in self.spec.metrics}
