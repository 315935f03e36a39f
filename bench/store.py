"""The results store: one SQLite file in WAL mode, safe with several writer processes.

A cell's record is written once, in one transaction, when the cell completes, so
an interrupted run loses nothing that finished. A successful record is never
overwritten (unless ``force``); a failed one is replaced when the cell is retried.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Iterator

from bench.errors import BenchError
from bench.records import CellKey, RunRecord

DEFAULT_STORE = "bench-results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL, task_version TEXT NOT NULL, method TEXT NOT NULL,
    model TEXT NOT NULL, seed INTEGER NOT NULL, profile TEXT NOT NULL,
    status TEXT NOT NULL, record TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_task ON runs (task, model, method);
"""


class Store:
    """``Store(path)`` opens (creating if needed) a results file."""

    def __init__(self, path: str | Path = DEFAULT_STORE) -> None:
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise BenchError(f"results store {str(self.path)!r} is a directory, not a file")
        if not self.path.parent.exists():
            raise BenchError(f"cannot create results store {str(self.path)!r}: folder does not exist")
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA busy_timeout=60000")
            self._conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise BenchError(f"results store {str(self.path)!r} is unreadable or not a results store ({e})") from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    def put(self, record: RunRecord, force: bool = False) -> bool:
        """Write ``record``; returns False when a successful record was already there."""
        k = record.key
        record.created_at = record.created_at or time.time()
        row = (k.id, k.task, k.task_version, k.method, k.model, k.seed, k.profile,
               record.status, record.to_json(), record.created_at)
        cond = "" if force else " WHERE runs.status != 'ok'"
        for attempt in range(5):
            try:
                cur = self._conn.execute(
                    "INSERT INTO runs (id, task, task_version, method, model, seed, profile, status, record, created_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET status=excluded.status,"
                    " record=excluded.record, created_at=excluded.created_at" + cond, row)
                return cur.rowcount > 0
            except sqlite3.OperationalError as e:  # "database is locked" past busy_timeout
                if attempt == 4:
                    raise BenchError(f"could not write to results store {str(self.path)!r}: {e}") from None
                time.sleep(0.5 * (attempt + 1))
        return False

    # ------------------------------------------------------------------- reads
    def has_ok(self, key: CellKey) -> bool:
        row = self._conn.execute("SELECT status FROM runs WHERE id=?", (key.id,)).fetchone()
        return row is not None and row[0] == "ok"

    def completed_ids(self) -> set[str]:
        return {r[0] for r in self._conn.execute("SELECT id FROM runs WHERE status='ok'")}

    def completed_hashes(self) -> dict[str, str]:
        """Successful cells' ids → the weights hash their record was obtained with."""
        # parsed here, not by SQLite's json_extract: records may hold NaN, which Python's json writes
        return {i: str(json.loads(rec).get("model_hash")) for i, rec in self._conn.execute(
            "SELECT id, record FROM runs WHERE status='ok'")}

    def records(self, task: str | None = None, model: str | None = None, method: str | None = None,
                status: str | None = "ok", profile: str | None = None) -> Iterator[RunRecord]:
        q = "SELECT record FROM runs WHERE 1=1"
        args: list[object] = []
        for col, val in (("task", task), ("model", model), ("method", method), ("status", status),
                         ("profile", profile)):
            if val is not None:
                q += f" AND {col}=?"
                args.append(val)
        try:
            for (text,) in self._conn.execute(q + " ORDER BY task, model, method, seed", args):
                yield RunRecord.from_json(text)
        except sqlite3.DatabaseError as e:
            raise BenchError(f"results store {str(self.path)!r} is unreadable ({e})") from None

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
