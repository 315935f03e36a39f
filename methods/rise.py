"""RISE: randomized input sampling.

Petsiuk, Das & Saenko (2018), "RISE: Randomized Input Sampling for Explanation of
Black-box Models" (BMVC). ``N`` binary masks are drawn on a coarse ``s × s`` grid
(each cell kept with probability ``p``), upsampled bilinearly to ``(s + 1)·c`` pixels
(``c = ⌈H / s⌉``) and cropped to ``H × W`` at a random shift in ``[0, c)`` on each axis,
so masks are smooth and not aligned to the grid. Each example is scored on every
masked copy ``x ⊙ M_i`` (masked pixels go to black, as in the paper), and the map is
the score-weighted average of the masks (the paper's Monte-Carlo estimate of
``E[f(x ⊙ M) | M(λ) = 1]``)::

    S(λ) = 1 / (N · p) · Σ_i f(x ⊙ M_i) · M_i(λ)

``f`` is the probability of the target: the request's ``score`` is a log-probability
(log-softmax among the task's candidates), so ``f = exp(score)`` — the paper's class
probability. ``baseline="mean"`` subtracts the mean of ``f`` over the masks of each
example first (a control variate: same expectation up to a constant per example,
less Monte-Carlo noise, and a signed map whose positive part is where masking hurts).

Masks are drawn once per call from ``torch.Generator().manual_seed(seed)`` and shared
by all examples; ``N`` masked copies of each example are scored in batches of the
request's ``batch_size`` rows. ``n_masks=None`` picks a per-family default that keeps a
quick attribution cell near a minute on one CPU thread (a diffusion row costs several
denoiser passes). Maps are pixel-level ``[B, H, W]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.capabilities import AttributionRequest
from bench.errors import BenchError
from bench.method import Method, MethodConfig
from bench.model import Model

# masked copies per example when n_masks is None: a diffusion row costs 4 prompts × 2 draws of
# the denoiser, a contrastive/generative row one forward pass of a small model
DEFAULT_MASKS = {"contrastive": 200, "generative": 32, "diffusion": 16}
BASELINES = ("none", "mean")


@dataclass(frozen=True)
class RISEConfig(MethodConfig):
    n_masks: int | None = None  # N; None = per-family default (DEFAULT_MASKS)
    cells: int = 7  # s: the coarse mask grid is s × s (the paper uses 7 for ImageNet)
    p: float = 0.5  # probability that a cell is kept
    baseline: str = "none"  # "none" (the paper) | "mean" (subtract each example's mean score)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_masks is not None and self.n_masks < 1:
            raise BenchError(f"rise: n_masks must be >= 1 or None, not {self.n_masks}")
        if self.cells < 1:
            raise BenchError(f"rise: cells must be >= 1, not {self.cells}")
        if not 0.0 < self.p <= 1.0:
            raise BenchError(f"rise: p must lie in (0, 1], not {self.p}")
        if self.baseline not in BASELINES:
            raise BenchError(f"rise: baseline must be one of {BASELINES}, not {self.baseline!r}")


def rise_masks(n: int, cells: int, p: float, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """``[n, H, W]`` smooth masks in [0, 1]: binary ``cells × cells`` grids, bilinearly
    upsampled to ``(cells + 1)·c`` and cropped at a random shift (Petsiuk et al., 2018)."""
    H, W = size
    ch, cw = math.ceil(H / cells), math.ceil(W / cells)
    grid_N1ss = (torch.rand((n, 1, cells, cells), generator=generator, device="cpu") < p).float()
    up_N1hw = F.interpolate(grid_N1ss, size=((cells + 1) * ch, (cells + 1) * cw), mode="bilinear", align_corners=False)
    dx = torch.randint(0, ch, (n,), generator=generator, device="cpu")
    dy = torch.randint(0, cw, (n,), generator=generator, device="cpu")
    return torch.stack([up_N1hw[i, 0, dx[i]: dx[i] + H, dy[i]: dy[i] + W] for i in range(n)])


class RISE(Method):
    """RISE (Petsiuk et al., 2018): score-weighted average of random masks; maps ``[B, H, W]``."""

    name = "rise"
    capabilities = frozenset({"attribute"})
    Config = RISEConfig

    def n_masks_for(self, model: Model | None) -> int:
        if self.config.n_masks is not None:
            return self.config.n_masks
        return DEFAULT_MASKS.get(getattr(model, "family", ""), DEFAULT_MASKS["contrastive"])

    def attribute(self, model: Model, request: AttributionRequest) -> torch.Tensor:
        cfg = self.config
        B, _, H, W = request.pixels_BCHW.shape
        N = self.n_masks_for(model)
        masks_NHW = rise_masks(N, cfg.cells, cfg.p, (H, W), torch.Generator().manual_seed(cfg.seed))
        rows = max(1, int(request.batch_size))
        # all (example, mask) pairs in example-major order, scored `rows` at a time
        probs_BN = torch.empty(B, N, device="cpu")
        flat = probs_BN.view(-1)
        with torch.no_grad():
            for start in range(0, B * N, rows):
                pair = torch.arange(start, min(start + rows, B * N), device="cpu")
                ex_r, mk_r = pair // N, pair % N
                masked = request.pixels_BCHW[ex_r] * masks_NHW[mk_r][:, None]
                flat[pair] = request.score(masked, ex_r).float().exp()
        if cfg.baseline == "mean":
            probs_BN = probs_BN - probs_BN.mean(1, keepdim=True)
        return torch.einsum("bn,nhw->bhw", probs_BN, masks_NHW) / (N * cfg.p)
