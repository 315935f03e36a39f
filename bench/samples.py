"""Per-example rows: the quantities a cell's metrics are computed from, and weighted metric kernels.

A task returns, besides its metrics, one row per scored item (:class:`Rows`, column-wise: every
column a NumPy array of the same length). Two columns are required:

- ``example``: the *resampling unit* (str). Rows sharing an ``example`` (within one seed) are
  resampled together: a caption and its object mentions, an edit request and its three
  outcomes, a scene and its object. Use the item id itself when items are independent.
- ``hash``: the row's identity (str; e.g. the example hash the record lists).

Every other column is a per-row quantity (float, or str for strata such as ``kind``); a row
to which a quantity does not apply holds NaN there.

A task's metrics are **one function of its rows**, :meth:`bench.task.Task.metrics_from_rows`,
evaluated under a matrix of row multiplicities ``w_BN`` (``B`` weightings of the ``N`` rows):
``w = 1`` gives the stored figures, and a bootstrap resample is a weighting by how often each
example was drawn (Efron & Tibshirani, 1993, ch. 6: the bootstrap distribution of a statistic
is its value under multinomial multiplicities of the observations). Writing every metric as a
function of weights lets one call score thousands of resamples at once; the kernels below are
those weighted forms. Each agrees with scikit-learn's ``sample_weight`` form (tested).
"""

from __future__ import annotations

import json
import zlib
from typing import Mapping

import numpy as np

from bench.errors import BenchError

Rows = dict[str, np.ndarray]

REQUIRED = ("example", "hash")


def make_rows(**columns: object) -> Rows:
    """Rows from column sequences (lists, tensors or arrays), checked for equal lengths."""
    out: Rows = {}
    for name, col in columns.items():
        if hasattr(col, "detach"):  # a torch tensor
            col = col.detach().cpu().double().numpy()  # type: ignore[union-attr]
        arr = np.asarray(col)
        if arr.dtype.kind in "U":
            arr = arr.astype(object)
        elif arr.dtype.kind in "biuf":
            arr = arr.astype(np.float64)
        out[name] = arr
    check_rows(out)
    return out


def check_rows(rows: Mapping[str, np.ndarray]) -> int:
    """The number of rows; a BenchError when a required column is missing or lengths differ."""
    missing = [c for c in REQUIRED if c not in rows]
    if missing:
        raise BenchError(f"per-example rows lack the column(s) {', '.join(missing)}")
    lengths = {k: len(v) for k, v in rows.items()}
    if len(set(lengths.values())) > 1:
        raise BenchError(f"per-example row columns differ in length: {lengths}")
    return next(iter(lengths.values()))


def n_rows(rows: Mapping[str, np.ndarray]) -> int:
    return len(rows["example"])


def ones(rows: Mapping[str, np.ndarray]) -> np.ndarray:
    """The weighting ``[1, N]`` that gives the stored figures."""
    return np.ones((1, n_rows(rows)), dtype=np.float64)


def select(rows: Mapping[str, np.ndarray], mask_N: np.ndarray) -> Rows:
    return {k: v[mask_N] for k, v in rows.items()}


# ------------------------------------------------------------------ storage
def encode(rows: Mapping[str, np.ndarray]) -> bytes:
    """zlib-compressed JSON ``{column: [values]}`` (NaN kept as JSON ``NaN``, floats exact)."""
    doc = {k: [None if isinstance(x, float) and x != x else x for x in v.tolist()] for k, v in rows.items()}
    return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 6)


def decode(blob: bytes) -> Rows:
    try:
        doc = json.loads(zlib.decompress(blob))
    except (zlib.error, ValueError) as e:
        raise BenchError(f"stored per-example rows are corrupt ({e})") from None
    out: Rows = {}
    for k, vals in doc.items():
        if any(isinstance(x, str) for x in vals):
            out[k] = np.array(vals, dtype=object)
        else:
            out[k] = np.array([np.nan if x is None else x for x in vals], dtype=np.float64)
    return out


# ------------------------------------------------------------------ weighted kernels
def wmean(x_N: np.ndarray, w_BN: np.ndarray) -> np.ndarray:
    """Weighted mean ``[B]`` of ``x`` over its non-NaN entries (NaN where the weight is zero)."""
    x = np.asarray(x_N, dtype=np.float64)
    ok = ~np.isnan(x)
    w = w_BN[:, ok]
    total = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (w @ x[ok]) / np.where(total > 0, total, 1.0), np.nan)


