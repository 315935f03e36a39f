"""The results store under damage, old and new versions, read-only files and concurrent writers.

Real SQLite files throughout, no mocks: each test builds the file it needs, then checks the
store's answer (one line, no traceback) and that the file was left exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest

from bench.errors import BenchError
from bench.records import CellKey, RunRecord
from bench.harness.store import SCHEMA_VERSION, Store

OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL, task_version TEXT NOT NULL, method TEXT NOT NULL,
    model TEXT NOT NULL, seed INTEGER NOT NULL, profile TEXT NOT NULL,
    status TEXT NOT NULL, record TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_task ON runs (task, model, method);
"""  # the store before per-example rows (schema 1; user_version 0)


def _rec(seed: int, method: str = "m", value: float = 0.5, rows: bool = True) -> RunRecord:
    r = RunRecord(CellKey("t", "1.0", method, "cfg", "model", seed), "ok", {"x": value})
    if rows:
        r.rows = {"example": np.array([f"e{i}" for i in range(4)], dtype=object),
                  "hash": np.array([f"h{i}" for i in range(4)], dtype=object), "v": np.arange(4.0) + seed}
    return r


def _filled(path: Path, n: int = 40) -> Path:
    with Store(path) as s:
        for i in range(n):
            assert s.put(_rec(i))
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(e: pytest.ExceptionInfo[BenchError]) -> str:
    text = str(e.value)
    assert "\n" not in text and text
    return text


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


# ------------------------------------------------------------------ versions
def test_new_store_carries_the_schema_version(tmp_path):
    s = _filled(tmp_path / "r.sqlite", 2)
    conn = sqlite3.connect(s)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    conn.close()
    assert Store(s, readonly=True).version == 2


def test_newer_schema_is_refused_in_one_line(tmp_path, capsys):
    path = _filled(tmp_path / "r.sqlite", 3)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = _digest(path)
    for readonly in (False, True):
        with pytest.raises(BenchError) as e:
            Store(path, readonly=readonly)
        assert f"newer mmi-bench (schema {SCHEMA_VERSION + 1}" in _one_line(e) and "upgrade" in str(e.value)
    from bench.app.cli import main

    assert main(["leaderboard", "--store", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "newer mmi-bench" in err and "Traceback" not in err
    assert _digest(path) == before


def test_old_schema_store_still_loads_without_rows(tmp_path):
    """A store written before the samples table (runs only, user_version 0) is version 1."""
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    for i in range(3):
        r = _rec(i, rows=False)
        k = r.key
        conn.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)", (k.id, k.task, k.task_version, k.method,
                     k.model, k.seed, k.profile, r.status, r.to_json(), 1.0))
    conn.commit()
    conn.close()
    before, listing = _digest(path), _siblings(path)

    with Store(path, readonly=True) as s:
        assert s.version == 1
        recs = list(s.records(rows=True))
        assert [r.key.seed for r in recs] == [0, 1, 2] and all(r.rows is None for r in recs)
        assert s.samples(recs[0].key) is None and len(s) == 3 and s.has_ok(recs[0].key)
    assert _digest(path) == before and _siblings(path) == listing  # reading wrote nothing

    with Store(path) as w:  # a writer brings it up to date, keeping what was there
        assert w.version == SCHEMA_VERSION
        assert w.put(_rec(7))
        assert len(w) == 4 and next(iter(w.records(seed=7, rows=True))).rows is not None
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_runs_table_of_another_shape_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, record TEXT)")
    conn.commit()
    conn.close()
    before = _digest(path)
    for readonly in (False, True):
        with pytest.raises(BenchError) as e:
            Store(path, readonly=readonly)
        assert "another shape" in _one_line(e) and "task_version" in str(e.value)
    assert _digest(path) == before

    foreign = tmp_path / "foreign.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(BenchError) as e:
        Store(foreign)
    assert "without a 'runs' table" in _one_line(e)


