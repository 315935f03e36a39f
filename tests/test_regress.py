"""`bench regress`: a tiny baseline (one cheap cell) re-run in-process, passing on the clean
code and failing, naming the metric, when the method's output is perturbed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.app.cli import main
from bench.errors import BenchError
from leaderboard import manifest, publish
from leaderboard.manifest import Figure, Tolerance, ToleranceTable, load_tolerance_file
from leaderboard.regress import provenance_changes
from tasks.localization import LocalizationTask

ROOT = Path(__file__).resolve().parent.parent
CELL = ["--task", "localization", "--model", "zoo-clip", "--method", "decomposition", "--no-references",
        "--seed", "0", "--quick"]
LABEL = "localization/zoo-clip/decomposition"


@pytest.fixture(scope="module")
def tiny_baseline(tmp_path_factory) -> Path:
    """A baseline of one cheap cell (decomposition on zoo-clip localization, seed 0), exported
    from a real run: `bench evaluate` then `bench export-manifest`."""
    d = tmp_path_factory.mktemp("baseline")
    store = d / "s.sqlite"
    assert main(["evaluate", *CELL, "--jobs", "1", "--no-table", "--no-progress", "--store", str(store)]) == 0
    out = d / "baseline.json"
    assert main(["export-manifest", "--store", str(store), "--out", str(out)]) == 0
    return out


def regress(baseline: Path, *extra: str) -> int:
    return main(["regress", "--baseline", str(baseline), "--jobs", "1", "--no-progress", *extra])


@pytest.fixture
def perturbed(monkeypatch):
    """The deliberate perturbation: decomposition's scores reversed (its worst site ranked first)."""
    from methods.decomposition import Decomposition

    original = Decomposition.localize

    def reversed_scores(self, model, request) -> torch.Tensor:
        return -original(self, model, request)

    monkeypatch.setattr(Decomposition, "localize", reversed_scores)


# ----------------------------------------------------------------- tolerances
def test_tolerance_bound_is_the_documented_maximum():
    fig = Figure(mean=0.5, ci_low=0.4, ci_high=0.6, n=2)  # half-width 0.1
    assert Tolerance(abs=1e-3, rel=1e-3, ci_k=0.25).bound(fig) == pytest.approx(0.025)
    assert Tolerance(abs=0.05, rel=1e-3, ci_k=0.25).bound(fig) == pytest.approx(0.05)
    assert Tolerance(abs=0.0, rel=0.2, ci_k=0.0).bound(Figure(16.0, 16.0, 16.0, 2)) == pytest.approx(3.2)


def test_tolerance_lookup_and_file_overlay(tmp_path):
    base = ToleranceTable(Tolerance(abs=1e-3), {"top1": Tolerance(abs=0.1)})
    f = tmp_path / "tol.toml"
    f.write_text('rel = 0.5\n[metrics]\n"localization.top1" = { abs = 0.2 }\nmrr = { ci_k = 1.0 }\n')
    t = load_tolerance_file(f, base)
    assert t.default == Tolerance(abs=1e-3, rel=0.5, ci_k=0.0)  # abs and ci_k kept from the base
    assert t.lookup("localization", "top1").abs == 0.2  # task.metric beats metric
    assert t.lookup("editing", "top1").abs == 0.1  # the base's per-metric entry is kept
    assert t.lookup("editing", "mrr") == Tolerance(abs=1e-3, rel=0.5, ci_k=1.0)
    assert t.lookup("editing", "auroc") == t.default
    # a cell's own entry (task/method, or task/method.metric) beats the rest
    cell = ToleranceTable(Tolerance(), {"editing/sae": Tolerance(abs=0.03), "editing/sae.score": Tolerance(abs=0.5),
                                        "editing.score": Tolerance(abs=0.2)})
    assert cell.lookup("editing", "score", "sae").abs == 0.5
    assert cell.lookup("editing", "efficacy", "sae").abs == 0.03
    assert cell.lookup("editing", "score", "rome").abs == 0.2 and cell.lookup("editing", "efficacy", "rome").abs == 1e-3
    j = tmp_path / "tol.json"
    j.write_text(json.dumps({"tolerance": {"abs": 0.01}}))
    assert load_tolerance_file(j).default.abs == 0.01
    j.write_text(json.dumps({"abs": -1}))
    with pytest.raises(BenchError, match="non-negative"):
        load_tolerance_file(j)
    j.write_text(json.dumps({"absolute": 1}))
    with pytest.raises(BenchError, match="unknown tolerance key 'absolute'"):
        load_tolerance_file(j)


# ------------------------------------------------------------------- regress
def test_regress_passes_on_the_unchanged_code(tiny_baseline, capsys):
    assert regress(tiny_baseline) == 0
    out, err = capsys.readouterr()
    assert "nothing moved" in out and "out of tolerance" in err and "0 out of tolerance or missing" in err


def test_regress_fails_naming_each_metric_when_the_method_is_perturbed(tiny_baseline, perturbed, capsys):
    assert regress(tiny_baseline) == 1
    out, err = capsys.readouterr()
    failing = [l for l in err.splitlines() if l.startswith("regression: ")]
    named = {l.split()[2].rstrip(":") for l in failing}
    assert {"top1", "mrr", "auroc"} <= named, err
    assert all(LABEL in l for l in failing)
    # the table of what moved: metric, expected, obtained, delta, tolerance, verdict
    assert "| cell" in out and "delta" in out and "tolerance" in out and "FAIL" in out and "top1" in out


