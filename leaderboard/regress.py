"""Re-run a recorded grid and check its figures: ``bench regress``, ``bench reproduce``,
and the determinism check of ``bench evaluate --check-determinism``.

- **Regression** (``bench regress --baseline leaderboard/baseline.json``): re-runs every
  cell of the baseline (a :class:`~leaderboard.manifest.RecordedGrid` in JSON) on its
  seeds and profile, into a fresh temporary store (or ``--store``), and compares every
  figure — each metric of each cell, the mean over the seeds — with the recorded one.
  A figure passes when ``|obtained - expected| <= max(abs, rel * |expected|, ci_k * h)``
  with ``h`` the recorded 95% CI half-width (:class:`~leaderboard.manifest.Tolerance`),
  and when it still comes from as many seeds. Tolerances: the built-in defaults
  (``DEFAULT_TOLERANCES``), over them the document's ``[tolerance]``, over that a
  ``--tolerance-file``. The table lists what moved (any figure not bit-identical) and the
  exit status is 1 naming every figure out of tolerance. ``--update`` rewrites the
  baseline with what was obtained (after an intended change) and prints the diff.
- **Reproduction** (``bench reproduce MANIFEST``): the same run and test for a TOML
  manifest, printing every figure expected vs obtained side by side.
- **Provenance.** Before anything runs, the document's task versions, zoo weights hashes
  and method config hashes are compared with the current code's: figures of another task
  version or other weights are not comparable, so a difference is a one-line error saying
  what changed (``--update`` accepts it and records the new ones). Package versions that
  differ are reported as a note: they can explain a move but do not stop the check.
- **Determinism** (:func:`check_determinism`): re-runs a deterministic sample of cells in
  a fresh worker process into a fresh store and requires every metric to be bit-identical
  (``float.hex``) to the stored one.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from bench.errors import BenchError
from bench.records import RunRecord, environment
from leaderboard.manifest import (
    DEFAULT_TOLERANCES,
    Figure,
    GridCell,
    RecordedCell,
    RecordedGrid,
    ToleranceTable,
    figures,
)

# verdicts
SAME, MOVED, FAIL, MISSING, NEW = "same", "ok (moved)", "FAIL", "MISSING", "new"


@dataclass
class Check:
    """One figure's comparison."""

    cell: GridCell
    metric: str
    expected: Figure | None
    obtained: Figure | None
    bound: float | None
    verdict: str
    note: str = ""

    @property
    def delta(self) -> float | None:
        if self.expected is None or self.obtained is None:
            return None
        return self.obtained.mean - self.expected.mean

    @property
    def failed(self) -> bool:
        return self.verdict in (FAIL, MISSING)

    def describe(self) -> str:
        if self.verdict == MISSING:
            return f"{self.cell.label} {self.metric}: missing ({self.note})"
        assert self.expected is not None and self.obtained is not None
        why = self.note or f"delta {self.delta:+.3e}, tolerance {self.bound:.3e}"
        return f"{self.cell.label} {self.metric}: expected {self.expected.mean:.6g}, obtained {self.obtained.mean:.6g} ({why})"


@dataclass
class GridRun:
    """What a re-run gave: figures per cell, failures (cell -> error), the records."""

    obtained: dict[GridCell, dict[str, Figure]] = field(default_factory=dict)
    failures: dict[GridCell, str] = field(default_factory=dict)
    records: dict[GridCell, list[RunRecord]] = field(default_factory=dict)
    seconds: float = 0.0
    ran: int = 0
    already: int = 0


# ------------------------------------------------------------------ provenance
def current_model_hash(name: str) -> str:
    """The weights hash the runner will record for ``name``. Zoo models: read from the
    shipped weights' metadata without loading them (the loader records the same)."""
    from bench.harness.runner import load_model, zoo_weights_hash

    zoo = zoo_weights_hash(name)
    if zoo is not None:
        return zoo
    return load_model(name).weights_hash


