"""Attention knockout: block the attention edges from the readout to the subject, layer window by layer window.

Geva, Bastings, Filippova & Globerson (2023), "Dissecting Recall of Factual Associations in
Auto-Regressive Language Models" (EMNLP), Section 5: to test whether information flows from
the subject tokens to the last position at layer ℓ, the edges from the last position to the
subject positions are cut (their attention weight is set to zero) in a window of ``k``
layers around ℓ, and the drop of the prediction is measured.

What this method computes, per example ``i`` and candidate site ``c`` (a per-layer site of
layer ``ℓ_c``)::

    score[i, c] = metric_i(clean) − metric_i(clean with the edges E blocked at layers W(ℓ_c))

where the metric is the task's (a logit difference), ``W(ℓ) = [ℓ − (window−1)//2, ℓ + window//2]``
clipped to the tower, and the blocked edges ``E`` (query → key) are, by family:

- generative: from the readout position (``request.positions_N``) to every image-token
  position of the LM sequence (``model.image_positions``): the image is the subject;
- contrastive: from the CLS token to every image patch (``model.token_layout()``);
- diffusion: from every other prompt token to the subject's tokens in the text encoder
  (``model.prompt_token_positions``); the subject is the word(s) in which the prompts of the
  request (and of its fit split) differ, i.e. the template's slot ("a {entity}").

Blocking sets the attention probabilities of ``E`` to zero in every head and renormalises each
row over its remaining keys (equivalent to a −∞ attention-mask entry, Geva et al.'s
implementation). All candidates run in one batched pass: copy ``c`` of the batch carries the
knockout for candidate ``c``'s window.

How the pattern is written: the ``<tower>.blocks.ℓ.attn.pattern`` sites of a transformers
model are the attention module's *returned* probabilities, computed after the values were
already mixed, so writing them through ``model.trace`` does not change the output (checked:
zeroing them leaves the metric bit-identical). The transformers way to change how
probabilities are formed is its attention-implementation interface: inside
:func:`editable_patterns` the method registers ``"mmi_editable_eager"`` (transformers'
eager attention, term for term, plus an edit of the probabilities before they weight the
values) and switches the model to it with ``set_attn_implementation``, restoring the previous
implementation afterwards. With no edit installed it computes exactly what eager attention
computes. Edits are given per pattern site, as they would be to ``model.trace``; a pattern
site that is a real module (the diffusion UNet's ``SiteAttnProcessor``) would take a plain
trace write, but all candidate towers here are transformers encoders.

Which localization question it answers (the localization task scores storage and mediation;
Hase et al., 2023): mediation of the route: whether information reaches the readout through
attention at a layer window, not what a candidate site computes; neither storage nor the site-
level mediation profile directly.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from bench.capabilities import LocalizeRequest
from bench.errors import BenchError
from bench.method import Method, MethodConfig
from bench.model import ContrastiveModel, DiffusionModel, GenerativeModel, Model

EDITABLE_IMPL = "mmi_editable_eager"
# attention module → edit of its probabilities [B, heads, Q, K]; set only inside editable_patterns
_PATTERN_EDITS: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}


def _editable_eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                              **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``eager_attention_forward`` (Llama/CLIP), with the probabilities edited
    by ``_PATTERN_EDITS[id(module)]`` (if any) before they weight the values."""
    groups = int(getattr(module, "num_key_value_groups", 1))
    if groups > 1:  # grouped-query attention: as transformers' repeat_kv
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scores_BHQK = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores_BHQK = scores_BHQK + attention_mask
    probs_BHQK = nn.functional.softmax(scores_BHQK, dim=-1, dtype=torch.float32).to(query.dtype)
    edit = _PATTERN_EDITS.get(id(module))
    if edit is not None:
        probs_BHQK = edit(probs_BHQK)
    probs_BHQK = nn.functional.dropout(probs_BHQK, p=dropout, training=module.training)
    out_BQHD = torch.matmul(probs_BHQK, value).transpose(1, 2).contiguous()
    return out_BQHD, probs_BHQK


