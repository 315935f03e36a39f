"""Sparse autoencoders (SAEs): the core shared by SAE-based methods.

An SAE rewrites an activation ``x ∈ R^D`` as a sparse non-negative code ``f ∈ R^F``
over a dictionary of ``F`` unit-norm decoder directions, ``x ≈ x̂ = f W_dec + b_dec``.
Three variants:

- ``relu``: ``f = ReLU(W_enc x + b_enc)``, loss ``‖x − x̂‖² + λ₁ Σ_i f_i ‖d_i‖`` (Bricken et al.,
  2023, "Towards Monosemanticity: Decomposing Language Models With Dictionary Learning";
  Cunningham, Ewart, Riggs, Huben & Sharkey, 2023, "Sparse Autoencoders Find Highly
  Interpretable Features in Language Models"). Decoder rows are kept at unit norm, so the
  L1 penalty cannot be evaded by shrinking codes.
- ``topk``: ``f = ReLU(TopK_k(W_enc x + b_enc))``, loss ``‖x − x̂‖²`` (Gao, Dupré la Tour,
  Tillman, Goh, Troll, Radford, Sutskever, Leike & Wu, 2024, "Scaling and evaluating sparse
  autoencoders"); encoder initialised as the decoder's transpose, as there.
- ``jumprelu``: ``f = z · H(z − θ)`` with ``z = W_enc x + b_enc`` and a learned threshold
  ``θ_i > 0`` per feature, loss ``‖x − x̂‖² + λ₀ ‖f‖₀`` (Rajamanoharan, Lieberum, Sonnerat,
  Conmy, Varma, Kramár & Nanda, 2024, "Jumping Ahead: Improving Reconstruction Fidelity with
  JumpReLU Sparse Autoencoders"). ``θ`` is trained with the paper's straight-through
  estimator: rectangle-kernel pseudo-derivatives of bandwidth ``ε``,
  ``∂H(z − θ)/∂θ := −K((z − θ)/ε)/ε`` and ``∂JumpReLU(z)/∂θ := −(θ/ε) K((z − θ)/ε)``.

Inputs are centred and scaled inside the module: ``x_n = (x − μ)/s`` with ``μ`` the mean
training activation and the scalar ``s`` chosen so that ``E‖x_n‖² = D`` on the training data
(SAEBench's normalisation). Reconstruction losses are measured per dimension in that space.
Because ``s`` is a scalar, feature ``i`` adds ``f_i · s · d_i`` to the activation: the
decoder directions :attr:`SAE.directions_FD` are directions in the original space too.

Statistics (:func:`sae_stats`), on a set of activations:

- ``fvu``: fraction of variance unexplained, ``Σ‖x − x̂‖² / Σ‖x − x̄‖²`` (x̄ the set's mean).
- ``l0``: mean number of non-zero features per activation.
- ``dead``: share of features never active on the set (on the training set: "dead").

Downstream loss recovered (:func:`loss_recovered`; Bricken et al., 2023, and SAEBench's
"loss recovered"): the caller runs its downstream metric three times — unmodified
(``clean``), with the site's activation replaced by the SAE's reconstruction (``sae``,
spliced with ``model.trace(write={site: sae.splice()})``), and with the site zero-ablated
(``zero``) — and gets ``(m_zero − m_sae) / (m_zero − m_clean)``: 1 when splicing in the SAE
leaves the metric as it was, 0 when it is as bad as deleting the site. The ratio is the
same for metrics where higher or lower is better; it is NaN when zero-ablation does not
move the metric (nothing to recover).

Training (:func:`train_sae`) is full-determinism: a ``torch.Generator`` seeded from
``cfg.seed`` draws the initialisation and every batch. Trained SAEs are cached on disk by
the content hash of (activations, config, :data:`CODE_VERSION`) with
:func:`bench.kit.fitting.cached` (kind ``"sae"``), so every cell that trains the same SAE on the
same activations reuses it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn

from bench.errors import BenchError
from bench.kit.fitting import cached, content_hash

CODE_VERSION = "sae-1"  # bump when training changes what a config produces (invalidates the cache)
KINDS: tuple[str, ...] = ("relu", "topk", "jumprelu")


@dataclass(frozen=True)
class SAEConfig:
    kind: str = "topk"  # relu | topk | jumprelu
    expansion: int = 4  # F = expansion × D (ignored when n_features > 0)
    n_features: int = 0
    k: int = 8  # topk: active features per activation
    l1: float = 0.02  # relu: L1 coefficient (per-dimension MSE units)
    l0: float = 0.005  # jumprelu: L0 coefficient (per-dimension MSE units)
    threshold_init: float = 0.1  # jumprelu: initial θ (normalised units)
    bandwidth: float = 0.05  # jumprelu: STE kernel width ε
    steps: int = 400
    lr: float = 3e-3
    batch: int = 256
    seed: int = 0

    def check(self) -> None:
        if self.kind not in KINDS:
            raise BenchError(f"SAE kind must be one of {KINDS}, not {self.kind!r}")
        if self.expansion < 1 and self.n_features < 1:
            raise BenchError("SAE: expansion or n_features must be ≥ 1")
        if self.kind == "topk" and self.k < 1:
            raise BenchError(f"SAE: topk needs k ≥ 1, not {self.k}")
        if self.steps < 1 or self.batch < 1 or self.lr <= 0:
            raise BenchError("SAE: steps and batch must be ≥ 1 and lr > 0")
        if min(self.l1, self.l0) < 0 or self.threshold_init <= 0 or self.bandwidth <= 0:
            raise BenchError("SAE: l1/l0 must be ≥ 0, threshold_init and bandwidth > 0")


# ------------------------------------------------------------- JumpReLU STE
class _JumpReLU(torch.autograd.Function):
    """``z · H(z − θ)``: gradient ``H(z − θ)`` to ``z``, pseudo-derivative ``−(θ/ε) K`` to ``θ``."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        z, theta = ctx.saved_tensors
        kern = ((z - theta).abs() < ctx.eps / 2).to(g.dtype)
        g_theta = (g * -(theta / ctx.eps) * kern).sum(0)
        return g * (z > theta), g_theta, None