def runner_cells(grid: RecordedGrid, cell: GridCell, runtime: Any = None) -> list[Any]:
    """The runner's cells for one grid cell, one per seed (``runtime``: a runner Runtime, e.g. a device)."""
    from bench.harness.runner import Cell, Runtime

    return [Cell(cell.task, cell.method, cell.model, s, grid.profile == "quick", cell.config, runtime or Runtime())
            for s in grid.seeds]


def check_names(grid: RecordedGrid, where: str) -> None:
    """Every task, model and method the document names is registered (else a one-line
    error naming the file, with the registry's "did you mean")."""
    from bench.registry import METHODS, MODELS, TASKS

    for rc in grid.cells:
        c = rc.cell
        try:
            TASKS.entry(c.task)
            METHODS.entry(c.method)
            if MODELS.source_of(c.model) is None:
                MODELS.entry(c.model)
        except BenchError as e:
            raise BenchError(f"{where}: cell {c.label}: {e}") from None


def provenance_changes(grid: RecordedGrid) -> list[str]:
    """What differs between the document and the current code, as short phrases:
    task versions, weights hashes, method config hashes. Empty when nothing does."""
    from bench.harness.runner import cell_key, make_task

    out = []
    for t, v in sorted(grid.task_versions.items()):
        now = make_task(t).spec.version
        if now != v:
            out.append(f"task {t} is v{now} now (recorded v{v})")
    for m, h in sorted(grid.model_hashes.items()):
        now = current_model_hash(m)
        if now != h:
            out.append(f"{m} weights are {now[:12]} now (recorded {h[:12]})")
    for rc in grid.cells:
        c = rc.cell
        if not c.config_hash:
            continue
        try:
            now = cell_key(runner_cells(grid, c)[0]).method_config_hash
        except BenchError as e:
            raise BenchError(f"cell {c.label}: {e}") from None
        if now != c.config_hash:
            out.append(f"{c.label} method config hash is {now} now (recorded {c.config_hash}; its defaults changed)")
    return out


def package_changes(grid: RecordedGrid) -> list[str]:
    now = {k: v for k, v in environment()["packages"].items() if v is not None}
    return [f"{p} {grid.packages.get(p, '-')} -> {now.get(p, '-')}"
            for p in sorted(set(grid.packages) | set(now)) if grid.packages.get(p) != now.get(p)]


# ------------------------------------------------------------------------- run
def run(grid: RecordedGrid, store_path: str | Path | None = None, jobs: int | None = None,
        progress: bool = True, runtime: Any = None, cluster: Any = None) -> GridRun:
    """Run every cell of ``grid`` on its seeds (cells already in ``store_path`` are
    reused; without it, a fresh temporary store) and score each cell's records."""
    from bench.harness import runner
    from bench.harness.store import Store

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmi-regress-") as tmp:
        store = Store(store_path if store_path is not None else Path(tmp) / "regress.sqlite")
        try:
            cells = [c for rc in grid.cells for c in runner_cells(grid, rc.cell, runtime)]
            n_jobs = max(1, min(jobs if jobs is not None else runner.cpu_jobs(), len(cells)))
            executor = runner.default_executor(n_jobs) if cluster is None else None
            try:
                res = runner.run_grid(cells, store, executor=executor, progress=progress, cluster=cluster)
            finally:
                if executor is not None:
                    executor.shutdown(wait=True, cancel_futures=True)
            if res.interrupted:
                raise KeyboardInterrupt
            out = GridRun(ran=len(res.ran), already=len(res.already))
            failed = {r.key.id: r.error or "failed" for r in res.ran if r.status != "ok"}
            by_id = {r.key.id: r for r in store.records(rows=True)}
            weights = {m: current_model_hash(m) for m in sorted({rc.cell.model for rc in grid.cells})}
            for rc in grid.cells:
                keys = [runner.cell_key(c) for c in runner_cells(grid, rc.cell)]
                recs = [by_id[k.id] for k in keys if k.id in by_id]
                errs = [f"seed {k.seed}: {failed[k.id]}" for k in keys if k.id in failed]
                # a reused --store may hold a record of the same key run on other weights
                errs += [f"seed {r.key.seed}: the stored record ran other {rc.cell.model} weights; use a fresh store"
                         for r in recs if r.model_hash != weights[rc.cell.model]]
                recs = [r for r in recs if r.model_hash == weights[rc.cell.model]]
                if errs:
                    out.failures[rc.cell] = "; ".join(errs)
                out.records[rc.cell] = recs
                out.obtained[rc.cell] = figures(recs) if recs else {}
        finally:
            store.close()
    out.seconds = time.perf_counter() - t0
    return out


