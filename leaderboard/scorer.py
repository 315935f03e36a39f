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

Ranks, ties and stability (per ``(task, task_version, model, metric)``; the references
``random`` and ``oracle`` bound the scale and are never ranked, their ``rank_group`` is
``None``, as is every row of a metric whose direction is ``"none"``):

- **Rank groups (ties).** The ranked methods are ordered by mean in the metric's
  direction (best first; equal means by name). The first is the *leader*; every
  remaining method whose 95% CI overlaps the leader's (closed intervals:
  ``lo_a <= hi_b`` and ``lo_b <= hi_a``) is statistically tied with it and shares its
  group, 1. The leader and its ties are removed and the rule repeats on the rest
  (next leader and its overlaps: group 2, ...). Overlap is checked against each
  group's leader only, so a wide interval far down the order can join group 1 while
  a narrow one between them starts group 2. With one seed an interval is a point,
  so only exactly equal means tie. Rendered as ``1=`` when a group has several members.
- **Rank stability.** For the main metric only: the share of bootstrap replicates in
  which the leader (by full-sample mean, as above) is still first. A replicate
  resamples every ranked method's seeds together: each method draws ``n`` of its own
  ``n`` seed values with replacement (the same resampling its CI uses; seeds are
  drawn per method, so methods need not share seeds), and the replicate's ranking is
  by those resample means. A replicate in which the leader ties ``k - 1`` others for
  first counts ``1/k`` (expected value under random tie-breaking). ``n_boot``
  replicates from one generator per cell, seeded from ``seed`` and ``zlib.crc32`` of
  the cell key plus ``"rank_stability"``, methods in name order, so it is
  deterministic. It is stored on the leader's main-metric row (``rank_stability``) and
  is ``None`` elsewhere and when fewer than two methods are ranked (nothing to be
  unstable against).
- **Aggregate.** :func:`aggregate`: per method, the mean normalised main score over
  the cells (``(task, task_version, model)``) that *every* compared method has; see
  its docstring for exactly which cells enter.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

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
    # Statistical rank group (1 = the leader and the methods tied with it); None for references.
    rank_group: int | None = None
    # On the leader's main-metric row only: share of bootstrap replicates in which it stays first.
    rank_stability: float | None = None


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
    arrays: dict[tuple[str, str, str, str, str], np.ndarray] = {}
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
        arrays[key] = arr
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
    _rank(rows, arrays, n_boot, seed)
    rows.sort(key=lambda r: (r.task, r.task_version, r.model, r.metric, r.method))
    return rows


# ------------------------------------------------------------------- ranking
def _order_key(direction: str, mean: float, method: str) -> tuple[float, str]:
    """Best first in ``direction``; equal means by name."""
    return (-mean if direction == "higher" else mean, method)


def rank_groups(intervals: Mapping[str, tuple[float, float, float]], direction: str) -> dict[str, int]:
    """Statistical rank groups of methods from ``{method: (mean, ci_low, ci_high)}``.

    Methods are ordered by mean in ``direction`` (``"higher"`` or ``"lower"``; equal means
    by name); the leader and every method whose interval overlaps the leader's form
    group 1, then the rule repeats on the rest (see the module docstring). Pass
    ranked methods only (no references).
    """
    if direction not in ("higher", "lower"):
        raise BenchError(f"cannot rank a metric whose direction is {direction!r}")
    remaining = sorted(intervals, key=lambda m: _order_key(direction, intervals[m][0], m))
    groups: dict[str, int] = {}
    group = 0
    while remaining:
        group += 1
        _, lo, hi = intervals[remaining[0]]
        # the leader overlaps itself, so it is always a member
        members = [m for m in remaining if intervals[m][1] <= hi and lo <= intervals[m][2]]
        for m in members:
            groups[m] = group
        remaining = [m for m in remaining if m not in groups]
    return groups


def leader_stability(values: Mapping[str, np.ndarray], leader: str, direction: str, n_boot: int,
                     rng: np.random.Generator) -> float:
    """Share of ``n_boot`` joint bootstrap replicates in which ``leader`` is still first.

    Each replicate resamples every method's seed values with replacement (its own ``n``
    draws from its own values), in name order, and ranks the resample means in
    ``direction``; a tie for first between ``k`` methods counts ``1/k``.
    """
    if direction not in ("higher", "lower"):
        raise BenchError(f"cannot rank a metric whose direction is {direction!r}")
    names = sorted(values)
    if leader not in values:
        raise BenchError(f"leader {leader!r} is not among the ranked methods")
    rows = []
    for m in names:  # one generator, methods in name order: deterministic
        v = np.asarray(values[m], dtype=np.float64)
        rows.append(v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1))
    means = np.stack(rows)  # [methods, n_boot]
    signed = means if direction == "higher" else -means
    top = signed == signed.max(axis=0, keepdims=True)
    lead = top[names.index(leader)]
    return float(np.where(lead, 1.0 / top.sum(axis=0), 0.0).mean())


