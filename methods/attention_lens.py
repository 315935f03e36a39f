"""Attention to the image as a hallucination detector.

Object hallucinations in VLMs coincide with the language model attending little to
the image when it produces the object: Z. Jiang et al. (2024), "Devils in
Middle Layers of Large Vision-Language Models: Interpreting, Detecting and Mitigating
Object Hallucinations via Attention Lens" (visual attention of middle layers separates
real from hallucinated objects), and Huang et al. (2024), "OPERA: Alleviating
Hallucination in Multi-Modal Large Language Models via Over-Trust Penalty and
Retrospection-Allocation" (hallucinations follow attention collapsing onto a few
summary text tokens instead of the image).

Score per item: the attention mass on image-token positions — ``Σ_{k ∈ image} A[h, q, k]``
of the attention pattern ``lm.blocks.{l}.attn.pattern`` (the softmax weights; the zoo
and ``hf:`` LLaVA wrappers run eager attention so the pattern is materialised) —
averaged over heads, over the configured ``layers`` (default the middle half of the
blocks, ``n // 4 … 3n // 4 − 1``) and over the query positions: ``query="span"``
(default) the span's own tokens, ``query="predict"`` the positions whose next-token
prediction produced them (each span token's position − 1). The score is minus that
mass: lower attention to the image = more likely hallucinated. No fitting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.capabilities import HallucinationRequest
from bench.errors import BenchError
from bench.method import Method, MethodConfig
from bench.model import GenerativeModel, Model


@dataclass(frozen=True)
class AttentionLensConfig(MethodConfig):
    layers: tuple[int, ...] = ()  # LM blocks whose attention is read; () = the middle half
    query: str = "span"  # "span" (the span's tokens) | "predict" (the positions that produced them)


def pattern_sites(model: Model, layers: tuple[int, ...]) -> list[str]:
    """The ``lm.blocks.{l}.attn.pattern`` sites of ``layers`` (default the middle half of the LM)."""
    sites = model.layer_sites("lm", "pattern")
    n = len(sites)
    if n == 0:
        raise BenchError(f"model {model.name!r} has no lm.blocks.*.attn.pattern sites")
    chosen = list(layers) if layers else list(range(n // 4, max(n // 4 + 1, 3 * n // 4)))
    bad = [l for l in chosen if not -n <= l < n]
    if bad:
        raise BenchError(f"attention_lens: layers {bad} are out of range for a {n}-block language model")
    return [sites[l] for l in dict.fromkeys(l % n for l in chosen)]


class AttentionLens(Method):
    """Mean attention mass from the span's tokens to the image tokens, middle layers (negated)."""

    name = "attention_lens"
    capabilities = frozenset({"detect_hallucination"})
    families = frozenset({"generative"})
    Config = AttentionLensConfig

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        if not model.layer_sites("lm", "pattern"):
            return f"model {model.name!r} has no lm.blocks.*.attn.pattern sites"
        return None

    @torch.no_grad()
    def detect_hallucination(self, model: Model, request: HallucinationRequest) -> torch.Tensor:
        assert isinstance(model, GenerativeModel)
        if self.config.query not in ("span", "predict"):
            raise BenchError(f"attention_lens: query must be 'span' or 'predict', not {self.config.query!r}")
        sites = pattern_sites(model, tuple(self.config.layers))
        out = []
        for _, enc, t, _ in model.span_batches(request.items, request.batch_size, read=sites):
            img_BK = enc.image_BL.float()
            # mass on image keys per (layer, head, query), averaged over layers and heads → [B, L]
            mass_BL = torch.stack([(t[s].float() * img_BK[:, None, None, :]).sum(-1).mean(1) for s in sites]).mean(0)
            q_BL = enc.span_BL.float()
            if self.config.query == "predict":
                q_BL = torch.cat([q_BL[:, 1:], torch.zeros_like(q_BL[:, :1])], 1)  # token p is produced at p − 1
            out.append(-((mass_BL * q_BL).sum(1) / q_BL.sum(1)).double())
        return torch.cat(out)
