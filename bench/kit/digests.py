"""Source digests: a module's code as one hash, comments and docstrings aside.

A module's **normalised source** drops comments, docstrings, blank lines and trailing blanks
(positions from :mod:`tokenize` and :mod:`ast`, which every supported Python reads alike), so
editing documentation changes no digest while any change to code, a constant included, does. Its
**closure** is every project module it reaches through its imports, anywhere in the file (lazy
imports too), with each parent package's ``__init__``; :func:`code_digest` hashes a closure.
Parsing a file takes ~20 ms, so each file's analysis is kept on disk under the sha256 of its
bytes (``$MMI_BENCH_CACHE/source-digests``, ``~/.cache/mmi-bench`` by default; content-addressed,
never stale; ``MMI_BENCH_CACHE=off`` recomputes) and per process by the file's (path, size,
mtime). Used by cell fingerprints (:mod:`bench.harness.identity`) and by work shared between a
task's cells (:mod:`bench.kit.shared`)."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import tokenize
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("bench", "tasks", "methods", "models")
NUMERIC_PACKAGES = ("torch", "transformers", "diffusers")
UNKNOWN = "unknown"


def _short(h: "hashlib._Hash") -> str:
    return h.hexdigest()[:16]


# ------------------------------------------------------------------ sources
def stat_key(path: Path) -> tuple[str, int, int] | None:
    """(path, size, mtime) of a file, None when it cannot be read: what caches key on."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_size, st.st_mtime_ns)


def _offsets(text: str) -> list[int]:
    starts, pos = [0], 0
    for line in text.split("\n"):
        pos += len(line) + 1
        starts.append(pos)
    return starts


def normalised_source(text: str) -> str:
    """``text`` without comments, docstrings, blank lines and trailing blanks (``text`` itself,
    line endings unified, when it does not parse)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    try:
        tree = ast.parse(text)
        comments = [(t.start, t.end) for t in tokenize.generate_tokens(io.StringIO(text).readline)
                    if t.type == tokenize.COMMENT]
    except (SyntaxError, tokenize.TokenError, ValueError):
        return text
    lines = text.split("\n")
    starts = _offsets(text)

    def char_col(row: int, byte_col: int) -> int:  # ast columns count UTF-8 bytes
        return len(lines[row - 1].encode()[:byte_col].decode("utf-8", errors="ignore"))

    spans = [(starts[a[0] - 1] + a[1], starts[b[0] - 1] + b[1]) for a, b in comments]
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str) and first.end_lineno is not None
                    and first.end_col_offset is not None):
                spans.append((starts[first.lineno - 1] + char_col(first.lineno, first.col_offset),
                              starts[first.end_lineno - 1] + char_col(first.end_lineno, first.end_col_offset)))
    out, pos = [], 0
    for a, b in sorted(spans):
        if a >= pos:
            out.append(text[pos:a])
            pos = b
    out.append(text[pos:])
    kept = (line.rstrip() for line in "".join(out).split("\n"))
    return "\n".join(line for line in kept if line)


# ((path, size, mtime), module name) -> (digest, imported names)
_SOURCE_CACHE: dict[tuple[tuple[str, int, int], str], tuple[str, frozenset[str]]] = {}
_ANALYSIS = "1"  # the version of normalised_source / imports_of: part of every disk-cache key


def _disk_cache() -> Path | None:
    """Where analyses of source files are kept between processes (``$MMI_BENCH_CACHE`` or
    ``~/.cache/mmi-bench``, as :func:`bench.kit.fitting.cache_dir`; ``off`` disables it)."""
    where = os.environ.get("MMI_BENCH_CACHE")
    if where == "off":
        return None
    return Path(where or Path.home() / ".cache" / "mmi-bench") / "source-digests"


def _analyse(raw: bytes, module: str, is_package: bool) -> tuple[str, frozenset[str]]:
    """(normalised-source digest, imported names) of a file's bytes. Parsing and tokenizing cost
    about 20 ms per file, so results are kept on disk under the hash of the bytes themselves
    (content-addressed: an edited file is a new key, never a stale hit)."""
    key = hashlib.sha256(f"{_ANALYSIS}|{module}|{is_package}|".encode() + raw).hexdigest()
    root = _disk_cache()
    f = root / key[:2] / f"{key}.json" if root is not None else None
    if f is not None:
        try:
            v = json.loads(f.read_text())
            return str(v["digest"]), frozenset(v["imports"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    text = raw.decode("utf-8", errors="replace")
    digest = hashlib.sha256(normalised_source(text).encode()).hexdigest()
    imports = imports_of(text, module, is_package)
    if f is not None:
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_name(f"{f.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"digest": digest, "imports": sorted(imports)}))
            os.replace(tmp, f)
        except OSError:  # a read-only home: computed again next time
            pass
    return digest, imports


def _read(path: Path, module: str) -> tuple[str, frozenset[str]]:
    """(normalised-source digest, names the file imports) of a module file, cached by stat."""
    key = stat_key(path)
    if key is None:
        return UNKNOWN, frozenset()
    if (key, module) not in _SOURCE_CACHE:
        try:
            raw = path.read_bytes()
        except OSError:
            return UNKNOWN, frozenset()
        _SOURCE_CACHE[(key, module)] = _analyse(raw, module, path.name == "__init__.py")
    return _SOURCE_CACHE[(key, module)]


def source_digest(path: Path) -> str:
    """sha256 of the file's normalised source."""
    return _read(Path(path), "")[0]


