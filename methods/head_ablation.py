"""Mean-ablate the vision attention heads whose direct contribution carries the spurious attribute.

The decomposition follows Gandelsman, Efros & Steinhardt (2024), "Interpreting CLIP's Image
Representation via Text-Based Decomposition" (ICLR): the image embedding is
``P(LN(r))`` of the CLS residual ``r``, a sum of per-component writes; with the layer
norm's scale held at its value on ``r`` (their linearisation), each head's *direct
contribution* to the embedding is

    c_h = P(γ ⊙ (o_h − mean(o_h))) / σ(r)

where ``o_h = W_O,h v_h`` is the head's write into the residual at the CLS token.
Everything is computed through sites, without reading weights:

- ``o_h``: one batched pass with one batch copy per head, in which every head site is
  overwritten by zero except head ``h`` (restored to its clean value); the attention output
  of ``h``'s layer is then ``o_h`` plus the output bias, read off an all-zero copy.
- ``P(γ ⊙ (u − mean u))``: the last residual site's CLS row is overwritten with ``u``
  rescaled to unit standard deviation, and the image-embedding site read; the same with
  ``u = 0`` (which gives ``P(β)``) is subtracted, and the scale restored.

Head scores (``HeadAblation``): each head's contribution projected on the spurious text
direction (unit ``text(spurious_0) − text(spurious_1)``), and the separation of the two
spurious values on the fit split along it, as Cohen's d (difference of means over the pooled
standard deviation). The ``k`` highest-scoring heads are mean-ablated (their value at every
position replaced by its mean over the fit images). ``components`` = ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.capabilities import DebiasRequest, Intervention
from bench.errors import BenchError
from bench.kit.fitting import record_fit
from bench.method import Method, MethodConfig
from bench.model import ContrastiveModel, Model
from bench.sites import mean_ablate


@dataclass(frozen=True)
class HeadAblationConfig(MethodConfig):
    k: int = 2  # heads to ablate
    embed_site: str = "vision.proj"


@dataclass
class HeadDecomposition:
    """Per-head direct contributions to the image embedding ``[N, H, E]`` (``heads`` in site order)
    and each head's mean value over the images ``[T, d_head]`` (for mean ablation)."""

    heads: list[str]
    contrib_NHE: torch.Tensor
    means: dict[str, torch.Tensor]


def vision_heads(model: Model) -> list[str]:
    return [s.name for s in sorted(model.sites(tower="vision", kind="head"), key=lambda s: (s.layer, s.head))]


def check_decomposable(model: Model, embed_site: str) -> str | None:
    """Why the head decomposition cannot run on ``model`` (``None`` if it can)."""
    # the family (contrastive) is checked by the method contract before any capability runs
    if not vision_heads(model):
        return f"model {model.name!r} has no vision attention-head sites"
    if not model.layer_sites("vision", "resid_post"):
        return f"model {model.name!r} has no vision residual sites"
    if embed_site not in model.site_specs:
        return f"model {model.name!r} has no site {embed_site!r}"
    return None


