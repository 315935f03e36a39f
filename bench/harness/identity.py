"""A cell's identity beyond its key: the **fingerprint** of everything its figures depend on.

The cell key (:class:`bench.records.CellKey`) names *what* was measured: task and task version
(which carries the digest of any real-data file), method and config hash, model name, seed,
profile. The fingerprint, stored with each record (``record.provenance["fingerprint"]``), says
*with what*: a dict of short strings, one per ingredient, computed without loading a model.
:func:`bench.harness.runner.run_grid` re-runs a stored cell whose fingerprint differs from the current
one, and says why (:data:`REASONS`).

Ingredients (each a 16-hex-digit sha256 prefix unless said otherwise):

- ``task_code``: the task class's module and, transitively, every project module (``bench.*``,
  ``tasks.*``, ``methods.*``, ``models.*``) it imports, at any depth of the file (module level
  and inside functions: lazy imports are dependencies too), with the ``__init__`` of each parent
  package. Read with :mod:`ast`; nothing is imported to compute it.
- ``method_code``: the same closure for the method class's module. A method outside the
  project's packages (a plugin) also covers the modules of its own top-level package it imports.
- ``method_package`` (plugins only): ``dist==version`` of the distribution the method comes from
  (the entry point's distribution, else the one that installs its top-level package;
  ``unpackaged`` for a module found on ``sys.path`` only).
- ``model_weights``: a zoo model's shipped weights hash (:func:`bench.harness.runner.zoo_weights_hash`,
  the hash its records carry); for a model of a registered source (``hf:FOLDER``), the source's
  digest of what it loads from (:func:`models.hf_source.folder_digest`: every weight, config and
  tokenizer file by content, recursively, hidden files excluded). Absent for other registered
  models (their weights are whatever their factory builds: see ``model_code``).
- ``model_code``: the closure of the model factory's module (a source's ``code`` module, e.g.
  :mod:`models.hf_loader`, which reaches every wrapper; zoo: :mod:`models.zoo_models`).
- ``packages``: ``torch==… transformers==… diffusers==…``, the packages whose versions move numbers.

Not ingredients: the data files' digests and the profile, which are in the key already.

Source files are hashed **normalised**: comments, docstrings, blank lines and trailing blanks are
removed first (positions from :mod:`tokenize` and :mod:`ast`, which every supported Python reads
alike), so editing documentation re-runs nothing while any change to code, a constant included,
does. Costs: parsing a file takes ~20 ms, so each file's analysis is kept on disk under the sha256
of its bytes (``$MMI_BENCH_CACHE/source-digests``, ``~/.cache/mmi-bench`` by default; content-
addressed, so never stale; ``MMI_BENCH_CACHE=off`` recomputes), and per process by the file's
(path, size, mtime), so a file edited while the process runs is read again. A fingerprint then
costs a few stat calls.

**The task-code guard.** ``tasks/CODE_HASHES.json`` records, for each built-in task, its version and
its *guard hash*: the normalised task module with the ``tasks.*`` and ``bench.kit.world.*`` modules it
reaches (where a task's meaning lives: its examples and its scoring). A test fails when a guard hash
moved while the version did not: bump the task's version (published figures are keyed by it), then
``python -m bench.harness.identity --update`` rewrites the table. Shared infrastructure (``bench.task``,
``bench.model``, ...) is left out of the guard, not out of ``task_code``: its edits re-run the cells
they touch but do not demand five version bumps and a new published baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence, cast

from bench.kit.digests import PROJECT_PACKAGES, PROJECT_ROOT, UNKNOWN, code_digest, package_versions

TABLE = PROJECT_ROOT / "tasks" / "CODE_HASHES.json"
GUARD_SCOPE = ("tasks", "bench.kit.world")  # what the task-code guard covers besides the task's module

REASONS = {
    "task_code": "task code changed since the stored record",
    "method_code": "method code changed since the stored record",
    "method_package": "the method's package changed since the stored record",
    "model_weights": "model weights changed since the stored record",
    "model_code": "model code changed since the stored record",
    "packages": "package versions changed since the stored record",
}


def _module_roots(obj: Any) -> tuple[str, dict[str, Path]] | None:
    """(module name, roots) of a class: its module and, outside the project, the folder that
    holds its top-level package (so the closure follows that package too)."""
    mod = getattr(obj, "__module__", None)
    m = sys.modules.get(mod or "")
    file = getattr(m, "__file__", None)
    if not mod or not file:
        return None
    top = mod.split(".")[0]
    if top in PROJECT_PACKAGES:
        return mod, {}
    path = Path(file).resolve()
    depth = mod.count(".") + (1 if path.name == "__init__.py" else 0)
    return mod, {top: path.parents[depth]}


def _entry_roots(entry: Any) -> tuple[str, dict[str, Path]] | None:
    """:func:`_module_roots` of a registry entry's class; a built-in registered from a project
    module is read from its target without importing it (tasks and methods import torch)."""
    mod = entry.target.partition(":")[0]
    if getattr(entry, "dist", None) is None and mod.split(".")[0] in PROJECT_PACKAGES:
        return mod, {}
    return _module_roots(entry.load())


# -------------------------------------------------------------- ingredients
def task_code(task: str) -> str:
    """Digest of the task class's module and the project modules it reaches."""
    from bench.registry import TASKS

    where = _entry_roots(TASKS.entry(task))
    return code_digest(*where) if where else UNKNOWN


