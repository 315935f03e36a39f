"""Attribution patching: a first-order approximation of activation patching.

Nanda (2023), "Attribution Patching: Activation Patching At Industrial Scale"; Syed,
Rager & Conmy (2023), "Attribution Patching Outperforms Automated Circuit Discovery".
The effect of restoring a site's clean activation into the corrupted run is
approximated by the gradient of the task metric at the corrupted run times the
activation difference, summed over the site's positions and features:

    score(site) ≈ ⟨∂metric/∂a_site |corrupt, a_site^clean − a_site^corrupt⟩

Two forward passes and one backward pass cover every candidate site at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.capabilities import LocalizeRequest
from bench.method import Method, MethodConfig
from bench.model import Model


@dataclass(frozen=True)
class GradXActivationConfig(MethodConfig):
    absolute: bool = False  # rank by |score| (direction-agnostic) instead of the signed restoration effect


class GradXActivation(Method):
    """Gradient × activation difference per site (attribution patching)."""

    name = "grad_x_activation"
    capabilities = frozenset({"localize"})
    families = frozenset({"contrastive", "generative", "diffusion"})
    Config = GradXActivationConfig

    def localize(self, model: Model, request: LocalizeRequest) -> torch.Tensor:
        cands = request.candidates
        with torch.no_grad():
            _, clean = request.evaluate("clean", read=cands)
        score, corrupt = request.evaluate("corrupt", read=cands, keep_grad=True)
        acts = [corrupt[s] for s in cands]
        grads = torch.autograd.grad(score.sum(), acts, allow_unused=True)
        out = torch.zeros(request.n, len(cands), dtype=torch.float64)
        for k, (s, a, g) in enumerate(zip(cands, acts, grads)):
            if g is None:  # the site does not reach the metric
                continue
            out[:, k] = ((clean[s] - a.detach()) * g).flatten(1).sum(1).double()
        return out.abs() if self.config.absolute else out