# --------------------------------------------------------------------- compare
def compare(grid: RecordedGrid, result: GridRun, tolerances: ToleranceTable) -> list[Check]:
    """Every recorded figure against the obtained one, plus obtained figures that are new."""
    checks = []
    for rc in grid.cells:
        got = result.obtained.get(rc.cell, {})
        for metric, exp in sorted(rc.expected.items()):
            obt = got.get(metric)
            if obt is None:
                why = result.failures.get(rc.cell) or "the cell no longer reports this metric"
                checks.append(Check(rc.cell, metric, exp, None, None, MISSING, why))
                continue
            bound = tolerances.lookup(rc.cell.task, metric, rc.cell.method).bound(exp)
            delta = obt.mean - exp.mean
            if obt.n != exp.n:
                verdict, note = FAIL, f"from {obt.n} seeds, recorded from {exp.n}"
            elif math.isnan(delta) or abs(delta) > bound:
                verdict, note = FAIL, ""
            else:
                verdict, note = (SAME if obt.mean == exp.mean else MOVED), ""
            checks.append(Check(rc.cell, metric, exp, obt, bound, verdict, note))
        for metric in sorted(set(got) - set(rc.expected)):
            checks.append(Check(rc.cell, metric, None, got[metric], None, NEW))
    return checks


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _fig(f: Figure | None) -> str:
    return "—" if f is None else f"{f.mean:.6f} [{f.ci_low:.4f}, {f.ci_high:.4f}]"


def table(checks: Sequence[Check], side_by_side: bool = False) -> str:
    """``checks`` as a Markdown table: cell, metric, expected, obtained, delta, tolerance, verdict."""
    from tabulate import tabulate

    rows = []
    for c in checks:
        if side_by_side:
            exp, obt = _fig(c.expected), _fig(c.obtained)
        else:
            exp = _num(c.expected.mean if c.expected else None, ".6f")
            obt = _num(c.obtained.mean if c.obtained else None, ".6f")
        verdict = c.verdict + (f": {c.note}" if c.note and c.verdict != MISSING else "")
        rows.append([c.cell.label, c.metric, exp, obt, _num(c.delta, "+.2e"), _num(c.bound, ".2e"), verdict])
    return tabulate(rows, headers=["cell", "metric", "expected", "obtained", "delta", "tolerance", "verdict"],
                    tablefmt="github", disable_numparse=True)


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def summary(checks: Sequence[Check]) -> str:
    n = {v: sum(1 for c in checks if c.verdict == v) for v in (SAME, MOVED, FAIL, MISSING, NEW)}
    cells = len({c.cell for c in checks})
    text = (f"{_n(len(checks) - n[NEW], 'figure')} in {_n(cells, 'cell')}: {n[SAME]} identical, {n[MOVED]} moved within "
            f"tolerance, {n[FAIL] + n[MISSING]} out of tolerance or missing")
    return text + (f", {n[NEW]} new (not recorded)" if n[NEW] else "")


