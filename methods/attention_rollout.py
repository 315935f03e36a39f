"""Attention rollout.

Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers" (ACL).
Per vision block, the attention probabilities are averaged over heads, the
identity is added to account for the residual connection and rows are
renormalised (``Â = (A + I) / 2``); the rollout is the product
``Â_L ··· Â_1``. The map is the CLS token's row of the rollout over the image
tokens, renormalised to sum to 1 per example and reshaped to the patch grid,
``[B, gh, gw]``. All attention patterns are read in one traced forward pass of
the request's score (no gradient), so the map does not depend on the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.capabilities import AttributionRequest
from bench.errors import Incompatible
from bench.method import Method, MethodConfig
from bench.model import Model


@dataclass(frozen=True)
class AttentionRolloutConfig(MethodConfig):
    """No options: the rollout as in the paper (mean over heads, residual identity)."""


def vision_attention_reason(model: Model) -> str | None:
    """Why a method over the vision tower's attention patterns cannot run on ``model`` (or ``None``)."""
    if not model.layer_sites("vision", "pattern"):
        return f"model {model.name!r} exposes no vision attention-pattern sites"
    if model.token_layout() is None:
        return f"model {model.name!r} has no vision token layout"
    return None


class AttentionRollout(Method):
    """Attention rollout (Abnar & Zuidema, 2020) from the CLS token; maps ``[B, gh, gw]``."""

    name = "attention_rollout"
    capabilities = frozenset({"attribute"})
    families = frozenset({"contrastive", "generative"})
    Config = AttentionRolloutConfig

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model) or vision_attention_reason(model)
        if reason:
            return reason
        if model.token_layout().cls is None:
            return f"model {model.name!r} has no CLS token to roll attention out from"
        return None

    def attribute(self, model: Model, request: AttributionRequest) -> torch.Tensor:
        layout = model.token_layout()
        if layout is None or layout.cls is None:
            raise Incompatible(self.supports(model) or "no CLS token")
        sites = model.layer_sites("vision", "pattern")
        out = []
        for x, idx in request.chunks(requires_grad=False):
            with torch.no_grad():
                with model.trace(read=sites, stop_after_reads=True) as t:
                    request.score(x, idx)
                rollout = None
                for site in sites:
                    a = t[site].float().mean(1)  # [n, T, T], heads averaged
                    a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
                    a = a / a.sum(-1, keepdim=True)
                    rollout = a if rollout is None else a @ rollout
                row = rollout[:, layout.cls, layout.image]  # [n, P]
                row = row / row.sum(-1, keepdim=True).clamp_min(1e-12)
            out.append(row.reshape(x.shape[0], *layout.grid))
        return torch.cat(out).float()
