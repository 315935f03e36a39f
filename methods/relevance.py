"""Gradient-weighted attention relevance (generic attention-model explainability).

Chefer, Gur & Wolf (2021), "Generic Attention-model Explainability for Interpreting
Bi-Modal and Encoder-Decoder Transformers" (ICCV). For the self-attention of the
vision tower, the relevance map ``R`` (tokens × tokens) starts as the identity (each
token is relevant to itself) and every block, in forward order, updates it with
its gradient-weighted attention (the self-attention rules of the paper)::

    Ā = mean_h( (∇A ⊙ A)⁺ )            # A: attention probabilities of the block [heads, T, T]
    R ← R + Ā · R                       # ∇A: gradient of the target score w.r.t. A

The target score is the request's ``score`` (one scalar per example). Attention
probabilities are read from the ``vision.blocks.L.attn.pattern`` sites with
``keep_grad`` in one forward/backward pass per chunk of examples; blocks whose
pattern does not reach the score (e.g. the last vision block of a LLaVA, whose
projector reads the second-to-last block) have ``∇A = 0`` and leave ``R`` unchanged.

The map is one row of ``R − I`` (the relevance that flowed through attention) over
the image tokens, reshaped to the patch grid ``[B, gh, gw]``:

- ``row="cls"``: the CLS token's row (the paper's choice for classification towers
  that pool the CLS token — CLIP);
- ``row="mean"``: the mean of the image tokens' rows (for towers whose image tokens,
  not a CLS token, carry the output — LLaVA hands the image tokens to its language
  model and drops the CLS token);
- ``row="auto"`` (default): ``"cls"`` on contrastive models with a CLS token,
  ``"mean"`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.capabilities import AttributionRequest
from bench.errors import BenchError, Incompatible
from bench.method import Method, MethodConfig
from bench.model import ContrastiveModel, Model, TokenLayout
from methods.attention_rollout import vision_attention_reason

ROWS = ("auto", "cls", "mean")


@dataclass(frozen=True)
class RelevanceConfig(MethodConfig):
    row: str = "auto"  # "auto" | "cls" | "mean": which row of the relevance matrix is the map

    def __post_init__(self) -> None:
        if self.row not in ROWS:
            raise BenchError(f"relevance: row must be one of {ROWS}, not {self.row!r}")


def relevance_update(R_BTT: torch.Tensor, attn_BHTT: torch.Tensor, grad_BHTT: torch.Tensor) -> torch.Tensor:
    """One self-attention update of Chefer et al. (2021): ``R + mean_h((∇A ⊙ A)⁺) · R``."""
    cam_BTT = (grad_BHTT * attn_BHTT).clamp(min=0).mean(1)
    return R_BTT + cam_BTT @ R_BTT


class Relevance(Method):
    """Gradient-weighted attention relevance (Chefer et al., 2021) over the vision tower; maps ``[B, gh, gw]``."""

    name = "relevance"
    capabilities = frozenset({"attribute"})
    families = frozenset({"contrastive", "generative"})
    Config = RelevanceConfig

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model) or vision_attention_reason(model)
        if reason:
            return reason
        layout = model.token_layout()
        if self._row(model, layout) == "cls" and layout.cls is None:
            return f"model {model.name!r} has no CLS token (use row='mean')"
        return None

    def _row(self, model: Model, layout: TokenLayout) -> str:
        if self.config.row != "auto":
            return self.config.row
        return "cls" if isinstance(model, ContrastiveModel) and layout.cls is not None else "mean"

    def attribute(self, model: Model, request: AttributionRequest) -> torch.Tensor:
        reason = self.supports(model)
        layout = model.token_layout()
        if reason or layout is None:
            raise Incompatible(reason or "no vision token layout")
        row = self._row(model, layout)
        sites = model.layer_sites("vision", "pattern")
        out = []
        for x, idx in request.chunks(requires_grad=True):
            # pixels require grad so the patterns are in the graph even with frozen weights
            with torch.enable_grad():
                with model.trace(read=sites, keep_grad=True) as t:
                    score_n = request.score(x, idx)
                attn = [t[s] for s in sites]
                # rows are independent examples: the gradient of the sum is each row's own gradient
                grads = torch.autograd.grad(score_n.sum(), attn, allow_unused=True)
            n, T = x.shape[0], attn[0].shape[-1]
            eye_TT = torch.eye(T, dtype=torch.float32, device=attn[0].device)
            R_nTT = eye_TT.expand(n, T, T).clone()
            for a, g in zip(attn, grads):
                if g is None:  # this block's attention does not reach the score
                    continue
                R_nTT = relevance_update(R_nTT, a.detach().float(), g.float())
            R_nTT = R_nTT - eye_TT  # keep only what flowed through attention
            if row == "cls":
                rel_nP = R_nTT[:, layout.cls, layout.image]
            else:
                rel_nP = R_nTT[:, layout.image, layout.image].mean(1)
            out.append(rel_nP.reshape(n, *layout.grid))
        return torch.cat(out).float()
