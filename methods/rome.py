"""ROME: rank-one model editing of one MLP's output projection.

Meng, Bau, Andonian & Belinkov (2022), "Locating and Editing Factual Associations in GPT"
(NeurIPS). An MLP's output projection ``W`` (``down_proj`` / ``fc2``) is read as a linear
key–value memory: the key ``k`` is the MLP's hidden activation (the input of ``W``, site
``<mlp>.neurons``) at the subject, the value ``W k`` what the MLP writes there. A rewrite
inserts one new pair ``(k*, v*)``:

- ``k*``: the mean key over the subject positions of the request's inputs;
- ``v* = W k* + δ``: ``δ`` is found by a short optimisation (Adam, ``steps``) of a vector
  added to the MLP's output at the subject positions so that the model gives the new
  answer, with an L2 penalty ``weight_decay·‖δ‖²/‖h‖²`` (``‖h‖`` the mean norm of the MLP's
  output at the subject; ``diffusion_weight_decay``, default 0, for diffusion models) and ``‖δ‖`` clamped to ``clamp`` times
  the mean norm of the MLP's output there (ROME's ``v_weight_decay`` and norm clamp; ROME's
  KL "essence" term is left out: the request holds no other prompts about the subject);
- ``W ← W + (v* − W k*)(C⁻¹k*)ᵀ / (k*ᵀ C⁻¹ k*)``, which maps ``k*`` to ``v*`` exactly while
  changing ``W k`` least for keys typical under ``C``.

``C`` is the keys' second moment. ROME estimates it on Wikipedia text; an edit request holds
only its own inputs, so here ``C = mean(k kᵀ) + ridge·tr(C)/F·I`` over the keys at *every*
position of the request's inputs (all image and text tokens of the renders; the prompt
tokens for a text encoder), the ridge keeping it invertible when there are fewer keys than
neurons (``F``).

Per family (what "the new answer" and "the subject" are):

- generative (the language model's MLPs): the loss is the cross-entropy of the new answer's
  first token at the answer position, over the renders with the request's question. The
  subject is a glyph *image*; ``positions="readout"`` (default) takes the key at the answer
  position, ``"subject"`` the mean over the image tokens. Measured (editing task, seed 0,
  quick, planted sites): the readout position edits reliably and the image tokens do not —
  a relation planted in the tower's last MLP cannot be reached from image tokens at all
  (nothing after that MLP carries them to the answer position / CLS: ``δ`` gets no gradient),
  and one mean key over 64 heterogeneous image-token keys is a poor key elsewhere.
- contrastive (the vision tower's MLPs): cross-entropy of the request's template filled with
  ``new`` among the template filled with each of ``values``; ``"readout"`` is the CLS token
  (what the image embedding is read from), ``"subject"`` the image tokens.
- diffusion (the text encoder's MLPs): the subject is the entity word of the prompt (the
  request's ``old`` word when the prompt contains it, a concept edit; else the prompt's last
  word, "a <entity>"), located with ``model.prompt_token_positions``; the loss is the
  denoising error of the renders (what the prompt should now draw) at ``draws`` fixed
  (timestep, noise) draws per render, as the fine-tuning baseline's.

Site: ``request.site`` when given (a non-MLP site of a block is mapped to that block's MLP),
else the config's ``site``, else the middle MLP of the tower (lm / vision / text). Several
rewrites in one request are applied one after the other, each computed on the model as
already edited. Deterministic: full-batch Adam from zero, fixed draws from a seeded generator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch import nn

from bench.capabilities import EditRequest, ObjectiveOptions
from bench.kit.editing import FACT_TOWER, fact_mlp_sites, middle_fact_mlp
from bench.errors import BenchError
from bench.kit.fitting import record_fit
from bench.method import Method, MethodConfig
from bench.model import DiffusionModel, Model

POSITIONS = ("readout", "subject")


# ----------------------------------------------------------------------------- sites and weights
def resolve_mlp_site(model: Model, site: str, who: str) -> str:
    """``site`` as an MLP site: an MLP site as is; another site of block ``i`` of a tower → that
    block's MLP (e.g. a localized ``lm.blocks.1.attn``)."""
    if site not in model.site_specs:
        model.site(site)  # raises with "did you mean"
    s = model.site(site)
    if s.kind == "mlp":
        return site
    m = re.match(r"^(.*\.blocks\.\d+)\.", site)
    if m and f"{m.group(1)}.mlp" in model.site_specs:
        return f"{m.group(1)}.mlp"
    raise BenchError(f"{who}: site {site!r} is not in a transformer block with an MLP; "
                     f"pass an MLP site such as {fact_mlp_sites(model)[:1]}")


