"""Aggregate run records into leaderboard rows: mean, bootstrap CI, normalised score.

Definitions (one *cell* is a ``(task, task_version, model, method, metric)`` group):

- **Grouping.** Only records with ``status == "ok"`` count. Records of different task
  versions are never mixed: the version is part of the group key, so a v1.0 and a
  v1.1 result for the same method are two separate rows.
- **Mean.** The arithmetic mean of the metric over seeds (one value per seed).
- **Confidence interval.** A 95% percentile bootstrap over seeds (Efron & Tibshirani,
  1993, *An Introduction to the Bootstrap*, ch. 13): draw ``n`` seed values with
  replacement ``n_boot`` times, take the mean of each resample, and report the 2.5th
  and 97.5th percentiles (NumPy's default linear interpolation) of those means. The
  interval reflects seed-to-seed variation only, and with few seeds the percentile
  bootstrap is known to be too narrow, so read it as a rough indication. With
  ``n == 1``, or when every seed gives the same value, the interval is
  ``[mean, mean]``.
- **Determinism.** Each cell's resampling uses its own ``numpy.random.Generator``
  seeded from ``seed`` and ``zlib.crc32`` of the cell key, never Python's salted
  ``hash``, and the values are ordered by seed first. The same records therefore give
  bit-identical rows in every process, whatever order the records arrive in.
- **Missing values.** A record without a metric that other records have contributes
  nothing to that metric's cell: nothing is filled in. A ``NaN`` (or ``None``) value
  is likewise dropped, and ``n`` is reduced to count only the seeds with a value.
  A cell with no values left produces no row at all, so it renders as missing.
- **Normalised score.** ``(m - random) / (oracle - random)``, where ``m`` is the
  cell's mean and ``random``/``oracle`` are the means of the methods named
  ``"random"`` and ``"oracle"`` on the same ``(task, task_version, model, metric)``.
  0 means chance, 1 means the oracle, whichever way the metric points. It is
  ``None`` when either reference is missing, when the metric's ``MetricSpec`` has
  ``normalise=False``, when the metric's direction is ``"none"``, or when
  ``|oracle - random| < 1e-9``.
- **Direction and main score.** Taken from the registered task's ``TaskSpec``. A
  task that is not registered, or whose module fails to import, or a metric that
  is not in the spec, is treated as direction ``"higher"`` with ``normalise=True``.
  The main score is the ``main_score`` the records carry (the one in force when they
  ran), falling back to the registered spec's.
- **Configurations and profiles.** Records of one method under several
  configurations (``method_config_hash``) are separate rows, labelled
  ``method@<hash>``; their seeds are not samples of the same quantity. Mixing
  profiles (``quick`` and ``full``) raises ``BenchError``; filter by profile first.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from bench.errors import BenchError
from bench.records import RunRecord
from bench.task import MetricSpec, TaskSpec

REFERENCE_METHODS = ("random", "oracle")
CI_LEVEL = 0.95
_EPS = 1e-9


@dataclass
class Row:
    """One leaderboard cell: a metric of one method on one (task version, model)."""

    task: str
    task_version: str
    model: str
    method: str
    metric: str
    mean: float
    ci_low: float
    ci_high: float
    n: int  # seeds with a (non-NaN) value for this metric
    direction: str  # "higher" | "lower" | "none"
    normalised: float | None
    is_main: bool


def _task_spec(task: str) -> TaskSpec | None:
    """The registered task's spec, or None for a task name that is not registered."""
    from bench.registry import TASKS

    try:
        if task not in TASKS:
            return None
        spec = getattr(TASKS.get(task), "spec", None)
    except (BenchError, ImportError, AttributeError):
        return None
    return spec if isinstance(spec, TaskSpec) else None


def _metric_spec(spec: TaskSpec | None, metric: str) -> MetricSpec:
    if spec is not None:
        try:
            return spec.metric(metric)
        except KeyError:
            pass
    return MetricSpec(metric, "higher", "(not in the task's spec)", normalise=True)


def _as_float(record: RunRecord, name: str, value: object) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BenchError(f"record {record.key.label()} has a non-numeric value {value!r} "
                         f"for metric {name!r}") from None


