"""Logit lens: read intermediate residual states through the model's own unembedding.

nostalgebraist (2020), "interpreting GPT: the logit lens" (LessWrong); see also Belrose
et al. (2023), "Eliciting Latent Predictions from Transformers with the Tuned Lens" (the
tuned lens, a learned per-layer affine translator, is not implemented here). The lens of
a residual state ``h`` is ``model.unembed(h)`` (final norm, then unembedding).

``localize`` (generative) — the lens-read contribution of each candidate site at the
readout position ``p = request.positions_N`` (the position predicting the answer). With
``m(h) = lens(h)[answer] − lens(h)[alternative]`` (first token ids from
``model.word_token_ids``) and ``a_l`` the candidate's output (an MLP or attention block,
added to the residual stream at block ``l``), the score is

    read="local":  m(r_l) − m(r_l − a_l),   r_l = lm.blocks.{l}.resid_post at p
    read="final":  m(r_L) − m(r_L − a_l),   r_L = the last block's resid_post at p

i.e. how much the site's write moves the lens margin, read right after the layer
(``local``, default: the change from the residual just before the site's write to just
after it) or at the end of the stream (``final``: the site's direct effect on the output
logits, direct logit attribution through the final norm). All sites come from one clean
forward pass; no fitting. A site that writes the fact at another position (e.g. image
tokens) and lets later attention move it has no direct lens contribution at ``p``.

``detect_hallucination`` (generative) — intermediate-layer confidence, as in Jiang,
Kachinthaya, Petryk & Gandelsman (2024), "Interpreting and Editing Vision-Language Representations
to Mitigate Hallucinations": ``source="span"`` (default) — for each of the span's tokens
``s_t`` at position ``t``, the lens probability ``softmax(lens(h_{t−1}))[s_t]`` at
``lm.blocks.{layer}.resid_post`` (default the middle block), the model's intermediate
confidence in the token it produced; ``source="image"`` — Jiang et al.'s *internal
confidence*: the maximum over image-token positions of the lens probability of the
span's first token at that layer (for caption mentions; POPE answers "yes"/"no" are not
objects and fall back to ``span``). Per item the log-probabilities are averaged over the
span's tokens; the score is minus that (low confidence = more likely hallucinated).

Which localization question it answers (the localization task scores storage and mediation;
Hase et al., 2023): decodability through the unembedding of a site's contribution, close to its
direct effect; neither storage nor total mediation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.capabilities import HallucinationRequest, LocalizeRequest
from bench.errors import BenchError
from bench.method import Method, MethodConfig
from bench.model import GenerativeModel, Model


@dataclass(frozen=True)
class LogitLensConfig(MethodConfig):
    read: str = "local"  # localize: "local" (lens right after the site's layer) | "final" (at the last layer)
    layer: int | None = None  # detect_hallucination: LM block read through the lens; None = middle
    source: str = "span"  # detect_hallucination: "span" (produced tokens) | "image" (Jiang et al.'s max over image tokens)


def lens_margin(model: GenerativeModel, h_ND: torch.Tensor, ans_N: torch.Tensor, alt_N: torch.Tensor) -> torch.Tensor:
    """``lens(h)[answer] − lens(h)[alternative]`` per row."""
    logits_NV = model.unembed(h_ND).float()
    rows = torch.arange(h_ND.shape[0], device=h_ND.device)
    return logits_NV[rows, ans_N] - logits_NV[rows, alt_N]


class LogitLens(Method):
    """Logit lens (nostalgebraist, 2020): lens-read site contributions and intermediate confidence."""

    name = "logit_lens"
    answers = {"localize": "decodability (direct effect)"}
    capabilities = frozenset({"localize", "detect_hallucination"})
    families = frozenset({"generative"})
    Config = LogitLensConfig

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        if not model.layer_sites("lm", "resid_post"):
            return f"model {model.name!r} has no lm.blocks.*.resid_post sites to read through the lens"
        return None

    def _check(self) -> None:
        if self.config.read not in ("local", "final"):
            raise BenchError(f"logit_lens: read must be 'local' or 'final', not {self.config.read!r}")
        if self.config.source not in ("span", "image"):
            raise BenchError(f"logit_lens: source must be 'span' or 'image', not {self.config.source!r}")

    # ------------------------------------------------------------ localize
    @torch.no_grad()
    def localize(self, model: Model, request: LocalizeRequest) -> torch.Tensor:
        self._check()
        assert isinstance(model, GenerativeModel)
        if request.positions_N is None or not request.answers or not request.alternatives:
            raise BenchError("logit_lens: localize needs readout positions, answers and alternatives")
        cands = request.candidates
        resid = {s.layer: s.name for s in model.sites(tower="lm", kind="resid_post")}
        layers = []
        for c in cands:
            site = model.site(c)
            if site.tower != "lm" or site.layer is None or site.kind not in ("mlp", "attn"):
                raise BenchError(f"logit_lens: candidate {c!r} is not an LM block's mlp or attn output")
            layers.append(site.layer)
        last = max(resid)
        reads = sorted({*cands, *(resid[l] for l in layers), resid[last]})
        _, tr = request.evaluate("clean", read=reads)
        pos_N = request.positions_N
        rows = torch.arange(request.n, device=pos_N.device)  # index pairs on one device (CPU indices may index a GPU trace)
        at_p = {s: tr[s][rows, pos_N].float() for s in reads}  # [n, D] at the readout position
        ans_N = model.word_token_ids(list(request.answers))
        alt_N = model.word_token_ids(list(request.alternatives))
        out = torch.empty(request.n, len(cands), dtype=torch.float64, device="cpu")
        for k, (c, l) in enumerate(zip(cands, layers)):
            r_ND = at_p[resid[last] if self.config.read == "final" else resid[l]]
            out[:, k] = (lens_margin(model, r_ND, ans_N, alt_N) - lens_margin(model, r_ND - at_p[c], ans_N, alt_N)).double()
        return out

    # ---------------------------------------------------- detect_hallucination
    @torch.no_grad()
    def detect_hallucination(self, model: Model, request: HallucinationRequest) -> torch.Tensor:
        self._check()
        assert isinstance(model, GenerativeModel)
        site = model.layer_site_at("lm", "resid_post", self.config.layer)
        items = request.items
        out = []
        for sl, enc, t, _ in model.span_batches(items, request.batch_size, read=[site]):
            h_BLD = t[site]
            # span mode: the state at p − 1 predicts the token at p
            logp_BLV = model.unembed(h_BLD[:, :-1]).float().log_softmax(-1)
            tok_BL = logp_BLV.gather(-1, enc.ids_BL[:, 1:, None])[..., 0]
            span_BL = enc.span_BL[:, 1:].float()
            conf_B = (tok_BL * span_BL).sum(1) / span_BL.sum(1)
            if self.config.source == "image":
                first_B = enc.span_BL.float().argmax(1)
                obj_B = enc.ids_BL.gather(1, first_B[:, None])[:, 0]
                img_BL = enc.image_BL
                # lens log-probability of the object token at every image position, max over them
                B, L = enc.ids_BL.shape
                logp_img_BL = model.unembed(h_BLD).float().log_softmax(-1).gather(
                    -1, obj_B[:, None, None].expand(B, L, 1))[..., 0]
                internal_B = logp_img_BL.masked_fill(~img_BL, float("-inf")).max(1).values
                is_obj_B = torch.tensor([k == "caption" for k in items.kinds[sl]], device=img_BL.device) & img_BL.any(1)
                conf_B = torch.where(is_obj_B, internal_B, conf_B)
            out.append(-conf_B.double())
        return torch.cat(out)
