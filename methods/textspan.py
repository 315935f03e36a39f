"""TextSpan: describe each vision head in words, ablate the heads that describe the shortcut.

Gandelsman, Efros & Steinhardt (2024), "Interpreting CLIP's Image Representation via
Text-Based Decomposition" (ICLR). Each head's direct contributions to the image embedding
on the fit images (``C``, ``[N, E]``, centred over images; the decomposition of
:func:`methods.head_ablation.decompose_heads`) are explained by a greedy choice of text
directions from a pool ``R`` of text embeddings (Algorithm 1, TextSpan):

    repeat n_texts times:
        j  = argmax_t  Var_images(C r_t)          # the text whose direction varies most
        record (text_j, Var(C r_j))
        C ← C − (C r̂_j) r̂_jᵀ;  R ← R − (R r̂_j) r̂_jᵀ   # remove it from the head and the pool

The pool is the request's spurious prompts and class prompts plus the world's other words
(colours, shapes, sizes, positions, backgrounds, counts), embedded by the model's own text
tower and centred on the pool mean (the shared "a photo of…" component explains nothing).
A head's description is *dominated by the spurious attribute* when the spurious prompts
account for at least ``min_share`` of the variance its ``n_texts`` chosen texts explain; those
heads are mean-ablated (their value at every position replaced by the fit mean), as the paper
does to remove spurious cues (Waterbirds, Section 5). ``components`` = heads ablated (zero,
with no edit, when no head qualifies).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.capabilities import DebiasRequest, Intervention
from bench.errors import BenchError
from bench.kit.fitting import record_fit
from bench.method import Method, MethodConfig
from bench.model import ContrastiveModel, Model
from bench.kit.world import BACKGROUNDS, COLOURS, POSITIONS, SHAPES
from bench.kit.world.core import NUMBER_WORDS, SIZES
from methods.head_ablation import check_decomposable, decompose_heads, mean_ablation, vision_heads


@dataclass(frozen=True)
class TextSpanConfig(MethodConfig):
    n_texts: int = 5  # texts chosen per head (the paper uses 10-60 on a 600-3,500 text pool)
    min_share: float = 0.5  # spurious share of the explained variance that marks a head spurious
    embed_site: str = "vision.proj"


def world_texts(class_prompts: list[str], spurious_prompts: list[str]) -> list[str]:
    """The description pool: the request's prompts first, then the world's other words (deduplicated)."""
    pool = [*spurious_prompts, *class_prompts]
    pool += [f"a {c} object" for c in COLOURS] + [f"a {s}" for s in SHAPES] + [f"a {z} object" for z in SIZES]
    pool += [f"an object at the {p}" for p in POSITIONS] + [f"a photo on {b}" for b in BACKGROUNDS]
    pool += [f"{w} objects" for w in NUMBER_WORDS]
    return list(dict.fromkeys(pool))


def text_span(C_NE: torch.Tensor, R_TE: torch.Tensor, n_texts: int) -> tuple[list[int], list[float]]:
    """Greedy TextSpan: indices of the chosen texts and the image variance each explained."""
    C = (C_NE - C_NE.mean(0)).double()
    R = R_TE.double().clone()
    chosen, explained = [], []
    for _ in range(min(n_texts, R.shape[0])):
        var_T = (C @ R.T).var(0, unbiased=False)
        if chosen:
            var_T[chosen] = -1.0  # a chosen text is already removed (its residue is numerical noise)
        j = int(var_T.argmax())
        r = R[j] / R[j].norm().clamp(min=1e-12)
        chosen.append(j)
        explained.append(float(((C @ r) ** 2).mean()))
        C = C - (C @ r)[:, None] * r
        R = R - (R @ r)[:, None] * r
    return chosen, explained


class TextSpan(Method):
    """Ablate the vision heads whose TextSpan description is dominated by the spurious prompts."""

    name = "textspan"
    capabilities = frozenset({"debias"})
    families = frozenset({"contrastive"})
    Config = TextSpanConfig
    fits = True

    def supports(self, model: Model) -> str | None:
        return super().supports(model) or check_decomposable(model, self.config.embed_site)

    def debias(self, model: Model, request: DebiasRequest) -> Intervention:
        cfg = self.config
        reason = check_decomposable(model, cfg.embed_site)
        if reason:
            raise BenchError(f"textspan: {reason}")
        if cfg.n_texts < 1 or not 0.0 < cfg.min_share <= 1.0:
            raise BenchError(f"textspan: n_texts must be ≥ 1 and min_share in (0, 1] "
                             f"(got n_texts={cfg.n_texts}, min_share={cfg.min_share})")
        assert isinstance(model, ContrastiveModel)
        heads = vision_heads(model)
        texts = world_texts(request.class_prompts, request.spurious_prompts)
        spurious = set(range(len(request.spurious_prompts)))  # the pool starts with them
        with torch.no_grad():
            R_TE = model.encode_text(texts)
        R_TE = R_TE - R_TE.mean(0)
        decomp = decompose_heads(model, request.fit_pixels_BCHW, request.batch_size, cfg.embed_site)
        chosen_heads, shares = [], []
        for j, h in enumerate(heads):
            idx, var = text_span(decomp.contrib_NHE[:, j], R_TE, cfg.n_texts)
            share = sum(v for i, v in zip(idx, var) if i in spurious) / max(sum(var), 1e-24)
            shares.append(share)
            self.report(**{f"share:{h}": share})
            self.descriptions = getattr(self, "descriptions", {})
            self.descriptions[h] = [texts[i] for i in idx]
            if share >= cfg.min_share:
                chosen_heads.append(h)
        record_fit(self, "spurious_shares", {"shares": torch.tensor(shares, device="cpu"),
                                             **{f"mean:{h}": decomp.means[h] for h in chosen_heads}})
        return Intervention(mean_ablation(decomp, chosen_heads), components=len(chosen_heads),
                            description=f"TextSpan: mean-ablated {', '.join(chosen_heads) or 'no heads'}")
