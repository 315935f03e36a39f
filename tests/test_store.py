import multiprocessing as mp
import sqlite3

import pytest

from bench.errors import BenchError
from bench.records import CellKey, RunRecord
from bench.harness.store import Store


def _rec(seed: int, status: str = "ok", value: float = 0.5, method: str = "m") -> RunRecord:
    return RunRecord(CellKey("t", "1.0", method, "cfg", "model", seed), status, {"x": value})


def test_wal_and_roundtrip(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    r = _rec(3)
    r.example_hashes = ["ab", "cd"]
    assert s.put(r)
    (back,) = list(s.records())
    assert back.key == r.key and back.metrics == {"x": 0.5} and back.example_hashes == ["ab", "cd"]


def test_completed_cell_never_written_twice(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    assert s.put(_rec(0, value=1.0))
    assert not s.put(_rec(0, value=2.0))
    assert [r.metrics["x"] for r in s.records()] == [1.0] and len(s) == 1
    assert s.put(_rec(0, value=3.0), force=True)
    assert [r.metrics["x"] for r in s.records()] == [3.0]


def test_failed_cell_is_replaced_by_retry(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    s.put(_rec(0, status="failed"))
    assert not s.has_ok(_rec(0).key)
    assert s.put(_rec(0))
    assert s.has_ok(_rec(0).key) and len(s) == 1


def _writer(path: str, worker: int, n: int) -> None:
    s = Store(path)
    for i in range(n):
        s.put(_rec(i, method=f"w{worker}"))
        s.put(_rec(i, method="shared"))  # every worker races on the same cells
    s.close()


def test_several_writer_processes(tmp_path):
    path = str(tmp_path / "r.sqlite")
    Store(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 20)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    s = Store(path)
    assert len(s) == 4 * 20 + 20
    assert len(list(s.records(method="shared"))) == 20


def test_corrupt_or_unusable_store(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(BenchError, match="unreadable"):
        Store(bad)
    with pytest.raises(BenchError, match="directory"):
        Store(tmp_path)
    with pytest.raises(BenchError, match="does not exist"):
        Store(tmp_path / "no" / "such.sqlite")
    assert sqlite3 is not None


def test_process_memo_builds_once_and_drops_the_least_recently_used():
    from bench.kit.shared import ProcessMemo

    memo, built = ProcessMemo(size=2), []
    get = lambda k: memo.get(k, lambda: built.append(k) or f"v{k}")  # noqa: E731
    assert [get(1), get(1), get(2), get(1), get(3), get(1), get(2)] == ["v1", "v1", "v2", "v1", "v3", "v1", "v2"]
    assert built == [1, 2, 3, 2]  # 2 was the least recently used when 3 came in


def test_completed_hashes_read_records_holding_nan(tmp_path):
    """A metric may be NaN (e.g. AUROC with one class): the resume check still reads the record."""
    s = Store(tmp_path / "r.sqlite")
    r = _rec(0, value=float("nan"))
    r.model_hash = "abc"
    s.put(r)
    s.put(_rec(1, status="failed"))
    assert s.completed_hashes() == {r.key.id: "abc"}
