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

import numpy as np
import torch
import torch.nn.functional as F

from bench.capabilities import EditRequest
from bench.kit.editing import constrained_finetune, middle_fact_mlp
from bench.errors import BenchError
from bench.method import Method, MethodConfig
from bench.model import ContrastiveModel, DiffusionModel, GenerativeModel, Model


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
        K, R = request.pixels_KRCHW.shape[:2]
        pixels = request.pixels_KRCHW.flatten(0, 1)
        if isinstance(model, ContrastiveModel):
            if len(request.values) != K:
                raise BenchError("finetune: a contrastive edit request must list each relation's values")
            texts = [p.format(value=v) for p, vals in zip(request.prompts, request.values) for v in vals]
            offsets = np.cumsum([0] + [len(v) for v in request.values])
            target_B = torch.tensor([int(offsets[k]) + request.values[k].index(request.new[k])
                                     for k in range(K) for _ in range(R)], device=model.device)
            own_BT = torch.zeros(K * R, len(texts), dtype=torch.bool, device=model.device)  # each image vs its own relation's texts
            for k in range(K):
                own_BT[k * R : (k + 1) * R, int(offsets[k]) : int(offsets[k + 1])] = True

            def con() -> torch.Tensor:
                sims = model.similarity_to(model.encode_image(pixels), model.encode_text(texts))
                return F.cross_entropy(sims.masked_fill(~own_BT, float("-inf")), target_B)
            return con
        if isinstance(model, DiffusionModel):
            # the renders are what the prompt should now draw: the denoising loss on them, at
            # (timestep, noise) draws from a fixed generator (deterministic)
            with torch.no_grad():
                x0 = model.to_sample(pixels)
            texts = [p for p in request.prompts for _ in range(R)]
            g = torch.Generator().manual_seed(0)

            def dif() -> torch.Tensor:
                noise = torch.randn(x0.shape, generator=g)
                t = torch.randint(0, model.num_train_timesteps, (len(texts),), generator=g)
                return model.denoising_error_B(x0, noise, t, texts).mean()
            return dif
        if not isinstance(model, GenerativeModel):
            raise BenchError(f"finetune cannot edit a {model.family} model")
        prompts = [p for p in request.prompts for _ in range(R)]
        inp = model.answer_inputs(prompts, [a for a in request.new for _ in range(R)])
        rows = torch.arange(len(prompts))

        def gen() -> torch.Tensor:
            logits = model.forward_tokens(pixels, inp.ids_BL, inp.mask_BL)
            return F.cross_entropy(logits[rows, inp.pos_B], inp.answer_B)
        return gen
