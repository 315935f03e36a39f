"""The results store: one SQLite file in WAL mode, safe with several writer processes.

A cell's record is written once, in one transaction, when the cell completes, so
an interrupted run loses nothing that finished. A successful record is never
overwritten (unless ``force``); a failed one is replaced when the cell is retried.

Per-example rows (:mod:`bench.samples`) go into the ``samples`` table, keyed by the record's
id, in the same transaction as the record: one zlib-compressed JSON blob of the rows' columns
per cell (about 5–20 kB; a table row per example would cost several times that in SQLite's
row overhead and indexes, and the rows are always read a cell at a time). Records written
before samples existed load as before, with ``rows`` None; the scorer marks their intervals.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Iterator

from bench.errors import BenchError
from bench.records import CellKey, RunRecord
from bench.samples import Rows, decode, encode

DEFAULT_STORE = "bench-results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL, task_version TEXT NOT NULL, method TEXT NOT NULL,
    model TEXT NOT NULL, seed INTEGER NOT NULL, profile TEXT NOT NULL,
    status TEXT NOT NULL, record TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_task ON runs (task, model, method);
CREATE TABLE IF NOT EXISTS samples (
    id TEXT PRIMARY KEY, n_rows INTEGER NOT NULL, rows BLOB NOT NULL
);
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
        blob = encode(record.rows) if record.rows is not None and record.status == "ok" else None
        for attempt in range(5):
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    cur = self._conn.execute(
                        "INSERT INTO runs (id, task, task_version, method, model, seed, profile, status, record,"
                        " created_at) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET"
                        " status=excluded.status, record=excluded.record, created_at=excluded.created_at" + cond, row)
                    written = cur.rowcount > 0
                    if written:  # the rows go with the record they belong to, or not at all
                        self._conn.execute("DELETE FROM samples WHERE id=?", (k.id,))
                        if blob is not None:
                            self._conn.execute("INSERT INTO samples (id, n_rows, rows) VALUES (?,?,?)",
                                               (k.id, len(record.rows["example"]), blob))  # type: ignore[index]
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                return written
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
                status: str | None = "ok", profile: str | None = None, seed: int | None = None,
                rows: bool = False) -> Iterator[RunRecord]:
        """Stored records matching the filters; ``rows=True`` attaches each one's per-example rows
        (``record.rows``; None for a record stored without them)."""
        q = ("SELECT runs.record, samples.rows FROM runs LEFT JOIN samples ON samples.id = runs.id WHERE 1=1"
             if rows else "SELECT runs.record, NULL FROM runs WHERE 1=1")
        args: list[object] = []
        for col, val in (("task", task), ("model", model), ("method", method), ("status", status),
                         ("profile", profile), ("seed", seed)):
            if val is not None:
                q += f" AND runs.{col}=?"
                args.append(val)
        try:
            for text, blob in self._conn.execute(q + " ORDER BY runs.task, runs.model, runs.method, runs.seed", args):
                rec = RunRecord.from_json(text)
                if blob is not None:
                    rec.rows = decode(blob)
                yield rec
        except sqlite3.DatabaseError as e:
            raise BenchError(f"results store {str(self.path)!r} is unreadable ({e})") from None

    def samples(self, key: CellKey) -> Rows | None:
        """The per-example rows stored with the cell ``key`` (None when it has none)."""
        row = self._conn.execute("SELECT rows FROM samples WHERE id=?", (key.id,)).fetchone()
        return None if row is None else decode(row[0])

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