def task_guard_code(task: str) -> str:
    """The task-code guard's hash: the task's module with the ``tasks.*`` / ``bench.kit.world.*``
    modules it reaches (see the module docstring)."""
    from bench.registry import TASKS

    where = _entry_roots(TASKS.entry(task))
    return code_digest(where[0], where[1], scope=GUARD_SCOPE) if where else UNKNOWN


def method_code(method: str) -> str:
    """Digest of the method class's module and the modules it reaches (project, own package)."""
    from bench.registry import METHODS

    entry = METHODS.entry(method)
    if entry.is_object:  # bound by bench.app.api: its own token, so a later process never reuses its results
        return str(entry.meta["code"])
    where = _entry_roots(entry)
    return code_digest(*where) if where else UNKNOWN


@lru_cache(maxsize=None)
def _distribution_of(top: str) -> str | None:
    dists = metadata.packages_distributions().get(top) or []
    return dists[0] if dists else None


def method_package(method: str) -> str | None:
    """``dist==version`` for a method from outside the project (None for a built-in one)."""
    from bench.registry import METHODS

    entry = METHODS.entry(method)
    if entry.is_object:
        return None
    if entry.dist is None and entry.target.partition(":")[0].split(".")[0] in PROJECT_PACKAGES:
        return None  # a built-in (nothing imported)
    mod = getattr(entry.load(), "__module__", "") or entry.target.partition(":")[0]
    if mod.split(".")[0] in PROJECT_PACKAGES:
        return None
    dist = entry.source[len("entry point "):] if entry.source.startswith("entry point ") else None
    dist = dist if dist and dist != "?" else _distribution_of(mod.split(".")[0])
    if dist is None:
        return "unpackaged"
    try:
        return f"{dist}=={metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return f"{dist}==?"


def canonical_model(name: str) -> str:
    """The one name of a model: a registered source's canonical form (``hf:<path>`` with the path
    made absolute, so two folders named ``clip`` are two models); any other name unchanged."""
    from bench.registry import MODELS

    src = MODELS.source_of(name)
    return str(src.call("canonical", name)) if src is not None else name


def model_weights(model: str) -> str | None:
    """A zoo model's shipped weights hash, a source model's digest (an ``hf:`` folder's content);
    an object's own; None otherwise."""
    from bench.registry import MODELS

    src = MODELS.source_of(model)
    if src is not None:
        return str(src.call("digest", canonical_model(model)))
    if model in MODELS and MODELS.entry(model).is_object:
        return str(MODELS.entry(model).meta["weights"])
    from bench.harness.runner import zoo_weights_hash

    return zoo_weights_hash(model)


