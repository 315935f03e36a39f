"""Occlusion.

Zeiler & Fergus (2014), "Visualizing and Understanding Convolutional Networks"
(ECCV). Each patch of the request's grid is in turn set to black (all channels)
and the drop of the target score is that patch's attribution. Computed with
Captum's ``Occlusion`` using a window and stride of one patch
(``image_size // grid``) spanning all channels, so windows tile the image without
overlap. Captum spreads the drop uniformly over the window's pixels and
channels; the map reports it once per patch, ``[B, gh, gw]``, so each entry is
exactly ``score(image) − score(image with that patch black)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from captum.attr import Occlusion as _CaptumOcclusion

from bench.capabilities import AttributionRequest
from bench.errors import BenchError
from bench.method import Method, MethodConfig
from bench.model import Model


@dataclass(frozen=True)
class OcclusionConfig(MethodConfig):
    # Occluded copies per example in one forward pass; None = as many as fit in
    # the request's batch size alongside the chunk's examples (at least 1).
    perturbations_per_eval: int | None = None

    def __post_init__(self) -> None:
        if self.perturbations_per_eval is not None and self.perturbations_per_eval < 1:
            raise BenchError("occlusion: perturbations_per_eval must be >= 1 or None")


class Occlusion(Method):
    """Patch occlusion with a black baseline (Zeiler & Fergus, 2014) via Captum; maps ``[B, gh, gw]``."""

    name = "occlusion"
    capabilities = frozenset({"attribute"})
    Config = OcclusionConfig

    def attribute(self, model: Model, request: AttributionRequest) -> torch.Tensor:
        pixels = request.pixels_BCHW
        _, C, H, W = pixels.shape
        gh, gw = request.grid
        if H % gh or W % gw:
            raise BenchError(f"occlusion: a {gh}x{gw} grid does not tile a {H}x{W} image")
        ph, pw = H // gh, W // gw
        explainer = _CaptumOcclusion(request.score)
        bs = max(1, int(request.batch_size))
        out = []
        for x, idx in request.chunks(requires_grad=False):
            ppe = self.config.perturbations_per_eval or max(1, bs // x.shape[0])
            with torch.no_grad():
                attr = explainer.attribute(
                    x,
                    sliding_window_shapes=(C, ph, pw),
                    strides=(C, ph, pw),
                    baselines=0.0,
                    additional_forward_args=(idx,),
                    perturbations_per_eval=min(ppe, gh * gw),
                )
            # Constant over each window: one value per patch.
            out.append(F.avg_pool2d(attr.detach().mean(1, keepdim=True), (ph, pw))[:, 0])
        return torch.cat(out).float()
