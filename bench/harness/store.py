"""The results store: one SQLite file in WAL mode, safe with several writer processes.

A cell's record is written once, in one transaction, when the cell completes, so
an interrupted run loses nothing that finished. A successful record is never
overwritten (unless ``force``); a failed one is replaced when the cell is retried.

Per-example rows (:mod:`bench.samples`) go into the ``samples`` table, keyed by the record's
id, in the same transaction as the record: one zlib-compressed JSON blob of the rows' columns
per cell (about 5–20 kB; a table row per example would cost several times that in SQLite's
row overhead and indexes, and the rows are always read a cell at a time). Records written
before samples existed load as before, with ``rows`` None; the scorer marks their intervals.

**Schema version.** ``PRAGMA user_version`` holds :data:`SCHEMA_VERSION` (2: ``runs`` and
``samples``). A file with user_version 0 is a store from before versions were written: with
only ``runs`` it is version 1 (its records load without rows), with ``samples`` too it is
version 2. A writer brings an older store up to date (adds ``samples``, the index and the
version) when it opens it; a store of a newer version than this code knows, a ``runs`` table
of another shape, a truncated file or a file that is not SQLite at all is refused with one
line (:class:`~bench.errors.BenchError`) before anything is written to it.

**Three ways to open.**

- ``Store(path)``: a writer. Creates the file now if it is absent, switches it to WAL.
- ``Store(path, lazy=True)``: a writer that creates the file only at its first :meth:`put`;
  until then it reads as an empty store. A command that may still be refused after it opened
  its store (``bench evaluate`` validates its grid after) uses this, so a refused command
  leaves no empty file behind.
- ``Store(path, readonly=True)``: a reader. Reading never writes: the file is opened with a
  ``file:...?mode=ro`` URI, its journal mode is left as it is, no table, index or version is
  added, and it works on a read-only file or folder. An absent file is a one-line error (and
  nothing is created). A WAL file that no writer holds open (no ``-wal`` file beside it) is
  read as immutable, so no ``-wal``/``-shm`` files appear beside it; should the file change
  during such a read (a writer started), the read is repeated through SQLite's shared memory.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import time
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

from bench.errors import BenchError
from bench.records import CellKey, RunRecord
from bench.samples import Rows, decode, encode

DEFAULT_STORE = "bench-results.sqlite"
SCHEMA_VERSION = 2  # 1: runs; 2: runs + samples

_SCHEMA = f"""
BEGIN IMMEDIATE;
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
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""
_RUNS_COLUMNS = frozenset({"id", "task", "task_version", "method", "model", "seed", "profile", "status",
                           "record", "created_at"})
_SAMPLES_COLUMNS = frozenset({"id", "n_rows", "rows"})
_MAGIC = b"SQLite format 3\x00"


