"""Architecture adapters: one data file per architecture, and their registry.

Every module of this folder (not starting with ``_``) that assigns ``ADAPTER = Adapter(name="...",
model_types=(...), family="...", ...)`` is a built-in adapter: it is *discovered* by reading the
file with :mod:`ast` (as built-in methods and tasks are, :func:`bench.registry.discover`), so the
``hf:`` source learns an architecture's family without importing torch, and a new architecture is
one file. Third parties register adapters in the entry-point group ``mmi_bench.adapters``
(``name = "package.module:ADAPTER"``); a plugin's model types are read when a checkpoint names a
type no built-in claims. This module imports nothing heavy (planning reads it).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from bench import answers
from bench.errors import BenchError
from bench.registry import Registry

ADAPTERS: Registry[Any] = Registry("adapter", "mmi_bench.adapters")
FOLDER = Path(__file__).resolve().parent
HOWTO = "see README.md, section 'Adding an architecture'"


def declared_adapters(source: str, module: str) -> list[tuple[str, str, dict[str, Any]]]:
    """``(name, "module:ADAPTER", {"model_types": ..., "family": ...})`` of a module's
    ``ADAPTER = Adapter(...)`` assignment (literal ``name``, ``model_types`` and ``family``)."""
    out = []
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "ADAPTER" and isinstance(node.value, ast.Call)):
            continue
        kw = {k.arg: k.value for k in node.value.keywords if k.arg}
        try:
            name, types, family = (ast.literal_eval(kw[k]) for k in ("name", "model_types", "family"))
        except (KeyError, ValueError, SyntaxError):
            continue
        try:
            refusal = str(ast.literal_eval(kw["refusal"])) if "refusal" in kw else ""
        except (ValueError, SyntaxError):
            refusal = "its adapter declares no wrapper"
        out.append((str(name), f"{module}:ADAPTER", {"model_types": tuple(types), "family": str(family),
                                                      "loadable": "load" in kw, "refusal": refusal}))
    return out


def _discover() -> list[tuple[str, str, dict[str, Any]]]:
    def compute() -> list[Any]:
        found = []
        for path in sorted(FOLDER.glob("*.py")):
            if not path.name.startswith("_"):
                found += declared_adapters(path.read_text(), f"models.adapters.{path.stem}")
        return [[n, t, {**m, "model_types": list(m["model_types"])}] for n, t, m in found]

    return [(n, t, {**m, "model_types": tuple(m["model_types"])})
            for n, t, m in answers.remember("builtins", ["models.adapters", "adapter"], compute)]


for _name, _target, _meta in _discover():
    ADAPTERS.register(_name, _target, **_meta)


def by_type() -> dict[str, str]:
    """Checkpoint type (``model_type`` or pipeline class) -> adapter name, built-ins only (no import)."""
    out: dict[str, str] = {}
    for n in ADAPTERS.builtin_names():
        for t in ADAPTERS.entry(n).meta["model_types"]:
            if t in out:
                raise BenchError(f"adapters {out[t]!r} and {n!r} both claim checkpoint type {t!r}")
            out[t] = n
    return out


def adapter_name_for(kind: str) -> str | None:
    """The adapter that claims checkpoint type ``kind``: a built-in's (from its declaration), else a
    plugin's (loaded to read its ``model_types``); None when none does."""
    found = by_type().get(kind)
    if found is not None:
        return found
    for n in ADAPTERS.names():
        e = ADAPTERS.entry(n)
        if e.is_plugin and kind in getattr(e.load(), "model_types", ()):
            return n
    return None


def families() -> dict[str, str]:
    """Checkpoint type -> family, for every built-in adapter that can load (torch-free)."""
    return {t: str(ADAPTERS.entry(n).meta["family"]) for t, n in by_type().items()
            if ADAPTERS.entry(n).meta["loadable"]}


def refusal(name: str) -> str:
    """Why adapter ``name`` cannot load a checkpoint ("" when it can)."""
    e = ADAPTERS.entry(name)
    if "loadable" in e.meta:
        return "" if e.meta["loadable"] else str(e.meta["refusal"] or "its adapter declares no wrapper")
    a = e.load()
    return "" if a.load else (a.refusal or "its adapter declares no wrapper")


def family_for(kind: str) -> str:
    name = adapter_name_for(kind)
    if name is None:
        raise BenchError(missing(kind))
    e = ADAPTERS.entry(name)
    return str(e.meta["family"]) if "family" in e.meta else str(e.load().family)


def get(name: str) -> Any:
    """The :class:`models.adapters._format.Adapter` registered as ``name``."""
    return ADAPTERS.get(name)


def missing(kind: str) -> str:
    """The one-line refusal for a checkpoint that loads but has no adapter."""
    return (f"hf: model_type {kind!r} is not supported yet: no adapter claims it (supported: "
            f"{', '.join(sorted(families()))}); an adapter is one data file, {HOWTO}")
