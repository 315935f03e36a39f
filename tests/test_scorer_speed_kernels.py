"""The detection kernels share one sort and one pass over the weights (bench.samples.shared_ties) and
work in blocks of replicates; the figures are those of the plain per-replicate definitions."""

from __future__ import annotations

import numpy as np
import pytest

from bench import samples
from bench.samples import shared_ties, waverage_precision, wauroc, wfpr_at_tpr


def _reference(y, s, w, tpr=0.95):
    """The definitions, one replicate at a time (ties grouped, ascending / descending)."""
    out = []
    for wb in w:
        u = np.unique(s)
        pos = np.array([wb[(s == v) & (y == 1)].sum() for v in u])
        neg = np.array([wb[(s == v) & (y == 0)].sum() for v in u])
        P, Q = pos.sum(), neg.sum()
        auc = (pos * (np.cumsum(neg) - neg + 0.5 * neg)).sum() / (P * Q) if P > 0 and Q > 0 else np.nan
        tp, fp = np.cumsum(pos[::-1]), np.cumsum(neg[::-1])
        prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        ap = (pos[::-1] / P * prec).sum() if P > 0 else np.nan
        fpr = fp[np.argmax(tp / max(P, 1e-300) >= tpr - 1e-12)] / Q if P > 0 and Q > 0 else np.nan
        out.append((auc, ap, fpr))
    return np.array(out).T


@pytest.mark.parametrize("seed", range(6))
def test_shared_and_blocked_kernels_equal_the_definitions(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    y = (rng.random(n) < 0.4).astype(float)
    s = np.round(rng.normal(size=n), 1)  # many ties
    w = rng.integers(0, 4, size=(37, n)).astype(float)
    monkeypatch.setattr(samples, "_CHUNK_BYTES", 8 * 5 * max(1, n))  # several blocks of replicates
    plain = (wauroc(y, s, w), waverage_precision(y, s, w), wfpr_at_tpr(y, s, w, 0.95))
    with shared_ties():
        shared = (wauroc(y, s, w), waverage_precision(y, s, w), wfpr_at_tpr(y, s, w, 0.95))
    ref = _reference(y, s, w)
    for a, b, r in zip(plain, shared, ref):
        assert a.tobytes() == b.tobytes()  # sharing changes no bit
        np.testing.assert_allclose(a, r, rtol=0, atol=1e-12)


def test_nan_scores_and_soft_labels_keep_the_plain_definition():
    rng = np.random.default_rng(7)
    y = rng.random(40).round(1)  # not 0/1: weights split as w*y and w*(1-y)
    s = np.round(rng.normal(size=40), 1)
    s[::9] = np.nan  # NaN sorts last ascending and descending
    w = rng.integers(0, 3, size=(5, 40)).astype(float)
    with shared_ties():
        a = (wauroc(y, s, w), waverage_precision(y, s, w), wfpr_at_tpr(y, s, w))
    b = (wauroc(y, s, w), waverage_precision(y, s, w), wfpr_at_tpr(y, s, w))
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=0, atol=1e-12, equal_nan=True)


def test_shared_ties_is_scoped():
    y, s, w = np.array([0.0, 1.0]), np.array([0.1, 0.2]), np.ones((1, 2))
    with shared_ties():
        wauroc(y, s, w)
        assert samples._SHARED.get()
    assert samples._SHARED.get() is None
