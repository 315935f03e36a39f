"""Attribution patching: a first-order approximation of activation patching.

Nanda (2023), "Attribution Patching: Activation Patching At Industrial Scale"; Syed,
Rager & Conmy (2023), "Attribution Patching Outperforms Automated Circuit Discovery".
The effect of restoring a site's clean activation into the corrupted run is
approximated by the gradient of the task metric at the corrupted run times the
activation difference, summed over the site's positions and features:

    score(site) ≈ ⟨∂metric/∂a_site |corrupt, a_site^clean − a_site^corrupt⟩

Two forward passes and one backward pass cover every candidate site at once.

Which localization question it answers (the localization task scores storage and mediation;
Hase et al., 2023): mediation, to first order: a linear estimate of causal tracing's effect; it
finds the storage site only where storage and mediation coincide.
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
    answers = {"localize": "mediation (first-order)"}
    capabilities = frozenset({"localize"})
    families = frozenset({"contrastive", "generative", "diffusion"})
    Config = GradXActivationConfig

    def localize(self, model: Model, request: LocalizeRequest) -> torch.Tensor:
        out = torch.zeros(request.n, len(request.candidates), dtype=torch.float64, device="cpu")
        for k, (clean, corrupt, g) in enumerate(request.corrupt_gradients(request.candidates)):
            if g is None:  # the site does not reach the metric
                continue
            out[:, k] = ((clean - corrupt) * g).flatten(1).sum(1).double()
        return out.abs() if self.config.absolute else out