def _rank(rows: list[Row], arrays: Mapping[tuple[str, str, str, str, str], np.ndarray], n_boot: int,
          seed: int) -> None:
    """Fill ``rank_group`` (and ``rank_stability`` on the leaders' main rows) in place."""
    cells: dict[tuple[str, str, str, str], list[Row]] = defaultdict(list)
    for r in rows:
        if r.method not in REFERENCE_METHODS and r.direction in ("higher", "lower"):
            cells[(r.task, r.task_version, r.model, r.metric)].append(r)
    for cell in sorted(cells):
        ranked = cells[cell]
        direction = ranked[0].direction
        groups = rank_groups({r.method: (r.mean, r.ci_low, r.ci_high) for r in ranked}, direction)
        for r in ranked:
            r.rank_group = groups[r.method]
        leader = min(ranked, key=lambda r: _order_key(direction, r.mean, r.method))
        if leader.is_main and len(ranked) > 1:
            task, version, model, metric = cell
            values = {r.method: arrays[(task, version, model, r.method, metric)] for r in ranked}
            leader.rank_stability = leader_stability(values, leader.method, direction, n_boot,
                                                     _rng(seed, (*cell, "rank_stability")))


@dataclass(frozen=True)
class LeaderStability:
    """The leader of a (task, version, model)'s main metric and its rank stability."""

    method: str
    metric: str
    stability: float
    n_methods: int  # methods ranked on the main metric (references excluded)


def rank_stability(rows: Sequence[Row]) -> dict[tuple[str, str, str], LeaderStability]:
    """``{(task, task_version, model): LeaderStability}`` from :func:`score`'s rows.

    Only cells with at least two ranked methods on the main metric appear (see the
    module docstring for the definition).
    """
    counts: Counter[tuple[str, str, str]] = Counter(
        (r.task, r.task_version, r.model) for r in rows if r.is_main and r.rank_group is not None)
    out: dict[tuple[str, str, str], LeaderStability] = {}
    for r in rows:
        if r.is_main and r.rank_stability is not None:
            key = (r.task, r.task_version, r.model)
            out[key] = LeaderStability(r.method, r.metric, r.rank_stability, counts[key])
    return dict(sorted(out.items()))


# ----------------------------------------------------------------- aggregate
Cell = tuple[str, str, str]  # (task, task_version, model)


@dataclass
class AggregateRow:
    """One method's normalised main scores across cells, and their mean over the shared cells."""

    method: str
    # normalised main score per cell of the union of compared cells (sorted); None = missing
    cells: dict[Cell, float | None] = field(default_factory=dict)
    mean: float | None = None  # mean over the common cells; None when there are none
    n_common: int = 0  # cells every compared method has (the ones averaged)
    n_cells: int = 0  # cells this method has


_MAX_BLOCK_CELLS = 16  # 2^16 candidate cell sets; beyond that, cells every method has


def _largest_block(have: dict[str, dict[Cell, float]], cells: list[Cell]) -> tuple[list[str], list[Cell]]:
    """The gap-free (methods, cells) block of :func:`aggregate`'s default."""
    methods = sorted(have)
    need = min(2, len(methods))
    if len(cells) > _MAX_BLOCK_CELLS:
        common = [c for c in cells if all(c in have[m] for m in methods)]
        return (methods, common) if common else ([], [])
    best: tuple[tuple[int, int], list[str], list[Cell]] = ((0, 0), [], [])
    for mask in range(1, 1 << len(cells)):
        chosen = [c for i, c in enumerate(cells) if mask >> i & 1]
        members = [m for m in methods if all(c in have[m] for c in chosen)]
        if len(members) < max(need, 1):
            continue
        key = (len(chosen) * len(members), len(chosen))
        if key > best[0]:
            best = (key, members, chosen)
    return best[1], best[2]


def aggregate(rows: Sequence[Row], methods: Sequence[str] | None = None) -> list[AggregateRow]:
    """Per method, the mean normalised main score over one set of cells shared by every method averaged.

    A *cell* is a ``(task, task_version, model)``. A method *has* a cell when its row
    for that cell's main metric carries a finite normalised score (so both references
    ran there and the metric is normalisable). The references are never compared (they
    are 0 and 1 by definition). Which methods are averaged, and over which cells:

    - ``methods`` given: those methods, over the cells every one of them has;
    - default: the largest gap-free block of the (method × cell) table: the cell set ``S``
      and the methods having all of ``S`` that maximise ``|S| × #methods`` (ties: more
      cells, then the first set in cell order), with at least two methods when there are
      two to compare. A method-specific family (one diffusion-only method among CLIP
      methods) would otherwise empty the common set for everyone; it is shown with its
      cells and no mean instead.

    A cell outside the averaged set is reported in ``cells`` (``None`` for the methods that
    lack it) but enters no mean, so every mean shown runs over the same cells. When no block
    qualifies, every ``mean`` is ``None``. Rows come best mean first (``None`` last), then by
    name.
    """
    main = [r for r in rows if r.is_main and r.method not in REFERENCE_METHODS]
    if methods is None:
        compared = sorted({r.method for r in main})
    else:
        compared = sorted(set(methods))
    have: dict[str, dict[Cell, float]] = {m: {} for m in compared}
    union: set[Cell] = set()
    for r in main:
        if r.method not in have:
            continue
        cell = (r.task, r.task_version, r.model)
        union.add(cell)
        if r.normalised is not None and math.isfinite(r.normalised):
            have[r.method][cell] = r.normalised
    cells = sorted(union)
    if methods is None:
        averaged, common = _largest_block(have, cells)
    else:
        averaged, common = compared, [c for c in cells if all(c in have[m] for m in compared)]
    out = []
    for m in compared:
        vals = [have[m][c] for c in common] if m in averaged else []
        out.append(AggregateRow(method=m, cells={c: have[m].get(c) for c in cells},
                                mean=float(np.mean(vals)) if vals else None,
                                n_common=len(common) if m in averaged else 0, n_cells=len(have[m])))
    out.sort(key=lambda a: (a.mean is None, -(a.mean or 0.0), a.method))
    return out
