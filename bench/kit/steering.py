"""Directions in activation space: build them, add them, remove them, read along them.

One featurizer-style primitive shared by steering, debiasing, hallucination probes and
SAE-feature methods. A :class:`Direction` is a vector at a site; constructors turn
activations into directions, edit functions turn directions into ``model.trace(write=...)``
edits.

Constructors:

- :func:`diff_of_means` — the mean of one set of activations minus another's: the
  steering vector of Activation Addition (Turner, Thiergart, Udell, Leech, Mini &
  MacDiarmid, 2023, "Activation Addition: Steering Language Models Without
  Optimization") and the mass-mean probe of Marks & Tegmark (2023), "The Geometry of
  Truth: Emergent Linear Structure in Large Language Model Representations of
  True/False Datasets".
- :func:`probe_direction` — the weight vector of an L2-regularised logistic regression
  (scikit-learn, lbfgs, seeded) separating two labelled sets (linear probing; Alain &
  Bengio, 2016, "Understanding intermediate layers using linear classifier probes").
- :func:`from_vectors` — directions given as vectors, e.g. sparse-autoencoder decoder rows.

Edits (each returns ``value -> new value`` for ``model.trace(write={site: fn})``; a value is
``[B, D]`` or ``[B, L, D]``, the direction acts on the last axis):

- :func:`add` — ``x + alpha · v`` at every position or at given positions.
- :func:`project_out` — ``x − (x − c) Q Qᵀ`` with ``Q`` an orthonormal basis of the
  directions (QR, dependent directions dropped) and ``c`` an optional centre (default 0):
  no linear read-out along the removed span varies across inputs any more.

Read-out: :func:`score` — the projection of activations on a direction (optionally onto
its unit vector, optionally relative to an offset).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from bench.errors import BenchError

EditFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, eq=False)
class Direction:
    """A vector ``vector_D`` in the activation space of ``site``.

    ``offset_D`` is a reference point along with the vector (e.g. the midpoint of the two
    class means of a mass-mean probe, or a probe's intercept folded into a point), used by
    :func:`score`; ``label`` says what the direction means ("north→west", "water−land").
    """

    site: str
    vector_D: torch.Tensor
    label: str = ""
    offset_D: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.vector_D.dim() != 1:
            raise BenchError(f"a direction is one vector [D], got shape {tuple(self.vector_D.shape)}")
        if not torch.isfinite(self.vector_D).all():
            raise BenchError(f"direction {self.label or self.site!r} has NaN or infinite entries")

    @property
    def dim(self) -> int:
        return int(self.vector_D.shape[0])

    @property
    def norm(self) -> float:
        return float(self.vector_D.norm())

    def unit(self) -> torch.Tensor:
        """The unit vector ``[D]`` (a zero direction stays zero)."""
        n = self.vector_D.norm()
        return self.vector_D / n if n > 0 else self.vector_D.clone()

    def scaled(self, factor: float) -> "Direction":
        return Direction(self.site, self.vector_D * factor, self.label, self.offset_D)


def _rows(acts: torch.Tensor, what: str) -> torch.Tensor:
    if acts.dim() != 2:
        raise BenchError(f"{what}: expected activations [N, D], got shape {tuple(acts.shape)} (pool positions first)")
    if acts.shape[0] == 0:
        raise BenchError(f"{what}: no activations given")
    return acts


# ------------------------------------------------------------------ constructors
def diff_of_means(acts_a_ND: torch.Tensor, acts_b_ND: torch.Tensor, site: str = "", label: str = "") -> Direction:
    """``mean(a) − mean(b)`` (float64 accumulation), with the midpoint of the means as offset."""
    a = _rows(acts_a_ND, "diff_of_means").double()
    b = _rows(acts_b_ND, "diff_of_means").double()
    if a.shape[1] != b.shape[1]:
        raise BenchError(f"diff_of_means: widths differ ({a.shape[1]} vs {b.shape[1]})")
    mu_a, mu_b = a.mean(0), b.mean(0)
    dtype = acts_a_ND.dtype
    return Direction(site, (mu_a - mu_b).to(dtype), label, ((mu_a + mu_b) / 2).to(dtype))


def probe_direction(acts_ND: torch.Tensor, labels_N: torch.Tensor, site: str = "", label: str = "",
                    C: float = 1.0, seed: int = 0, standardize: bool = True) -> Direction:
    """The weight vector of a binary logistic-regression probe (label 1 vs 0), in the input space.

    With ``standardize`` the probe is fitted on z-scored features (lbfgs converges on any scale)
    and its weights are mapped back, so ``score(x, d) + b`` is the probe's logit; the offset
    is the point ``−b · w / |w|²`` on the decision boundary. Deterministic (lbfgs, seeded).
    """
    from sklearn.linear_model import LogisticRegression

    x = _rows(acts_ND, "probe_direction").double().numpy()
    y = labels_N.detach().cpu().numpy().astype(int)
    if len(y) != len(x):
        raise BenchError(f"probe_direction: {len(x)} activations but {len(y)} labels")
    if set(np.unique(y).tolist()) != {0, 1}:
        raise BenchError("probe_direction needs binary labels with both classes present (0 and 1)")
    mu = x.mean(0) if standardize else np.zeros(x.shape[1])
    sd = x.std(0) if standardize else np.ones(x.shape[1])
    sd = np.where(sd > 1e-12, sd, 1.0)  # constant features carry no signal
    clf = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit((x - mu) / sd, y)
    w = clf.coef_[0] / sd
    b = float(clf.intercept_[0] - (clf.coef_[0] * mu / sd).sum())
    w_t = torch.from_numpy(w).to(acts_ND.dtype)
    offset = torch.from_numpy(-b * w / max(float(w @ w), 1e-24)).to(acts_ND.dtype)
    return Direction(site, w_t, label, offset)


def from_vectors(vectors_KD: torch.Tensor, site: str, labels: Sequence[str] | None = None) -> list[Direction]:
    """One direction per row of ``vectors_KD`` (e.g. SAE decoder rows of chosen features)."""
    if vectors_KD.dim() == 1:
        vectors_KD = vectors_KD[None]
    if vectors_KD.dim() != 2:
        raise BenchError(f"from_vectors: expected [K, D], got shape {tuple(vectors_KD.shape)}")
    names = list(labels) if labels is not None else [f"{site}#{k}" for k in range(vectors_KD.shape[0])]
    if len(names) != vectors_KD.shape[0]:
        raise BenchError(f"from_vectors: {vectors_KD.shape[0]} vectors but {len(names)} labels")
    return [Direction(site, v.detach().clone(), n) for v, n in zip(vectors_KD, names)]


def orthonormal_basis(directions: Sequence[Direction], rel_tol: float = 1e-6) -> torch.Tensor:
    """An orthonormal basis ``[D, K']`` of the span of the directions (``K' ≤ K``; directions that
    are zero or linearly dependent on earlier ones add nothing)."""
    if not directions:
        raise BenchError("no directions given")
    dims = {d.dim for d in directions}
    if len(dims) != 1:
        raise BenchError(f"directions of different widths {sorted(dims)} cannot share a basis")
    V = torch.stack([d.vector_D.double() for d in directions], dim=1)  # [D, K]
    U, S, _ = torch.linalg.svd(V, full_matrices=False)
    if S.numel() == 0 or float(S.max()) == 0.0:
        return torch.zeros(V.shape[0], 0, dtype=directions[0].vector_D.dtype, device=V.device)
    keep = S > rel_tol * float(S.max())
    return U[:, keep].to(directions[0].vector_D.dtype)


# ------------------------------------------------------------------ edits
def _at_positions(value: torch.Tensor, positions: Sequence[int] | torch.Tensor | None,
                  fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``fn`` (acting on the last axis) at all positions, or only at ``positions`` of axis 1."""
    if positions is None or value.dim() < 3:
        return fn(value)
    idx = torch.as_tensor(positions, dtype=torch.long, device=value.device)
    out = value.clone()
    out[:, idx] = fn(value[:, idx])
    return out


def add(direction: Direction, alpha: float | torch.Tensor = 1.0,
        positions: Sequence[int] | torch.Tensor | None = None) -> EditFn:
    """Activation addition: ``x + alpha · v`` at every position (or at ``positions`` of the
    sequence axis; negative indices count from the end). ``alpha`` may be one coefficient per
    batch row (``[B]``), to try many strengths in one forward pass."""
    v = direction.vector_D.detach()
    # a number is host bookkeeping (moved to the site's device when applied); a tensor keeps its device
    a = torch.as_tensor(alpha, dtype=torch.float64, device=alpha.device if isinstance(alpha, torch.Tensor) else "cpu").detach()
    if a.dim() > 1:
        raise BenchError(f"add: alpha must be a number or one coefficient per row [B], got shape {tuple(a.shape)}")

    def fn(value: torch.Tensor) -> torch.Tensor:
        if value.shape[-1] != v.shape[0]:
            raise BenchError(f"direction of width {v.shape[0]} cannot steer site {direction.site!r} "
                             f"of width {value.shape[-1]}")
        if a.dim() == 1 and a.shape[0] != value.shape[0]:
            raise BenchError(f"add: {a.shape[0]} coefficients for a batch of {value.shape[0]} rows")
        vv = v.to(dtype=value.dtype, device=value.device)
        aa = a.to(dtype=value.dtype, device=value.device)

        def shift(x: torch.Tensor) -> torch.Tensor:
            if aa.dim() == 0:
                return x + aa * vv
            return x + aa.view(-1, *([1] * (x.dim() - 1))) * vv  # row b gets alpha[b]

        return _at_positions(value, positions, shift)

    return fn


def project_out(directions: Direction | Sequence[Direction], center_D: torch.Tensor | None = None,
                positions: Sequence[int] | torch.Tensor | None = None) -> EditFn:
    """Remove the component along the span of ``directions``: ``x − (x − c) Q Qᵀ`` with ``Q``
    orthonormalised (:func:`orthonormal_basis`) and ``c`` the centre (0 unless given): after it,
    every input has the centre's coordinates along the span."""
    dirs = [directions] if isinstance(directions, Direction) else list(directions)
    Q = orthonormal_basis(dirs).detach()
    c = center_D.detach() if center_D is not None else None

    def fn(value: torch.Tensor) -> torch.Tensor:
        if value.shape[-1] != Q.shape[0]:
            raise BenchError(f"directions of width {Q.shape[0]} cannot edit site {dirs[0].site!r} "
                             f"of width {value.shape[-1]}")
        q = Q.to(dtype=value.dtype, device=value.device)

        def remove(x: torch.Tensor) -> torch.Tensor:
            centred = x if c is None else x - c.to(dtype=x.dtype, device=x.device)
            return x - (centred @ q) @ q.T

        return _at_positions(value, positions, remove)

    return fn


def compose(*fns: EditFn) -> EditFn:
    """Several edits of one site, applied left to right."""
    def fn(value: torch.Tensor) -> torch.Tensor:
        for f in fns:
            value = f(value)
        return value
    return fn


# ------------------------------------------------------------------ read-out
def score(acts: torch.Tensor, direction: Direction, unit: bool = True, centered: bool = False) -> torch.Tensor:
    """Projection of activations ``[..., D]`` on the direction, ``[...]``: onto its unit vector
    (``unit``) or the raw vector, relative to the direction's offset when ``centered``."""
    if acts.shape[-1] != direction.dim:
        raise BenchError(f"activations of width {acts.shape[-1]} vs direction of width {direction.dim}")
    v = direction.unit() if unit else direction.vector_D
    x = acts
    if centered and direction.offset_D is not None:
        x = acts - direction.offset_D.to(dtype=acts.dtype, device=acts.device)
    return x @ v.to(dtype=acts.dtype, device=acts.device)
