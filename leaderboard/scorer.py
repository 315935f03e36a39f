"""Aggregate run records into leaderboard rows: mean, example-level bootstrap CI, paired ranks, power.

Definitions (a *table* is one ``(task, task_version, model)``; a *cell* one method's metric in a
table; records of different task versions are never mixed, the version is part of the key):

- **Grouping.** Only records with ``status == "ok"`` count. Mixing profiles (``quick`` and
  ``full``) raises ``BenchError``; filter by profile first. Records of one method under several
  configurations (``method_config_hash``) are separate rows, labelled by what differs from the
  method's current defaults (:func:`variant_label`): ``smoothgrad[n_samples=4]``; the variant
  with the default configuration keeps the plain name; ``method@<hash>`` (6 hex digits) when the
  method is not registered, or two variants would read alike.
- **Point estimate.** The metric as the record stores it (computed by the task from its
  per-example rows, :meth:`bench.task.Task.metrics_from_rows`), averaged over seeds. A ``NaN``
  value is dropped and ``n`` (seeds with a value) counts one fewer.
- **Confidence interval: a stratified bootstrap over examples (and seeds).** Percentile
  intervals (Efron & Tibshirani, 1993, *An Introduction to the Bootstrap*, ch. 13) of the
  statistic recomputed on each resample, never of per-seed means alone. The unit drawn is the
  task's *example* (rows sharing an ``example`` id move together: a caption with its mentions,
  an edit with its outcomes), within strata: the task's :attr:`~bench.task.Task.strata` (item
  kind, spurious group, ...), so every resample keeps each stratum's size. Seeds enter by the
  design of the table (Davison & Hinkley, 1997, *Bootstrap Methods and their Application*,
  §3.8, multi-stage data):

  * *nested* (each seed scores its own examples, as the world's seeds do): the seed is one more
    stratum. Seed-to-seed variation is then example variation, which the resampling already
    counts; drawing seeds as well would count it twice (a proportion's interval would come out
    about sqrt(2) too wide with two seeds). What it cannot see is a method's own randomness
    shared by a seed's examples (one trained SAE per seed); the seed spread of the per-seed
    values is still shown by the ``seeds`` interval of old records and in the samples.
  * *crossed* (every seed scores the same examples, as data files do): examples are drawn once
    per replicate and shared by all seeds, and seeds are drawn with replacement too, so a
    method's seed-to-seed variation adds to the example variation.

  Each method's metric is recomputed per seed from its rows under the drawn multiplicities, by
  the same function that produced the record, and averaged over the (drawn) seeds. So AUROC,
  worst-group accuracy and harmonic means get intervals of the statistic itself. The CI is
  the ``2.5`` and ``97.5`` percentiles of ``n_boot`` replicates (NaN replicates, e.g. a resample
  without positives, are dropped). A zero-width interval means every per-example value is
  identical. Each table's resampling uses
  its own ``numpy.random.Generator`` seeded from ``seed`` and ``zlib.crc32`` of the table key
  (never Python's salted ``hash``), examples in stored order: the same records give
  bit-identical rows in every process.
- **Paired resampling.** Every method of a table is scored on the *same* replicates (the same
  seeds and examples drawn), so differences between methods are paired on examples.
- **Records without per-example rows** (stores written before rows existed, or a task that
  cannot be imported): the interval falls back to a percentile bootstrap of the seed values
  (zero-width with one seed); such rows carry ``interval="seeds"`` and the renderers mark
  them. Their replicates are the seed resamples, so comparisons with them are unpaired.
- **Normalised score.** ``(m - random) / (oracle - random)``, only for metrics whose
  ``MetricSpec`` declares ``normalise=True`` (the oracle attains the metric's best value by
  construction, so 1 is a ceiling); ``None`` otherwise, when a reference is missing, or when
  ``|oracle - random| < 1e-9``.
- **Direction and main score.** From the registered task's ``TaskSpec``; an unknown task or
  metric is treated as direction ``"higher"``, not normalised. The main score is the
  ``main_score`` the records carry, falling back to the registered spec's.

Ranks, ties, margin, stability and power (per table and metric; the references ``random`` and
``oracle`` bound the scale and are never ranked, ``rank_group`` is ``None`` for them and for
metrics whose direction is ``"none"``):

- **Rank groups: paired bootstrap tests against the group leader, Holm-corrected.** The
  ranked methods are ordered by mean (best first; equal means by name); the first is the
  leader. For every other method ``m`` the paired difference ``d = ±(leader − m)`` (sign: the
  metric's direction) is computed on each replicate; its two-sided bootstrap p-value is
  ``min(1, 2 · min(#(d ≤ 0) + 1, #(d ≥ 0) + 1) / (n_boot + 1))`` (Davison & Hinkley, 1997,
  §4.4; the +1 keeps it from being 0). The family of comparisons with the leader is corrected
  by Holm's step-down procedure (Holm, 1979) at ``alpha = 0.05``; a method not rejected is tied
  with the leader and shares its group. The leader and its ties are removed and the rule
  repeats on the rest. Rendered ``1=`` when a group has several members.
- **Margin.** On the leader's main row: the leader's lead over the runner-up (second by mean),
  ``±(leader − runner-up)``, with the percentile interval of the paired replicate differences.
- **Rank stability.** On the leader's main row: the share of the paired replicates in which the
  leader is first (a tie for first between ``k`` methods counts ``1/k``). Being computed from
  the same replicates as the tests, it cannot contradict them.
- **Minimum detectable difference (power).** On the leader's main row: ``mde = (z₀.₉₇₅ + z₀.₈) ·
  SE``, the difference a two-sided test at ``alpha = 0.05`` detects with power 0.8 (a normal
  approximation; Cohen, 1988, ch. 2), where ``SE`` is the median, over the ranked methods, of
  the bootstrap standard deviation of their paired difference from the leader. ``SE`` scales
  as ``1/sqrt(examples)``: :func:`examples_needed` turns a target difference into a count.
- **Aggregate.** :func:`aggregate`: per method, the mean normalised main score over the cells
  (``(task, task_version, model)``) that *every* compared method has; see its docstring.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from bench.errors import BenchError
from bench.records import RunRecord
from bench.samples import shared_ties
from bench.task import MetricSpec, Task, TaskSpec

REFERENCE_METHODS = ("random", "oracle")
CI_LEVEL = 0.95
ALPHA = 0.05
POWER = 0.8
_Z = NormalDist().inv_cdf(1 - ALPHA / 2) + NormalDist().inv_cdf(POWER)  # 2.8016
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
    # On the leader's row of a headline metric (the main one, or a task's ``also_ranked``) only:
    # share of bootstrap replicates in which it stays first.
    rank_stability: float | None = None
    n_examples: int = 0  # resampling units (examples) over all seeds; 0 without per-example rows
    interval: str = "examples"  # what the CI resamples: "examples" (and seeds), or "seeds" only
    # On the leader's main-metric row only: the lead over the runner-up with its paired interval,
    # and the table's minimum detectable difference (alpha 0.05, power 0.8).
    runner_up: str | None = None
    margin: float | None = None
    margin_low: float | None = None
    margin_high: float | None = None
    mde: float | None = None
    # On every ranked row: the Holm-adjusted p-value of the paired test against its group's leader.
    p_value: float | None = None
    crossed: bool = False  # every seed scored the same examples (seeds resampled too)
    profile: str = ""  # the records' profile ("quick" or "full"; one per row, never mixed)
    # ranked in its own right: the main metric, or one of the task's ``also_ranked`` (a second ground truth)
    headline: bool = False
    answers: str = ""  # the question the method's scores answer, as its records say (``Method.answers``)


def _task_obj(task: str) -> Task | None:
    """An instance of the registered task (for :meth:`Task.metrics_from_rows`), or None."""
    from bench.registry import TASKS

    try:
        if task not in TASKS:
            return None
        obj = TASKS.get(task)()
    except Exception:  # a plugin that fails to import or build: fall back to seed intervals
        return None
    return obj if isinstance(obj, Task) else None


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
    return MetricSpec(metric, "higher", "(not in the task's spec)", normalise=False)


def _as_float(record: RunRecord, name: str, value: object) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BenchError(f"record {record.key.label()} has a non-numeric value {value!r} "
                         f"for metric {name!r}") from None


def percentile_ci(reps: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """The ``(1 ∓ level) / 2`` percentiles (NumPy's linear interpolation) of the finite replicates."""
    r = reps[np.isfinite(reps)]
    if r.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(r, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(lo), float(hi)


def bootstrap_ci(values: np.ndarray, n_boot: int, rng: np.random.Generator,
                 level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (used for seed values alone, when a
    record has no per-example rows). One value, or all values equal, gives ``(mean, mean)``."""
    mean = float(np.mean(values))
    if values.size <= 1 or np.all(values == values[0]):
        return mean, mean
    return percentile_ci(_mean_replicates(values, n_boot, rng), level)


def _mean_replicates(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, values.size, size=(n_boot, values.size))
    return values[idx].mean(axis=1)


def _rng(seed: int, key: tuple[str, ...]) -> np.random.Generator:
    crc = zlib.crc32("\x1f".join(key).encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence([seed, crc]))


# ------------------------------------------------------------------ resampling
@dataclass
class Design:
    """A table's resampling units (examples) and strata, and whether its seeds are crossed
    with its examples (every seed scores the same example ids) or nested (each seed its own)."""

    crossed: bool
    seeds: list[int]
    index: dict[tuple[int, str], int] = field(default_factory=dict)  # (seed, example) -> unit
    stratum: list[tuple[Any, ...]] = field(default_factory=list)  # per unit


def design(tables: Mapping[int, Sequence[Mapping[str, np.ndarray]]], task: Task) -> Design:
    """The units of a table from its rows per seed (all methods' rows; first-seen order), with the
    strata :meth:`Task.strata_of` gives."""
    seeds = sorted(tables)
    ids = {s: {e for rows in tables[s] for e in rows["example"].tolist()} for s in seeds}
    crossed = len(seeds) > 1 and all(ids[s] == ids[seeds[0]] for s in seeds)
    d = Design(crossed, seeds)
    shared: dict[str, int] = {}
    for s in seeds:
        for rows in tables[s]:
            strata = task.strata_of(rows)  # type: ignore[arg-type]
            for i, ex in enumerate(rows["example"].tolist()):
                if (s, ex) in d.index:
                    continue
                if crossed and ex in shared:
                    d.index[(s, ex)] = shared[ex]
                    continue
                unit = len(d.stratum)
                d.index[(s, ex)] = unit
                shared[ex] = unit
                d.stratum.append(strata[i] if crossed else (s, *strata[i]))
    return d


def draw_weights(d: Design, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Seed multiplicities ``c_BS`` and unit multiplicities ``W_BU`` of ``n_boot`` replicates:
    within each stratum, as many units as it holds, drawn with replacement; seeds drawn with
    replacement only when crossed with the examples (see the module docstring)."""
    S = len(d.seeds)
    c_BS = (rng.multinomial(S, np.full(S, 1.0 / S), size=n_boot).astype(np.float64) if d.crossed
            else np.ones((n_boot, S)))
    W = np.zeros((n_boot, len(d.stratum)))
    by: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, st in enumerate(d.stratum):
        by[st].append(i)
    for st in sorted(by, key=repr):
        idx = np.array(by[st])
        W[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n_boot)
    return c_BS, W


@dataclass
class _Cell:
    """One method's records in a table, by seed."""

    method: str
    records: dict[int, RunRecord] = field(default_factory=dict)


def _table_replicates(task: Task | None, cells: Mapping[str, _Cell], n_boot: int,
                      rng: np.random.Generator) -> tuple[dict[tuple[str, str], np.ndarray], dict[str, int], bool]:
    """Paired replicates ``{(method, metric): [n_boot]}`` for every method with per-example rows,
    each such method's example count, and whether the seeds are crossed with the examples."""
    with_rows = {m: c for m, c in cells.items()
                 if task is not None and all(r.rows is not None for r in c.records.values())}
    if not with_rows or task is None:
        return {}, {}, False
    seeds = sorted({s for c in with_rows.values() for s in c.records})
    by_seed = {s: [c.records[s].rows for c in with_rows.values() if s in c.records] for s in seeds}
    d = design(by_seed, task)  # type: ignore[arg-type]
    c_BS, W = draw_weights(d, n_boot, rng)
    reps: dict[tuple[str, str], np.ndarray] = {}
    n_ex: dict[str, int] = {}
    for m in sorted(with_rows):
        num: dict[str, np.ndarray] = {}
        den: dict[str, np.ndarray] = {}
        units: set[int] = set()
        for s, rec in sorted(with_rows[m].records.items()):
            rows = rec.rows
            assert rows is not None
            idx = np.array([d.index[(s, e)] for e in rows["example"].tolist()], dtype=np.int64)
            units.update(idx.tolist())
            with shared_ties():  # AUROC, AP and FPR of one score column share one sort and one pass
                vals = task.metrics_from_rows(rows, W[:, idx])
            c = c_BS[:, d.seeds.index(s)]
            for metric, v in vals.items():
                v = np.asarray(v, dtype=np.float64)
                num[metric] = num.get(metric, np.zeros(n_boot)) + np.where(c > 0, c * v, 0.0)
                den[metric] = den.get(metric, np.zeros(n_boot)) + c
        n_ex[m] = len(units)
        for metric in num:
            with np.errstate(invalid="ignore", divide="ignore"):
                reps[(m, metric)] = np.where(den[metric] > 0, num[metric] / np.where(den[metric] > 0, den[metric], 1),
                                             np.nan)
    return reps, n_ex, d.crossed


# ------------------------------------------------------------ variant labels
def _plain(value: Any) -> Any:
    """A config value as JSON would hold it (tuples as lists), for comparison with a stored one."""
    import json

    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, list):
        return "(" + ",".join(_shown(v) for v in value) + ")"
    return str(value)


def method_defaults(method: str) -> dict[str, Any] | None:
    """The registered method's current default config (as JSON holds it); None when it is not
    registered or cannot be built."""
    try:
        from bench.registry import METHODS

        if method not in METHODS:
            return None
        from bench.harness.runner import make_method

        return _plain(make_method(method).config_dict())
    except Exception:  # a plugin that fails to import: fall back to the hash
        return None


def variant_label(method: str, config: Mapping[str, Any], config_hash: str,
                  defaults: Mapping[str, Any] | None = None) -> str:
    """``method[key=value, ...]``: the options of ``config`` that differ from ``defaults`` (the
    method's current defaults when not given); the plain name when none differs; ``method@<hash>``
    when the method is not registered or the config is not a mapping."""
    if defaults is None:
        defaults = method_defaults(method)
    if defaults is None or not isinstance(config, Mapping):
        return f"{method}@{config_hash[:6]}"
    cfg = _plain(dict(config))
    diff = [(k, v) for k, v in sorted(cfg.items()) if k not in defaults or defaults[k] != v]
    if not diff:
        return method
    return f"{method}[{', '.join(f'{k}={_shown(v)}' for k, v in diff)}]"


def _variant_labels(records: Sequence[RunRecord], variants: Mapping[tuple[str, str, str, str], set[tuple[str, str]]]
                    ) -> dict[tuple[str, str], str]:
    """``{(method, config hash): label}`` for the methods stored under several configurations in
    one table (the others keep their name): :func:`variant_label`, or ``method@<hash>`` for
    every variant of a method whose labels would collide."""
    several = {method for (_, _, _, method), vs in variants.items() if len({h for _, h in vs}) > 1}
    configs: dict[str, dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for rec in records:
        if rec.key.method in several:
            configs[rec.key.method].setdefault(rec.key.method_config_hash, rec.method_config)
    out: dict[tuple[str, str], str] = {}
    for method in sorted(configs):
        defaults = method_defaults(method)
        labels = {h: variant_label(method, cfg, h, defaults) for h, cfg in configs[method].items()}
        if len(set(labels.values())) < len(labels):
            labels = {h: f"{method}@{h[:6]}" for h in labels}
        out.update({(method, h): label for h, label in labels.items()})
    return out


# ------------------------------------------------------------------ scoring
def score(records: Iterable[RunRecord], n_boot: int = 2000, seed: int = 0) -> list[Row]:
    """Leaderboard rows for ``records`` (see the module docstring for definitions).

    Records should carry their per-example rows (``Store.records(rows=True)``); those without
    fall back to seed intervals. Failed records are ignored. Rows come sorted by
    ``(task, task_version, model, metric, method)``.
    """
    if n_boot < 1:
        raise BenchError(f"n_boot must be at least 1, got {n_boot}")
    if seed < 0:
        raise BenchError(f"the bootstrap seed must be non-negative, got {seed}")

    ok = [r for r in records if r.status == "ok"]
    variants: dict[tuple[str, str, str, str], set[tuple[str, str]]] = defaultdict(set)
    for rec in ok:
        k = rec.key
        variants[(k.task, k.task_version, k.model, k.method)].add((k.profile, k.method_config_hash))
    for (task, version, model, method), vs in sorted(variants.items()):
        if len({p for p, _ in vs}) > 1:
            desc = ", ".join(sorted({p for p, _ in vs}))
            raise BenchError(f"results for {task} v{version} / {model} / {method} mix profiles ({desc}); "
                             f"filter the store by profile")

    tables: dict[tuple[str, str, str], dict[str, _Cell]] = defaultdict(dict)
    main_votes: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    labels = _variant_labels(ok, variants)
    profiles: dict[tuple[str, str, str], str] = {}
    for rec in ok:
        k = rec.key
        method = labels.get((k.method, k.method_config_hash), k.method)
        profiles[(k.task, k.task_version, k.model)] = k.profile
        cell = tables[(k.task, k.task_version, k.model)].setdefault(method, _Cell(method))
        if k.seed in cell.records:
            raise BenchError(f"results for {k.task} v{k.task_version} / {k.model} / {method} hold seed "
                             f"{k.seed} more than once")
        cell.records[k.seed] = rec
        if rec.main_score:
            main_votes[(k.task, k.task_version)][rec.main_score] += 1

    specs: dict[str, TaskSpec | None] = {}
    task_objs: dict[str, Task | None] = {}
    rows: list[Row] = []
    replicates: dict[tuple[str, str, str, str, str], np.ndarray] = {}
    for tkey in sorted(tables):
        task, version, model = tkey
        if task not in specs:
            specs[task] = _task_spec(task)
            task_objs[task] = _task_obj(task)
        spec = specs[task]
        cells = tables[tkey]
        if any(r.rows is not None for c in cells.values() for r in c.records.values()):
            reps, n_ex, crossed = _table_replicates(task_objs[task], cells, n_boot, _rng(seed, tkey))
        else:
            reps, n_ex, crossed = {}, {}, False
        votes = main_votes.get((task, version))
        main = (sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] if votes
                else (spec.main_score if spec is not None else ""))
        means: dict[tuple[str, str], float] = {}
        table_rows: list[Row] = []
        for method in sorted(cells):
            cell = cells[method]
            metrics = sorted({m for r in cell.records.values() for m in r.metrics})
            for metric in metrics:
                pairs = sorted((s, _as_float(r, metric, r.metrics.get(metric))) for s, r in cell.records.items())
                vals = np.array([v for _, v in pairs if not math.isnan(v)], dtype=np.float64)
                if vals.size == 0:
                    continue  # no value left: the cell renders as missing
                mean = float(np.mean(vals))
                rep = reps.get((method, metric))
                if rep is not None:
                    interval = "examples"
                    lo, hi = percentile_ci(rep)
                    if math.isnan(lo):
                        lo = hi = mean
                else:
                    interval = "seeds"
                    # one set of seed resamples gives both the interval and the ranking's draws
                    constant = vals.size <= 1 or bool(np.all(vals == vals[0]))
                    rep = (np.full(n_boot, mean) if constant
                           else _mean_replicates(vals, n_boot, _rng(seed, (*tkey, method, metric))))
                    lo, hi = (mean, mean) if constant else percentile_ci(rep)
                replicates[(*tkey, method, metric)] = rep
                means[(method, metric)] = mean
                mspec = _metric_spec(spec, metric)
                also = spec.also_ranked if spec is not None else ()
                table_rows.append(Row(task=task, task_version=version, model=model, method=method,
                                      metric=metric, mean=mean, ci_low=lo, ci_high=hi, n=int(vals.size),
                                      direction=mspec.direction, normalised=None, is_main=(metric == main),
                                      n_examples=n_ex.get(method, 0), interval=interval,
                                      crossed=crossed and interval == "examples", profile=profiles[tkey],
                                      headline=metric == main or metric in also,
                                      answers=next((str(r.provenance["answers"]) for r in cell.records.values()
                                                    if r.provenance.get("answers")), "")))
        for r in table_rows:
            mspec = _metric_spec(spec, r.metric)
            rand = means.get(("random", r.metric))
            orac = means.get(("oracle", r.metric))
            if (mspec.normalise and mspec.direction != "none" and rand is not None and orac is not None
                    and abs(orac - rand) >= _EPS):
                r.normalised = (r.mean - rand) / (orac - rand)
        rows.extend(table_rows)
    _rank(rows, replicates)
    rows.sort(key=lambda r: (r.task, r.task_version, r.model, r.metric, r.method))
    return rows


# ------------------------------------------------------------------- ranking
def _order_key(direction: str, mean: float, method: str) -> tuple[float, str]:
    """Best first in ``direction``; equal means by name."""
    return (-mean if direction == "higher" else mean, method)


def paired_p(diff: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a paired difference being zero, from its replicates
    (see the module docstring); 1.0 when every replicate difference is 0."""
    d = diff[np.isfinite(diff)]
    if d.size == 0:
        return 1.0
    le, ge = int((d <= 0).sum()), int((d >= 0).sum())
    return min(1.0, 2.0 * (min(le, ge) + 1) / (d.size + 1))


def holm(pvalues: Mapping[str, float], alpha: float = ALPHA) -> tuple[set[str], dict[str, float]]:
    """Holm's step-down procedure (Holm, 1979): the rejected hypotheses and the adjusted p-values."""
    order = sorted(pvalues, key=lambda k: (pvalues[k], k))
    k = len(order)
    rejected: set[str] = set()
    adjusted: dict[str, float] = {}
    running = 0.0
    stop = False
    for i, name in enumerate(order):
        running = max(running, min(1.0, (k - i) * pvalues[name]))
        adjusted[name] = running
        if not stop and pvalues[name] <= alpha / (k - i):
            rejected.add(name)
        else:
            stop = True
    return rejected, adjusted


def rank_groups(replicates: Mapping[str, np.ndarray], means: Mapping[str, float], direction: str,
                alpha: float = ALPHA) -> tuple[dict[str, int], dict[str, float]]:
    """Statistical rank groups ``{method: group}`` and Holm-adjusted p-values against each group's
    leader, from paired replicates ``{method: [n_boot]}`` and point means (see the module
    docstring). Pass ranked methods only (no references)."""
    if direction not in ("higher", "lower"):
        raise BenchError(f"cannot rank a metric whose direction is {direction!r}")
    sign = 1.0 if direction == "higher" else -1.0
    remaining = sorted(means, key=lambda m: _order_key(direction, means[m], m))
    groups: dict[str, int] = {}
    pvals: dict[str, float] = {}
    group = 0
    while remaining:
        group += 1
        leader, rest = remaining[0], remaining[1:]
        raw = {m: paired_p(sign * (replicates[leader] - replicates[m])) for m in rest}
        rejected, adjusted = holm(raw, alpha) if raw else (set(), {})
        groups[leader] = group
        for m in rest:
            if m not in rejected:
                groups[m] = group
                pvals[m] = adjusted[m]
        for m in rejected:
            pvals[m] = adjusted[m]
        remaining = [m for m in rest if m in rejected]
    return groups, pvals


def leader_stability(replicates: Mapping[str, np.ndarray], leader: str, direction: str) -> float:
    """Share of the paired replicates in which ``leader`` is first (a tie for first between ``k``
    methods counts ``1/k``; a NaN replicate value counts as last)."""
    if direction not in ("higher", "lower"):
        raise BenchError(f"cannot rank a metric whose direction is {direction!r}")
    names = sorted(replicates)
    if leader not in replicates:
        raise BenchError(f"leader {leader!r} is not among the ranked methods")
    vals = np.stack([np.asarray(replicates[m], dtype=np.float64) for m in names])
    signed = vals if direction == "higher" else -vals
    signed = np.where(np.isnan(signed), -np.inf, signed)
    top = signed == signed.max(axis=0, keepdims=True)
    lead = top[names.index(leader)]
    return float(np.where(lead, 1.0 / top.sum(axis=0), 0.0).mean())


def _rank(rows: list[Row], replicates: Mapping[tuple[str, str, str, str, str], np.ndarray]) -> None:
    """Fill rank groups, p-values, and on the leaders' main rows stability, margin and power."""
    cells: dict[tuple[str, str, str, str], list[Row]] = defaultdict(list)
    for r in rows:
        if r.method not in REFERENCE_METHODS and r.direction in ("higher", "lower"):
            cells[(r.task, r.task_version, r.model, r.metric)].append(r)
    for cell in sorted(cells):
        ranked = cells[cell]
        direction = ranked[0].direction
        reps = {r.method: replicates[(*cell[:3], r.method, cell[3])] for r in ranked}
        groups, pvals = rank_groups(reps, {r.method: r.mean for r in ranked}, direction)
        for r in ranked:
            r.rank_group = groups[r.method]
            r.p_value = pvals.get(r.method)
        order = sorted(ranked, key=lambda r: _order_key(direction, r.mean, r.method))
        leader = order[0]
        if leader.headline and len(ranked) > 1:
            sign = 1.0 if direction == "higher" else -1.0
            leader.rank_stability = leader_stability(reps, leader.method, direction)
            runner = order[1]
            d = sign * (reps[leader.method] - reps[runner.method])
            leader.runner_up = runner.method
            leader.margin = sign * (leader.mean - runner.mean)
            leader.margin_low, leader.margin_high = percentile_ci(d)
            ses = [float(np.nanstd(sign * (reps[leader.method] - reps[r.method]), ddof=1)) for r in order[1:]]
            ses = [x for x in ses if math.isfinite(x)]
            leader.mde = _Z * float(np.median(ses)) if ses else None


def examples_needed(mde_now: float, n_now: int, target: float) -> int:
    """Examples (resampling units, over all seeds) at which the minimum detectable difference
    falls to ``target``, from ``mde_now`` at ``n_now`` (``SE ∝ 1/sqrt(n)``)."""
    if target <= 0:
        raise BenchError(f"the target difference must be positive, got {target}")
    if mde_now <= 0:
        return n_now
    return max(n_now, int(math.ceil(n_now * (mde_now / target) ** 2)))


@dataclass(frozen=True)
class LeaderStability:
    """The leader of a (task, version, model)'s main metric: its rank stability, its margin over
    the runner-up (paired interval) and the table's minimum detectable difference."""

    method: str
    metric: str
    stability: float
    n_methods: int  # methods ranked on the main metric (references excluded)
    runner_up: str | None = None
    margin: float | None = None
    margin_low: float | None = None
    margin_high: float | None = None
    mde: float | None = None
    n_examples: int = 0  # the leader's examples (resampling units, all seeds)
    seeds: int = 0
    crossed: bool = False


def rank_stability(rows: Sequence[Row], main: bool = True) -> dict[tuple[str, ...], LeaderStability]:
    """``{(task, task_version, model): LeaderStability}`` from :func:`score`'s rows.

    Only cells with at least two ranked methods on the main metric appear (see the
    module docstring for the definition). ``main=False``: the same for the other headline
    metrics (a task's ``also_ranked``), one per (task, task_version, model) and metric, keyed by
    ``(task, task_version, model, metric)``.
    """
    def pick(r: Row) -> bool:
        return r.is_main if main else (r.headline and not r.is_main)

    def key_of(r: Row) -> tuple[str, ...]:
        return (r.task, r.task_version, r.model) if main else (r.task, r.task_version, r.model, r.metric)

    counts: Counter[tuple[str, ...]] = Counter(key_of(r) for r in rows if pick(r) and r.rank_group is not None)
    out: dict[tuple[str, ...], LeaderStability] = {}
    for r in rows:
        if pick(r) and r.rank_stability is not None:
            key = key_of(r)
            out[key] = LeaderStability(r.method, r.metric, r.rank_stability, counts[key], r.runner_up, r.margin,
                                       r.margin_low, r.margin_high, r.mde, r.n_examples, r.n, r.crossed)
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