def test_tolerance_file_absorbs_a_move(tiny_baseline, perturbed, tmp_path, capsys):
    tol = tmp_path / "tol.toml"
    tol.write_text("abs = 10.0\n")
    assert regress(tiny_baseline, "--tolerance-file", str(tol)) == 0
    tol.write_text('[metrics]\n"localization.top1" = { abs = 10.0 }\n')  # only top1 loosened
    assert regress(tiny_baseline, "--tolerance-file", str(tol)) == 1
    err = capsys.readouterr().err
    named = {l.split()[2].rstrip(":") for l in err.splitlines() if l.startswith("regression: ")}
    assert "top1" not in named and "mrr" in named


def test_update_rewrites_the_baseline_and_prints_the_diff(tiny_baseline, perturbed, tmp_path, capsys):
    b = tmp_path / "b.json"
    shutil.copy(tiny_baseline, b)
    before = manifest.load(b)
    assert regress(b, "--update") == 0
    out, err = capsys.readouterr()
    assert "top1" in out and "FAIL" in out and f"updated {b}" in err
    after = manifest.load(b)
    old, new = before.cells[0].expected, after.cells[0].expected
    assert old["top1"].mean != new["top1"].mean
    assert after.source["command"].startswith("bench regress") and after.seeds == before.seeds
    assert regress(b) == 0  # the perturbed method now matches its own baseline


def test_stale_baseline_is_a_one_line_error(tiny_baseline, tmp_path, capsys):
    d = json.loads(tiny_baseline.read_text())
    d["versions"]["tasks"]["localization"] = "0.9"
    d["versions"]["models"]["zoo-clip"] = "0" * 64
    b = tmp_path / "stale.json"
    b.write_text(json.dumps(d))
    assert regress(b) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: baseline")
    assert f"task localization is v{LocalizationTask.spec.version} now (recorded v0.9)" in err[0]
    assert f"zoo-clip weights are {_clip_hash()[:12]} now (recorded 000000000000)" in err[0]
    assert "--update" in err[0]


@pytest.mark.parametrize("edit, message", [
    (lambda d: "{not json", "is not valid JSON"),
    (lambda d: {k: v for k, v in d.items() if k != "grid"}, "missing 'grid'"),
    (lambda d: {**d, "grid": {"profile": "quick", "seeds": [-1]}}, "seeds must be a non-empty list"),
    (lambda d: {**d, "cells": [{**d["cells"][0], "method": "decompositon"}]}, "did you mean 'decomposition'"),
    (lambda d: {**d, "cells": [{**d["cells"][0], "expected": {"top1": {"mean": "x"}}}]}, "'mean' must be a number"),
])
def test_malformed_baseline_is_a_one_line_error(tiny_baseline, tmp_path, capsys, edit, message):
    d = edit(json.loads(tiny_baseline.read_text()))
    b = tmp_path / "bad.json"
    b.write_text(d if isinstance(d, str) else json.dumps(d))
    assert regress(b) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(b) in err[0] and message in err[0], err


# ------------------------------------------------------------ shipped baseline
def test_shipped_baseline_is_current_and_cheap():
    """The baseline CI checks names the current task versions and zoo weights (else `bench
    regress` refuses it) and holds only the cheap cells it is documented to hold."""
    grid = manifest.load(ROOT / "leaderboard" / "baseline.json")
    assert provenance_changes(grid) == []
    assert grid.profile == "quick" and grid.seeds == (0, 1)
    cells = {(c.cell.task, c.cell.model, c.cell.method) for c in grid.cells}
    assert cells == {(t, m, x) for (t, m), xs in publish.BASELINE_CELLS.items() for x in xs}
    assert all(c.cell.model in ("zoo-clip", "zoo-clip-spurious") for c in grid.cells)


@pytest.mark.slow
def test_shipped_baseline_regress_passes():
    """What CI runs after pytest (~1-2 min)."""
    cp = subprocess.run([sys.executable, "-m", "bench", "regress", "--baseline", "leaderboard/baseline.json",
                         "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert cp.returncode == 0, cp.stdout + cp.stderr


def _clip_hash() -> str:
    """The shipped zoo-clip's sha256 (the stale-record messages name it)."""
    from models.zoo import WEIGHTS_DIR

    return json.loads((WEIGHTS_DIR / "zoo-clip.json").read_text())["sha256"]


@pytest.mark.slow
def test_shipped_baseline_regress_passes_on_a_second_cpu_code_path(tmp_path):
    """Another CPU: torch's scalar kernels instead of the vectorised ones, and a cold fitted-state
    cache. Float-level moves stay within the defaults; the SAE cells' discrete steps within their
    documented per-cell tolerances (leaderboard/manifest.py, CROSS_CPU_TOLERANCES)."""
    import os

    env = dict(os.environ, ATEN_CPU_CAPABILITY="default", MMI_BENCH_CACHE=str(tmp_path / "cache"))
    cp = subprocess.run([sys.executable, "-m", "bench", "regress", "--baseline", "leaderboard/baseline.json",
                         "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert cp.returncode == 0, cp.stdout + cp.stderr