def updated(grid: RecordedGrid, result: GridRun, command: str) -> RecordedGrid:
    """``grid`` with the obtained figures and the current versions (for ``--update``)."""
    from bench.harness.runner import cell_key, make_task

    if result.failures:
        cell, err = sorted(result.failures.items(), key=lambda kv: kv[0].label)[0]
        raise BenchError(f"not updating: cell {cell.label} failed ({err})")
    cells = []
    for rc in grid.cells:
        chash = cell_key(runner_cells(grid, rc.cell)[0]).method_config_hash
        cells.append(RecordedCell(GridCell(rc.cell.task, rc.cell.model, rc.cell.method, rc.cell.config, chash),
                                  dict(result.obtained[rc.cell])))
    env = environment()
    return RecordedGrid(
        profile=grid.profile, seeds=grid.seeds, cells=cells,
        task_versions={t: make_task(t).spec.version for t in sorted(grid.task_versions)},
        model_hashes={m: current_model_hash(m) for m in sorted(grid.model_hashes)},
        packages={k: v for k, v in sorted(env["packages"].items()) if v is not None},
        source={k: v for k, v in (("git_commit", env["git_commit"]), ("git_dirty", env["git_dirty"]),
                                  ("command", command)) if v is not None},
        tolerance=grid.tolerance, title=grid.title)


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _fmt_seconds(s: float) -> str:
    return f"{int(s // 60)} min {s % 60:.0f} s" if s >= 60 else f"{s:.1f} s"


# ---------------------------------------------------------------- the commands
def regress(baseline: str | Path, tolerance_file: str | Path | None = None, update: bool = False,
            store: str | Path | None = None, jobs: int | None = None, progress: bool = True,
            runtime: Any = None, cluster: Any = None) -> int:
    """``bench regress``: 0 when every figure is within tolerance (or after ``update``),
    1 naming each figure that is not."""
    from leaderboard import manifest

    path = Path(baseline)
    grid = manifest.load(path)
    check_names(grid, f"baseline {str(path)!r}")
    tolerances = grid.tolerance or DEFAULT_TOLERANCES
    if tolerance_file is not None:
        tolerances = manifest.load_tolerance_file(tolerance_file, tolerances)
    changes = provenance_changes(grid)
    if changes and not update:
        raise BenchError(f"baseline {str(path)!r} is for other versions: {'; '.join(changes)} — "
                         f"if that is intended, re-record it with `bench regress --baseline {path} --update`")
    for line in package_changes(grid):
        _say(f"note: package version differs from the baseline's: {line}")
    n_cells = len(grid.cells) * len(grid.seeds)
    _say(f"regress: re-running {_n(len(grid.cells), 'cell')} x {_n(len(grid.seeds), 'seed')} ({_n(n_cells, 'run')}, "
         f"{grid.profile} profile) from {path}")
    result = run(grid, store, jobs, progress, runtime, cluster)
    checks = compare(grid, result, tolerances)
    moved = [c for c in checks if c.verdict != SAME]
    if update:
        new = updated(grid, result, f"bench regress --baseline {path} --update")
        for line in changes:
            _say(f"changed: {line}")
        if moved:
            print(table(moved))
        manifest.save(new, path)
        _say(f"updated {path}: {summary(checks)} ({_fmt_seconds(result.seconds)})")
        return 0
    if moved:
        print(table(moved))
    else:
        print("nothing moved: every figure is bit-identical to the baseline")
    failed = [c for c in checks if c.failed]
    for c in failed:
        _say(f"regression: {c.describe()}")
    _say(f"regress: {summary(checks)} ({_fmt_seconds(result.seconds)})")
    return 1 if failed else 0


