"""RunRecord: one cell's metrics plus everything needed to reproduce it."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class CellKey:
    """Identity of a cell; a store holds at most one successful record per key."""

    task: str
    task_version: str
    method: str
    method_config_hash: str
    model: str
    seed: int
    profile: str = "full"

    @property
    def id(self) -> str:
        return "|".join(str(v) for v in asdict(self).values())

    def label(self) -> str:
        return f"{self.task}/{self.model}/{self.method}/seed={self.seed}"


@dataclass
class RunRecord:
    key: CellKey
    status: str  # "ok" | "failed"
    metrics: dict[str, float] = field(default_factory=dict)
    main_score: str = ""
    error: str | None = None
    method_config: dict[str, Any] = field(default_factory=dict)
    model_hash: str = ""
    batch_size: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float = 0.0
    example_hashes: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    # the per-example rows the metrics were computed from (bench.samples); stored beside the
    # record (the store's samples table), not in its JSON. None: not loaded, or an old record
    rows: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> str:
        d = asdict(replace(self, rows=None))
        d.pop("rows")
        return json.dumps(d, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str, record_id: str | None = None) -> "RunRecord":
        """A record from :meth:`to_json`'s text. Keys this version does not know are ignored
        (a record written by a newer version still loads); text that is not a JSON object, or
        lacks a required key, is a one-line :class:`~bench.errors.BenchError` naming the record
        (``record_id``, e.g. the store's row id, else the key's id when it can be read)."""
        from dataclasses import MISSING, fields

        from bench.errors import BenchError

        def bad(problem: str, ident: Any = None) -> BenchError:
            return BenchError(f"record {record_id or ident or '?'!r} {problem}")

        try:
            d = json.loads(text)
        except (TypeError, ValueError) as e:
            msg = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
            raise bad(f"is cut short or not valid JSON ({msg}); remove it, or re-run its cell with --force") from None
        if not isinstance(d, dict) or not isinstance(d.get("key"), dict):
            raise bad("is not a stored run record (no 'key' object)")

        def known(dc: type, doc: dict[str, Any], what: str, ident: Any = None) -> dict[str, Any]:
            names = {f.name: f for f in fields(dc)}
            missing = [n for n, f in names.items() if n not in doc and n != "rows" and f.default is MISSING
                       and f.default_factory is MISSING]
            if missing:
                ident = ident or "|".join(str(doc.get(n, "?")) for n in names)
                raise bad(f"lacks the required {what} {', '.join(repr(m) for m in missing)}", ident)
            return {k: v for k, v in doc.items() if k in names and k != "rows"}

        kd = known(CellKey, d["key"], "key field")
        try:
            key = CellKey(**kd)
        except TypeError as e:
            raise bad(f"has an unreadable key ({e})") from None
        rd = known(cls, d, "field", key.id)
        rd["key"] = key
        try:
            return cls(**rd)
        except TypeError as e:
            raise bad(f"cannot be read ({e})", key.id) from None


_PACKAGES = ("mmi-bench", "torch", "numpy", "transformers", "diffusers", "captum", "scikit-learn", "datasets")


@lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """Package versions, git commit, Python and platform (cached per process)."""
    versions: dict[str, str | None] = {}
    for p in _PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    commit = None
    dirty = None
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"packages": versions, "git_commit": commit, "git_dirty": dirty,
            "python": sys.version.split()[0], "platform": platform.platform()}


@dataclass(frozen=True)
class DataSource:
    """One real-data file a task reads instead of the world, as recorded in a run's provenance.

    ``digest`` is the sha256 (hex) of the sha256 digests of the annotation file's bytes and
    then of every image and mask file its records name (each once, in record order; see
    :func:`bench.kit.realdata.fingerprint`): any change to the annotations or to an image changes it.
    """

    kind: str
    path: str  # absolute
    digest: str
    records: int
    files: int  # image and mask files the records name

    @property
    def tag(self) -> str:
        """``<kind>-<digest8>``: what the task version carries."""
        return f"{self.kind}-{self.digest[:8]}"


@dataclass(frozen=True)
class LoadedData:
    """A data file's validated records with its :class:`DataSource` and the sha256 of every file
    the records name (for per-example hashes that do not depend on where the files lie)."""

    source: DataSource
    records: tuple[Any, ...]
    file_digests: Mapping[Path, str]

    def file_digest(self, path: Path) -> str:
        return self.file_digests[path]
