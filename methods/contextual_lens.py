"""Contextual lens: do a mention's hidden states resemble any image token's?

Phukan et al. (2024), "Beyond Logit Lens:
Contextual Embeddings for Robust Hallucination Detection & Grounding in VLMs": a
generated object that is really in the image has middle-layer contextual embeddings
close to those of the image tokens that show it; a hallucinated one does not.

Score per item: at the residual stream ``lm.blocks.{layer}.resid_post`` (default the
middle block ``(n − 1) // 2``), for each of the span's tokens the cosine similarity to
every image-token embedding of the same sequence, reduced over image tokens by the mean
of the ``top_k`` largest (``top_k=1``: the maximum, as in the paper), then averaged over
the span's tokens. The score is minus that similarity: lower similarity to the image =
more likely hallucinated. No fitting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.capabilities import HallucinationRequest
from bench.errors import BenchError
from bench.method import Method, MethodConfig
from bench.model import GenerativeModel, Model


@dataclass(frozen=True)
class ContextualLensConfig(MethodConfig):
    layer: int | None = None  # LM block whose resid_post is compared; None = the middle block
    top_k: int = 1  # image tokens averaged per span token (1 = the maximum similarity)


def image_similarity(h_BLD: torch.Tensor, span_BL: torch.Tensor, image_BL: torch.Tensor, top_k: int) -> torch.Tensor:
    """Mean over span tokens of the top-``k`` mean cosine similarity to the image tokens ``[B]``."""
    u_BLD = F.normalize(h_BLD.float(), dim=-1)
    cos_BLL = u_BLD @ u_BLD.transpose(1, 2)  # [B, query, key]
    cos_BLL = cos_BLL.masked_fill(~image_BL[:, None, :], float("-inf"))
    k = min(top_k, int(image_BL.sum(1).min()))
    top_BL = cos_BLL.topk(k, dim=-1).values.mean(-1)
    span = span_BL.float()
    return (top_BL.nan_to_num(0.0, neginf=0.0) * span).sum(1) / span.sum(1)


class ContextualLens(Method):
    """Cosine similarity of the span's middle-layer states to the image tokens' (negated)."""

    name = "contextual_lens"
    capabilities = frozenset({"detect_hallucination"})
    families = frozenset({"generative"})
    Config = ContextualLensConfig

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        if not model.layer_sites("lm", "resid_post"):
            return f"model {model.name!r} has no lm.blocks.*.resid_post sites"
        return None

    @torch.no_grad()
    def detect_hallucination(self, model: Model, request: HallucinationRequest) -> torch.Tensor:
        assert isinstance(model, GenerativeModel)
        if self.config.top_k < 1:
            raise BenchError(f"contextual_lens: top_k must be at least 1, not {self.config.top_k}")
        site = model.layer_site_at("lm", "resid_post", self.config.layer)
        out = []
        for _, enc, t, _ in model.span_batches(request.items, request.batch_size, read=[site]):
            if not bool(enc.image_BL.any(1).all()):
                raise BenchError("contextual_lens: an item has no image tokens in its sequence")
            out.append(-image_similarity(t[site], enc.span_BL, enc.image_BL, self.config.top_k).double())
        return torch.cat(out)
