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
from bench.sites import replace_rows


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
        n, cands = request.n, request.candidates
        _, corrupt = request.evaluate("corrupt", read=cands)
        base, _ = request.evaluate("clean")
        out = torch.empty(n, len(cands), dtype=torch.float64)
        step = max(1, self.config.sites_per_pass)
        for g in range(0, len(cands), step):
            group = cands[g : g + step]
            writes = {site: replace_rows(torch.arange(k * n, (k + 1) * n), corrupt[site])
                      for k, site in enumerate(group)}
            patched, _ = request.evaluate("clean", write=writes, copies=len(group))
            out[:, g : g + len(group)] = (base[None] - patched.view(len(group), n)).T.double()
        return out
