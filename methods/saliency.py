"""Vanilla gradient saliency.

Simonyan, Vedaldi & Zisserman (2014), "Deep Inside Convolutional Networks:
Visualising Image Classification Models and Saliency Maps" (ICLR workshop).
The map is the magnitude of the gradient of the target score with respect to the
input pixels, summed over colour channels (the paper takes the maximum over
channels; summing keeps the map linear in the per-channel gradients). Computed
with Captum's ``Saliency``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from captum.attr import Saliency as _CaptumSaliency

from bench.capabilities import AttributionRequest
from bench.method import Method, MethodConfig
from bench.model import Model


@dataclass(frozen=True)
class SaliencyConfig(MethodConfig):
    absolute: bool = True  # |d score / d pixel| (the paper); False keeps the signed gradient


class Saliency(Method):
    """Gradient saliency (Simonyan et al., 2014) via Captum; maps ``[B, H, W]``."""

    name = "saliency"
    capabilities = frozenset({"attribute"})
    Config = SaliencyConfig

    def attribute(self, model: Model, request: AttributionRequest) -> torch.Tensor:
        explainer = _CaptumSaliency(request.score)
        out = []
        for x, idx in request.chunks(requires_grad=True):
            attr = explainer.attribute(x, abs=self.config.absolute, additional_forward_args=(idx,))
            out.append(attr.detach().sum(1))
        return torch.cat(out).float()