def discovered_modules(module: str, root: Path = PROJECT_ROOT) -> list[str]:
    """The modules ``module`` finds at run time rather than imports (a folder of plugins read with
    :mod:`ast`), as it declares them in a module-level ``__digest_includes__ = ("pkg.*", ...)``: every
    module of package ``pkg`` whose file name does not start with ``_``, sorted. Read statically."""
    import ast

    f = root.joinpath(*module.split(".")).with_suffix(".py")
    try:
        tree = ast.parse(f.read_text())
    except (OSError, SyntaxError, ValueError):
        return []
    out: list[str] = []
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "__digest_includes__"):
            try:
                value = ast.literal_eval(node.value)
            except (ValueError, SyntaxError):
                continue
            for pattern in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(pattern, str) and pattern.endswith(".*"):
                    pkg = pattern[:-2]
                    folder = root.joinpath(*pkg.split("."))
                    out += [f"{pkg}.{p.stem}" for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")]
    return sorted(set(out))


def source_code_digest(module: str, root: Path = PROJECT_ROOT) -> str:
    """The code digest of a model source's module (:func:`code_digest`) and of the modules it
    discovers at run time (:func:`discovered_modules`, e.g. the ``hf:`` source's adapter files), so
    that adding or editing one re-runs that source's cells; :func:`code_digest` itself alone when it
    discovers none."""
    import hashlib

    roots = {top: root for top in PROJECT_PACKAGES} if root != PROJECT_ROOT else None
    extra = discovered_modules(module, root)
    if not extra:
        return code_digest(module, roots)
    h = hashlib.sha256(code_digest(module, roots).encode())
    for name in extra:
        h.update(f"\n{name}={code_digest(name, roots)}".encode())
    return h.hexdigest()[:16]


def model_code(model: str) -> str:
    """Digest of the model factory's module closure (a source's ``code`` module for its models)."""
    from bench.errors import BenchError
    from bench.registry import MODELS

    src = MODELS.source_of(model)
    if src is not None:
        return source_code_digest(src.code)
    try:
        entry = MODELS.entry(model)
    except BenchError:  # not registered: the cell fails when it runs, with the reason
        return UNKNOWN
    if entry.is_object:
        return str(entry.meta["code"])
    mod = entry.target.partition(":")[0]
    if mod.split(".")[0] in PROJECT_PACKAGES:
        return code_digest(mod)
    where = _module_roots(entry.load())
    return code_digest(*where) if where else UNKNOWN


def fingerprints(cells: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str, str], dict[str, str]]:
    """The current fingerprints of (task, method, model) cells, each ingredient computed once
    per distinct task, method or model; the seed, profile, data and method config are in the key."""
    tasks: dict[str, str] = {}
    methods: dict[str, tuple[str, str | None]] = {}
    models: dict[str, tuple[str | None, str]] = {}
    packages = package_versions()
    out = {}
    for task, method, model in cells:
        if task not in tasks:
            tasks[task] = task_code(task)
        if method not in methods:
            methods[method] = (method_code(method), method_package(method))
        if model not in models:
            models[model] = (model_weights(model), model_code(model))
        fp = {"task_code": tasks[task], "method_code": methods[method][0]}
        if methods[method][1] is not None:
            fp["method_package"] = cast(str, methods[method][1])  # not None: checked above
        if models[model][0] is not None:
            fp["model_weights"] = cast(str, models[model][0])  # not None: checked above
        fp["model_code"] = models[model][1]
        fp["packages"] = packages
        out[(task, method, model)] = fp
    return out


def fingerprint(task: str, method: str, model: str) -> dict[str, str]:
    """The current fingerprint of one (task, method, model) cell (see :func:`fingerprints`)."""
    return fingerprints([(task, method, model)])[(task, method, model)]


def differences(stored: dict[str, Any], current: dict[str, str], skip: Iterable[str] = ()) -> list[str]:
    """Why a record with fingerprint ``stored`` is stale now, one reason per changed ingredient.
    Only the ingredients the stored record has are compared (an older record, made before an
    ingredient existed, is not re-run for lacking it)."""
    out = []
    for k, old in stored.items():
        if k in skip or current.get(k) == old:
            continue
        reason = REASONS.get(k, f"{k} changed since the stored record")
        new = current.get(k)
        if k == "packages":
            o = dict(p.split("==", 1) for p in str(old).split() if "==" in p)
            n = dict(p.split("==", 1) for p in str(new or "").split() if "==" in p)
            moved = [f"{p} {o.get(p, '-')} -> {n.get(p, '-')}" for p in sorted(set(o) | set(n)) if o.get(p) != n.get(p)]
            reason += f" ({', '.join(moved)})" if moved else ""
        elif k == "method_package":
            reason += f" ({old} -> {new or 'built-in'})"
        out.append(reason)
    return out


