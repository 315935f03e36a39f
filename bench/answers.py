"""Answers kept on disk so quick questions are answered without importing torch or loading a model.

Planning a grid needs facts that cost an import of the task, method and model modules (which
import torch, ~2 s) or a model load: a task's version, whether a task or method supports a model,
a method's config, a cell's fingerprint. A leaderboard needs the scorer and the tasks' code. These
are pure functions of the project's code, the shipped zoo weights, the installed numeric
packages and their arguments, so they are kept here, keyed by:

- the **stamp**: sha256 over the bytes of every ``.py`` file of the project's packages (``bench``,
  ``tasks``, ``methods``, ``models``, ``leaderboard``), the zoo's weight metadata (``*.json``: it
  holds the weights' hashes) and the weight files' sizes and times, the versions of Python and of
  the packages that compute or render figures, the registered entry points (plugins), and
  :data:`FORMAT`. Reading ~100 files costs ~10 ms; any edit, a comment included, is a new stamp,
  so an answer is never stale, only recomputed;
- the question's own arguments (and what the stamp cannot see: an ``hf:`` folder's content
  digest, the records a leaderboard is computed from).

Questions that involve a plugin's task, method or model are not kept (its code is outside the
stamp): they are computed every time. Files live under ``$MMI_BENCH_CACHE/answers``
(``~/.cache/mmi-bench`` by default, as :mod:`bench.harness.identity`); ``MMI_BENCH_CACHE=off`` disables
them. Writes are atomic (a temporary file renamed), so concurrent processes never read half an
answer; an unreadable answer is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "tasks", "methods", "models", "leaderboard")
VERSIONED = ("torch", "transformers", "diffusers", "numpy", "scipy", "pandas", "scikit-learn", "captum", "tabulate")
FORMAT = "1"
_MISSING = object()


def root() -> Path | None:
    """The answers folder, or None when disabled (``MMI_BENCH_CACHE=off``)."""
    where = os.environ.get("MMI_BENCH_CACHE")
    if where == "off":
        return None
    return Path(where or Path.home() / ".cache" / "mmi-bench") / "answers"


def _entry_points() -> list[str]:
    from importlib.metadata import entry_points

    out = []
    for group in ("mmi_bench.tasks", "mmi_bench.methods", "mmi_bench.models"):
        for ep in entry_points(group=group):
            dist = getattr(ep, "dist", None)
            out.append(f"{group}:{ep.name}={ep.value}:{getattr(dist, 'name', '?')}=={getattr(dist, 'version', '?')}")
    return sorted(out)


@lru_cache(maxsize=1)
def stamp() -> str:
    """The digest of everything an answer may depend on besides its arguments (module docstring)."""
    h = hashlib.sha256(f"answers {FORMAT}\npython {sys.version}\n".encode())
    for p in VERSIONED:
        try:
            h.update(f"{p}=={metadata.version(p)}\n".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{p}==-\n".encode())
    for ep in _entry_points():
        h.update(f"{ep}\n".encode())
    files = _files()
    _SEEN[:] = [_stat(f) for f in files]
    for f in files:
        h.update(f"{f.relative_to(PROJECT_ROOT)}\n".encode())
        try:
            h.update(hashlib.sha256(f.read_bytes()).digest())
        except OSError:
            h.update(b"?")
    weights = PROJECT_ROOT / "models" / "zoo" / "weights"
    for f in sorted(weights.glob("*")) if weights.is_dir() else []:
        try:
            if f.suffix == ".json":
                h.update(f"{f.name}\n".encode() + hashlib.sha256(f.read_bytes()).digest())
            else:
                st = f.stat()
                h.update(f"{f.name} {st.st_size} {st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f.name} ?\n".encode())
    return h.hexdigest()


_SEEN: list[tuple[str, int, int]] = []  # the stamped files' (path, size, mtime) when stamped


def _files() -> list[Path]:
    return sorted(f for pkg in PACKAGES for f in (PROJECT_ROOT / pkg).rglob("*.py"))


def _stat(f: Path) -> tuple[str, int, int]:
    try:
        st = f.stat()
        return (str(f), st.st_size, st.st_mtime_ns)
    except OSError:
        return (str(f), -1, -1)


def unchanged() -> bool:
    """Whether the project's sources are as :func:`stamp` read them (an answer computed after an
    edit in the middle of a run is not kept under the old stamp)."""
    stamp()
    return [_stat(f) for f in _files()] == _SEEN


def _path(kind: str, key: Any) -> Path | None:
    base = root()
    if base is None:
        return None
    digest = hashlib.sha256(json.dumps([stamp(), kind, key], sort_keys=True, default=str).encode()).hexdigest()
    return base / kind / f"{digest}.json"


def get(kind: str, key: Any, default: Any = None) -> Any:
    """The answer kept for ``(kind, key)`` under the current stamp, else ``default``."""
    f = _path(kind, key)
    if f is None:
        return default
    try:
        return json.loads(f.read_text())["value"]
    except (OSError, ValueError, KeyError, TypeError):
        return default


def put(kind: str, key: Any, value: Any) -> None:
    """Keep ``value`` (JSON-able) as the answer to ``(kind, key)``; silently not on a read-only home."""
    f = _path(kind, key)
    if f is None or not unchanged():
        return
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f"{f.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "value": value}, sort_keys=True, default=str))
        os.replace(tmp, f)
    except OSError:
        pass


def remember(kind: str, key: Any, compute: Callable[[], Any], keep: bool = True) -> Any:
    """The kept answer to ``(kind, key)``, else ``compute()`` (kept when ``keep``), as JSON holds it."""
    if not keep:
        return json.loads(json.dumps(compute(), sort_keys=True, default=str))
    value = get(kind, key, _MISSING)
    if value is _MISSING:
        # as JSON holds it (tuples as lists), so a first answer and a kept one look alike
        value = json.loads(json.dumps(compute(), sort_keys=True, default=str))
        put(kind, key, value)
    return value