def out_projection(model: Model, mlp_site: str) -> nn.Linear:
    """The MLP's output projection: the last ``nn.Linear`` inside the MLP module (``fc2`` of a
    CLIP MLP, ``down_proj`` of a Llama MLP); :func:`read_keys` checks that its input width is
    the width of the ``<mlp>.neurons`` site."""
    mlp = model.module.get_submodule(model.site_specs[mlp_site].module)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise BenchError(f"site {mlp_site!r} holds no linear layer to edit")
    # registration order is the forward order in transformers' MLPs (fc1, fc2 / gate, up, down)
    return linears[-1]


def neurons_site(model: Model, mlp_site: str) -> str:
    name = f"{mlp_site}.neurons"
    if name not in model.site_specs:
        raise BenchError(f"{mlp_site!r} has no neurons site ({name!r}) to read the MLP's keys from")
    return name


def resid_site(model: Model, mlp_site: str) -> str:
    name = mlp_site.removesuffix(".mlp") + ".resid_post"
    if name not in model.site_specs:
        raise BenchError(f"{mlp_site!r} has no residual-output site ({name!r})")
    return name


# ----------------------------------------------------------------------------- the request as inputs
@dataclass
class EditBatch:
    """The request's inputs as one batch: ``loss_K()`` runs the model and returns the loss of
    the new answer per rewrite ``[K]``; ``subject_BL`` marks where each row's subject is in the
    edited tower's token stream, ``valid_BL`` every real token (for the key covariance);
    ``request_B`` the rewrite each row belongs to."""

    loss_K: Callable[[], torch.Tensor]
    subject_BL: torch.Tensor
    valid_BL: torch.Tensor
    request_B: torch.Tensor
    K: int


def edit_batch(model: Model, request: EditRequest, positions: str, draws: int = 4, seed: int = 0) -> EditBatch:
    """The request's read-out (:meth:`bench.capabilities.EditRequest.objective`) as one batch at
    ``draws`` fixed (timestep, noise) draws per render (diffusion), its subject at ``positions``."""
    if positions not in POSITIONS:
        raise BenchError(f"positions must be one of {POSITIONS}, got {positions!r}")
    obj = request.objective(model, ObjectiveOptions(draws=draws, seed=seed))
    return EditBatch(obj.loss_K, obj.subject_BL(positions), obj.valid_BL, obj.request_B, obj.K)