def bootstrap_ci(values: np.ndarray, n_boot: int, rng: np.random.Generator,
                 level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (Efron & Tibshirani, 1993).

    Resamples ``values`` with replacement ``n_boot`` times and returns the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resample means.
    One value, or all values equal, gives ``(mean, mean)``.
    """
    mean = float(np.mean(values))
    if values.size <= 1 or np.all(values == values[0]):
        return mean, mean
    idx = rng.integers(0, values.size, size=(n_boot, values.size))
    means = values[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(means, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(lo), float(hi)


def _rng(seed: int, key: tuple[str, ...]) -> np.random.Generator:
    crc = zlib.crc32("\x1f".join(key).encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence([seed, crc]))


def score(records: Iterable[RunRecord], n_boot: int = 2000, seed: int = 0) -> list[Row]:
    """Leaderboard rows for ``records`` (see the module docstring for definitions).

    Failed records are ignored. Rows come sorted by
    ``(task, task_version, model, metric, method)``.
    """
    if n_boot < 1:
        raise BenchError(f"n_boot must be at least 1, got {n_boot}")
    if seed < 0:
        raise BenchError(f"the bootstrap seed must be non-negative, got {seed}")

    # (task, version, model, method, metric) -> [(seed, value)]
    values: dict[tuple[str, str, str, str, str], list[tuple[int, float]]] = defaultdict(list)
    # (task, version, model, method) -> {(profile, config hash)}
    variants: dict[tuple[str, str, str, str], set[tuple[str, str]]] = defaultdict(set)
    main_votes: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)

    ok = [r for r in records if r.status == "ok"]
    configs: dict[tuple[str, str, str, str], set[str]] = defaultdict(set)
    for rec in ok:
        k = rec.key
        variants[(k.task, k.task_version, k.model, k.method)].add((k.profile, k.method_config_hash))
        configs[(k.task, k.task_version, k.model, k.method)].add(k.method_config_hash)
    for (task, version, model, method), vs in sorted(variants.items()):
        if len({p for p, _ in vs}) > 1:
            desc = ", ".join(sorted({p for p, _ in vs}))
            raise BenchError(f"results for {task} v{version} / {model} / {method} mix profiles ({desc}); "
                             f"filter the store by profile")

    for rec in ok:
        k = rec.key
        # Several configurations of one method are separate rows, labelled by config hash.
        several = len(configs[(k.task, k.task_version, k.model, k.method)]) > 1
        method = f"{k.method}@{k.method_config_hash[:6]}" if several else k.method
        if rec.main_score:
            main_votes[(k.task, k.task_version)][rec.main_score] += 1
        for name, raw in rec.metrics.items():
            v = _as_float(rec, name, raw)
            if not math.isnan(v):  # NaN: dropped, so this cell's n counts one seed fewer
                values[(k.task, k.task_version, k.model, method, name)].append((k.seed, v))

    specs: dict[str, TaskSpec | None] = {}
    means: dict[tuple[str, str, str, str, str], float] = {}
    stats: dict[tuple[str, str, str, str, str], tuple[float, float, float, int]] = {}
    for key in sorted(values):
        pairs = sorted(values[key])
        seeds = [s for s, _ in pairs]
        if len(set(seeds)) != len(seeds):
            raise BenchError(f"results for {key[0]} v{key[1]} / {key[2]} / {key[3]} hold seed "
                             f"{Counter(seeds).most_common(1)[0][0]} more than once")
        arr = np.array([v for _, v in pairs], dtype=np.float64)
        lo, hi = bootstrap_ci(arr, n_boot, _rng(seed, key))
        mean = float(np.mean(arr))
        means[key] = mean
        stats[key] = (mean, lo, hi, int(arr.size))

    rows: list[Row] = []
    for key, (mean, lo, hi, n) in stats.items():
        task, version, model, method, metric = key
        if task not in specs:
            specs[task] = _task_spec(task)
        spec = specs[task]
        mspec = _metric_spec(spec, metric)
        votes = main_votes.get((task, version))
        if votes:
            main = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        else:
            main = spec.main_score if spec is not None else ""
        rand = means.get((task, version, model, "random", metric))
        orac = means.get((task, version, model, "oracle", metric))
        normalised: float | None = None
        if (mspec.normalise and mspec.direction != "none" and rand is not None and orac is not None
                and abs(orac - rand) >= _EPS):
            normalised = (mean - rand) / (orac - rand)
        rows.append(Row(task=task, task_version=version, model=model, method=method, metric=metric,
                        mean=mean, ci_low=lo, ci_high=hi, n=n, direction=mspec.direction,
                        normalised=normalised, is_main=(metric == main)))
    rows.sort(key=lambda r: (r.task, r.task_version, r.model, r.metric, r.method))
    return rows
