"""``bench validity``: is each task's main score able to tell chance from the ceiling?

For every (task, compatible model), the ``random`` and ``oracle`` references run over
several seeds (quick profile, in-process). The reseed noise of the main score is the
standard deviation over seeds; the references are *separated* when their means differ
by more than ``widths`` noise widths (the larger of the two standard deviations). A
task whose references are not separated cannot rank methods on that model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bench.harness.runner import Cell, Runtime, make_task, plan, run_cell


@dataclass
class ValidityRow:
    task: str
    model: str
    metric: str
    random_mean: float
    random_std: float
    oracle_mean: float
    oracle_std: float
    separation: float  # |oracle − random| in noise widths (inf when both are noiseless)
    ok: bool
    error: str = ""


def check_validity(tasks: Sequence[str] | None = None, models: Sequence[str] | None = None, seeds: int = 5,
                   widths: float = 5.0, quick: bool = True, progress: bool = False, runtime: Runtime = Runtime()
                   ) -> tuple[list[ValidityRow], list[tuple[str, str]]]:
    """One row per (task, model); also returns the skipped (task, model) pairs with reasons.
    ``runtime``: where the cells run (a device, a dtype)."""
    from tqdm.auto import tqdm

    p = plan(tasks, ["random", "oracle"], models, list(range(seeds)), quick=quick, runtime=runtime)
    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in p.cells:
        groups.setdefault((c.task, c.model), []).append(c)
    rows: list[ValidityRow] = []
    bar = tqdm(total=len(p.cells), desc="validity", unit="cell", disable=not progress)
    for (task_name, model_name), cells in groups.items():
        metric = make_task(task_name).spec.main_score
        scores: dict[str, list[float]] = {"random": [], "oracle": []}
        error = ""
        for c in cells:
            rec = run_cell(c)
            bar.update(1)
            if rec.status != "ok":
                error = rec.error or "failed"
                continue
            scores[c.method].append(rec.metrics[metric])
        r, o = np.array(scores["random"]), np.array(scores["oracle"])
        if error or len(r) == 0 or len(o) == 0:
            rows.append(ValidityRow(task_name, model_name, metric, math.nan, math.nan, math.nan, math.nan, math.nan,
                                    False, error or "no scores"))
            continue
        noise = max(float(r.std(ddof=1)) if len(r) > 1 else 0.0, float(o.std(ddof=1)) if len(o) > 1 else 0.0)
        gap = abs(float(o.mean()) - float(r.mean()))
        sep = gap / noise if noise > 0 else (math.inf if gap > 0 else 0.0)
        rows.append(ValidityRow(task_name, model_name, metric, float(r.mean()), float(r.std(ddof=1)) if len(r) > 1 else 0.0,
                                float(o.mean()), float(o.std(ddof=1)) if len(o) > 1 else 0.0, sep, sep > widths))
    bar.close()
    return rows, p.skipped


def render(rows: Sequence[ValidityRow]) -> str:
    from tabulate import tabulate

    table = [{"task": r.task, "model": r.model, "metric": r.metric,
              "random": f"{r.random_mean:.3f} ± {r.random_std:.3f}", "oracle": f"{r.oracle_mean:.3f} ± {r.oracle_std:.3f}",
              "separation": "∞" if math.isinf(r.separation) else f"{r.separation:.1f}",
              "valid": "yes" if r.ok else f"NO {r.error}".strip()} for r in rows]
    return tabulate(table, headers="keys", tablefmt="github")
