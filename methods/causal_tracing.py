"""Causal tracing (denoising activation patching).

Meng, Bau, Andonian & Belinkov (2022), "Locating and Editing Factual Associations in
GPT" (NeurIPS): run the model on a corrupted input, restore one site's activation
from the clean run, and measure how much of the clean behaviour comes back. Here the
corruption is the task's counterfactual input (symmetric replacement, which Zhang &
Nanda, 2024, recommend over Gaussian noise) and the behaviour the task's metric (a
logit difference). Score per (example, site): metric(corrupt run with the site
restored) − metric(corrupt run). All candidate sites are patched in one batched
forward pass (the batch is repeated once per site, each copy restored at its own
site), in groups of ``sites_per_pass`` to bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.capabilities import LocalizeRequest
from bench.method import Method, MethodConfig
from bench.model import Model


@dataclass(frozen=True)
class CausalTracingConfig(MethodConfig):
    sites_per_pass: int = 8


class CausalTracing(Method):
    """Restore clean activations into the corrupted run, one site per batch copy (Meng et al., 2022)."""

    name = "causal_tracing"
    capabilities = frozenset({"localize"})
    families = frozenset({"contrastive", "generative", "diffusion"})
    Config = CausalTracingConfig

    @torch.no_grad()
    def localize(self, model: Model, request: LocalizeRequest) -> torch.Tensor:
        cands = request.candidates
        _, clean = request.evaluate("clean", read=cands)
        base, _ = request.evaluate("corrupt")
        patched = request.patch_sweep("corrupt", {s: clean[s] for s in cands}, self.config.sites_per_pass)
        return patched - base[:, None].double()