def _header_problem(path: Path) -> str | None:
    """Why ``path`` is not an intact SQLite file, read from its 100-byte header without SQLite
    (None when it looks intact; an empty file is a new, empty database)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return None
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError as e:
        return f"cannot read it: {e.strerror or e}"
    if len(head) < 100 or not head.startswith(_MAGIC):
        return "not an SQLite file"
    page = struct.unpack(">H", head[16:18])[0]
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1):
        return "not an SQLite file (bad page size)"
    if Path(f"{path}-wal").exists() or Path(f"{path}-journal").exists():
        return None  # a writer may be checkpointing or rolling back: the header's size can lag the file
    counter, n_pages, valid_for = struct.unpack(">I", head[24:28])[0], struct.unpack(">I", head[28:32])[0], \
        struct.unpack(">I", head[92:96])[0]
    if size % page:
        return f"truncated ({size} bytes, not a whole number of {page}-byte pages)"
    if counter == valid_for and n_pages and size < n_pages * page:
        return f"truncated ({size} of {n_pages * page} bytes)"
    return None


class Store:
    """A results file: ``Store(path)`` (a writer; creates it), ``Store(path, lazy=True)`` (a writer
    that creates it at its first write) or ``Store(path, readonly=True)`` (a reader that never
    writes). See the module docstring."""

    def __init__(self, path: str | Path = DEFAULT_STORE, *, readonly: bool = False, lazy: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.version = 0  # the file's schema version (0: no file or no tables yet)
        self._db: sqlite3.Connection | None = None
        self._immutable = False
        self._opened: tuple[int, int] | None = None  # the file's (size, mtime) when an immutable reader opened it
        self._has_samples = False
        self._stamped = False  # user_version says SCHEMA_VERSION
        if self.path.exists() and self.path.is_dir():
            raise BenchError(f"results store {str(self.path)!r} is a directory, not a file")
        if readonly:
            if not self.path.exists():
                raise BenchError(f"results store {str(self.path)!r} does not exist; run `bench evaluate` first")
            self._open_reader()
            return
        if not self.path.parent.exists():
            raise BenchError(f"cannot create results store {str(self.path)!r}: folder does not exist")
        if not lazy or self.path.exists():
            self._open_writer()

    # ------------------------------------------------------------------ opening
    def _unreadable(self, why: object) -> BenchError:
        return BenchError(f"results store {str(self.path)!r} is unreadable or not a results store ({why})")

    def _open_writer(self) -> None:
        problem = _header_problem(self.path) if self.path.exists() else None
        if problem:
            raise self._unreadable(problem)
        try:
            conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        except sqlite3.Error as e:
            raise self._unreadable(e) from None
        def prepare() -> None:
            self._check_schema(conn)  # before anything is written
            conn.execute("PRAGMA journal_mode=WAL")
            if not self._stamped:  # new, or older than this code: bring it up to date
                conn.executescript(_SCHEMA)
                self._check_schema(conn)

        self._prepared(conn, prepare)
        self._db = conn

    def _prepared(self, conn: sqlite3.Connection, prepare: Callable[[], None]) -> None:
        """Set the busy timeout and run ``prepare``; on any failure close ``conn`` and raise one line."""
        try:
            conn.execute("PRAGMA busy_timeout=60000")
            prepare()
        except BenchError:
            conn.close()
            raise
        except sqlite3.DatabaseError as e:
            conn.close()
            raise self._unreadable(e) from None

    def _open_reader(self) -> None:
        problem = _header_problem(self.path)
        if problem:
            raise self._unreadable(problem)
        # no writer holds the file (no -wal): read it as immutable, so SQLite creates no -wal/-shm
        self._connect_reader(immutable=not Path(f"{self.path}-wal").exists())

    def _connect_reader(self, immutable: bool) -> None:
        self.close()
        opened = _stamp(self.path)
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro" + ("&immutable=1" if immutable else "")
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise self._unreadable(e) from None
        self._prepared(conn, lambda: self._check_schema(conn))
        self._db, self._immutable, self._opened = conn, immutable, opened

    def _unchanged(self) -> bool:
        """Whether the file is as the immutable reader found it (no writer since)."""
        return not Path(f"{self.path}-wal").exists() and _stamp(self.path) == self._opened

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        """Set ``version`` and ``_has_samples`` from the file; refuse what this code cannot read."""
        user_version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if user_version > SCHEMA_VERSION:
            raise BenchError(f"results store {str(self.path)!r} was written by a newer mmi-bench (schema "
                             f"{user_version}; this one reads up to {SCHEMA_VERSION}); upgrade mmi-bench")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "runs" not in tables:
            if tables - {"samples"}:
                raise self._unreadable(f"an SQLite file without a 'runs' table (tables: {', '.join(sorted(tables))})")
            self.version, self._has_samples = 0, False
            return
        for table, need in (("runs", _RUNS_COLUMNS), ("samples", _SAMPLES_COLUMNS)):
            if table in tables:
                have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                if need - have:
                    raise self._unreadable(f"its '{table}' table has another shape: no column "
                                           f"{', '.join(sorted(need - have))}")
        self._has_samples = "samples" in tables
        self._stamped = user_version == SCHEMA_VERSION and self._has_samples
        self.version = user_version or (2 if self._has_samples else 1)

    @property
    def _conn(self) -> sqlite3.Connection:
        """The connection, opening (for a lazy writer: creating) the file now."""
        if self._db is None:
            if self.readonly:
                raise BenchError(f"results store {str(self.path)!r} is closed")
            self._open_writer()
        assert self._db is not None
        return self._db

    def _readable(self) -> bool:
        """Whether there is a ``runs`` table to read: not for a lazy writer whose file does not
        exist yet, nor for an empty file opened read-only."""
        if self._db is None and not self.readonly and not self.path.exists():
            return False
        self._conn  # opens a lazy writer whose file appeared meanwhile
        return self.version > 0

    def _query(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        """All rows of a read. An immutable reader whose file changed (a writer came) reads
        through SQLite's shared memory from then on, and repeats a read the change overlapped."""
        try:
            if self._immutable and not self._unchanged():
                self._connect_reader(immutable=False)
            try:
                rows = self._conn.execute(sql, args).fetchall()
            except sqlite3.DatabaseError:
                if not self._immutable or self._unchanged():
                    raise
                rows = None  # the file changed under the read: read again below
            if self._immutable and (rows is None or not self._unchanged()):
                self._connect_reader(immutable=False)
                rows = self._conn.execute(sql, args).fetchall()
            assert rows is not None  # None only until the read above is repeated
            return rows
        except sqlite3.DatabaseError as e:
            raise self._unreadable(e) from None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    def put(self, record: RunRecord, force: bool = False) -> bool:
        """Write ``record``; returns False when a successful record was already there."""
        if self.readonly:
            raise BenchError(f"results store {str(self.path)!r} was opened read-only; it cannot be written")
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
            except sqlite3.DatabaseError as e:  # a store damaged since it was opened
                raise self._unreadable(e) from None
        return False

    # ------------------------------------------------------------------- reads
    def has_ok(self, key: CellKey) -> bool:
        if not self._readable():
            return False
        rows = self._query("SELECT status FROM runs WHERE id=?", (key.id,))
        return bool(rows) and rows[0][0] == "ok"

    def completed_ids(self) -> set[str]:
        if not self._readable():
            return set()
        return {r[0] for r in self._query("SELECT id FROM runs WHERE status='ok'")}

    def completed_hashes(self) -> dict[str, str]:
        """Successful cells' ids → the weights hash their record was obtained with."""
        if not self._readable():
            return {}
        out: dict[str, str] = {}
        # parsed here, not by SQLite's json_extract: records may hold NaN, which Python's json writes
        for i, rec in self._query("SELECT id, record FROM runs WHERE status='ok'"):
            try:
                doc = json.loads(rec)
            except (TypeError, ValueError) as e:
                raise self._bad_record(i, e) from None
            out[i] = str(doc.get("model_hash") if isinstance(doc, dict) else None)
        return out

    def _bad_record(self, ident: str, e: Exception) -> BenchError:
        msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e).splitlines()[0] if str(e) else type(e).__name__
        return BenchError(f"results store {str(self.path)!r}: record {ident!r} is cut short or not valid JSON "
                          f"({msg}); remove it, or re-run its cell with --force")

    def records(self, task: str | None = None, model: str | None = None, method: str | None = None,
                status: str | None = "ok", profile: str | None = None, seed: int | None = None,
                rows: bool = False) -> Iterator[RunRecord]:
        """Stored records matching the filters; ``rows=True`` attaches each one's per-example rows
        (``record.rows``; None for a record stored without them, and for every record of a
        version-1 store, which has no samples table). Works on every way of opening, read-only
        included. A record that cannot be parsed is a one-line error naming its id."""
        if not self._readable():
            return
        q = ("SELECT runs.id, runs.record, samples.rows FROM runs LEFT JOIN samples ON samples.id = runs.id"
             " WHERE 1=1" if rows and self._has_samples else "SELECT runs.id, runs.record, NULL FROM runs WHERE 1=1")
        args: list[object] = []
        for col, val in (("task", task), ("model", model), ("method", method), ("status", status),
                         ("profile", profile), ("seed", seed)):
            if val is not None:
                q += f" AND runs.{col}=?"
                args.append(val)
        for ident, text, blob in self._query(q + " ORDER BY runs.task, runs.model, runs.method, runs.seed", args):
            try:
                rec = RunRecord.from_json(text, record_id=ident)
            except BenchError as e:
                raise BenchError(f"results store {str(self.path)!r}: {e}") from None
            if blob is not None:
                rec.rows = decode(blob)
            yield rec

    def samples(self, key: CellKey) -> Rows | None:
        """The per-example rows stored with the cell ``key`` (None when it has none)."""
        if not self._readable() or not self._has_samples:
            return None
        rows = self._query("SELECT rows FROM samples WHERE id=?", (key.id,))
        return None if not rows else decode(rows[0][0])

    def __len__(self) -> int:
        if not self._readable():
            return 0
        return int(self._query("SELECT COUNT(*) FROM runs")[0][0])


def _stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns)
