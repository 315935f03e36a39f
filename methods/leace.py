"""LEACE: least-squares concept erasure in closed form.

Belrose, Schneider-Joseph, Ravfogel, Cotterell, Raff & Biderman (2023), "LEACE:
Perfect linear concept erasure in closed form" (NeurIPS). For features ``x`` and a
concept ``z`` (one-hot), the eraser

    r(x) = x − W⁺ P W (x − μ),   W = Σ_xx^{-1/2},   P = projector onto colspace(W Σ_xz)

is the smallest change (in the Σ_xx-whitened least-squares sense) after which no
linear classifier can predict ``z`` better than a constant. Here ``z`` is the
spurious attribute of the debias request's fit split and ``x`` the image embedding
at ``site`` (default ``vision.proj``, before normalisation); the eraser is fitted
on the fit split only and applied as an edit of that site.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.capabilities import DebiasRequest, Intervention
from bench.kit.fitting import record_fit
from bench.method import Method, MethodConfig
from bench.model import ContrastiveModel, Model


@dataclass(frozen=True)
class LeaceConfig(MethodConfig):
    site: str = "vision.proj"
    rel_eps: float = 1e-6  # eigenvalues below rel_eps × the largest are treated as zero


def leace_fit(x_ND: torch.Tensor, z_NK: torch.Tensor, rel_eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Fit the LEACE eraser: returns ``(mean_D, M_DD, rank)`` with ``r(x) = x − (x − mean) @ M.T``."""
    x = x_ND.double()
    z = z_NK.double()
    mu = x.mean(0)
    xc, zc = x - mu, z - z.mean(0)
    n = x.shape[0]
    sigma_xx = xc.T @ xc / n
    sigma_xz = xc.T @ zc / n
    lam, V = torch.linalg.eigh(sigma_xx)
    keep = lam > rel_eps * lam.max()
    lam_k, V_k = lam[keep], V[:, keep]
    W = V_k @ torch.diag(lam_k.rsqrt()) @ V_k.T
    W_pinv = V_k @ torch.diag(lam_k.sqrt()) @ V_k.T
    A = W @ sigma_xz
    U, S, _ = torch.linalg.svd(A, full_matrices=False)
    rank = int((S > rel_eps * max(1.0, float(S.max()))).sum())
    Q = U[:, :rank]
    M = W_pinv @ (Q @ Q.T) @ W
    return mu.to(x_ND.dtype), M.to(x_ND.dtype), rank


class Leace(Method):
    """LEACE (Belrose et al., 2023): erase the spurious attribute from one site, fitted on the fit split."""

    name = "leace"
    capabilities = frozenset({"debias"})
    families = frozenset({"contrastive"})
    Config = LeaceConfig
    fits = True

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        if self.config.site not in model.site_specs:
            return f"model {model.name!r} has no site {self.config.site!r}"
        return None

    def debias(self, model: Model, request: DebiasRequest) -> Intervention:
        assert isinstance(model, ContrastiveModel)
        site = self.config.site
        x = request.fit_activations(model, site)
        x_ND = x.reshape(x.shape[0], -1) if x.dim() == 2 else x[:, 0]  # token sites: erase at the CLS/first token
        z_NK = F.one_hot(request.fit_spurious_B, len(request.spurious_prompts)).float()
        mu, M, rank = leace_fit(x_ND, z_NK, self.config.rel_eps)
        record_fit(self, "eraser", {"mean": mu, "M": M})

        def erase(v: torch.Tensor) -> torch.Tensor:
            if v.dim() == 2:
                return v - (v - mu) @ M.T
            out = v.clone()
            out[:, 0] = v[:, 0] - (v[:, 0] - mu) @ M.T
            return out

        return Intervention({site: erase}, components=rank, description=f"LEACE at {site}, rank {rank}")