def summary_lines(rerun: dict[str, list[str]], max_groups: int = 4) -> list[str]:
    """``rerun`` (cell label -> reasons) as one line per (reason, task/model/method) group with a
    count; a reason spread over more than ``max_groups`` groups is one line with the total."""
    groups: dict[str, dict[str, int]] = {}
    for label, reasons in rerun.items():
        group = label.rsplit("/seed=", 1)[0]
        for r in reasons:
            g = groups.setdefault(r, {})
            g[group] = g.get(group, 0) + 1
    lines = []
    for reason, by in groups.items():
        def cells(n: int) -> str:
            return f"{n} cell{'s' if n != 1 else ''}"
        if len(by) <= max_groups:
            lines += [f"{g} ({cells(n)}): {reason}" for g, n in by.items()]
        else:
            shown = ", ".join(list(by)[:3])
            lines.append(f"{cells(sum(by.values()))} in {len(by)} task/model/method groups ({shown}, ...): {reason}")
    return lines


# ---------------------------------------------------------------- the guard
def builtin_tasks() -> list[str]:
    """The tasks the project itself registers (plugins' tasks are not guarded here)."""
    from bench.registry import TASKS

    return [n for n in TASKS.names() if TASKS.entry(n).source == "builtin"
            and TASKS.entry(n).target.split(".")[0] in PROJECT_PACKAGES]


def current_table() -> dict[str, dict[str, str]]:
    """``{task: {"version": v, "code": guard hash}}`` for the built-in tasks, now."""
    from bench.registry import TASKS

    return {t: {"version": TASKS.get(t).spec.version, "code": task_guard_code(t)} for t in sorted(builtin_tasks())}


def read_table(path: Path | None = None) -> dict[str, dict[str, str]]:
    """The committed table (``{}`` when there is none)."""
    path = Path(path or TABLE)
    return json.loads(path.read_text()) if path.exists() else {}


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def table_problems(committed: dict[str, dict[str, str]], now: dict[str, dict[str, str]]) -> list[str]:
    """What is wrong with the committed table, one line per task (empty when it is current)."""
    fix = "python -m bench.harness.identity --update"
    out = []
    for t, cur in now.items():
        old = committed.get(t)
        if old is None:
            out.append(f"task {t!r} is not in {TABLE.name}: run `{fix}`")
        elif old.get("code") != cur["code"] and old.get("version") == cur["version"]:
            out.append(f"task {t!r}: its code changed but its version is still {cur['version']}: bump the task's "
                       f"version (published figures are keyed by it), then run `{fix}` to rewrite the table")
        elif old != cur:
            out.append(f"task {t!r}: {TABLE.name} holds version {old.get('version')}, the task is at "
                       f"{cur['version']}: run `{fix}`")
    out += [f"task {t!r} in {TABLE.name} is no longer registered: run `{fix}`" for t in committed if t not in now]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.harness.identity",
                                 description=f"Check (default) or rewrite the task-code guard table ({_shown(TABLE)}).")
    ap.add_argument("--update", action="store_true", help="rewrite the table from the current tasks")
    ap.add_argument("--force", action="store_true",
                    help="with --update: also record a task whose code changed while its version did not "
                         "(a change that cannot move any figure, e.g. a rename)")
    args = ap.parse_args(argv)
    now = current_table()
    committed = read_table()
    problems = table_problems(committed, now)
    if not args.update:
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{_shown(TABLE)}: {'current' if not problems else f'{len(problems)} problem(s)'}",
              file=sys.stderr)
        return 1 if problems else 0
    unbumped = [t for t, cur in now.items() if t in committed and committed[t].get("version") == cur["version"]
                and committed[t].get("code") != cur["code"]]
    if unbumped and not args.force:
        print(f"refusing to update: the code of {', '.join(unbumped)} changed but the version did not; bump the "
              "version first (or pass --force for a change that cannot move any figure)", file=sys.stderr)
        return 1
    tmp = TABLE.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(now, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, TABLE)
    print(f"wrote {_shown(TABLE)} ({len(now)} tasks)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
