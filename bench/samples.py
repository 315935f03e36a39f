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
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Mapping

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
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]]) if len(ss) else np.zeros(0, dtype=np.intp)
    return order, starts


def _cumulative(w_BN: np.ndarray, rows_R: np.ndarray, upto_T: np.ndarray) -> np.ndarray:
    """``[B, T]``: the summed weight of the first ``upto_T[t]`` of the rows ``rows_R`` (in score order)."""
    out = np.zeros((w_BN.shape[0], len(upto_T)))
    if rows_R.size:
        c = np.cumsum(np.take(w_BN, rows_R, axis=1), axis=1)
        some = upto_T > 0
        out[:, some] = np.take(c, upto_T[some] - 1, axis=1)
    return out


_CHUNK_BYTES = 1 << 18  # replicates are processed in blocks of about this many bytes per [b, T] array


def _blocks(n_rows: int, width: int) -> list[slice]:
    """Row blocks of a ``[n_rows, width]`` array small enough to stay in cache. Every kernel is
    row-wise (one replicate per row), so blocking changes no figure."""
    step = max(1, _CHUNK_BYTES // (8 * max(1, width)))
    return [slice(i, min(n_rows, i + step)) for i in range(0, n_rows, step)]


class _Ties:
    """Running positive and negative weight ``tp, fp [B, T]`` at the end of each tie group (``T``
    distinct scores, ascending), for every replicate, from one sort of the scores.

    The weights enter only running sums in the sorted row order, read at the end of each tie group
    (with 0/1 labels each row's weight goes to one class; other labels split it as ``w·y`` and
    ``w·(1 − y)``). For multiplicities (integer weights) every sum here, and every per-group weight
    and count derived from them, is exact, so no figure depends on the order of the additions."""

    def __init__(self, labels_N: np.ndarray, scores_N: np.ndarray, w_BN: np.ndarray) -> None:
        s = np.asarray(scores_N, dtype=np.float64)
        w = np.asarray(w_BN, dtype=np.float64)
        order, starts = _tie_groups(s, descending=False)
        ends = np.r_[starts[1:], len(order)].astype(np.intp)
        y = np.asarray(labels_N, dtype=np.float64)[order]
        B, T = w.shape[0], len(starts)
        self.tp, self.fp = np.empty((B, T)), np.empty((B, T))
        binary = bool(np.isin(y, (0.0, 1.0)).all())
        one = y == 1.0
        upto = np.cumsum(one)[ends - 1] if T else np.zeros(0, dtype=np.intp)
        for sl in _blocks(B, len(order)):
            wb = w[sl]
            if binary:
                self.tp[sl] = _cumulative(wb, order[one], upto)
                self.fp[sl] = _cumulative(wb, order[~one], ends - upto)
            else:
                ws = np.take(wb, order, axis=1)
                self.tp[sl] = np.take(np.cumsum(ws * y, axis=1), ends - 1, axis=1)
                self.fp[sl] = np.take(np.cumsum(ws * (1.0 - y), axis=1), ends - 1, axis=1)
        self.finite = not np.isnan(s).any()
        self._flipped: _Ties | None = None
        self._args = (labels_N, scores_N, w_BN)

    def ascending(self, sl: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``pos, neg, tp, fp`` of the replicates ``sl``: per group and running, scores ascending."""
        tp, fp = self.tp[sl], self.fp[sl]
        pos, neg = tp.copy(), fp.copy()
        pos[:, 1:] -= tp[:, :-1]  # per group: the steps of the running sums
        neg[:, 1:] -= fp[:, :-1]
        return pos, neg, tp, fp

    def descending(self, sl: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The same with the distinct scores descending: the ascending groups reversed, whose running
        sums are the totals less the ascending sums before each group (NaN scores, which sort last
        either way, are regrouped)."""
        if not self.finite:
            if self._flipped is None:
                labels_N, scores_N, w_BN = self._args
                s = np.asarray(scores_N, dtype=np.float64)
                self._flipped = _Ties(labels_N, np.where(np.isnan(s), np.nan, -s), w_BN)
            return self._flipped.ascending(sl)
        pos, neg, tp, fp = self.ascending(sl)
        tp_d = tp[:, -1:] - (tp - pos)
        fp_d = fp[:, -1:] - (fp - neg)
        return (np.ascontiguousarray(pos[:, ::-1]), np.ascontiguousarray(neg[:, ::-1]),
                np.ascontiguousarray(tp_d[:, ::-1]), np.ascontiguousarray(fp_d[:, ::-1]))


_SHARED: ContextVar[list[tuple[Any, Any, Any, _Ties]] | None] = ContextVar("bench_samples_shared_ties", default=None)
_SHARED_KEEP = 2


@contextmanager
def shared_ties() -> Iterator[None]:
    """Within this block, :func:`wauroc`, :func:`waverage_precision` and :func:`wfpr_at_tpr` called
    with the *same* label, score and weight arrays (the same objects) sort the scores and sum the
    weights per tie group once and share it (the last few triples are kept). The caller promises
    not to modify those arrays in place inside the block. The figures are the same as without it."""
    token = _SHARED.set([])
    try:
        yield
    finally:
        _SHARED.reset(token)


def _ties(labels_N: np.ndarray, scores_N: np.ndarray, w_BN: np.ndarray) -> _Ties:
    memo = _SHARED.get()
    if memo is None:
        return _Ties(labels_N, scores_N, w_BN)
    for a, b, c, ties in memo:
        if a is labels_N and b is scores_N and c is w_BN:
            return ties
    ties = _Ties(labels_N, scores_N, w_BN)
    memo.append((labels_N, scores_N, w_BN, ties))
    del memo[:-_SHARED_KEEP]
    return ties


def wauroc(labels_N: np.ndarray, scores_N: np.ndarray, w_BN: np.ndarray) -> np.ndarray:
    """Weighted ROC AUC ``[B]``: P(score of a positive > a negative) + ½ P(tie) under the weights
    (Hanley & McNeil, 1982); NaN where a class has no weight. Equals
    ``sklearn.metrics.roc_auc_score(labels, scores, sample_weight=w)``."""
    t = _ties(labels_N, scores_N, w_BN)
    out = np.empty(t.tp.shape[0])
    for sl in _blocks(*t.tp.shape):
        pos, neg, _, fp = t.ascending(sl)
        num = (pos * ((fp - neg) + 0.5 * neg)).sum(1)  # fp - neg: the negative weight below the group
        P, Q = pos.sum(1), neg.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[sl] = np.where((P > 0) & (Q > 0), num / (P * Q), np.nan)
    return out


def waverage_precision(labels_N: np.ndarray, scores_N: np.ndarray, w_BN: np.ndarray) -> np.ndarray:
    """Weighted average precision ``[B]``: Σ_t (R_t − R_{t−1}) P_t over descending distinct
    thresholds (the step-wise area under the precision–recall curve, no interpolation); NaN
    without positives. Equals ``sklearn.metrics.average_precision_score(..., sample_weight=w)``."""
    t = _ties(labels_N, scores_N, w_BN)
    out = np.empty(t.tp.shape[0])
    for sl in _blocks(*t.tp.shape):
        pos, _, tp, fp = t.descending(sl)
        P = tp[:, -1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1.0), 0.0)
            ap = (pos / np.where(P > 0, P, 1.0) * precision).sum(1)
        out[sl] = np.where(P[:, 0] > 0, ap, np.nan)
    return out


def wfpr_at_tpr(labels_N: np.ndarray, scores_N: np.ndarray, w_BN: np.ndarray, tpr: float = 0.95) -> np.ndarray:
    """False-positive rate ``[B]`` at the first descending threshold whose true-positive rate
    reaches ``tpr`` (every distinct score a threshold; NaN where a class has no weight). Equals
    ``fpr[searchsorted(tpr_curve, tpr)]`` of ``sklearn.metrics.roc_curve(..., sample_weight=w,
    drop_intermediate=False)``."""
    t = _ties(labels_N, scores_N, w_BN)
    out = np.empty(t.tp.shape[0])
    for sl in _blocks(*t.tp.shape):
        _, _, tp, fp = t.descending(sl)
        P, Q = tp[:, -1:], fp[:, -1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            tpr_BT = tp / np.where(P > 0, P, 1.0)
            fpr_BT = fp / np.where(Q > 0, Q, 1.0)
        first = np.argmax(tpr_BT >= tpr - 1e-12, axis=1)
        out[sl] = np.where((P[:, 0] > 0) & (Q[:, 0] > 0), fpr_BT[np.arange(len(first)), first], np.nan)
    return out


def harmonic_mean(*xs_B: np.ndarray) -> np.ndarray:
    """Harmonic mean ``[B]`` of non-negative figures; 0 where any is 0 (Meng et al., 2022)."""
    x = np.stack([np.asarray(v, dtype=np.float64) for v in xs_B])
    with np.errstate(invalid="ignore", divide="ignore"):
        hm = len(xs_B) / (1.0 / x).sum(0)
    return np.where(np.isnan(x).any(0), np.nan, np.where((x <= 0).any(0), 0.0, hm))
