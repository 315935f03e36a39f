"""Representation decomposition: each candidate site's direct contribution to the metric.

Elhage et al. (2021), "A Mathematical Framework for Transformer Circuits" (Anthropic): the
residual stream at the readout is a sum of the outputs of every component, so with the final
norm's scale frozen, the readout (logits) splits into a sum of per-component direct effects;
Gandelsman, Efros & Steinhardt (2024), "Interpreting CLIP's Image Representation via
Text-Based Decomposition" (ICLR) apply the same decomposition to CLIP's image embedding
(CLS token → post-layernorm → projection → similarity to texts).

What this method computes per example ``i`` and candidate site ``c`` (the site's output
``x_c`` in the clean run, which is added to the residual stream), with the final norm
``N(h) = γ ⊙ P(h) / σ(h) + β`` (LayerNorm: P centres, σ = std; RMSNorm: P = id, σ = rms)
frozen at the clean run's ``σ(r_i)`` of the final residual ``r_i``::

    Nf(x) = γ ⊙ P(x) / σ(r_i)          (linear in x; Σ over all components of Nf + β = N(r))

- generative: ``score = (W_U[answer] − W_U[alternative]) · Nf(x_c)`` at the readout position
  ``positions_N`` (the unembedding applied through ``model.unembed`` with the ``lm.final``
  site overwritten by ``Nf(x_c)``; answer tokens from ``model.word_token_ids``);
- contrastive: ``score = s · (Proj Nf(x_c)) / ‖e_i‖ · (text(answer) − text(alternative))``, the
  CLS output through the post-layernorm and the projection (``vision.proj``), divided by the
  clean embedding's norm (frozen too, as the embedding is unit-normalised), against
  ``model.encode_text`` of the template ``prompts[i].format(value=…)``, with ``s`` the logit
  scale of ``model.similarity_to``. These two sum, over every component (embedding, every
  attention and MLP output), to the clean metric minus a constant (the norm's bias ``β``).
- diffusion: the text encoder reaches the metric only through the UNet's cross-attention, so
  there is no linear read-out. The direct effect is measured by removing only the direct
  path: ``score = metric(clean) − metric(clean with Nf(x_c) subtracted from the text
  encoder's final states at every position)`` (``text.final`` overwritten; the site's output
  still reaches later layers as usual). Batched: one batch copy per candidate.

Scores are signed (positive = the site pushes towards the clean answer); ``absolute=True``
ranks by magnitude.

Which localization question it answers (the localization task scores storage and mediation;
Hase et al., 2023): the direct effect only: a site's own path to the output, without its effect
through later sites. A site that writes a fact which a later site reads out scores low here, so
this answers neither storage nor total mediation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.capabilities import LocalizeRequest
from bench.errors import BenchError
from bench.method import Method, MethodConfig
from bench.model import ContrastiveModel, DiffusionModel, GenerativeModel, Model


@dataclass(frozen=True)
class DecompositionConfig(MethodConfig):
    absolute: bool = False  # rank by |direct effect| instead of the signed effect
    check_tol: float = 1e-3  # relative tolerance of the frozen-norm self-check


def frozen_norm(norm: nn.Module, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``γ ⊙ P(x) / σ(ref)`` (no bias) for a LayerNorm or an RMSNorm (``weight`` and
    ``variance_epsilon``/``eps``); ``ref`` broadcasts against ``x`` over leading dims."""
    w = getattr(norm, "weight", None)
    if isinstance(norm, nn.LayerNorm):
        sigma = (ref.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
        y = (x - x.mean(-1, keepdim=True)) / sigma
    elif w is not None and (hasattr(norm, "variance_epsilon") or hasattr(norm, "eps")):
        eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 0.0)))
        y = x / (ref.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    else:
        raise BenchError(f"decomposition: unsupported final norm {type(norm).__name__}")
    return y * w.detach().to(y.dtype) if w is not None else y


def norm_bias(norm: nn.Module) -> torch.Tensor | None:
    b = getattr(norm, "bias", None)
    return b.detach() if isinstance(b, torch.Tensor) else None


class Decomposition(Method):
    """Direct (residual-stream) contribution of each site to the metric, final norm frozen (Elhage et al., 2021)."""

    name = "decomposition"
    answers = {"localize": "direct effect"}
    capabilities = frozenset({"localize"})
    families = frozenset({"contrastive", "generative", "diffusion"})
    Config = DecompositionConfig

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        tower = {"generative": "lm", "contrastive": "vision", "diffusion": "text"}[model.family]
        if not model.sites(tower=tower, kind="final") or not model.layer_sites(tower, "resid_post"):
            return f"model {model.name!r} exposes no final norm / residual sites in its {tower!r} tower"
        if model.family == "contrastive" and not model.sites(tower=tower, kind="proj"):
            return f"model {model.name!r} exposes no image projection site"
        return None

    # ------------------------------------------------------------------ the readout parts
    def _parts(self, model: Model, tower: str) -> tuple[str, str, nn.Module]:
        final = model.sites(tower=tower, kind="final")[0].name
        last = model.layer_sites(tower, "resid_post")[-1]
        return final, last, model.module.get_submodule(model.site_specs[final].module)

    def _check(self, norm: nn.Module, r: torch.Tensor, normed: torch.Tensor) -> None:
        """The frozen norm of the whole residual plus the bias must be the norm's clean output."""
        b = norm_bias(norm)
        rebuilt = frozen_norm(norm, r, r) + (b.to(r.dtype) if b is not None else 0)
        err = float((rebuilt - normed).abs().max() / normed.abs().max().clamp_min(1e-12))
        if err > self.config.check_tol:
            raise BenchError(f"decomposition: the final norm {type(norm).__name__} is not a plain LayerNorm/RMSNorm "
                             f"(rebuilt clean output off by {err:.2g})")

    def localize(self, model: Model, request: LocalizeRequest) -> torch.Tensor:
        cands = request.candidates
        towers = {model.site(c).tower for c in cands}
        if len(towers) != 1:
            raise BenchError(f"decomposition: candidates span several towers {sorted(towers)}")
        tower = towers.pop()
        final, last, norm = self._parts(model, tower)
        if isinstance(model, DiffusionModel):
            out = self._direct_path(model, request, final, last, norm)
        else:
            extra = [s.name for s in model.sites(tower=tower, kind="proj")][:1] if isinstance(model, ContrastiveModel) else []
            with torch.no_grad():
                _, tr = request.evaluate("clean", read=[*cands, last, final, *extra])
                r_ND = request.pooled(tr[last])
                self._check(norm, r_ND, request.pooled(tr[final]))
                x_KND = torch.stack([request.pooled(tr[c]) for c in cands])
                f_KND = frozen_norm(norm, x_KND, r_ND[None])
                if isinstance(model, GenerativeModel):
                    out = self._generative(model, request, final, f_KND)
                elif isinstance(model, ContrastiveModel):
                    out = self._contrastive(model, request, extra[0], tr[extra[0]], f_KND)
                else:
                    raise BenchError(f"decomposition: no {model.family} setting")
        return out.abs() if self.config.absolute else out

    def _generative(self, model: GenerativeModel, request: LocalizeRequest, final: str,
                    f_KND: torch.Tensor) -> torch.Tensor:
        K, n, D = f_KND.shape
        # one extra zero row: what the unembedding adds to any input (its bias, if any)
        rows_RD = torch.cat([f_KND.reshape(K * n, D), f_KND.new_zeros(1, D)])[:, None]
        with model.trace(write={final: lambda v: rows_RD.to(v.dtype)}):
            logits_RV = model.unembed(torch.zeros_like(rows_RD))[:, 0].double()
        ans_N, alt_N = model.word_token_ids(request.answers), model.word_token_ids(request.alternatives)
        ans_R, alt_R = ans_N.repeat(K), alt_N.repeat(K)
        body = logits_RV[: K * n]
        d_R = body[torch.arange(K * n, device=body.device), ans_R.to(body.device)] - body[torch.arange(K * n, device=body.device), alt_R.to(body.device)]
        bias_N = logits_RV[-1, ans_N] - logits_RV[-1, alt_N]
        return (d_R.view(K, n) - bias_N[None]).T.contiguous()

    def _contrastive(self, model: ContrastiveModel, request: LocalizeRequest, proj_site: str,
                     e_clean: torch.Tensor, f_KND: torch.Tensor) -> torch.Tensor:
        K, n, D = f_KND.shape
        proj = model.module.get_submodule(model.site_specs[proj_site].module)
        w_dtype = next(proj.parameters()).dtype
        z_KNP = proj(f_KND.to(w_dtype)) - proj(torch.zeros(1, D, dtype=w_dtype, device=f_KND.device))  # the linear part only
        z_KNP = z_KNP / e_clean.norm(dim=-1)[None, :, None]  # the embedding's unit norm, frozen at clean
        texts = sorted({p.format(value=v) for p, a, b in zip(request.prompts, request.answers, request.alternatives)
                        for v in (a, b)})
        t_TP = model.encode_text(texts)
        a_N = torch.tensor([texts.index(p.format(value=a)) for p, a in zip(request.prompts, request.answers)], device="cpu")
        b_N = torch.tensor([texts.index(p.format(value=b)) for p, b in zip(request.prompts, request.alternatives)], device="cpu")
        sims = model.similarity_to(z_KNP.reshape(K * n, -1), t_TP).view(K, n, -1).double()
        rows = torch.arange(n, device="cpu")
        return (sims[:, rows, a_N] - sims[:, rows, b_N]).T.contiguous()

    def _direct_path(self, model: Model, request: LocalizeRequest, final: str, last: str,
                     norm: nn.Module) -> torch.Tensor:
        cands, n = request.candidates, request.n
        with torch.no_grad():
            base_N, tr = request.evaluate("clean", read=[*cands, last, final])
            r_NLD = tr[last]
            self._check(norm, r_NLD, tr[final])
            f_KNLD = frozen_norm(norm, torch.stack([tr[c] for c in cands]), r_NLD[None])
            K = len(cands)
            drop = f_KNLD.reshape(K * n, *f_KNLD.shape[2:])
            removed_N, _ = request.evaluate("clean", write={final: lambda v: v - drop.to(v.dtype)}, copies=K)
        return (base_N[:, None].double() - removed_N.view(K, n).T.double()).contiguous()