def reproduce(manifest_path: str | Path, store: str | Path | None = None, jobs: int | None = None,
              progress: bool = True, runtime: Any = None, cluster: Any = None) -> int:
    """``bench reproduce``: every figure expected vs obtained; 1 when any is out of tolerance."""
    from leaderboard import manifest

    path = Path(manifest_path)
    grid = manifest.load(path)
    check_names(grid, f"manifest {str(path)!r}")
    changes = provenance_changes(grid)
    if changes:
        raise BenchError(f"manifest {str(path)!r} was recorded on other versions: {'; '.join(changes)}")
    for line in package_changes(grid):
        _say(f"note: package version differs from the manifest's: {line}")
    _say(f"reproduce: {_n(len(grid.cells), 'cell')} x {_n(len(grid.seeds), 'seed')} ({grid.profile} profile) from {path}")
    result = run(grid, store, jobs, progress, runtime, cluster)
    checks = compare(grid, result, grid.tolerance or DEFAULT_TOLERANCES)
    print(table(checks, side_by_side=True))
    failed = [c for c in checks if c.failed]
    for c in failed:
        _say(f"mismatch: {c.describe()}")
    _say(f"reproduce: {summary(checks)} ({_fmt_seconds(result.seconds)})")
    return 1 if failed else 0


# ----------------------------------------------------------------- determinism
def sample_cells(cells: Sequence[Any], n: int) -> list[Any]:
    """Up to ``n`` of ``cells``, chosen by CRC32 of their labels: the same grid gives the
    same sample in every process (no salted ``hash``), spread over tasks and methods."""
    order = sorted(cells, key=lambda c: (zlib.crc32(f"{c.label}|{c.method_overrides}".encode()), c.label))
    return order[:max(0, n)]


def _bits(x: Any) -> str:
    return float(x).hex() if isinstance(x, (int, float)) else repr(x)


def _pool_init() -> None:
    import torch

    torch.set_num_threads(1)


def check_determinism(cells: Sequence[Any], store: Any, n: int = 3, progress: bool = True) -> list[str]:
    """Re-run up to ``n`` of ``cells`` (among those with a successful record in ``store``)
    in one fresh worker process, into a fresh temporary store, and compare every metric
    bit for bit (and the per-example hashes) with the stored record. Returns one line per
    difference; empty when all match."""
    from bench.harness import runner
    from bench.harness.store import Store

    done = {r.key.id: r for r in store.records()}
    keyed = [(c, runner.cell_key(c)) for c in cells]
    stored = {c: done[k.id] for c, k in keyed if k.id in done}
    sample = sample_cells(list(stored), n)
    if not sample:
        return []
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mmi-determinism-") as tmp:
        fresh = Store(Path(tmp) / "determinism.sqlite")
        # a spawned process: nothing cached in this one (models, per-process memos) is shared
        executor = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"), initializer=_pool_init)
        try:
            res = runner.run_grid(sample, fresh, executor=executor, progress=progress)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            fresh.close()
    if res.interrupted:
        raise KeyboardInterrupt
    again = {r.key.id: r for r in res.ran}
    for c in sample:
        old = stored[c]
        new = again.get(old.key.id)
        if new is None or new.status != "ok":
            problems.append(f"{c.label}: the re-run failed ({new.error if new else 'no record'})")
            continue
        for m in sorted(set(old.metrics) | set(new.metrics)):
            a, b = old.metrics.get(m), new.metrics.get(m)
            if a is None or b is None or _bits(a) != _bits(b):
                problems.append(f"{c.label} metric {m}: stored {a!r} ({_bits(a) if a is not None else '-'}), "
                                f"re-run {b!r} ({_bits(b) if b is not None else '-'})")
        if old.example_hashes != new.example_hashes:
            problems.append(f"{c.label}: the examples differ (per-example hashes)")
    return problems


def determinism_report(cells: Sequence[Any], store: Any, n: int, progress: bool = True) -> int:
    """Run :func:`check_determinism` and report; 0 when bit-identical, 1 otherwise."""
    t0 = time.perf_counter()
    sample_n = min(n, len(cells))
    _say(f"determinism: re-running up to {sample_n} cells in a fresh process")
    problems = check_determinism(cells, store, n, progress)
    for p in problems:
        _say(f"not deterministic: {p}")
    if not problems:
        _say(f"determinism: every figure bit-identical ({_fmt_seconds(time.perf_counter() - t0)})")
    return 1 if problems else 0