def _register_impl() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(EDITABLE_IMPL, _editable_eager_attention)
    type(ALL_MASK_ATTENTION_FUNCTIONS).register(EDITABLE_IMPL, eager_mask)  # same additive masks as eager


def _pretrained_roots(model: Model, sites: list[str]) -> list[nn.Module]:
    """The outermost transformers models holding the attention modules of ``sites``."""
    from transformers import PreTrainedModel

    roots: dict[int, nn.Module] = {}
    for s in sites:
        parts = model.site_specs[s].module.split(".")
        for k in range(len(parts) + 1):
            m = model.module.get_submodule(".".join(parts[:k]))
            if isinstance(m, PreTrainedModel):
                roots[id(m)] = m
                break
    return list(roots.values())


def _impl_tree(config: object) -> str | dict:
    """A model config's attention implementation(s), in ``set_attn_implementation``'s dict form."""
    subs = {k: _impl_tree(getattr(config, k)) for k in getattr(config, "sub_configs", {})
            if getattr(config, k, None) is not None}
    own = config._attn_implementation  # type: ignore[attr-defined]
    return {"": own, **subs} if subs else own


@contextlib.contextmanager
def editable_patterns(model: Model, edits: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """Within the block, each ``...attn.pattern`` site in ``edits`` has its probabilities edited
    before they weight the values (see the module docstring); the attention implementation is
    restored on exit."""
    bad = [s for s in edits if model.site(s).kind != "pattern"]
    if bad:
        raise BenchError(f"attention_knockout: {bad[0]!r} is not an attention-pattern site")
    if not edits:  # nothing to edit: the model runs as it is
        yield
        return
    roots = _pretrained_roots(model, list(edits))
    if not roots:
        raise BenchError("attention_knockout: the pattern sites are not inside a transformers model")
    _register_impl()
    saved = [(r, _impl_tree(r.config)) for r in roots]
    try:
        for r in roots:
            r.set_attn_implementation(EDITABLE_IMPL)
        for s, fn in edits.items():
            _PATTERN_EDITS[id(model.module.get_submodule(model.site_specs[s].module))] = fn
        yield
    finally:
        _PATTERN_EDITS.clear()
        for r, impl in saved:
            r.set_attn_implementation(impl)


def knockout(block_NQK: torch.Tensor, rows: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """An edit of probabilities ``[B, heads, Q, K]``: in batch rows ``rows`` (row ``rows[j]`` uses
    ``block_NQK[j]``), zero the blocked edges and renormalise each query row over the rest."""

    def fn(p_BHQK: torch.Tensor) -> torch.Tensor:
        keep_RQK = (~block_NQK).to(p_BHQK.dtype)[:, None]
        hit_RQ1 = block_NQK.any(-1, keepdim=True)[:, None]
        sub = p_BHQK[rows] * keep_RQK
        # knocked-out query rows are renormalised over their remaining keys; other rows stay bit-identical
        sub = sub / torch.where(hit_RQ1, sub.sum(-1, keepdim=True).clamp_min(1e-12), torch.ones_like(sub[..., :1]))
        out = p_BHQK.clone()
        out[rows] = sub
        return out

    return fn


def subject_words(prompts: list[str]) -> list[int]:
    """Word indices at which the prompts differ (the template's slot); all words if none differ."""
    split = [p.split() for p in prompts]
    width = min(len(w) for w in split)
    varying = [j for j in range(width) if len({w[j] for w in split}) > 1]
    if any(len(w) != width for w in split):  # ragged prompts: the tail differs too
        varying += list(range(width, max(len(w) for w in split)))
    return varying or list(range(max(len(w) for w in split)))


@dataclass(frozen=True)
class AttentionKnockoutConfig(MethodConfig):
    window: int = 1  # layers knocked out around each candidate's layer (Geva et al.: k)
    copies_per_pass: int = 4  # candidates (batch copies) per forward pass

    def __post_init__(self) -> None:
        if self.window < 1:
            raise BenchError(f"attention_knockout: window must be >= 1, not {self.window}")
        if self.copies_per_pass < 1:
            raise BenchError(f"attention_knockout: copies_per_pass must be >= 1, not {self.copies_per_pass}")


class AttentionKnockout(Method):
    """Drop of the metric when readout → subject attention is cut around each layer (Geva et al., 2023)."""

    name = "attention_knockout"
    answers = {"localize": "route (attention edges)"}
    capabilities = frozenset({"localize"})
    families = frozenset({"contrastive", "generative", "diffusion"})
    Config = AttentionKnockoutConfig

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        towers = {"generative": "lm", "contrastive": "vision", "diffusion": "text"}
        if not model.layer_sites(towers[model.family], "pattern"):
            return f"model {model.name!r} exposes no {towers[model.family]} attention-pattern sites"
        if not _pretrained_roots(model, model.layer_sites(towers[model.family], "pattern")[:1]):
            return f"model {model.name!r}: its attention is not a transformers model (no editable attention)"
        return None

    # ------------------------------------------------------------------ what to block
    def blocked_edges(self, model: Model, request: LocalizeRequest, n_q: int) -> torch.Tensor:
        """Boolean ``[n, Q, K]``: the query → key edges to cut for each example."""
        n = request.n
        block_NQK = torch.zeros(n, n_q, n_q, dtype=torch.bool, device="cpu")
        if isinstance(model, GenerativeModel):
            if request.positions_N is None:
                raise BenchError("attention_knockout: a generative request must give readout positions")
            img_NL = model.image_positions(request.prompts)[:, :n_q]
            block_NQK[torch.arange(n, device="cpu"), request.positions_N.cpu()] = img_NL.cpu()
        elif isinstance(model, ContrastiveModel):
            layout = model.token_layout()
            if layout is None or layout.cls is None:
                raise BenchError(f"attention_knockout: {model.name!r} has no CLS token to read out from")
            block_NQK[:, layout.cls, layout.image] = True
        elif isinstance(model, DiffusionModel):
            fit_prompts = request.fit.prompts if request.fit is not None else []
            idx = subject_words(list(request.prompts) + list(fit_prompts))
            for i, p in enumerate(request.prompts):
                words = p.split()
                pos: list[int] = []
                for j in idx:
                    if j < len(words):
                        pos += model.prompt_token_positions([p], words[j])[0]
                pos = sorted({q for q in pos if q < n_q})
                block_NQK[i, :, pos] = True
                block_NQK[i, pos, :] = False  # the subject's own tokens keep reading each other
        else:
            raise BenchError(f"attention_knockout: no {model.family} setting")
        return block_NQK

    def localize(self, model: Model, request: LocalizeRequest) -> torch.Tensor:
        cands = request.candidates
        towers = {model.site(c).tower for c in cands}
        if len(towers) != 1:
            raise BenchError(f"attention_knockout: candidates span several towers {sorted(towers)}")
        tower = towers.pop()
        patterns = model.layer_sites(tower, "pattern")
        layers = [model.site(c).layer for c in cands]
        if any(l is None for l in layers):
            raise BenchError("attention_knockout: every candidate must be a per-layer site")
        n, w = request.n, self.config.window
        with torch.no_grad():
            base_N, tr = request.evaluate("clean", read=[patterns[0]])
        n_q = int(tr[patterns[0]].shape[-1])
        block_NQK = self.blocked_edges(model, request, n_q)
        out = torch.empty(n, len(cands), dtype=torch.float64, device="cpu")
        step = self.config.copies_per_pass
        for g in range(0, len(cands), step):
            group = layers[g : g + step]
            edits = {}
            for j, site in enumerate(patterns):
                # copies whose window [ℓ − (w−1)//2, ℓ + w//2] contains layer j
                hit = [k for k, l in enumerate(group) if l - (w - 1) // 2 <= j <= l + w // 2]
                if hit:
                    rows = torch.cat([torch.arange(k * n, (k + 1) * n, device="cpu") for k in hit])
                    edits[site] = knockout(block_NQK.repeat(len(hit), 1, 1), rows)
            with torch.no_grad(), editable_patterns(model, edits):
                knocked, _ = request.evaluate("clean", copies=len(group))
            out[:, g : g + len(group)] = (base_N[:, None].double() - knocked.view(len(group), n).T.double())
        return out
