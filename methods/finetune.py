"""Constrained fine-tuning: the editing baseline.

Zhu, Rawat, Zaheer, Bhojanapalli, Li, Yu & Kumar (2020), "Modifying Memories in
Transformer Models": fine-tune the parameters of one component on the requested
rewrites with an L∞ bound on each parameter's change. The component is the request's
``site`` (e.g. the planted or a localized site), this config's ``site``, or by default
the middle language-model MLP. Adam on the cross-entropy of the new answer's first
token over the renders shown; deterministic (no sampling).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.capabilities import EditRequest
from bench.errors import BenchError
from bench.method import Method, MethodConfig
from bench.model import GenerativeModel, Model


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
    families = frozenset({"generative"})
    Config = FinetuneConfig

    def _site(self, model: Model, request: EditRequest) -> str:
        if self.config.site:
            return self.config.site
        if request.site:
            return request.site
        mlps = model.layer_sites("lm", "mlp")
        if not mlps:
            raise BenchError(f"finetune: {model.name!r} has no lm MLP sites; set --config site=...")
        return mlps[len(mlps) // 2]

    def edit(self, model: Model, request: EditRequest) -> None:
        assert isinstance(model, GenerativeModel)
        site = self._site(model, request)
        model.site(site)  # unknown names raise with "did you mean"
        module = model.module.get_submodule(model.site_specs[site].module)
        params = list(module.parameters())
        if not params:
            raise BenchError(f"finetune: site {site!r} has no parameters to tune")
        K, R = request.pixels_KRCHW.shape[:2]
        pixels = request.pixels_KRCHW.flatten(0, 1)
        prompts = [p for p in request.prompts for _ in range(R)]
        new = [a for a in request.new for _ in range(R)]
        inp = model.answer_inputs(prompts, new)
        rows = torch.arange(len(prompts))
        original = [p.detach().clone() for p in params]
        flags = {id(p): p.requires_grad for p in model.module.parameters()}
        for p in model.module.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=self.config.lr)
        try:
            for _ in range(self.config.steps):
                logits = model.forward_tokens(pixels, inp.ids_BL, inp.mask_BL)
                loss = F.cross_entropy(logits[rows, inp.pos_B], inp.answer_B)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for p, p0 in zip(params, original):
                        p.copy_(torch.maximum(torch.minimum(p, p0 + self.config.max_delta), p0 - self.config.max_delta))
        finally:
            for p in model.module.parameters():
                p.requires_grad_(flags[id(p)])
