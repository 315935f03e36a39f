"""Integrated gradients.

Sundararajan, Taly & Yan (2017), "Axiomatic Attribution for Deep Networks"
(ICML). The attribution of a pixel is (input − baseline) times the gradient of
the target score averaged along the straight path from the baseline to the
input; attributions sum to score(input) − score(baseline) (completeness). The
path integral uses Captum's ``IntegratedGradients`` (Gauss–Legendre quadrature
with ``n_steps`` points); the map is summed over colour channels.

Baselines: ``"black"`` (all-zero pixels, the paper's choice for images) or
``"blur"`` (a box-blurred copy of the image, ``blur_kernel`` pixels wide, as in
the blurred baselines discussed by Sturmfels et al., 2020, "Visualizing the
Impact of Feature Attribution Baselines").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from captum.attr import IntegratedGradients as _CaptumIntegratedGradients

from bench.capabilities import AttributionRequest
from bench.errors import BenchError
from bench.kit.imageops import box_blur
from bench.method import Method, MethodConfig
from bench.model import Model

BASELINES = ("black", "blur")


@dataclass(frozen=True)
class IntegratedGradientsConfig(MethodConfig):
    n_steps: int = 32
    baseline: str = "black"  # "black" | "blur"
    blur_kernel: int = 7  # box-blur width for baseline="blur" (odd)
    # Rows per forward pass along the path; None = the request's batch size.
    # Never fewer than the number of examples in a chunk (Captum's minimum).
    internal_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise BenchError(f"integrated_gradients: baseline must be one of {BASELINES}, not {self.baseline!r}")
        if self.n_steps < 1:
            raise BenchError(f"integrated_gradients: n_steps must be >= 1, not {self.n_steps}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise BenchError(f"integrated_gradients: blur_kernel must be a positive odd number, not {self.blur_kernel}")
        if self.internal_batch_size is not None and self.internal_batch_size < 1:
            raise BenchError("integrated_gradients: internal_batch_size must be >= 1 or None")


class IntegratedGradients(Method):
    """Integrated gradients (Sundararajan et al., 2017) via Captum; maps ``[B, H, W]``."""

    name = "integrated_gradients"
    capabilities = frozenset({"attribute"})
    Config = IntegratedGradientsConfig

    def baseline_for(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        if self.config.baseline == "blur":
            return box_blur(pixels_BCHW, self.config.blur_kernel)
        return torch.zeros_like(pixels_BCHW)

    def attribute(self, model: Model, request: AttributionRequest) -> torch.Tensor:
        explainer = _CaptumIntegratedGradients(request.score)
        bs = max(1, int(request.batch_size))
        out = []
        for x, idx in request.chunks(requires_grad=False):
            internal = max(self.config.internal_batch_size or bs, x.shape[0])
            attr = explainer.attribute(
                x,
                baselines=self.baseline_for(x),
                additional_forward_args=(idx,),
                n_steps=self.config.n_steps,
                internal_batch_size=internal,
            )
            out.append(attr.detach().sum(1))
        return torch.cat(out).float()
