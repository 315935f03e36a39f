"""Causal tracing (denoising activation patching).

Meng, Bau, Andonian & Belinkov (2022), "Locating and Editing Factual Associations in
GPT" (NeurIPS): run the model on a corrupted input, restore one site's activation
from the clean run, and measure how much of the clean behaviour comes back. Here the
corruption is the task's counterfactual input (symmetric replacement, which Zhang &
Nanda, 2024, recommend over Gaussian noise) and the behaviour the task's metric (a
logit difference). Score per (example, site): metric(corrupt run with the site
restored) − metric(corrupt run). All candidate sites are patched in one batched
forward pass (the batch is repeated once per site, each copy restored at its own
site), in groups of ``sites_per_pass`` to bound memory.

Which localization question it answers (the localization task scores storage and mediation;
Hase et al., 2023): mediation (sufficiency): how much of the answer a site's clean activation
restores in the counterfactual run. It reads activations, not weights, so it finds where a fact
is stored only where storage and mediation coincide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from bench.capabilities import LocalizeRequest
from bench.errors import BenchError
from bench.method import Method, MethodConfig
from bench.model import Model


@torch.no_grad()
def position_sweep(request: LocalizeRequest, sites: Sequence[str] | None = None,
                   positions: Sequence[int | Sequence[int]] | None = None, copies_per_pass: int = 64) -> torch.Tensor:
    """Causal tracing at (site, position) resolution (the layer × token maps of Meng et al., 2022).

    Score ``[n, len(sites), len(positions)]``: metric(corrupt run with ``site``'s clean
    activation restored at position ``p`` only) − metric(corrupt run). An entry of
    ``positions`` is one sequence position or a group of them restored together (e.g.
    one row of image patches, to keep a map small); the default is every position
    ``0 … L-1`` on its own. ``sites`` default to the request's candidates and must have
    a token axis (activations ``[N, L, ...]``). Every (site, position) pair is one batch
    copy, ``copies_per_pass`` copies per forward pass, so the sweep is a few batched
    passes rather than a loop of single ones. :meth:`CausalTracing.localize` (a site
    restored at every position) does not use this.
    """
    sites = list(request.candidates if sites is None else sites)
    if not sites:
        raise BenchError("position_sweep needs at least one site")
    _, clean = request.evaluate("clean", read=sites)
    acts = {s: clean[s] for s in sites}
    for s, a in acts.items():
        if a.dim() < 3:
            raise BenchError(f"site {s!r} has no token axis (activation of shape {tuple(a.shape)})")
    length = int(acts[sites[0]].shape[1])
    groups = [[int(p)] if isinstance(p, int) else [int(q) for q in p]
              for p in (range(length) if positions is None else positions)]
    if any(not g or not all(0 <= q < length for q in g) for g in groups):
        raise BenchError(f"every position group must be non-empty and lie in [0, {length})")
    base, _ = request.evaluate("corrupt")
    n = request.n
    pairs = [(k, j) for k in range(len(sites)) for j in range(len(groups))]
    out = torch.empty(n, len(sites), len(groups), dtype=torch.float64, device="cpu")
    ex = torch.arange(n, device="cpu")
    for g in range(0, len(pairs), max(1, copies_per_pass)):
        batch = pairs[g : g + max(1, copies_per_pass)]
        writes = {}
        for k in sorted({k for k, _ in batch}):
            rows, pos = [], []
            for c, (kk, j) in enumerate(batch):
                if kk == k:
                    for q in groups[j]:  # copy c: its n rows, at position q
                        rows.append(ex + c * n)
                        pos.append(torch.full((n,), q, device="cpu"))
            rows_t, pos_t = torch.cat(rows), torch.cat(pos)
            writes[sites[k]] = _restore_positions(rows_t, pos_t, acts[sites[k]][rows_t % n, pos_t])
        patched, _ = request.evaluate("corrupt", write=writes, copies=len(batch))
        patched = patched.view(len(batch), n).double()
        for c, (k, j) in enumerate(batch):
            out[:, k, j] = patched[c]
    return out - base[:, None, None].double()


def _restore_positions(rows: torch.Tensor, pos: torch.Tensor,
                       src: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """An edit setting ``value[rows[i], pos[i]] = src[i]`` (one token of one batch row each)."""

    def fn(value: torch.Tensor) -> torch.Tensor:
        out = value.clone()
        out[rows, pos] = src.to(value.dtype)
        return out

    return fn


@dataclass(frozen=True)
class CausalTracingConfig(MethodConfig):
    sites_per_pass: int = 8


class CausalTracing(Method):
    """Restore clean activations into the corrupted run, one site per batch copy (Meng et al., 2022)."""

    name = "causal_tracing"
    answers = {"localize": "mediation (sufficiency)"}
    capabilities = frozenset({"localize"})
    families = frozenset({"contrastive", "generative", "diffusion"})
    Config = CausalTracingConfig

    @torch.no_grad()
    def localize(self, model: Model, request: LocalizeRequest) -> torch.Tensor:
        cands = request.candidates
        _, clean = request.evaluate("clean", read=cands)
        base, _ = request.evaluate("corrupt")
        patched = request.patch_sweep("corrupt", {s: clean[s] for s in cands}, self.config.sites_per_pass)
        return patched - base[:, None].double()

    def position_sweep(self, request: LocalizeRequest, sites: Sequence[str] | None = None,
                       positions: Sequence[int | Sequence[int]] | None = None) -> torch.Tensor:
        """The (site × position) trace of :func:`position_sweep`, ``sites_per_pass`` × 8 copies per pass."""
        return position_sweep(request, sites, positions, copies_per_pass=8 * self.config.sites_per_pass)
