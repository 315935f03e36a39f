"""Activation patching (noising): which site's corruption breaks the clean behaviour?

Vig et al. (2020), "Causal Mediation Analysis for Interpreting Neural NLP"; Heimersheim &
Nanda (2024), "How to use and interpret activation patching". The reverse direction of
causal tracing: run the clean input, overwrite one site with its activation from the
counterfactual run, and score the site by how much of the clean metric is lost,
``metric(clean) − metric(clean with the site corrupted)``. Noising finds components
that are *necessary*; denoising (``causal_tracing``) those that are *sufficient*.
All candidate sites are patched in one batched pass (one batch copy per site).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.capabilities import LocalizeRequest
from bench.method import Method, MethodConfig
from bench.model import Model


@dataclass(frozen=True)
class ActivationPatchingConfig(MethodConfig):
    sites_per_pass: int = 8


class ActivationPatching(Method):
    """Patch counterfactual activations into the clean run, one site per batch copy."""

    name = "activation_patching"
    capabilities = frozenset({"localize"})
    families = frozenset({"contrastive", "generative", "diffusion"})
    Config = ActivationPatchingConfig

    @torch.no_grad()
    def localize(self, model: Model, request: LocalizeRequest) -> torch.Tensor:
        cands = request.candidates
        _, corrupt = request.evaluate("corrupt", read=cands)
        base, _ = request.evaluate("clean")
        patched = request.patch_sweep("clean", {s: corrupt[s] for s in cands}, self.config.sites_per_pass)
        return base[:, None].double() - patched
