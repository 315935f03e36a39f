"""Does a ground-truth-free faithfulness metric rank localization methods as the planted truth does?

On a real checkpoint, localization can only be judged by faithfulness (the share of the behaviour the
top-k% sites carry, :func:`tasks.localization.faithfulness_metrics`). The zoo carries planted truth in
three families, so before anyone trusts a faithfulness figure on a real model, we measure here how well
its ranking of methods agrees with the planted one, per model:

- **faithfulness metrics**: ``faith_suff`` (area under the sufficiency curve, MIB's CPR), ``faith_nec``
  (area under the necessity curve) and ``faith_cmd`` (MIB's CMD; lower is better, so its ranking is
  taken reversed);
- **truths** (issue 10): **storage**, ``top1`` (the planted site, where phase 2 wrote the fact, scores
  highest), and **mediation**, ``mediation_tau`` (Kendall τ of the scores with the measured
  interchange profile).

The agreement is Kendall's τ-b (Kendall, 1945; ties as scipy's default) between the methods' means of
a faithfulness metric and of a truth metric, over the table's methods other than the ``random`` and
``oracle`` references (the oracle answers from the storage truth itself; both only bound the scale).
Its interval is a percentile bootstrap over **examples**, **paired**: each replicate draws the table's
examples (and seeds when crossed) once, exactly as the scorer does (:func:`leaderboard.scorer.
_table_replicates`), recomputes every method's metrics from its rows under those weights, and computes
τ of that replicate's two method vectors; so the interval covers how much the two rankings move when
the examples do. It does not cover the choice of methods (τ over ~8 methods is coarse: one swapped pair
moves it by ~0.07). ``verdict``: "agrees" when the interval lies above 0, "disagrees" below 0,
"no evidence either way" when it straddles 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from bench.errors import BenchError
from bench.records import RunRecord

FAITH_METRICS: tuple[tuple[str, int], ...] = (("faith_suff", 1), ("faith_nec", 1), ("faith_cmd", -1))
TRUTHS: tuple[tuple[str, str], ...] = (("storage", "top1"), ("mediation", "mediation_tau"))
REFERENCES = ("random", "oracle")


@dataclass
class AgreementRow:
    """One (model, truth, faithfulness metric): τ-b between the two method rankings, its interval."""

    model: str
    task_version: str
    truth: str
    truth_metric: str
    faith_metric: str
    tau: float
    ci_low: float
    ci_high: float
    n_methods: int
    n_examples: int
    n_seeds: int

    @property
    def verdict(self) -> str:
        if math.isnan(self.ci_low):
            return "undefined"
        if self.ci_low > 0:
            return "agrees"
        if self.ci_high < 0:
            return "disagrees"
        return "no evidence either way"


def kendall_tau_b_rows(x_BM: np.ndarray, y_BM: np.ndarray) -> np.ndarray:
    """Kendall's τ-b ``[B]`` between the rows of ``x`` and ``y`` (over ``M`` items; ties as scipy's
    ``kendalltau`` default); NaN where either row ties everywhere."""
    i, j = np.triu_indices(x_BM.shape[1], k=1)
    dx, dy = np.sign(x_BM[:, i] - x_BM[:, j]), np.sign(y_BM[:, i] - y_BM[:, j])
    den = np.sqrt((dx != 0).sum(1).astype(np.float64) * (dy != 0).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (dx * dy).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def faithfulness_agreement(records: Iterable[RunRecord], n_boot: int = 2000, seed: int = 0,
                           task: str = "localization") -> list[AgreementRow]:
    """The agreement table from localization records carrying per-example rows (``Store.records(
    rows=True)``), one row per (model, truth, faithfulness metric); tables whose records lack the
    faithfulness metrics (task versions before 1.3) are skipped."""
    from leaderboard.scorer import _Cell, _rng, _table_replicates, _task_obj

    if n_boot < 2:
        raise BenchError(f"the agreement's bootstrap needs n_boot >= 2, got {n_boot}")
    tables: dict[tuple[str, str], dict[str, _Cell]] = defaultdict(dict)
    for rec in records:
        k = rec.key
        if rec.status != "ok" or k.task != task or k.method in REFERENCES:
            continue
        if "faith_suff" not in rec.metrics or rec.rows is None:
            continue
        cell = tables[(k.task_version, k.model)].setdefault(k.method, _Cell(k.method))
        if k.seed in cell.records:
            raise BenchError(f"results for {task} v{k.task_version} / {k.model} / {k.method} hold seed {k.seed} "
                             f"more than once (several configurations?): filter the store first")
        cell.records[k.seed] = rec
    task_obj = _task_obj(task)
    out: list[AgreementRow] = []
    for (version, model), cells in sorted(tables.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        methods = sorted(cells)
        if len(methods) < 3:
            continue  # τ over two methods says nothing
        reps, n_ex, _ = _table_replicates(task_obj, cells, n_boot, _rng(seed, (task, version, model, "agreement")))

        def means(metric: str) -> np.ndarray:
            return np.array([np.nanmean([r.metrics.get(metric, math.nan) for r in cells[m].records.values()])
                             for m in methods])

        def replicates(metric: str) -> np.ndarray:
            return np.stack([reps[(m, metric)] for m in methods], axis=1)  # [B, M]

        seeds = {s for c in cells.values() for s in c.records}
        first = cells[methods[0]].records
        n_fact = max(int(np.sum(r.rows["kind"] == "fact")) if r.rows is not None and "kind" in r.rows
                     else len(r.rows["example"]) if r.rows is not None else 0 for r in first.values())
        for truth, tmetric in TRUTHS:
            for fmetric, sign in FAITH_METRICS:
                tau = float(kendall_tau_b_rows(sign * means(fmetric)[None], means(tmetric)[None])[0])
                taus = kendall_tau_b_rows(sign * replicates(fmetric), replicates(tmetric))
                taus = taus[np.isfinite(taus)]
                lo, hi = (np.percentile(taus, [2.5, 97.5]).tolist() if taus.size else [math.nan, math.nan])
                out.append(AgreementRow(model, version, truth, tmetric, fmetric, tau, float(lo), float(hi),
                                        len(methods), n_fact, len(seeds)))
    return out


def render_agreement(rows: Sequence[AgreementRow]) -> str:
    """The agreement table in Markdown (empty when there is nothing to show)."""
    if not rows:
        return ""
    lines = ["## Localization: does ground-truth-free faithfulness agree with the planted truth?", "",
             "Kendall τ-b between the methods' ranking by each faithfulness metric and by each planted truth "
             "(storage: `top1`; mediation: `mediation_tau`), per model, over the non-reference methods; "
             "95% paired bootstrap interval over examples (see `leaderboard/agreement.py`). `faith_cmd` is "
             "lower-is-better, so its ranking is reversed before comparing.", "",
             "| model | truth | faithfulness | τ | 95% CI | verdict | methods | examples per seed × seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.truth} (`{r.truth_metric}`) | `{r.faith_metric}` | {r.tau:+.2f} | "
                     f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}] | {r.verdict} | {r.n_methods} | "
                     f"{r.n_examples} × {r.n_seeds} |")
    return "\n".join(lines)
