"""Grad-CAM for vision transformers.

Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra (2017), "Grad-CAM: Visual
Explanations from Deep Networks via Gradient-based Localization" (ICCV), applied
to a ViT's token activations as in the Grad-CAM baseline of Chefer, Gur & Wolf
(2021), "Transformer Interpretability Beyond Attention Visualization" (CVPR):
the image tokens of a block's residual stream play the role of the last
convolutional feature map. Channel weights are the gradient of the target score
averaged over image tokens; the map is ``ReLU(Σ_c w_c · A_c)`` per image token,
``[B, gh, gw]``.

``layer`` picks the vision block whose ``resid_post`` is read (negative counts
from the end). The default is the second-to-last block: in CLIP-style towers
that pool the CLS token, the last block's image tokens do not reach the score
at all (their gradient is exactly zero, so the map would be all zeros), the
same reason ViT Grad-CAM implementations read the input of the last block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.capabilities import AttributionRequest
from bench.errors import Incompatible
from bench.method import Method, MethodConfig
from bench.model import Model


@dataclass(frozen=True)
class GradCAMConfig(MethodConfig):
    layer: int = -2  # vision block whose resid_post is read; negative = from the end


class GradCAM(Method):
    """Grad-CAM (Selvaraju et al., 2017) on a ViT block's image tokens; maps ``[B, gh, gw]``."""

    name = "gradcam"
    capabilities = frozenset({"attribute"})
    families = frozenset({"contrastive", "generative"})
    Config = GradCAMConfig

    def _site(self, model: Model) -> str | None:
        sites = model.layer_sites("vision", "resid_post")
        layer = self.config.layer
        if not -len(sites) <= layer < len(sites):
            return None
        return sites[layer]

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        n = len(model.layer_sites("vision", "resid_post"))
        if n == 0:
            return f"model {model.name!r} exposes no vision resid_post sites"
        if self._site(model) is None:
            return f"gradcam layer {self.config.layer} is out of range for {n} vision blocks"
        if model.token_layout() is None:
            return f"model {model.name!r} has no vision token layout"
        return None

    def attribute(self, model: Model, request: AttributionRequest) -> torch.Tensor:
        layout = model.token_layout()
        site = self._site(model)
        if layout is None:
            raise Incompatible(f"model {model.name!r} has no vision token layout")
        if site is None:
            raise Incompatible(self.supports(model) or f"gradcam cannot run on {model.name!r}")
        out = []
        for x, idx in request.chunks(requires_grad=True):
            # Pixels require grad so the read activation is in the graph even if
            # the model's parameters are frozen.
            with torch.enable_grad():
                with model.trace(read=[site], keep_grad=True) as t:
                    score = request.score(x, idx)
                act = t[site]  # [n, T, D]
                (grad,) = torch.autograd.grad(score.sum(), act)
            act_img = act.detach()[:, layout.image].float()  # [n, P, D]
            weights = grad[:, layout.image].float().mean(1, keepdim=True)  # [n, 1, D]
            cam = torch.relu((weights * act_img).sum(-1))  # [n, P]
            out.append(cam.reshape(x.shape[0], *layout.grid))
        return torch.cat(out).float()
