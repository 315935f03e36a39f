"""The house reads top-down (issue 22, item 1): each module imports only from its own layer or
the layers below, read from the source with :mod:`ast` (imports anywhere in a file, function-level
ones included: a lazy import is still a dependency).

    0 core        bench/*.py                      contracts: sites, trace, model, method, task,
                                                   requests, records, samples, registry
    1 kit         bench/kit/                      the world, real-data loaders, SAEs, steering, ...
    2 plugins     methods/  tasks/  models/       methods never import tasks, tasks never import
                                                   methods, models import neither
    3 harness     bench/harness/                  planner and runner, store, fingerprints, perf
    4 leaderboard leaderboard/
    5 app         bench/app/                      the library API and the CLI
"""

from __future__ import annotations

from pathlib import Path

from bench.kit.digests import imports_of

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "methods", "tasks", "models", "leaderboard")


def layer(module: str) -> tuple[int, str]:
    parts = module.split(".")
    top = parts[0]
    if top == "bench":
        sub = parts[1] if len(parts) > 1 else ""
        if sub == "kit":
            return 1, "kit"
        if sub == "harness":
            return 3, "harness"
        if sub in ("app", "__main__"):
            return 5, "app"
        return 0, "core"
    if top in ("methods", "tasks", "models"):
        return 2, top
    return 4, "leaderboard"


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
            out[".".join(parts)] = path
    return out


def imports(path: Path, module: str) -> set[str]:
    """The project modules (or their attributes) a file imports anywhere in it: the reading the
    fingerprints use (:func:`bench.kit.digests.imports_of`)."""
    found = imports_of(path.read_text(), module, path.name == "__init__.py")
    return {m for m in found if m.split(".")[0] in PACKAGES}


def test_every_import_goes_down_or_sideways():
    mods = modules()
    assert len(mods) > 100 and all(k in mods for k in ("bench.sites", "bench.kit.world", "bench.harness.runner",
                                                         "bench.app.cli", "leaderboard.scorer"))
    bad = []
    for module, path in sorted(mods.items()):
        rank, name = layer(module)
        for imp in sorted(imports(path, module)):
            if imp not in mods:  # an attribute of a module (`from bench.sites import Trace`)
                continue
            irank, iname = layer(imp)
            if irank > rank:
                bad.append(f"{module} ({name}) imports {imp} ({iname}): upward")
            elif irank == rank == 2 and iname != name:
                bad.append(f"{module} ({name}) imports {imp} ({iname}): {name} and {iname} never import each other")
    assert not bad, "\n".join(bad)


def test_the_package_init_imports_nothing():
    """``bench/__init__.py`` runs before every bench module: it names the API as a string (PEP 562)."""
    assert imports(ROOT / "bench" / "__init__.py", "bench") == set()


def test_the_core_names_no_built_in() -> None:
    """The core registry is empty: built-in tasks, methods, models and the ``hf:`` source are
    declared in their own modules and discovered, so no core module names one as a string target
    (``"models.zoo_models:..."``), which would be an upward dependency the import check cannot see."""
    import re

    pattern = re.compile(r"""["'](?:methods|tasks|models)\.[a-z_]+(?::|["'])""")
    found = [f"{p.name}: {m.group(0)}" for p in sorted((ROOT / "bench").glob("*.py"))
             for m in pattern.finditer(p.read_text())]
    assert not found, found
