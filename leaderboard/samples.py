"""Per-example rows for people: a cell's samples as a DataFrame or a file, and power analysis.

``samples_frame(store, task=..., model=..., method=...)`` returns the stored per-example rows
(:mod:`bench.samples`) of the matching cells as one :class:`pandas.DataFrame`: the cell's key
(``task, task_version, model, method, config_hash, seed, profile``) then the task's columns
(``example``, ``hash``, strata, the per-example quantities its metrics are computed from). A
metric can be recomputed from it with pandas or scikit-learn alone, e.g. attribution's pointing
game is ``df.groupby("seed").pointing_game.mean().mean()``.

``bench samples`` writes the frame as CSV, JSON lines or Parquet (Parquet needs ``pyarrow``).

``power(rows, task, model, target)`` turns a table's minimum detectable difference (see
:mod:`leaderboard.scorer`) into the examples, or seeds, needed to detect ``target``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from bench.errors import BenchError
from bench.harness.store import Store
from leaderboard.scorer import Row, examples_needed, rank_stability

FORMATS = ("csv", "jsonl", "parquet")
KEY_COLUMNS = ("task", "task_version", "model", "method", "config_hash", "seed", "profile")


def samples_frame(store: Store | str | Path, task: str | None = None, model: str | None = None,
                  method: str | None = None, seed: int | None = None, profile: str | None = None) -> pd.DataFrame:
    """The per-example rows of the matching successful cells, one DataFrame (see the module
    docstring). Cells stored without rows (older stores) are left out; a BenchError says so when
    nothing is left."""
    st = store if isinstance(store, Store) else Store(store)
    frames = []
    without = 0
    for rec in st.records(task=task, model=model, method=method, seed=seed, profile=profile, rows=True):
        if rec.rows is None:
            without += 1
            continue
        k = rec.key
        frame = pd.DataFrame({c: v for c, v in rec.rows.items()})
        for i, (col, val) in enumerate(zip(KEY_COLUMNS, (k.task, k.task_version, k.model, k.method,
                                                         k.method_config_hash, k.seed, k.profile))):
            frame.insert(i, col, val)
        frames.append(frame)
    if not frames:
        what = "/".join(x for x in (task, model, method) if x) or "the filters"
        extra = f" ({without} matching cells were stored without per-example rows: re-run them with --force)" \
            if without else ""
        raise BenchError(f"no per-example rows in {str(getattr(st, 'path', store))!r} match {what}{extra}")
    return pd.concat(frames, ignore_index=True)


def write_samples(frame: pd.DataFrame, out: str | Path | None, fmt: str) -> str | None:
    """Write ``frame`` as ``fmt`` to ``out`` (None: return the text; Parquet needs a file)."""
    if fmt not in FORMATS:
        raise BenchError(f"unknown samples format {fmt!r} (known: {', '.join(FORMATS)})")
    if fmt == "parquet":
        if out is None:
            raise BenchError("--format parquet writes a binary file: give it with --out FILE")
        try:
            frame.to_parquet(out, index=False)
        except ImportError:
            raise BenchError("Parquet needs pyarrow: pip install pyarrow (or use --format csv|jsonl)") from None
        return None
    text = (frame.to_csv(index=False, lineterminator="\n") if fmt == "csv"
            else frame.to_json(orient="records", lines=True, force_ascii=False))
    if out is None:
        return text
    Path(out).write_text(text)
    return None


@dataclass(frozen=True)
class PowerReport:
    """A table's minimum detectable difference and what a target difference would take."""

    task: str
    task_version: str
    model: str
    metric: str
    mde: float
    n_examples: int  # the leader's resampling units over all seeds
    seeds: int
    target: float
    examples_needed: int
    seeds_needed: int  # at today's examples per seed (only where seeds bring new examples)
    crossed: bool  # every seed scores the same examples: more seeds bring no new examples

    def text(self) -> str:
        head = (f"{self.task} v{self.task_version} / {self.model}: {self.metric} — with {self.n_examples} "
                f"examples over {self.seeds} seed{'s' if self.seeds != 1 else ''}, differences below "
                f"{self.mde:.3f} go undetected (paired, alpha 0.05, power 0.8).")
        if self.mde <= self.target:
            return head + f" {self.target:g} is detectable now."
        need = (f" To detect {self.target:g}: about {self.examples_needed} examples "
                f"({math.ceil(self.examples_needed / max(1, self.seeds))} per seed)")
        if not self.crossed:
            need += (f", or about {self.seeds_needed} seeds at today's examples per seed (where each seed "
                     "draws its own examples, as the world's seeds do)")
        return head + need + "."


def power(rows: Sequence[Row], task: str, model: str, target: float = 0.05) -> PowerReport:
    """The :class:`PowerReport` of the (task, model) table in the scorer's ``rows``."""
    if not (target > 0):
        raise BenchError(f"--mde must be a positive difference, got {target}")
    leads = {k: v for k, v in rank_stability(rows).items() if k[0] == task and k[2] == model}
    if not leads:
        have = sorted({(r.task, r.model) for r in rows})
        raise BenchError(f"no ranked table for {task}/{model} in the store (it needs two ranked methods with "
                         f"per-example rows); tables there: {', '.join(f'{t}/{m}' for t, m in have) or 'none'}")
    (t, version, m), lead = sorted(leads.items())[-1]
    if lead.mde is None or not lead.n_examples:
        raise BenchError(f"{task}/{model}: no minimum detectable difference (no paired replicates)")
    n_need = examples_needed(lead.mde, lead.n_examples, target)
    per_seed = lead.n_examples / max(1, lead.seeds)
    seeds_need = max(lead.seeds, math.ceil(n_need / per_seed))
    return PowerReport(t, version, m, lead.metric, lead.mde, lead.n_examples, lead.seeds, target, n_need,
                       seeds_need, lead.crossed)
