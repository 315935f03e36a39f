"""The CLI end to end on the shipped zoo (quick profile), and its errors on bad input."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.harness import runner
from bench.app.cli import main
from bench.method import Method
from bench.registry import METHODS, TASKS
from bench.harness.store import Store

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def one_line_error(cp: subprocess.CompletedProcess) -> str:
    assert cp.returncode == 2, cp.stderr
    assert "Traceback" not in cp.stderr
    lines = [l for l in cp.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, cp.stderr
    return lines[0]


def one_line_error_in_process(capsys, *argv: str) -> str:
    """``one_line_error`` of ``main(argv)`` run here (``python -m bench`` is ``sys.exit(main())``): an
    exception escaping ``main`` fails the test as a traceback would; no fresh interpreter to pay for."""
    capsys.readouterr()
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_list():
    for what, name in (("tasks", "attribution"), ("methods", "integrated_gradients"), ("models", "zoo-clip")):
        cp = bench("list", what)
        assert cp.returncode == 0 and name in cp.stdout
    cp = bench("list", "methods")
    assert "capabilities: attribute" in cp.stdout and "families: contrastive" in cp.stdout


def test_bad_input_gets_one_line_errors(tmp_path, capsys):
    # one through the real entry point (a fresh `python -m bench`), the rest through main() in-process
    assert "did you mean 'attribution'" in one_line_error(bench("evaluate", "--task", "atribution"))
    err = lambda *argv: one_line_error_in_process(capsys, *argv)  # noqa: E731
    assert "did you mean 'saliency'" in err("evaluate", "--method", "salency")
    assert "did you mean 'zoo-clip'" in err("evaluate", "--model", "zoo_clip")
    assert "invalid seed" in err("evaluate", "--seed", "-3")
    assert "invalid seed" in err("evaluate", "--seed", "x")
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"garbage" * 1000)
    assert "unreadable" in err("leaderboard", "--store", str(bad))
    assert "unreadable" in err("evaluate", "--store", str(bad), "--method", "random")
    assert "does not exist" in err("leaderboard", "--store", str(tmp_path / "none.sqlite"))
    assert "does not exist" in err("world", "show", "--out", str(tmp_path / "no/dir/x.png"))
    store = tmp_path / "ok.sqlite"
    Store(store).close()
    assert "does not exist" in err("leaderboard", "--store", str(store), "--out", str(tmp_path / "nodir" / "lb.md"))


class _GenerativeOnly:
    """A task for generative models only, to provoke an incompatible combination."""

    from bench.task import TaskSpec

    spec = TaskSpec("gen-only", "0.1", frozenset({"generative"}), "attribute", "x", ())

    def supports(self, model):
        return None


def test_incompatible_combination_gives_the_reason(capsys, tmp_path):
    TASKS.register("gen-only", "test_cli:_GenerativeOnly")
    try:
        rc = main(["evaluate", "--task", "gen-only", "--model", "zoo-clip", "--store", str(tmp_path / "s.sqlite")])
    finally:
        TASKS._entries.pop("gen-only")
    err = capsys.readouterr().err
    assert rc == 2 and "does not support contrastive models" in err and "Traceback" not in err


class Exploding(Method):
    name = "exploding"
    capabilities = frozenset({"attribute"})

    def attribute(self, model, request):
        raise RuntimeError("kaboom")


def test_failing_method_becomes_failed_record_and_grid_goes_on(tmp_path):
    METHODS.register("exploding", "test_cli:Exploding")
    try:
        p = runner.plan(["attribution"], ["exploding", "random"], ["zoo-clip"], [0], quick=True)
        store = Store(tmp_path / "s.sqlite")
        res = runner.run_grid(p.cells, store, progress=False)
    finally:
        METHODS._entries.pop("exploding")
    by_method = {r.key.method: r for r in res.ran}
    assert by_method["exploding"].status == "failed" and "kaboom" in by_method["exploding"].error
    assert by_method["random"].status == "ok"
    assert {r.key.method for r in store.records()} == {"random"}


def _ok_cells(path: Path) -> dict[str, float]:
    con = sqlite3.connect(path)
    try:
        return dict(con.execute("SELECT id, created_at FROM runs WHERE status='ok'").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


@pytest.mark.slow  # three fresh processes and 8 attribution cells (~1 min of CPU), like test_interrupts (slow);
# in the default run resuming without recomputing is
# test_cells_from_retrained_zoo_weights_are_rerun_not_skipped's ("2 already stored"), and the JSON
# leaderboard's columns are test_leaderboard's
def test_killed_run_resumes_without_recomputing(tmp_path):
    store = tmp_path / "s.sqlite"
    args = ["evaluate", "--task", "attribution", "--model", "zoo-clip", "--quick", "--store", str(store),
            "--method", "random", "--method", "oracle", "--method", "saliency", "--method", "input_x_gradient",
            "--seed", "0", "--seed", "1", "--jobs", "1", "--no-table"]
    proc = subprocess.Popen([sys.executable, "-m", "bench", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(_ok_cells(store)) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _ok_cells(store)
    assert 2 <= len(before) < 8, "the run should have been killed half way"

    cp = bench(*args[:-3], "--jobs", "2", "--no-table")
    assert cp.returncode == 0, cp.stderr
    assert f"{8 - len(before)} cells ran, {len(before)} already stored, 0 failed" in cp.stderr
    after = _ok_cells(store)
    assert len(after) == 8
    assert all(after[k] == v for k, v in before.items()), "stored cells were recomputed"

    lb = bench("leaderboard", "--store", str(store), "--profile", "quick", "--format", "json")
    rows = json.loads(lb.stdout)
    assert {r["method"] for r in rows} == {"random", "oracle", "saliency", "input_x_gradient"}
    assert all({"task", "model", "method", "metric", "mean", "ci_low", "ci_high", "n"} <= set(r) for r in rows)
    assert all(r["n"] == 2 for r in rows)


def test_one_named_method_comes_with_its_references_and_diagnostics(tmp_path, capsys):
    """`bench evaluate --method M --task T` also runs random and oracle (the normalised score needs
    them), and a fitting method's diagnostics and fitted-state hashes land in its record. (In-process:
    ``python -m bench`` is ``sys.exit(main())``.)"""
    store = tmp_path / "r.sqlite"
    rc = main(["evaluate", "--task", "spurious", "--method", "sae", "--quick", "--store", str(store),
               "--jobs", "1", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    records = {r.key.method: r for r in Store(store).records()}
    assert set(records) == {"sae", "random", "oracle"}
    row = next(l for l in out.splitlines() if l.startswith("| sae"))
    assert row.rstrip(" |").split("|")[-2].strip() not in ("—", "")  # a normalised score is shown
    prov = records["sae"].provenance
    assert 0.0 <= prov["method_diagnostics"]["sae_fvu"] < 0.5 and prov["fitted"]
    # --no-references: the named method alone (leace: the flag is the runner's, whatever the method)
    assert main(["evaluate", "--task", "spurious", "--method", "leace", "--quick", "--store", str(tmp_path / "b.sqlite"),
                 "--jobs", "1", "--no-progress", "--no-references"]) == 0
    assert {r.key.method for r in Store(tmp_path / "b.sqlite").records()} == {"leace"}


def test_runtime_flags_are_recorded_and_checked(tmp_path):
    """--dtype and --batch-size change how a cell runs and land in its record; settings this build
    cannot honour fail up front with one line."""
    store = tmp_path / "r.sqlite"
    # localization/decomposition on zoo-clip: the cheapest cell under bfloat16 autocast on a CPU whose
    # figures move with the precision (spurious/leace took ~10 s of CPU under autocast)
    args = ["--task", "localization", "--model", "zoo-clip", "--method", "decomposition", "--quick", "--store",
            str(store), "--jobs", "1", "--no-progress", "--no-references", "--no-table", "--seed", "0"]
    assert main(["evaluate", *args, "--dtype", "bfloat16", "--batch-size", "8"]) == 0
    (rec,) = Store(store).records()
    assert (rec.status, rec.dtype, rec.batch_size, rec.device) == ("ok", "bfloat16", 8, "cpu")
    assert main(["evaluate", *args, "--force"]) == 0  # the defaults again, in the same process
    (rec32,) = Store(store).records()
    assert (rec32.dtype, rec32.batch_size) == ("float32", 64)
    assert rec32.metrics != rec.metrics  # bfloat16 autocast really ran at reduced precision
    if not torch.cuda.is_available():  # a GPU machine runs the cell instead (scripts/gpu_check.py compares)
        assert "device 'cuda' is not available here" in one_line_error(bench("evaluate", *args, "--device", "cuda"))
    assert "batch size must be a positive integer" in one_line_error(bench("evaluate", *args, "--batch-size", "0"))


def test_cells_from_retrained_zoo_weights_are_rerun_not_skipped(tmp_path, capsys):
    """A stored record obtained with other zoo weights (the model was retrained since) is re-run
    and replaced on resume; one with the current weights is skipped. (In-process, on the cheapest
    task's cells: the resume logic is the runner's, whatever the cell.)"""
    store = tmp_path / "s.sqlite"
    args = ["evaluate", "--task", "spurious", "--model", "zoo-clip-spurious", "--quick", "--store", str(store),
            "--method", "random", "--seed", "0", "--seed", "1", "--jobs", "1", "--no-table", "--no-progress"]
    assert main(args) == 0
    con = sqlite3.connect(store)
    with con:
        con.execute("UPDATE runs SET record=json_set(record, '$.model_hash', 'old-weights') WHERE seed=0")
    con.close()
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 0, err
    # random and oracle run beside every method: 4 cells, the 2 of seed 0 re-run
    assert "2 cells ran (2 re-run: their zoo weights were retrained), 2 already stored" in err
    hashes = {r.model_hash for r in Store(store).records()}
    assert len(hashes) == 1 and "old-weights" not in hashes
