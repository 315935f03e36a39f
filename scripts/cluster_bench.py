"""Grid throughput on a Dask ``LocalCluster`` against the process pool, on the same cells, in one run.

    python scripts/cluster_bench.py                      # 12 cheap cells, local:2 against --jobs 2
    python scripts/cluster_bench.py --workers 2 --rounds 2 --out cluster-bench.json

Each round runs the grid once through the process pool (``jobs=N``) and once on ``local:N``
(order alternating between rounds, so neither always meets a warmer disk cache), each into a fresh
store and each in a fresh Python process, as a user's command would (a driver that started a local
cluster before keeps its forkserver, whose workers then start in a fraction of a second: not a cost
a first command escapes), and reports per executor: wall seconds (workers started to last record), throughput (cells
per second), time to the first stored cell, and for Dask the driver's own time per cell (submit and
result transfer) and the time to connect. It also checks that both executors stored the same
records (metrics, example hashes, per-example rows). The ratio quoted is Dask's throughput over
the pool's, summed over rounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import runner
from bench.harness.cluster import ClusterSpec
from bench.harness.store import Store
from bench.records import RunRecord


@dataclass
class Timing:
    executor: str
    cells: int
    wall_s: float
    first_cell_s: float
    overhead_per_cell_ms: float | None = None
    connect_s: float | None = None


def _same(a: dict[str, RunRecord], b: dict[str, RunRecord]) -> list[str]:
    """The cell ids whose records differ in what a cell computes (metrics, hashes, rows)."""
    if a.keys() != b.keys():
        return sorted(set(a) ^ set(b))

    def core(r: RunRecord) -> str:
        return json.dumps([r.status, r.metrics, r.example_hashes, r.model_hash, r.rows], sort_keys=True, default=str)

    return [k for k in a if core(a[k]) != core(b[k])]


def run_once(cells: list[runner.Cell], workers: int, dask: bool, folder: Path) -> tuple[Timing, dict[str, RunRecord]]:
    store = Store(folder / ("dask.sqlite" if dask else "pool.sqlite"))
    firsts: list[float] = []
    t0 = time.perf_counter()

    def seen(rec: RunRecord) -> None:
        if not firsts:
            firsts.append(time.perf_counter() - t0)

    if dask:
        res = runner.run_grid(cells, store, force=True, progress=False, on_record=seen,
                              cluster=ClusterSpec("local", workers=workers))
    else:
        res = runner.run_grid(cells, store, force=True, progress=False, on_record=seen, jobs=workers)
    wall = time.perf_counter() - t0
    failed = [r.key.label() for r in res.ran if r.status != "ok"]
    if failed:
        raise SystemExit(f"cells failed: {failed[:3]}")
    recs = {r.key.id: r for r in store.records(rows=True)}
    store.close()
    ct = res.cluster_timings
    t = Timing("local:%d" % workers if dask else "jobs=%d" % workers, len(res.ran), round(wall, 3),
               round(firsts[0] if firsts else 0.0, 3),
               round(1000 * ct["overhead_s"] / max(1, len(res.ran)), 3) if dask else None,
               ct.get("connect_s") if dask else None)
    return t, recs


def run_fresh(args: argparse.Namespace, dask: bool, folder: Path) -> tuple[Timing, dict[str, RunRecord]]:
    """:func:`run_once` in a new Python process (the same plan), its records read back here."""
    cmd = [sys.executable, __file__, "--one", "dask" if dask else "pool", "--folder", str(folder),
           "--workers", str(args.workers)]
    for flag in ("task", "model", "method", "seed"):
        for v in getattr(args, flag) or []:
            cmd += [f"--{flag}", str(v)]
    done = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"the {'dask' if dask else 'pool'} run failed (exit {done.returncode})")
    t = Timing(**json.loads(done.stdout.strip().splitlines()[-1]))
    store = Store(folder / ("dask.sqlite" if dask else "pool.sqlite"))
    recs = {r.key.id: r for r in store.records(rows=True)}
    store.close()
    return t, recs


def _cells(args: argparse.Namespace) -> list[runner.Cell]:
    methods = args.method or ["random", "oracle", "saliency", "input_x_gradient"]
    p = runner.plan(args.task or ["attribution"], methods, args.model or ["zoo-clip"],
                    [int(s) for s in args.seed or [0, 1, 2]], quick=True)
    runner.require_cells(p)
    return p.cells


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", choices=["pool", "dask"], help=argparse.SUPPRESS)  # (one run: run_fresh's child)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--task", action="append", default=None)
    ap.add_argument("--model", action="append", default=None)
    ap.add_argument("--method", action="append", default=None)
    ap.add_argument("--seed", action="append", default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", help="write the timings as JSON")
    args = ap.parse_args(argv)
    cells = _cells(args)
    if args.one:
        t, _ = run_once(cells, args.workers, args.one == "dask", Path(args.folder))
        print(json.dumps(t.__dict__))
        return 0
    print(f"{len(cells)} cells, {args.workers} workers, {args.rounds} round(s)", file=sys.stderr)
    timings: list[Timing] = []
    mismatched: list[str] = []
    for r in range(args.rounds):
        order = [False, True] if r % 2 == 0 else [True, False]
        got: dict[bool, dict[str, RunRecord]] = {}
        with tempfile.TemporaryDirectory(prefix="mmi-cluster-bench-") as tmp:
            for dask in order:
                t, recs = run_fresh(args, dask, Path(tmp))
                timings.append(t)
                got[dask] = recs
                print(json.dumps(t.__dict__), file=sys.stderr)
        mismatched += _same(got[False], got[True])
    pool = [t for t in timings if t.executor.startswith("jobs")]
    dsk = [t for t in timings if t.executor.startswith("local")]
    ratio = sum(t.wall_s for t in pool) / sum(t.wall_s for t in dsk)
    summary: dict[str, Any] = {
        "cells": len(cells), "workers": args.workers, "rounds": args.rounds,
        "throughput_ratio_dask_over_pool": round(ratio, 3),
        "pool_cells_per_s": round(sum(t.cells for t in pool) / sum(t.wall_s for t in pool), 4),
        "dask_cells_per_s": round(sum(t.cells for t in dsk) / sum(t.wall_s for t in dsk), 4),
        "dask_overhead_per_cell_ms": round(sum(t.overhead_per_cell_ms or 0 for t in dsk) / len(dsk), 3),
        "dask_first_cell_s": round(sum(t.first_cell_s for t in dsk) / len(dsk), 3),
        "pool_first_cell_s": round(sum(t.first_cell_s for t in pool) / len(pool), 3),
        "dask_connect_s": round(sum(t.connect_s or 0 for t in dsk) / len(dsk), 3),
        "identical_records": not mismatched, "timings": [t.__dict__ for t in timings]}
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if not mismatched else 1


if __name__ == "__main__":
    sys.exit(main())
