"""Activation patching (noising): which site's corruption breaks the clean behaviour?

Vig et al. (2020), "Causal Mediation Analysis for Interpreting Neural NLP"; Heimersheim &
Nanda (2024), "How to use and interpret activation patching". The reverse direction of
causal tracing: run the clean input, overwrite one site with its activation from the
counterfactual run, and score the site by how much of the clean metric is lost,
``metric(clean) − metric(clean with the site corrupted)``. Noising finds components
that are *necessary*; denoising (``causal_tracing``) those that are *sufficient*.
All candidate sites are patched in one batched pass (one batch copy per site).

Which localization question it answers (the localization task scores storage and mediation;
Hase et al., 2023): mediation (necessity): its score is the interchange test's effect measured
on the logit difference instead of the flip rate, so it is the method closest to the task's
mediation profile; it reads activations, not weights, so it finds where a fact is stored only
where storage and mediation coincide.
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
    answers = {"localize": "mediation (necessity)"}
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