class _Step(torch.autograd.Function):
    """``H(z − θ)``: no gradient to ``z``, pseudo-derivative ``−K/ε`` to ``θ`` (the L0 penalty)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        z, theta = ctx.saved_tensors
        kern = ((z - theta).abs() < ctx.eps / 2).to(g.dtype)
        return None, (g * -kern / ctx.eps).sum(0), None


# ------------------------------------------------------------------- module
class SAE(nn.Module):
    """A trained sparse autoencoder over ``D``-dimensional activations (last axis)."""

    # buffers (register_buffer in __init__): the normalisation the SAE works in
    mean_D: torch.Tensor
    scale: torch.Tensor

    def __init__(self, d: int, n_features: int, cfg: SAEConfig, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.cfg = cfg
        self.W_enc_DF = nn.Parameter(torch.zeros(d, n_features, device=device))
        self.b_enc_F = nn.Parameter(torch.zeros(n_features, device=device))
        self.W_dec_FD = nn.Parameter(torch.zeros(n_features, d, device=device))
        self.b_dec_D = nn.Parameter(torch.zeros(d, device=device))
        self.theta_F = nn.Parameter(torch.full((n_features,), cfg.threshold_init, device=device))  # jumprelu only
        self.register_buffer("mean_D", torch.zeros(d, device=device))
        self.register_buffer("scale", torch.ones(1, device=device))  # shape [1]: content_hash cannot view 0-dim tensors

    @property
    def d(self) -> int:
        return int(self.W_dec_FD.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.W_dec_FD.shape[0])

    @property
    def directions_FD(self) -> torch.Tensor:
        """Unit-norm decoder directions (feature ``i`` adds ``f_i · scale · directions_FD[i]``)."""
        return self.W_dec_FD.detach()

    # the normalised space
    def _pre(self, x_ND: torch.Tensor) -> torch.Tensor:
        xn = (x_ND - self.mean_D) / self.scale
        return xn @ self.W_enc_DF + self.b_enc_F

    def _act(self, z_NF: torch.Tensor) -> torch.Tensor:
        kind = self.cfg.kind
        if kind == "relu":
            return torch.relu(z_NF)
        if kind == "topk":
            k = min(self.cfg.k, z_NF.shape[-1])
            top = z_NF.topk(k, dim=-1)
            return torch.zeros_like(z_NF).scatter(-1, top.indices, torch.relu(top.values))
        theta = self.theta_F.clamp_min(1e-6)
        if torch.is_grad_enabled() and self.theta_F.requires_grad:
            flat = z_NF.reshape(-1, z_NF.shape[-1])
            return _JumpReLU.apply(flat, theta, self.cfg.bandwidth).view_as(z_NF)
        return z_NF * (z_NF > theta)

    def encode(self, x_ND: torch.Tensor) -> torch.Tensor:
        """Activations ``[..., D]`` → sparse codes ``[..., F]`` (non-negative)."""
        return self._act(self._pre(x_ND.to(self.W_enc_DF.dtype)))

    def decode(self, f_NF: torch.Tensor) -> torch.Tensor:
        """Codes ``[..., F]`` → reconstructions ``[..., D]`` in the original space."""
        return (f_NF @ self.W_dec_FD + self.b_dec_D) * self.scale + self.mean_D

    def decode_delta(self, df_NF: torch.Tensor) -> torch.Tensor:
        """What a change of codes ``df`` changes in the activation (no biases): ``df · scale · W_dec``."""
        return (df_NF @ self.W_dec_FD) * self.scale

    def forward(self, x_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x_ND)
        return self.decode(f), f

    # ----------------------------------------------------- edit functions
    def splice(self, keep_error: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
        """An edit ``value → SAE reconstruction`` over the last axis (``keep_error``: + the error term,
        i.e. the identity up to rounding), for ``model.trace(write=...)``."""

        def fn(v: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                xh = self.decode(self.encode(v)).to(v.dtype)
            return v if keep_error else xh
        return fn

    def feature_edit(self, features: torch.Tensor, values: torch.Tensor | None = None,
                     rows: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """An edit that sets the listed features to ``values`` (``None``: 0, i.e. ablation) at every
        position, keeping the SAE's error term: ``v + Σ_i (c_i − f_i(v)) · scale · d_i``.
        ``rows`` restricts it to those batch rows."""
        idx = features.long()
        target = torch.zeros(len(idx), device=idx.device) if values is None else values.float()

        def fn(v: torch.Tensor) -> torch.Tensor:
            sel = v if rows is None else v[rows]
            with torch.no_grad():
                f = self.encode(sel)[..., idx]
                delta = ((target.to(f.dtype) - f) @ self.W_dec_FD[idx]) * self.scale
            new = sel + delta.to(v.dtype)
            if rows is None:
                return new
            out = v.clone()
            out[rows] = new
            return out
        return fn

    # ----------------------------------------------------------- (de)serialise
    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], cfg: SAEConfig) -> "SAE":
        F, D = state["W_dec_FD"].shape
        sae = cls(int(D), int(F), cfg, device=state["W_dec_FD"].device)
        sae.load_state_dict(state)
        sae.requires_grad_(False)
        return sae


def n_features_of(d: int, cfg: SAEConfig) -> int:
    return cfg.n_features if cfg.n_features > 0 else cfg.expansion * d


# ------------------------------------------------------------------ training
def train_sae(acts_ND: torch.Tensor, cfg: SAEConfig) -> SAE:
    """Train an SAE on activations ``[N, D]`` (float); deterministic given ``cfg.seed``."""
    cfg.check()
    if acts_ND.dim() != 2 or acts_ND.shape[0] < 2:
        raise BenchError(f"train_sae: need activations [N ≥ 2, D], got {tuple(acts_ND.shape)}")
    x = acts_ND.detach().float()
    N, D = x.shape
    F = n_features_of(D, cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    sae = SAE(D, F, cfg, device=x.device)
    mean = x.mean(0)
    scale = ((x - mean).pow(2).sum(1).mean() / D).sqrt().clamp_min(1e-8)
    xn = (x - mean) / scale
    with torch.no_grad():
        sae.mean_D.copy_(mean)
        sae.scale.copy_(scale)
        W = torch.randn(F, D, generator=g, device="cpu").to(x.device)  # (CPU generator: the same draw on every device)
        W = W / W.norm(dim=1, keepdim=True)
        sae.W_dec_FD.copy_(W)
        # encoder = decoder transpose (Gao et al., 2024; Conerly et al., 2024 for ReLU SAEs)
        sae.W_enc_DF.copy_(W.T)
    train_params = [sae.W_enc_DF, sae.b_enc_F, sae.W_dec_FD, sae.b_dec_D]
    if cfg.kind == "jumprelu":
        train_params.append(sae.theta_F)
    else:
        sae.theta_F.requires_grad_(False)
    opt = torch.optim.Adam(train_params, lr=cfg.lr)
    bs = min(cfg.batch, N)
    with torch.enable_grad():
        for step in range(cfg.steps):
            # linear learning-rate decay over the last 20% of steps (Conerly et al., 2024)
            frac = step / cfg.steps
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (1.0 - frac) / 0.2)
            idx = torch.randint(0, N, (bs,), generator=g, device="cpu").to(x.device)
            xb = xn[idx]
            z = xb @ sae.W_enc_DF + sae.b_enc_F
            f = sae._act(z)
            xh = f @ sae.W_dec_FD + sae.b_dec_D
            loss = (xh - xb).pow(2).sum(1).mean() / D
            if cfg.kind == "relu":
                loss = loss + cfg.l1 * f.sum(1).mean()  # ‖d_i‖ = 1, so Σ f_i ‖d_i‖ = Σ f_i
            elif cfg.kind == "jumprelu":
                loss = loss + cfg.l0 * _Step.apply(z, sae.theta_F.clamp_min(1e-6), cfg.bandwidth).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                sae.W_dec_FD.div_(sae.W_dec_FD.norm(dim=1, keepdim=True).clamp_min(1e-8))
                if cfg.kind == "jumprelu":
                    sae.theta_F.clamp_(min=1e-6)
    sae.requires_grad_(False)
    return sae


def sae_key(acts_ND: torch.Tensor, cfg: SAEConfig, *extra: Any) -> str:
    """The cache key of an SAE trained on ``acts_ND`` with ``cfg``."""
    return content_hash(acts_ND.detach().float(), asdict(cfg), CODE_VERSION, *extra)


def cached_sae(acts_ND: torch.Tensor, cfg: SAEConfig) -> SAE:
    """:func:`train_sae`, through the on-disk cache (kind ``"sae"``)."""
    cfg.check()
    state = cached("sae", sae_key(acts_ND, cfg), lambda: train_sae(acts_ND, cfg).state())
    return SAE.from_state(state, cfg)


# ------------------------------------------------------------------ stats
@torch.no_grad()
def sae_stats(sae: SAE, acts_ND: torch.Tensor, chunk: int = 4096) -> dict[str, float]:
    """``fvu``, ``l0`` and ``dead`` (see the module docstring) on activations ``[N, D]``."""
    x = acts_ND.detach().float()
    err = tot = l0 = 0.0
    fired = torch.zeros(sae.n_features, dtype=torch.bool, device=x.device)
    mean = x.mean(0)
    for i in range(0, x.shape[0], chunk):
        xb = x[i : i + chunk]
        xh, f = sae(xb)
        err += float((xb - xh).double().pow(2).sum())
        tot += float((xb - mean).double().pow(2).sum())
        active = f > 0
        l0 += float(active.sum())
        fired |= active.any(0)
    return {"fvu": err / max(tot, 1e-30), "l0": l0 / max(1, x.shape[0]),
            "dead": float((~fired).double().mean())}


def loss_recovered(metric_clean: float, metric_sae: float, metric_zero: float) -> float:
    """``(m_zero − m_sae) / (m_zero − m_clean)``; NaN when zero-ablation leaves the metric unchanged."""
    den = metric_zero - metric_clean
    if abs(den) < 1e-12:
        return float("nan")
    return float((metric_zero - metric_sae) / den)


def subsample_rows(x_ND: torch.Tensor, max_rows: int, seed: int = 0) -> torch.Tensor:
    """At most ``max_rows`` rows of ``x``, drawn without replacement from a fixed generator."""
    if max_rows <= 0 or x_ND.shape[0] <= max_rows:
        return x_ND
    idx = torch.randperm(x_ND.shape[0], generator=torch.Generator().manual_seed(seed), device="cpu")[:max_rows]
    idx = idx.to(x_ND.device)
    return x_ND[idx.sort().values]
