"""Output uncertainty as a hallucination detector (the baseline every detection paper reports).

The model's own next-token distribution at the positions that produce the scored
span: ``measure="entropy"`` averages its Shannon entropy over the span's tokens
(predictive-entropy baselines, e.g. Malinin & Gales, 2021, "Uncertainty Estimation
in Autoregressive Structured Prediction"; used as the output-level baseline in the
VLM hallucination-detection literature); ``measure="nll"`` averages the negative
log-probability of the tokens actually produced. Higher = more likely hallucinated.
No fitting, one forward pass per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.capabilities import HallucinationRequest
from bench.errors import BenchError
from bench.method import Method, MethodConfig
from bench.model import GenerativeModel, Model


@dataclass(frozen=True)
class EntropyConfig(MethodConfig):
    measure: str = "entropy"  # "entropy" | "nll"


class OutputEntropy(Method):
    """Mean predictive entropy (or NLL) of the span's tokens."""

    name = "entropy"
    capabilities = frozenset({"detect_hallucination"})
    families = frozenset({"generative"})
    Config = EntropyConfig

    @torch.no_grad()
    def detect_hallucination(self, model: Model, request: HallucinationRequest) -> torch.Tensor:
        assert isinstance(model, GenerativeModel)
        if self.config.measure not in ("entropy", "nll"):
            raise BenchError(f"entropy: measure must be 'entropy' or 'nll', not {self.config.measure!r}")
        out = []
        for _, enc, _, logits_BLV in model.span_batches(request.items, request.batch_size, logits=True):
            assert logits_BLV is not None
            logp_BLV = logits_BLV[:, :-1].float().log_softmax(-1)  # row p predicts token p + 1
            span_BL = enc.span_BL[:, 1:].float()
            if self.config.measure == "entropy":
                per_tok_BL = -(logp_BLV.exp() * logp_BLV).sum(-1)
            else:
                per_tok_BL = -logp_BLV.gather(-1, enc.ids_BL[:, 1:, None])[..., 0]
            out.append((per_tok_BL * span_BL).sum(1) / span_BL.sum(1))
        return torch.cat(out).double()