def imports_of(text: str, module: str, is_package: bool) -> frozenset[str]:
    """Every dotted name the file imports, anywhere in it (``from a import b`` gives ``a`` and
    ``a.b``: ``b`` may be a submodule); relative imports resolved against ``module``."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return frozenset()
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join([*parts, base] if base else parts)
            if base:
                out.add(base)
            out.update(f"{base}.{a.name}" if base else a.name for a in node.names if a.name != "*")
    return frozenset(out)


def _file_of(module: str, roots: dict[str, Path]) -> Path | None:
    root = roots.get(module.split(".")[0])
    if root is None:
        return None
    p = root.joinpath(*module.split("."))
    for f in (p / "__init__.py", p.with_suffix(".py")):
        if f.is_file():
            return f
    return None


Stats = tuple[tuple[Path, Any], ...]
_CLOSURE_CACHE: dict[tuple[Any, ...], tuple[Stats, dict[str, Path]]] = {}
_DIGEST_CACHE: dict[tuple[Any, ...], tuple[Stats, str]] = {}


def _full_roots(roots: dict[str, Path] | None) -> dict[str, Path]:
    out = dict(roots or {})
    for top in PROJECT_PACKAGES:
        out.setdefault(top, PROJECT_ROOT)
    return out


def _fresh(stats: Stats) -> bool:
    return all(stat_key(p) == st for p, st in stats)


def closure(module: str, roots: dict[str, Path] | None = None) -> dict[str, Path]:
    """The project modules (and those under ``roots``' other top-level names) that ``module``
    reaches through its imports, with their parent packages: ``{module name: file}``. Cached
    while none of its files changed (a new import means an edited file)."""
    roots = _full_roots(roots)
    ck = (module, tuple(sorted((k, str(v)) for k, v in roots.items())))
    hit = _CLOSURE_CACHE.get(ck)
    if hit is not None and _fresh(hit[0]):
        return dict(hit[1])
    seen: dict[str, Path] = {}
    stack = [module]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        f = _file_of(name, roots)
        if f is None:
            continue
        seen[name] = f
        parts = name.split(".")
        stack.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        stack.extend(n for n in _read(f, name)[1] if n.split(".")[0] in roots)
    _CLOSURE_CACHE[ck] = (tuple((p, stat_key(p)) for p in seen.values()), dict(seen))
    return seen


def code_digest(module: str, roots: dict[str, Path] | None = None, scope: Sequence[str] | None = None) -> str:
    """One digest over ``module``'s closure (only the modules under ``scope``, besides ``module``
    itself, when given): name and normalised-source digest of each, in name order."""
    roots = _full_roots(roots)
    ck = (module, tuple(sorted((k, str(v)) for k, v in roots.items())), tuple(scope or ()) if scope else None)
    hit = _DIGEST_CACHE.get(ck)
    if hit is not None and _fresh(hit[0]):
        return hit[1]
    mods = closure(module, roots)
    if module not in mods:
        return UNKNOWN
    h = hashlib.sha256()
    for name, f in sorted(mods.items()):
        if scope is not None and name != module and not any(name == s or name.startswith(s + ".") for s in scope):
            continue
        h.update(f"{name}:{_read(f, name)[0]}\n".encode())
    _DIGEST_CACHE[ck] = (_CLOSURE_CACHE[ck[:2]][0], _short(h))
    return _DIGEST_CACHE[ck][1]


@lru_cache(maxsize=1)
def package_versions() -> str:
    """``torch==… transformers==… diffusers==…`` (``-`` for one not installed)."""
    out = []
    for p in NUMERIC_PACKAGES:
        try:
            out.append(f"{p}=={metadata.version(p)}")
        except metadata.PackageNotFoundError:
            out.append(f"{p}==-")
    return " ".join(out)
