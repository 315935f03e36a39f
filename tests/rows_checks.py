"""The checks every task's per-example rows must pass (shared by the tasks' row tests)."""

from __future__ import annotations

import math

import numpy as np

from bench.samples import REQUIRED, decode, encode


def same_metrics(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal figures, NaN equal to NaN."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def check_rows(task, result) -> None:
    """Required columns of equal length; the stored figures are exactly the rows' figures (also after
    the store's encode/decode) and each is in the spec; the example hashes are the rows'; strata are
    constant within a resampling unit; ``bench inspect``'s quality is one value per row in [0, 1]."""
    rows = result.rows
    assert rows is not None
    for col in REQUIRED + task.strata:
        assert col in rows, col
    n = len(rows["example"])
    assert n > 0 and all(len(v) == n for v in rows.values())
    assert task.metrics_of(rows) == result.metrics
    for name in result.metrics:
        task.spec.metric(name)  # raises KeyError for a metric the spec does not declare
    assert result.example_hashes == list(dict.fromkeys(rows["hash"].tolist()))
    seen: dict[str, object] = {}
    for ex, st in zip(rows["example"].tolist(), task.strata_of(rows)):
        assert seen.setdefault(ex, st) == st, ex
    assert same_metrics(task.metrics_of(decode(encode(rows))), result.metrics)
    q = np.asarray(task.example_quality(rows), dtype=np.float64)
    assert q.shape == (n,) and (~np.isnan(q)).any() and ((q[~np.isnan(q)] >= 0) & (q[~np.isnan(q)] <= 1)).all()