# ----------------------------------------------------------------------------- v*: the target value
def optimise_delta(model: Model, batch: EditBatch, site: str, steps: int, lr: float, weight_decay: float,
                   clamp: float) -> tuple[torch.Tensor, dict[str, float]]:
    """One vector per rewrite ``δ_KD`` added to ``site``'s output at the subject positions that
    lowers the new answer's loss: Adam from zero, L2 penalty relative to the output's norm, norm clamped to ``clamp`` × the
    mean norm of the site's output at the subject (ROME's v* optimisation)."""
    with torch.no_grad(), model.trace(read=[site]) as tr:
        before_K = batch.loss_K()
    out_BLD = tr[site]
    at_subject = out_BLD[batch.subject_BL].norm(dim=-1)
    ref_norm = float(at_subject.mean()) if at_subject.numel() else 1.0
    max_norm = clamp * ref_norm
    delta_KD = torch.zeros(batch.K, out_BLD.shape[-1], device=out_BLD.device, requires_grad=True)
    sel_BL1 = batch.subject_BL[..., None].to(out_BLD.dtype)
    rows = batch.request_B

    def add(v: torch.Tensor) -> torch.Tensor:
        return v + sel_BL1 * delta_KD[rows][:, None, :]

    opt = torch.optim.Adam([delta_KD], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            with model.trace(write={site: add}):
                # ROME's decay is relative to the norm of what the MLP writes there
                loss = batch.loss_K().sum() + weight_decay * delta_KD.pow(2).sum() / ref_norm**2
            (grad,) = torch.autograd.grad(loss, [delta_KD])  # no gradient for the frozen weights
            opt.zero_grad(set_to_none=True)
            delta_KD.grad = grad
            opt.step()
            with torch.no_grad():
                norms = delta_KD.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                delta_KD.mul_(torch.clamp(max_norm / norms, max=1.0))
    with torch.no_grad(), model.trace(write={site: add}):
        after_K = batch.loss_K()
    return delta_KD.detach(), {"loss_before": float(before_K.mean()), "loss_target": float(after_K.mean()),
                               "delta_norm": float(delta_KD.detach().norm(dim=-1).mean())}


# ----------------------------------------------------------------------------- keys and updates
@torch.no_grad()
def read_keys(model: Model, batch: EditBatch, sites: list[str], write: dict | None = None
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per site: the mean key at each rewrite's subject positions ``[K, F]`` and every valid key
    ``[N, F]`` (for the covariance), from one forward pass."""
    with model.trace(read=sites, write=write or {}, stop_after_reads=True) as tr:
        batch.loss_K()  # cut short once every site is read (a diffusion model's UNet never runs)
    out = {}
    for s in sites:
        act = tr[s]
        if act.dim() != 3:
            raise BenchError(f"site {s!r} is not a token stream [B, L, F]; cannot read keys from it")
        act_BLF = act.double()
        w_BL = batch.subject_BL.double()
        per_row_BF = torch.einsum("bl,blf->bf", w_BL, act_BLF)
        sums_KF = torch.zeros(batch.K, act.shape[-1], dtype=torch.float64, device=act.device).index_add(
            0, batch.request_B.to(act.device), per_row_BF)
        counts_K = torch.zeros(batch.K, dtype=torch.float64, device=act.device).index_add(
            0, batch.request_B.to(act.device), w_BL.sum(1))
        if bool((counts_K == 0).any()):
            raise BenchError("an edit request's subject positions are empty")
        out[s] = (sums_KF / counts_K[:, None], act_BLF[batch.valid_BL])
    return out


def key_second_moment(keys_NF: torch.Tensor, ridge: float) -> torch.Tensor:
    """``mean(k kᵀ) + ridge · tr/F · I`` (float64)."""
    C = keys_NF.T @ keys_NF / max(1, keys_NF.shape[0])
    return C + ridge * (torch.trace(C) / C.shape[0]).clamp_min(1e-12) * torch.eye(C.shape[0], dtype=C.dtype, device=C.device)


def rank_one_update(C_FF: torch.Tensor, k_F: torch.Tensor, r_D: torch.Tensor) -> torch.Tensor:
    """``ΔW = r (C⁻¹k)ᵀ / (kᵀ C⁻¹ k)``: maps ``k`` to ``W k + r``, least change under ``C``."""
    u = torch.linalg.solve(C_FF, k_F)
    return torch.outer(r_D, u) / (k_F @ u)


def least_squares_update(C_FF: torch.Tensor, K_FN: torch.Tensor, R_DN: torch.Tensor, weight: float) -> torch.Tensor:
    """MEMIT's ``ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹``: the change that best maps each key column of ``K``
    to ``W k + r`` while preserving ``W`` on keys typical under ``C`` (weight ``λ``)."""
    A = weight * C_FF + K_FN @ K_FN.T
    return torch.linalg.solve(A, (R_DN @ K_FN.T).T).T  # A symmetric: (R Kᵀ A⁻¹)ᵀ = A⁻¹ K Rᵀ


def check_width(linear: nn.Linear, k_F: torch.Tensor, site: str) -> None:
    if linear.in_features != k_F.shape[-1]:
        raise BenchError(f"the output projection found in {site!r} takes {linear.in_features} inputs but the "
                         f"MLP's neurons have width {k_F.shape[-1]}; this MLP layout is not supported")


@torch.no_grad()
def apply_update(linear: nn.Linear, delta_DF: torch.Tensor) -> None:
    linear.weight.add_(delta_DF.to(linear.weight.dtype))


# ----------------------------------------------------------------------------- the method
@dataclass(frozen=True)
class ROMEConfig(MethodConfig):
    site: str = ""  # used when the request names no site; "" = the tower's middle MLP
    positions: str = "readout"  # "readout" | "subject" (generative / contrastive; diffusion: the entity word)
    steps: int = 25  # Adam steps of the v* optimisation
    lr: float = 0.5
    weight_decay: float = 0.5  # (ROME's v_weight_decay) L2 penalty on δ, relative to ‖MLP output‖² at the subject
    # the same for diffusion models: their denoising loss moves by ~0.01 between drawings, far less
    # than a cross-entropy, and with 0.5 the optimised δ stayed ≈ 0 (measured: zoo-diffusion
    # editing, seed 0, quick: δ norm 0.39, no sample changed)
    diffusion_weight_decay: float = 0.0
    clamp: float = 4.0  # ‖δ‖ ≤ clamp × mean ‖MLP output‖ at the subject
    ridge: float = 0.1  # relative ridge of the key second moment
    draws: int = 4  # diffusion: (timestep, noise) draws per render
    seed: int = 0


def weight_decay_for(cfg: object, model: Model) -> float:
    """The δ penalty for this model's family (diffusion losses live on a much smaller scale)."""
    if isinstance(model, DiffusionModel):
        return float(getattr(cfg, "diffusion_weight_decay"))
    return float(getattr(cfg, "weight_decay"))


def check_common(cfg: object, who: str) -> None:
    for name in ("steps", "draws"):
        if getattr(cfg, name, 1) < 1:
            raise BenchError(f"{who}: {name} must be ≥ 1, got {getattr(cfg, name)}")
    for name in ("lr", "clamp"):
        if not getattr(cfg, name, 1.0) > 0:
            raise BenchError(f"{who}: {name} must be > 0, got {getattr(cfg, name)}")
    for name in ("weight_decay", "diffusion_weight_decay", "ridge"):
        if getattr(cfg, name, 0.0) < 0:
            raise BenchError(f"{who}: {name} must be ≥ 0, got {getattr(cfg, name)}")
    if getattr(cfg, "positions", "readout") not in POSITIONS:
        raise BenchError(f"{who}: positions must be one of {POSITIONS}, got {getattr(cfg, 'positions')!r}")


class ROME(Method):
    """ROME (Meng et al., 2022): a rank-one edit of one MLP's output projection per rewrite."""

    name = "rome"
    capabilities = frozenset({"edit"})
    families = frozenset({"generative", "contrastive", "diffusion"})
    Config = ROMEConfig

    def __init__(self, config: ROMEConfig | None = None, **overrides: object) -> None:
        super().__init__(config, **overrides)
        check_common(self.config, "rome")

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        if not fact_mlp_sites(model):
            return f"rome: {model.name!r} has no {FACT_TOWER[model.family]} MLP sites"
        return None

    def _site(self, model: Model, request: EditRequest) -> str:
        if request.site:
            return resolve_mlp_site(model, request.site, "rome")
        if self.config.site:
            return resolve_mlp_site(model, self.config.site, "rome")
        return middle_fact_mlp(model, "rome")

    def edit(self, model: Model, request: EditRequest) -> None:
        cfg = self.config
        site = self._site(model, request)
        nsite = neurons_site(model, site)
        linear = out_projection(model, site)
        K = request.pixels_KRCHW.shape[0]
        stats: list[dict[str, float]] = []
        for k in range(K):  # sequential rewrites, each on the model as already edited
            sub = replace(request.select([k]), site=site)
            batch = edit_batch(model, sub, cfg.positions, cfg.draws, cfg.seed + k)
            keys = read_keys(model, batch, [nsite])[nsite]
            k_F, all_NF = keys[0][0], keys[1]
            check_width(linear, k_F, site)
            C = key_second_moment(all_NF, cfg.ridge)
            record_fit(self, f"key_moment_{k}", C)
            delta_KD, info = optimise_delta(model, batch, site, cfg.steps, cfg.lr, weight_decay_for(cfg, model), cfg.clamp)
            apply_update(linear, rank_one_update(C, k_F, delta_KD[0].double()))
            with torch.no_grad():
                info["loss_edited"] = float(batch.loss_K().mean())
            stats.append(info)
        self.report(**{k: float(np.mean([s[k] for s in stats])) for k in stats[0]})
