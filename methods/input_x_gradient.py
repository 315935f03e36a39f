"""Input × gradient.

Shrikumar, Greenside, Shcherbina & Kundaje (2016), "Not Just a Black Box:
Learning Important Features Through Propagating Activation Differences"
(arXiv:1605.01713). The map is the elementwise product of the input pixels and
the gradient of the target score with respect to them, summed over colour
channels. Computed with Captum's ``InputXGradient``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from captum.attr import InputXGradient as _CaptumInputXGradient

from bench.capabilities import AttributionRequest
from bench.method import Method, MethodConfig
from bench.model import Model


@dataclass(frozen=True)
class InputXGradientConfig(MethodConfig):
    """No options: the method has no hyperparameters."""


class InputXGradient(Method):
    """Input × gradient (Shrikumar et al., 2016) via Captum; maps ``[B, H, W]``."""

    name = "input_x_gradient"
    capabilities = frozenset({"attribute"})
    Config = InputXGradientConfig

    def attribute(self, model: Model, request: AttributionRequest) -> torch.Tensor:
        explainer = _CaptumInputXGradient(request.score)
        out = []
        for x, idx in request.chunks(requires_grad=True):
            attr = explainer.attribute(x, additional_forward_args=(idx,))
            out.append(attr.detach().sum(1))
        return torch.cat(out).float()