def wmin_group_mean(x_N: np.ndarray, group_N: np.ndarray, w_BN: np.ndarray) -> tuple[np.ndarray, list[object]]:
    """Per-group weighted means ``[B, G]`` (groups in sorted order) and the group labels."""
    labels = sorted(set(group_N.tolist()))
    cols = [wmean(np.where(group_N == g, x_N, np.nan), w_BN) for g in labels]
    return np.stack(cols, axis=1), labels


def _tie_groups(scores_N: np.ndarray, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row order by score and the start index of each run of tied scores in that order."""
    s = np.asarray(scores_N, dtype=np.float64)
    order = np.argsort(-s if descending else s, kind="stable")
    ss = s[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    return order, starts


def _grouped(labels_N: np.ndarray, scores_N: np.ndarray, w_BN: np.ndarray,
             descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative weight ``[B, T]`` per distinct score (T tie groups, in order)."""
    order, starts = _tie_groups(scores_N, descending)
    y = np.asarray(labels_N, dtype=np.float64)[order]
    w = w_BN[:, order]
    pos = np.add.reduceat(w * y, starts, axis=1)
    neg = np.add.reduceat(w * (1.0 - y), starts, axis=1)
    return pos, neg


def wauroc(labels_N: np.ndarray, scores_N: np.ndarray, w_BN: np.ndarray) -> np.ndarray:
    """Weighted ROC AUC ``[B]``: P(score of a positive > a negative) + ½ P(tie) under the weights
    (Hanley & McNeil, 1982); NaN where a class has no weight. Equals
    ``sklearn.metrics.roc_auc_score(labels, scores, sample_weight=w)``."""
    pos, neg = _grouped(labels_N, scores_N, w_BN, descending=False)
    neg_below = np.cumsum(neg, axis=1) - neg
    num = (pos * (neg_below + 0.5 * neg)).sum(1)
    P, Q = pos.sum(1), neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((P > 0) & (Q > 0), num / (P * Q), np.nan)


def waverage_precision(labels_N: np.ndarray, scores_N: np.ndarray, w_BN: np.ndarray) -> np.ndarray:
    """Weighted average precision ``[B]``: Σ_t (R_t − R_{t−1}) P_t over descending distinct
    thresholds (the step-wise area under the precision–recall curve, no interpolation); NaN
    without positives. Equals ``sklearn.metrics.average_precision_score(..., sample_weight=w)``."""
    pos, neg = _grouped(labels_N, scores_N, w_BN, descending=True)
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    P = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1.0), 0.0)
        ap = (pos / np.where(P > 0, P, 1.0) * precision).sum(1)
    return np.where(P[:, 0] > 0, ap, np.nan)


def wfpr_at_tpr(labels_N: np.ndarray, scores_N: np.ndarray, w_BN: np.ndarray, tpr: float = 0.95) -> np.ndarray:
    """False-positive rate ``[B]`` at the first descending threshold whose true-positive rate
    reaches ``tpr`` (every distinct score a threshold; NaN where a class has no weight). Equals
    ``fpr[searchsorted(tpr_curve, tpr)]`` of ``sklearn.metrics.roc_curve(..., sample_weight=w,
    drop_intermediate=False)``."""
    pos, neg = _grouped(labels_N, scores_N, w_BN, descending=True)
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    P, Q = tp[:, -1:], fp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr_BT = tp / np.where(P > 0, P, 1.0)
        fpr_BT = fp / np.where(Q > 0, Q, 1.0)
    first = np.argmax(tpr_BT >= tpr - 1e-12, axis=1)
    out = fpr_BT[np.arange(len(first)), first]
    return np.where((P[:, 0] > 0) & (Q[:, 0] > 0), out, np.nan)


def harmonic_mean(*xs_B: np.ndarray) -> np.ndarray:
    """Harmonic mean ``[B]`` of non-negative figures; 0 where any is 0 (Meng et al., 2022)."""
    x = np.stack([np.asarray(v, dtype=np.float64) for v in xs_B])
    with np.errstate(invalid="ignore", divide="ignore"):
        hm = len(xs_B) / (1.0 / x).sum(0)
    return np.where(np.isnan(x).any(0), np.nan, np.where((x <= 0).any(0), 0.0, hm))