def _residual_writes(model: ContrastiveModel, x_BCHW: torch.Tensor, heads: list[str],
                     clean: dict[str, torch.Tensor]) -> torch.Tensor:
    """``o_h`` at the CLS token for every head ``[B, H, D]``: copy ``h`` keeps head ``h`` clean and
    zeroes all others; copy ``H`` zeroes every head (the attention output's bias)."""
    B, H = x_BCHW.shape[0], len(heads)
    layers = sorted({model.site(h).layer for h in heads})
    attn_sites = {L: f"vision.blocks.{L}.attn" for L in layers}

    def keep_only(j: int):
        def fn(value: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(value)
            out[j * B : (j + 1) * B] = clean[heads[j]].to(value.dtype)
            return out
        return fn

    with model.trace(read=list(attn_sites.values()), write={h: keep_only(j) for j, h in enumerate(heads)}) as t:
        model.encode_image(x_BCHW.repeat(H + 1, 1, 1, 1))
    out = torch.empty(B, H, t[attn_sites[layers[0]]].shape[-1], device="cpu")
    for j, h in enumerate(heads):
        a = t[attn_sites[model.site(h).layer]][:, 0]  # CLS token, [(H+1)·B, D]
        out[:, j] = a[j * B : (j + 1) * B] - a[H * B :]
    return out


def _through_final(model: ContrastiveModel, x_BCHW: torch.Tensor, u_MD: torch.Tensor, sigma_M: torch.Tensor,
                   last_resid: str, embed_site: str) -> torch.Tensor:
    """``P(γ ⊙ (u − mean u)) / σ`` per row ``[M, E]``, through the model's own final norm and projection."""
    s_M = u_MD.std(1, unbiased=False).clamp(min=1e-12)
    rows = torch.cat([u_MD / s_M[:, None], torch.zeros(1, u_MD.shape[1], dtype=u_MD.dtype, device=u_MD.device)])
    imgs = x_BCHW[torch.arange(rows.shape[0], device=x_BCHW.device) % x_BCHW.shape[0]]  # any image: only the CLS row matters

    def put(value: torch.Tensor) -> torch.Tensor:
        out = value.clone()
        out[:, 0] = rows.to(value.dtype)
        return out

    with model.trace(read=[embed_site], write={last_resid: put}) as t:
        model.encode_image(imgs)
    e = t[embed_site]
    e = e if e.dim() == 2 else e[:, 0]
    return (e[:-1] - e[-1:]) * (s_M / sigma_M)[:, None]


@torch.no_grad()
def decompose_heads(model: ContrastiveModel, pixels_NCHW: torch.Tensor, batch_size: int,
                    embed_site: str = "vision.proj") -> HeadDecomposition:
    """Direct contributions of every vision head to the image embedding, and the heads' mean values."""
    heads = vision_heads(model)
    last_resid = model.layer_sites("vision", "resid_post")[-1]
    H = len(heads)
    bs = max(1, batch_size // 4)  # the head pass runs H + 1 copies of each chunk
    contribs, sums, n = [], {h: None for h in heads}, 0
    for i in range(0, pixels_NCHW.shape[0], bs):
        x = pixels_NCHW[i : i + bs]
        with model.trace(read=[*heads, last_resid]) as t:
            model.encode_image(x)
        clean = {h: t[h] for h in heads}
        for h in heads:
            s = clean[h].double().sum(0)
            sums[h] = s if sums[h] is None else sums[h] + s
        n += x.shape[0]
        r = t[last_resid][:, 0].double()
        sigma_B = (r.var(1, unbiased=False) + 1e-5).sqrt()  # the layer norm's scale on the clean residual
        o_BHD = _residual_writes(model, x, heads, clean)
        c = _through_final(model, x, o_BHD.flatten(0, 1).double(), sigma_B.repeat_interleave(H), last_resid,
                           embed_site)
        contribs.append(c.view(x.shape[0], H, -1).float())
    means = {h: (sums[h] / n).float() for h in heads}
    return HeadDecomposition(heads, torch.cat(contribs), means)


def cohens_d(x_N: torch.Tensor, groups_N: torch.Tensor) -> float:
    """|mean difference| of two groups over their pooled standard deviation."""
    a, b = x_N[groups_N == 0].double(), x_N[groups_N == 1].double()
    pooled = ((a.var(unbiased=False) + b.var(unbiased=False)) / 2).sqrt().clamp(min=1e-12)
    return float((a.mean() - b.mean()).abs() / pooled)


def mean_ablation(decomp: HeadDecomposition, chosen: list[str]) -> dict:
    """Writes that replace each chosen head's value by its mean over the fit images (every position)."""
    return {h: mean_ablate(decomp.means[h]) for h in chosen}


class HeadAblation(Method):
    """Mean-ablate the k vision heads whose direct contribution best separates the spurious attribute."""

    name = "head_ablation"
    capabilities = frozenset({"debias"})
    families = frozenset({"contrastive"})
    Config = HeadAblationConfig
    fits = True

    def supports(self, model: Model) -> str | None:
        return super().supports(model) or check_decomposable(model, self.config.embed_site)

    def debias(self, model: Model, request: DebiasRequest) -> Intervention:
        reason = check_decomposable(model, self.config.embed_site)
        if reason:
            raise BenchError(f"head_ablation: {reason}")
        assert isinstance(model, ContrastiveModel)
        heads = vision_heads(model)
        if not 0 <= self.config.k <= len(heads):
            raise BenchError(f"head_ablation: k must be between 0 and {len(heads)} (the vision heads), "
                             f"not {self.config.k}")
        if len(request.spurious_prompts) != 2:
            raise BenchError("head_ablation scores heads along a two-valued spurious attribute's text direction")
        decomp = decompose_heads(model, request.fit_pixels_BCHW, request.batch_size, self.config.embed_site)
        with torch.no_grad():
            t = model.encode_text(request.spurious_prompts)
        s_E = (t[0] - t[1]) / (t[0] - t[1]).norm()
        along_NH = decomp.contrib_NHE @ s_E
        scores_H = torch.tensor([cohens_d(along_NH[:, j], request.fit_spurious_B) for j in range(len(heads))], device="cpu")
        order = torch.argsort(scores_H, descending=True, stable=True)
        chosen = [heads[int(j)] for j in order[: self.config.k]]
        record_fit(self, "head_scores", {"scores": scores_H, **{f"mean:{h}": decomp.means[h] for h in chosen}})
        self.report(**{f"score:{h}": float(s) for h, s in zip(heads, scores_H)})
        return Intervention(mean_ablation(decomp, chosen), components=len(chosen),
                            description=f"mean-ablated {', '.join(chosen) or 'no heads'}")
