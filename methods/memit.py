"""MEMIT: mass-editing memory over several MLP layers at once.

Meng, Sharma, Andonian, Belinkov & Bau (2023), "Mass-Editing Memory in a Transformer"
(ICLR). All ``K`` rewrites of a request are inserted together, the change spread over the
output projections ``W_l`` of a range of MLP layers ``l ∈ S`` (last layer ``L``):

1. Target residuals: per rewrite ``i``, ``z_i = h_i^L + δ_i`` where ``h_i^L`` is the residual
   stream after block ``L`` at the subject (mean over the subject positions) and ``δ_i`` is
   optimised as ROME's ``v*`` (Adam on the new answer's loss, relative L2 penalty, norm
   clamp; :func:`methods.rome.optimise_delta`), added at block ``L``'s MLP output (the same
   as adding it to the residual there).
2. For each ``l ∈ S`` in order: the keys ``k_i^l`` (mean hidden MLP activation at the
   subject, read on the model as edited so far), the residual still missing at ``L``,
   ``r_i = (z_i − h_i^L) / (|S| − position of l)``, spread evenly over the layers left, and
   the least-squares update ``ΔW_l = R Kᵀ (λ C_l + K Kᵀ)⁻¹`` (``R``, ``K`` the columns
   ``r_i``, ``k_i``), which maps each key to ``W_l k_i + r_i`` while ``λ C_l`` holds ``W_l``
   on typical keys.

``C_l`` is the keys' second moment, estimated as in :mod:`methods.rome` from the keys at
every position of the request's own inputs plus a relative ridge (MEMIT estimates it on
Wikipedia; no other text reaches an editor here); ``λ = mom2_weight · F`` (``F`` neurons).
MEMIT's published ratio for GPT-J (λ = 15,000 with 16,384 neurons, ``mom2_weight ≈ 1``) was
measured here to realise only 28% of the target residual shift on zoo-clip (diagnostic
``target_reached``; efficacy 0.12): its covariance comes from 10⁵ keys, ours from a few
hundred, so the default is ``mom2_weight = 0.1`` (87% of the target reached on zoo-clip). The inputs, loss and subject positions per family are
ROME's (:func:`methods.rome.edit_batch`).

Layers: with ``request.site`` (mapped to its block's MLP), the ``window`` MLPs ending there;
else the config's ``sites``; else the MLPs from the first to the middle layer of the tower
(MEMIT's choice of the early-to-middle MLPs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.capabilities import EditRequest
from bench.errors import BenchError
from bench.kit.fitting import record_fit
from bench.method import Method, MethodConfig
from bench.model import Model
from bench.kit.editing import FACT_TOWER, fact_mlp_sites
from methods.rome import (weight_decay_for, apply_update, check_common, check_width, edit_batch,
                          key_second_moment, least_squares_update, neurons_site, optimise_delta, out_projection,
                          read_keys, resid_site, resolve_mlp_site)


@dataclass(frozen=True)
class MEMITConfig(MethodConfig):
    sites: tuple[str, ...] = ()  # MLP sites to spread the edit over (used when the request names no site)
    window: int = 3  # with a request site: this many MLPs ending at it
    positions: str = "readout"  # "readout" | "subject", as in ROME
    steps: int = 25
    lr: float = 0.5
    weight_decay: float = 0.5
    diffusion_weight_decay: float = 0.0  # see methods.rome.ROMEConfig
    clamp: float = 4.0
    ridge: float = 0.1
    mom2_weight: float = 0.1  # λ = mom2_weight × number of neurons
    draws: int = 4
    seed: int = 0


class MEMIT(Method):
    """MEMIT (Meng et al., 2023): all rewrites at once, least squares over several MLP layers."""

    name = "memit"
    capabilities = frozenset({"edit"})
    families = frozenset({"generative", "contrastive", "diffusion"})
    Config = MEMITConfig

    def __init__(self, config: MEMITConfig | None = None, **overrides: object) -> None:
        super().__init__(config, **overrides)
        check_common(self.config, "memit")
        if self.config.window < 1:
            raise BenchError(f"memit: window must be ≥ 1, got {self.config.window}")
        if self.config.mom2_weight < 0:
            raise BenchError(f"memit: mom2_weight must be ≥ 0, got {self.config.mom2_weight}")

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        if not fact_mlp_sites(model):
            return f"memit: {model.name!r} has no {FACT_TOWER[model.family]} MLP sites"
        return None

    def layers(self, model: Model, request: EditRequest) -> list[str]:
        """The MLP sites the edit is spread over, in layer order."""
        mlps = fact_mlp_sites(model)
        if request.site:
            end = resolve_mlp_site(model, request.site, "memit")
            if end not in mlps:
                raise BenchError(f"memit: {end!r} is not one of the {FACT_TOWER[model.family]} MLPs {mlps}")
            j = mlps.index(end)
            return mlps[max(0, j - self.config.window + 1) : j + 1]
        names = self.config.sites
        if isinstance(names, str):  # from the command line: "a,b,c"
            names = tuple(n.strip() for n in names.split(",") if n.strip())
        if names:
            chosen = [resolve_mlp_site(model, s, "memit") for s in names]
            order = {s: model.site(s).layer or 0 for s in chosen}
            if len(set(chosen)) != len(chosen):
                raise BenchError(f"memit: sites repeat an MLP: {list(names)}")
            return sorted(chosen, key=lambda s: order[s])
        if not mlps:
            raise BenchError(f"memit: {model.name!r} has no {FACT_TOWER[model.family]} MLP sites")
        return mlps[: len(mlps) // 2 + 1]

    def edit(self, model: Model, request: EditRequest) -> None:
        cfg = self.config
        layers = self.layers(model, request)
        last, out = layers[-1], resid_site(model, layers[-1])
        nsites = [neurons_site(model, s) for s in layers]
        linears = [out_projection(model, s) for s in layers]
        batch = edit_batch(model, request, cfg.positions, cfg.draws, cfg.seed)
        first = read_keys(model, batch, [*nsites, out])
        moments = []
        for s, ns, lin in zip(layers, nsites, linears):
            check_width(lin, first[ns][0], s)
            C = key_second_moment(first[ns][1], cfg.ridge)
            record_fit(self, f"key_moment:{s}", C)
            moments.append(C)
        h0_KD = first[out][0]
        delta_KD, info = optimise_delta(model, batch, last, cfg.steps, cfg.lr, weight_decay_for(cfg, model), cfg.clamp)
        z_KD = h0_KD + delta_KD.double()
        for i, (ns, lin, C) in enumerate(zip(nsites, linears, moments)):
            cur = read_keys(model, batch, [ns, out])
            K_FK = cur[ns][0].T
            R_DK = (z_KD - cur[out][0]).T / (len(layers) - i)
            apply_update(lin, least_squares_update(C, K_FK, R_DK, cfg.mom2_weight * C.shape[0]))
        with torch.no_grad():
            final = read_keys(model, batch, [out])[out][0]
            info["loss_edited"] = float(batch.loss_K().mean())
        # how much of the target residual shift the weight edit achieved at the last layer
        info["target_reached"] = float(((final - h0_KD) * delta_KD.double()).sum() / delta_KD.double().pow(2).sum()
                                       .clamp_min(1e-12))
        info["layers"] = float(len(layers))
        self.report(**info)
