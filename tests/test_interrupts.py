"""Interrupts and shutdowns of ``bench evaluate --jobs 2`` with real processes (issue 19).

Each run gets a unique token in its environment, which its workers (and multiprocessing's
resource tracker) inherit: every process left behind is found by scanning ``/proc/*/environ``
for it (psutil is not installed). The grid is cheap: attribution on zoo-clip, quick profile.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

# Every test here starts a real `bench evaluate --jobs 2`: three fresh interpreters that import transformers
# and load zoo-clip (~30 s of CPU each test, a tenth of the default run's budget), so the module is slow
# (`pytest -m slow`). The default run covers the runner's resume and stored-cell logic in-process
# (test_cli, test_identity) and the worker pool's sizing (test_cli_traps).
pytestmark = [pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux's /proc"),
              pytest.mark.slow]

GRID = ["--task", "attribution", "--model", "zoo-clip", "--method", "saliency", "--method", "gradcam",
        "--seed", "0", "--seed", "1", "--seed", "2", "--quick", "--no-progress", "--no-table"]
N_CELLS = 12  # 2 methods and the 2 references, 3 seeds


_TOKENS: list[str] = []


@pytest.fixture(autouse=True)
def _no_leftovers():
    """Whatever a failed test left running is killed (by pid) after it."""
    yield
    while _TOKENS:
        for line in left_behind(_TOKENS.pop()):
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except OSError:
                pass


def start(store: Path, *extra: str, jobs: int = 2) -> tuple[subprocess.Popen, str]:
    """``bench evaluate`` on the grid into ``store``, in its own process group; and its token."""
    token = f"mmi-test-{uuid.uuid4().hex}"
    _TOKENS.append(token)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "MMI_TEST_TOKEN": token}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "evaluate", *GRID, "--jobs", str(jobs),
                             "--store", str(store), *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    return proc, token


def left_behind(token: str) -> list[str]:
    """``pid cmdline`` of every live process whose environment holds ``token``."""
    out = []
    needle = f"MMI_TEST_TOKEN={token}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if needle not in (d / "environ").read_bytes().split(b"\0"):
                continue
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):
                continue
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            out.append(f"{d.name} {cmdline}")
        except OSError:
            continue
    return out


def wait_gone(token: str, within: float = 10.0) -> list[str]:
    deadline = time.monotonic() + within
    while True:
        left = left_behind(token)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def ok_cells(store: Path) -> dict[str, float]:
    """Stored successful cells: id -> created_at (read-only; {} before the store exists)."""
    if not store.exists():
        return {}
    try:
        con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return {}
    try:
        return dict(con.execute("SELECT id, created_at FROM runs WHERE status='ok'").fetchall())
    except sqlite3.Error:
        return {}
    finally:
        con.close()


def wait_for_cells(proc: subprocess.Popen, store: Path, n: int = 1, within: float = 240.0) -> None:
    deadline = time.monotonic() + within
    while len(ok_cells(store)) < n:
        if proc.poll() is not None:
            raise AssertionError(f"bench exited {proc.returncode} early: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no cell was stored in time")
        time.sleep(0.2)


def finish(proc: subprocess.Popen, within: float) -> tuple[int | None, str, float]:
    """Exit code (None when it did not exit ``within`` seconds: then killed), stderr, seconds."""
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        return None, err, time.monotonic() - t0
    return proc.returncode, err, time.monotonic() - t0


def bench(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *argv], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


# ------------------------------------------------------------------ Ctrl-C, SIGTERM
def test_ctrl_c_once_stops_workers_keeps_cells_and_exits_130(tmp_path):
    store = tmp_path / "s.sqlite"
    proc, token = start(store)
    wait_for_cells(proc, store)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
    rc, err, took = finish(proc, within=10)
    assert rc == 130, err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    said = [l for l in lines if l.startswith("interrupted")]
    assert len(said) == 1 and "run the same command again to resume" in said[0], err
    assert not wait_gone(token), "a worker outlived the interrupted run"
    kept = ok_cells(store)
    assert 1 <= len(kept) < N_CELLS
    cut = [l for l in lines if l.startswith("interrupted")][0]
    assert cut.startswith(f"interrupted: {len(kept)} cells ran and are stored")


def test_ctrl_c_twice_exits_at_once_without_a_process_left(tmp_path):
    store = tmp_path / "s.sqlite"
    proc, token = start(store)
    wait_for_cells(proc, store)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    rc, err, took = finish(proc, within=10)
    assert rc == 130, err
    assert "Traceback" not in err
    assert not wait_gone(token), "processes left after a double Ctrl-C"
    assert len(ok_cells(store)) >= 1


def test_sigterm_is_a_ctrl_c_with_its_message_and_exit_143(tmp_path):
    store = tmp_path / "s.sqlite"
    proc, token = start(store)
    wait_for_cells(proc, store)
    proc.send_signal(signal.SIGTERM)  # `kill PID`: the parent alone
    rc, err, took = finish(proc, within=10)
    assert rc == 143, err
    said = [l for l in err.splitlines() if l.startswith("terminated")]
    assert len(said) == 1 and "Traceback" not in err, err
    assert not wait_gone(token), "a worker outlived the terminated run"


def test_workers_do_not_outlive_a_killed_parent(tmp_path):
    store = tmp_path / "s.sqlite"
    proc, token = start(store)
    wait_for_cells(proc, store)
    assert len(left_behind(token)) >= 3  # the parent, two workers (and the resource tracker)
    proc.send_signal(signal.SIGKILL)  # the parent alone
    proc.wait()
    assert not wait_gone(token), "workers outlived their killed parent"


# ---------------------------------------------------------------- reliability
def test_killed_group_then_resume_loses_and_duplicates_nothing(tmp_path):
    store = tmp_path / "s.sqlite"
    proc, token = start(store)
    wait_for_cells(proc, store, n=2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not wait_gone(token)
    before = ok_cells(store)
    assert 2 <= len(before) < N_CELLS

    proc, token = start(store)
    rc, err, _ = finish(proc, within=900)
    assert rc == 0, err
    assert f"{N_CELLS - len(before)} cells ran, {len(before)} already stored, 0 failed" in err
    after = ok_cells(store)
    con = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    n_rows = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    con.close()
    assert len(after) == N_CELLS == n_rows  # nothing lost, nothing twice
    assert {k: after[k] for k in before} == before, "a stored cell was recomputed"


def test_two_writers_on_one_store_and_the_same_command_gives_identical_json(tmp_path):
    """Two `bench evaluate` at once on one store: every cell stored once, both succeed. The same
    command into another store: a byte-identical JSON leaderboard."""
    shared, alone = tmp_path / "shared.sqlite", tmp_path / "alone.sqlite"
    a, _ = start(shared, jobs=1)
    b, _ = start(shared, jobs=1)
    (rc_a, err_a, _), (rc_b, err_b, _) = finish(a, within=900), finish(b, within=900)
    assert (rc_a, rc_b) == (0, 0), err_a + err_b
    con = sqlite3.connect(f"file:{shared}?mode=ro", uri=True)
    rows = con.execute("SELECT id, status FROM runs").fetchall()
    con.close()
    assert len(rows) == N_CELLS and {s for _, s in rows} == {"ok"}

    c, _ = start(alone)
    rc, err, _ = finish(c, within=900)
    assert rc == 0, err
    lb = [bench("leaderboard", "--store", str(s), "--profile", "quick", "--format", "json") for s in (shared, alone)]
    assert all(cp.returncode == 0 for cp in lb), [cp.stderr for cp in lb]
    assert lb[0].stdout == lb[1].stdout
    assert len(json.loads(lb[0].stdout)) > 0