# ------------------------------------------------------------------- damage
@pytest.mark.parametrize("cut", ["mid-page", "page-boundary", "random-bytes"])
def test_truncated_or_random_store_is_refused_and_left_unchanged(tmp_path, cut, capsys):
    path = _filled(tmp_path / "r.sqlite")
    data = path.read_bytes()
    assert len(data) >= 4 * 4096
    if cut == "mid-page":
        path.write_bytes(data[: len(data) // 2 + 123])
    elif cut == "page-boundary":
        path.write_bytes(data[: 2 * 4096])
    else:
        path.write_bytes(np.random.default_rng(0).bytes(50_000))
    before, listing = _digest(path), _siblings(path)
    for readonly in (False, True):
        with pytest.raises(BenchError) as e:
            list(Store(path, readonly=readonly).records())
        text = _one_line(e)
        assert "unreadable or not a results store" in text
        assert ("not an SQLite file" if cut == "random-bytes" else "truncated") in text
    from bench.app.cli import main

    assert main(["leaderboard", "--store", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a results store" in err
    assert _digest(path) == before and _siblings(path) == listing  # nothing overwritten, nothing added


def test_extra_json_key_is_ignored(tmp_path):
    path = _filled(tmp_path / "r.sqlite", 2)
    conn = sqlite3.connect(path)
    (ident, text), _ = conn.execute("SELECT id, record FROM runs ORDER BY seed").fetchall()
    doc = json.loads(text)
    doc["written_by_a_newer_version"] = {"anything": 1}
    doc["key"]["future_key_field"] = "x"
    conn.execute("UPDATE runs SET record=? WHERE id=?", (json.dumps(doc), ident))
    conn.commit()
    conn.close()
    with Store(path, readonly=True) as s:
        recs = list(s.records(rows=True))
    assert len(recs) == 2 and recs[0].key == _rec(0).key and recs[0].metrics == {"x": 0.5}
    assert recs[0].rows is not None


@pytest.mark.parametrize("damage", ["cut-short", "missing-key"])
def test_damaged_record_is_one_line_naming_it(tmp_path, damage, capsys):
    path = _filled(tmp_path / "r.sqlite", 3)
    conn = sqlite3.connect(path)
    ident, text = conn.execute("SELECT id, record FROM runs WHERE seed=1").fetchone()
    if damage == "cut-short":
        bad = text[: len(text) // 2]
    else:
        doc = json.loads(text)
        del doc["status"]
        bad = json.dumps(doc)
    conn.execute("UPDATE runs SET record=? WHERE id=?", (bad, ident))
    conn.commit()
    conn.close()
    with Store(path, readonly=True) as s:
        with pytest.raises(BenchError) as e:
            list(s.records())
        text = _one_line(e)
        assert repr(ident) in text and str(path) in text
        assert ("cut short" if damage == "cut-short" else "'status'") in text
        if damage == "cut-short":  # what `bench evaluate` reads first
            with pytest.raises(BenchError) as e:
                s.completed_hashes()
            assert repr(ident) in _one_line(e)
    from bench.app.cli import main

    assert main(["leaderboard", "--store", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ident in err


# ------------------------------------------------------------- reading never writes
def test_read_only_store_is_read_without_a_write(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = _filled(folder / "r.sqlite", 5)
    assert _siblings(path) == ["r.sqlite"]  # the writer checkpointed and removed its -wal/-shm
    before, mtime, listing = _digest(path), path.stat().st_mtime_ns, _siblings(path)
    os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        # as root the permissions stop nothing, so what counts is below: no byte, no file changed
        with Store(path, readonly=True) as s:
            recs = list(s.records(rows=True))
            assert len(recs) == 5 and all(r.rows is not None for r in recs)
            assert len(s) == 5 and s.has_ok(recs[0].key) and s.samples(recs[0].key) is not None
            assert len(s.completed_hashes()) == 5 and len(s.completed_ids()) == 5
            with pytest.raises(BenchError, match="read-only"):
                s.put(_rec(99))
    finally:
        os.chmod(folder, stat.S_IRWXU)
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    assert _digest(path) == before and path.stat().st_mtime_ns == mtime and _siblings(path) == listing
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # left as it was
    conn.close()


def test_reader_sees_a_writer_that_starts_during_its_life(tmp_path):
    path = _filled(tmp_path / "r.sqlite", 2)
    reader = Store(path, readonly=True)
    assert len(reader) == 2
    with Store(path) as w:
        w.put(_rec(5))
        assert len(reader) == 3 and [r.key.seed for r in reader.records()] == [0, 1, 5]
    reader.close()


def test_absent_store_is_not_created(tmp_path):
    path = tmp_path / "none.sqlite"
    with pytest.raises(BenchError) as e:
        Store(path, readonly=True)
    assert "does not exist" in _one_line(e) and not path.exists()

    lazy = Store(path, lazy=True)  # a writer that creates its file at the first write
    assert len(lazy) == 0 and list(lazy.records()) == [] and not lazy.has_ok(_rec(0).key)
    assert lazy.completed_hashes() == {} and lazy.samples(_rec(0).key) is None
    assert not path.exists()
    assert lazy.put(_rec(0))
    assert path.exists() and len(lazy) == 1
    lazy.close()
    lazy = Store(path, lazy=True)  # an existing file is opened (and checked) at once
    assert lazy.version == SCHEMA_VERSION and len(lazy) == 1
    lazy.close()

    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")  # left by an older version's refused command: reads as empty
    with Store(empty, readonly=True) as s:
        assert len(s) == 0 and list(s.records(rows=True)) == []
    assert empty.read_bytes() == b""


# ---------------------------------------------------------------- concurrency
def _writer(path: str, worker: int, n: int) -> None:
    s = Store(path, lazy=worker % 2 == 1)
    for i in range(n):
        s.put(_rec(i, method="shared", value=float(worker)))  # both race on the same cells
        s.put(_rec(i, method=f"w{worker}"))
    s.close()


def test_two_processes_writing_the_same_new_store(tmp_path):
    path = str(tmp_path / "r.sqlite")  # does not exist yet: both create it
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 30)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with Store(path, readonly=True) as s:
        recs = list(s.records(rows=True))
        assert len(s) == len(recs) == 3 * 30
        ids = [r.key.id for r in recs]
        assert len(set(ids)) == len(ids)  # every record once
        for method in ("shared", "w0", "w1"):
            assert sorted(r.key.seed for r in recs if r.key.method == method) == list(range(30))
        assert all(r.rows is not None and list(r.rows["v"]) == [r.key.seed + k for k in range(4)] for r in recs)
        # a shared cell holds one writer's record whole, never a mixture
        assert {r.metrics["x"] for r in recs if r.key.method == "shared"} <= {0.0, 1.0}
