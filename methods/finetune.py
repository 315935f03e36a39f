"""Constrained fine-tuning: the editing baseline.

Zhu, Rawat, Zaheer, Bhojanapalli, Li, Yu & Kumar (2020), "Modifying Memories in
Transformer Models": fine-tune the parameters of one component on the requested
rewrites with an L∞ bound on each parameter's change. The component is this config's
``site``, the request's ``site`` (e.g. the planted or a localized site), or by default
the middle MLP of the language model (generative), of the vision tower (contrastive) or of
the text encoder (diffusion). Adam on the cross-entropy of the new answer over the renders
shown: of its first token (generative), or among the relation's values filled into the
request's template (contrastive); for diffusion, on the denoising loss of the renders of
what the prompt should now draw. Deterministic (fixed generator; no sampling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from bench.capabilities import EditRequest, ObjectiveOptions
from bench.kit.editing import constrained_finetune, middle_fact_mlp
from bench.errors import BenchError
from bench.method import Method, MethodConfig
from bench.model import Model


@dataclass(frozen=True)
class FinetuneConfig(MethodConfig):
    site: str = ""  # overrides the request's site when set
    steps: int = 40
    lr: float = 5e-3
    max_delta: float = 0.05  # L∞ bound on each parameter's change


class ConstrainedFinetune(Method):
    """Fine-tune one site's module on the rewrites, each weight within ±max_delta (Zhu et al., 2020)."""

    name = "finetune"
    capabilities = frozenset({"edit"})
    families = frozenset({"generative", "contrastive", "diffusion"})
    Config = FinetuneConfig

    def _site(self, model: Model, request: EditRequest) -> str:
        if self.config.site:
            return self.config.site
        return request.site or middle_fact_mlp(model, "finetune")

    def edit(self, model: Model, request: EditRequest) -> None:
        site = self._site(model, request)
        model.site(site)  # unknown names raise with "did you mean"
        module = model.module.get_submodule(model.site_specs[site].module)
        if not list(module.parameters()):
            raise BenchError(f"finetune: site {site!r} has no parameters to tune")
        constrained_finetune(model.module, module, self._loss(model, request), self.config.steps, self.config.lr,
                             self.config.max_delta)

    @staticmethod
    def _loss(model: Model, request: EditRequest) -> Callable[[], torch.Tensor]:
        # diffusion: fresh (timestep, noise) draws at every step from a fixed generator, as in training
        objective = request.objective(model, ObjectiveOptions(draws=1, seed=0, resample=True))
        return lambda: objective.loss_B(None).mean()
