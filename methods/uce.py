"""UCE and TIME: closed-form edits of a diffusion model's cross-attention projections.

Gandikota, Orgad, Belinkov, Materzyńska & Bau (2024), "Unified Concept Editing in Diffusion
Models" (WACV) — ``variant="uce"`` — and Orgad, Kawar & Belinkov (2023), "Editing Implicit
Assumptions in Text-to-Image Diffusion Models" (ICCV) — ``variant="time"``.

Every cross-attention key and value projection ``W`` (``attn2.to_k`` / ``attn2.to_v`` of the
UNet, sites ``unet.*.cross.k`` / ``.v``) reads the text encoder's output embeddings ``c``.
An edit asks ``W c_i ≈ v*_i`` for the embeddings ``c_i`` of the edited tokens, and is solved
in closed form per projection:

    UCE:  W ← (Σ_i v*_i c_iᵀ + s Σ_p W c_p c_pᵀ + λ W) (Σ_i c_i c_iᵀ + s Σ_p c_p c_pᵀ + λ I)⁻¹
    TIME: W ← (Σ_i v*_i c_iᵀ + λ W) (Σ_i c_i c_iᵀ + λ I)⁻¹

``λ`` (``lamb``) pulls toward the old weights (TIME's ridge, also in UCE's released code);
``s`` (``preserve_scale``) weights UCE's preservation set ``p``, whose outputs are kept.

The edited tokens ``c_i``: from the subject word's first token through the prompt's end token
(``trailing=True``, the alignment of UCE's code: the end token also carries the concept in a
causal text encoder), or the subject's tokens only. The targets ``v*_i`` depend on the kind
of rewrite, told apart by whether the prompt names ``old``:

- **concept edits** (``old`` is a word of the prompt, "a red circle"; ``new`` a replacement
  word, or "" to erase): ``v*_i = W c'_i`` with ``c'`` the embeddings of the prompt with
  ``old`` replaced by ``new``, aligned token by token from the replaced word on; an erasure
  maps onto the empty prompt's tokens from its begin token on (UCE maps erased concepts to the
  embedding of " "). Key and value projections are both edited (``edit_keys``). UCE's
  preservation set: the same prompts with ``old`` replaced by each other of the request's
  ``values`` (other concepts keep their outputs), the prompts' tokens before the edit, and
  ``preserve_prompts``.
- **fact rewrites** (the prompt does not name ``old``: "a <entity>" whose home should read
  "south"; the editor is not told what that draws): the targets come from the renders. A
  vector per value projection ``δ_l`` is added to its output at the edited tokens and
  optimised (Adam, ``steps``, optional relative L2 penalty ``weight_decay``) on the denoising error of
  the renders at fixed (timestep, noise) draws — ROME's ``v*``, here for the values — and
  ``v*_i = W_l c_i + δ_l``; keys are left as they are. UCE's preservation set: the prompts'
  other tokens and ``preserve_prompts``.

Diffusion models only. Deterministic (seeded draws, full-batch Adam from zero).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch
from torch import nn

from bench.capabilities import EditRequest
from bench.errors import BenchError
from bench.kit.fitting import record_fit
from bench.method import Method, MethodConfig
from bench.model import DiffusionModel, Model, subject_word
from methods.rome import edit_batch

VARIANTS = ("uce", "time")


@dataclass(frozen=True)
class UCEConfig(MethodConfig):
    variant: str = "uce"  # "uce" (with a preservation set) | "time" (ridge toward the old weights only)
    lamb: float = 0.1  # λ: ridge toward the old weights
    preserve_scale: float = 1.0  # s: weight of UCE's preservation set
    edit_keys: bool = True  # concept edits: also edit to_k (fact rewrites edit values only)
    trailing: bool = True  # edit the tokens from the subject through the end token (else the subject's only)
    preserve_prompts: tuple[str, ...] = ()  # extra prompts whose cross-attention outputs UCE keeps
    steps: int = 40  # fact rewrites: Adam steps of the value targets
    lr: float = 1.0
    # relative L2 penalty on the value shifts. Measured on zoo-diffusion (seed-0 editing case
    # "a kazope": north/circle → east/triangle): the denoising loss moves by ~0.01 between
    # drawings, so a penalty of 0.1 (with lr 0.1) kept δ ≈ 0 and the edit did nothing; with
    # 0 (lr 1) all 8 samples drew the new shape
    weight_decay: float = 0.0
    draws: int = 4  # fact rewrites: (timestep, noise) draws per render
    seed: int = 0


def names_word(prompt: str, word: str) -> bool:
    return bool(word) and re.search(rf"(?<!\w){re.escape(word)}(?!\w)", prompt, re.IGNORECASE) is not None


def replace_word(prompt: str, old: str, new: str) -> str:
    return re.sub(rf"(?<!\w){re.escape(old)}(?!\w)", new, prompt, count=1, flags=re.IGNORECASE)


def closed_form(W0_ED: torch.Tensor, c_ND: torch.Tensor, v_NE: torch.Tensor, p_PD: torch.Tensor | None,
                lamb: float, preserve_scale: float) -> torch.Tensor:
    """``(Σ v cᵀ + s Σ W₀ p pᵀ + λ W₀)(Σ c cᵀ + s Σ p pᵀ + λ I)⁻¹`` (UCE; TIME with no ``p``)."""
    A = v_NE.T @ c_ND + lamb * W0_ED
    B = c_ND.T @ c_ND + lamb * torch.eye(W0_ED.shape[1], dtype=W0_ED.dtype, device=W0_ED.device)
    if p_PD is not None and preserve_scale > 0:
        A = A + preserve_scale * (W0_ED @ p_PD.T) @ p_PD
        B = B + preserve_scale * p_PD.T @ p_PD
    return torch.linalg.solve(B, A.T).T  # B symmetric: A B⁻¹ = (B⁻¹ Aᵀ)ᵀ


class UCE(Method):
    """UCE (Gandikota et al., 2024) / TIME (Orgad et al., 2023): closed-form cross-attention edits."""

    name = "uce"
    capabilities = frozenset({"edit"})
    families = frozenset({"diffusion"})
    Config = UCEConfig

    def __init__(self, config: UCEConfig | None = None, **overrides: object) -> None:
        super().__init__(config, **overrides)
        c = self.config
        if c.variant not in VARIANTS:
            raise BenchError(f"uce: variant must be one of {VARIANTS}, got {c.variant!r}")
        if c.lamb <= 0 or c.preserve_scale < 0 or c.weight_decay < 0 or c.lr <= 0:
            raise BenchError("uce: lamb and lr must be > 0, preserve_scale and weight_decay ≥ 0")
        if c.steps < 1 or c.draws < 1:
            raise BenchError("uce: steps and draws must be ≥ 1")

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        tower = getattr(model, "denoiser_tower", "unet")
        if model.layer_sites(tower, "context_v"):
            # MMDiT (SD3, Flux): the text stream's key/value projections read AdaLN-modulated states
            # (a function of the timestep) that, after the first block, have attended to the image:
            # no fixed input c per prompt token, which the closed form W c ≈ v* needs
            return (f"uce: {model.name!r} conditions on text through joint attention, whose text key/value "
                    f"projections read timestep-modulated states that (after the first block) depend on the "
                    f"image, so UCE/TIME's closed-form edit (fixed inputs per prompt token) does not apply")
        if not model.layer_sites(tower, "cross_v"):
            return f"uce: {model.name!r} has no cross-attention value sites in its denoiser (unet.*.cross.v)"
        return None

    # ------------------------------------------------------------------ token positions
    def _positions(self, model: DiffusionModel, prompt: str, word: str, n_real: int) -> list[int]:
        pos = model.prompt_token_positions([prompt], word)[0]
        return list(range(pos[0], n_real)) if self.config.trailing else pos

    @torch.no_grad()
    def _embed(self, model: DiffusionModel, prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
        enc = model.encode_prompts(prompts)
        # the vectors the cross-attention's key/value projections multiply (a DiT may project the
        # text encoder's states first)
        return model.cross_attention_context(enc.hidden_BLD).double(), [int(n) for n in enc.mask_BL.sum(1)]

    # ------------------------------------------------------------------ the edit
    def edit(self, model: Model, request: EditRequest) -> None:
        cfg = self.config
        tower = model.denoiser_tower
        k_sites, v_sites = model.layer_sites(tower, "cross_k"), model.layer_sites(tower, "cross_v")
        lin = {s: model.module.get_submodule(model.site_specs[s].module) for s in k_sites + v_sites}
        if not all(isinstance(m, nn.Linear) for m in lin.values()):
            raise BenchError("uce: the cross-attention key/value projections must be linear layers")
        # per projection: edited inputs c [N, D_in] and targets v* [N, D_out], preserved inputs
        C_in: dict[str, list[torch.Tensor]] = {s: [] for s in lin}
        V_out: dict[str, list[torch.Tensor]] = {s: [] for s in lin}
        P_in: list[torch.Tensor] = []
        W = {s: m.weight.detach().double() for s, m in lin.items()}

        concept = [k for k, (p, o) in enumerate(zip(request.prompts, request.old)) if names_word(p, o)]
        facts = [k for k in range(len(request.prompts)) if k not in concept]
        if concept:
            self._concept_targets(model, request, concept, W, C_in, V_out, P_in)
        if facts:
            self._fact_targets(model, request, facts, W, v_sites, C_in, V_out, P_in)
        keep = cfg.preserve_prompts
        if isinstance(keep, str):  # from the command line: "a red square,a blue cross"
            keep = tuple(p.strip() for p in keep.split(",") if p.strip())
        if keep:
            H, n = self._embed(model, list(keep))
            P_in += [H[b, :n[b]] for b in range(len(n))]

        s_p = cfg.preserve_scale if cfg.variant == "uce" else 0.0
        P = torch.cat(P_in) if P_in and s_p > 0 else None
        changed = 0.0
        with torch.no_grad():
            for s, m in lin.items():
                if not C_in[s]:
                    continue
                W0 = W[s]
                W_new = closed_form(W0, torch.cat(C_in[s]), torch.cat(V_out[s]), P, cfg.lamb, s_p)
                changed += float((W_new - W0).norm() / W0.norm())
                m.weight.copy_(W_new.to(m.weight.dtype))
        self.report(edited_tokens=float(sum(len(torch.cat(x)) for x in C_in.values() if x) / max(1, len(lin))),
                    preserved_tokens=float(0 if P is None else len(P)), relative_change=changed / len(lin),
                    concept_rewrites=float(len(concept)), fact_rewrites=float(len(facts)))

    def _concept_targets(self, model: DiffusionModel, request: EditRequest, ks: list[int],
                         W: dict[str, torch.Tensor], C_in: dict[str, list[torch.Tensor]],
                         V_out: dict[str, list[torch.Tensor]], P_in: list[torch.Tensor]) -> None:
        cfg = self.config
        olds = [request.prompts[k] for k in ks]
        news = [replace_word(request.prompts[k], request.old[k], request.new[k]) if request.new[k] else ""
                for k in ks]
        H_old, n_old = self._embed(model, olds)
        H_new, n_new = self._embed(model, news)
        edit_sites = [s for s in W if ".cross.v" in s or (cfg.edit_keys and ".cross.k" in s)]
        for j, k in enumerate(ks):
            pos = self._positions(model, olds[j], request.old[k], n_old[j])
            if request.new[k]:
                tgt = self._positions(model, news[j], request.new[k], n_new[j])
            else:  # erasure: onto the empty prompt's tokens from its begin token
                tgt = list(range(n_new[j]))
            tgt = [tgt[min(i, len(tgt) - 1)] for i in range(len(pos))]
            c = H_old[j, pos]
            for s in edit_sites:
                C_in[s].append(c)
                V_out[s].append(H_new[j, tgt] @ W[s].T)
            P_in.append(H_old[j, : pos[0]])  # the prompt's tokens before the edit keep their outputs
            vals = request.values[k] if k < len(request.values) else ()
            keep = [replace_word(olds[j], request.old[k], v) for v in vals if v != request.old[k]]
            if keep:
                H_keep, n_keep = self._embed(model, keep)
                P_in += [H_keep[b, 1 : n_keep[b]] for b in range(len(keep))]

    def _fact_targets(self, model: DiffusionModel, request: EditRequest, ks: list[int], W: dict[str, torch.Tensor],
                      v_sites: list[str], C_in: dict[str, list[torch.Tensor]], V_out: dict[str, list[torch.Tensor]],
                      P_in: list[torch.Tensor]) -> None:
        cfg = self.config
        sub = replace(request.select(ks), site=None)
        batch = edit_batch(model, sub, "subject", cfg.draws, cfg.seed)
        H, n = self._embed(model, sub.prompts)
        sel_BL = torch.zeros_like(batch.subject_BL)
        positions = []
        for j, p in enumerate(sub.prompts):
            pos = self._positions(model, p, subject_word(p, sub.old[j]), n[j])
            positions.append(pos)
            sel_BL[(batch.request_B == j).nonzero()[:, 0][:, None], torch.tensor(pos, device=sel_BL.device)[None]] = True
        sel = sel_BL[..., None].float()
        # reference norms: the value outputs at the edited tokens (for the relative penalty)
        edited = torch.cat([H[j, pos] for j, pos in enumerate(positions)]).float()
        ref = [(edited @ W[s].float().T).norm(dim=-1).mean() for s in v_sites]
        # one shift per value site: their widths differ across UNet levels (Stable Diffusion: 320-1280)
        deltas_KE = [torch.zeros(len(ks), W[s].shape[0], device=W[s].device, requires_grad=True) for s in v_sites]
        rows = batch.request_B

        def shift(l: int):  # noqa: ANN202 - an edit function for value site l
            return lambda v: v + sel * deltas_KE[l][rows][:, None, :]

        writes = {s: shift(l) for l, s in enumerate(v_sites)}
        opt = torch.optim.Adam(deltas_KE, lr=cfg.lr)
        with torch.no_grad():
            before = float(batch.loss_K().mean())
        with torch.enable_grad():
            for _ in range(cfg.steps):
                with model.trace(write=writes):
                    loss = batch.loss_K().sum() + cfg.weight_decay * sum(
                        (d.pow(2).sum(-1) / r.pow(2)).sum() for d, r in zip(deltas_KE, ref))
                grads = torch.autograd.grad(loss, deltas_KE)
                opt.zero_grad(set_to_none=True)
                for d, g in zip(deltas_KE, grads):
                    d.grad = g
                opt.step()
        with torch.no_grad(), model.trace(write=writes):
            after = float(batch.loss_K().mean())
        delta = [d.detach().double() for d in deltas_KE]
        record_fit(self, "value_shifts", torch.cat(delta, dim=1))
        for j, pos in enumerate(positions):
            c = H[j, pos]
            for l, s in enumerate(v_sites):
                C_in[s].append(c)
                V_out[s].append(c @ W[s].T + delta[l][j])
            P_in.append(H[j, : pos[0]])
        self.report(loss_before=before, loss_target=after)
