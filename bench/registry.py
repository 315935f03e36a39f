"""One generic, lazy registry for tasks, methods and models.

Built-ins register as ``"module:attr"`` strings, so nothing heavy is imported until
a name is used; their metadata (a task's spec fields, a method's capabilities and families, a
model's family) is declared beside each registration, so listing and planning read it without
importing anything. Third-party packages register through entry points in the groups
``mmi_bench.tasks``, ``mmi_bench.methods`` and ``mmi_bench.models``.

A built-in registered twice in code is an error (:class:`DuplicateName`). A plugin cannot
break the house: an entry point whose name is already taken (by a built-in or an earlier
plugin), or whose value is not ``module:attr``, is refused for that name alone, with one
:class:`PluginConflict` warning naming the distribution; every other name keeps working.
Entry points are read once per process and registry. A plugin's entry records its
distribution's name and version (:func:`plugin_provenance`), so records can carry them.
An unknown name gets a "did you mean".
"""

from __future__ import annotations

import ast
import importlib
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, Iterator, TypeVar, cast

from bench import answers
from bench.errors import BenchError, UnknownName

T = TypeVar("T")
OBJECT = "object"  # the source of an entry bound from a Python object (Registry.bind)


class DuplicateName(BenchError):
    pass


class PluginConflict(UserWarning):
    """A plugin's entry point was refused (its name is taken, or its value is malformed)."""


@dataclass
class Entry:
    name: str
    target: str  # "module:attr"
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = "builtin"
    dist: str | None = None  # the plugin's distribution (None: built-in)
    dist_version: str | None = None
    _loaded: Any = None

    @property
    def is_plugin(self) -> bool:
        return self.dist is not None

    @property
    def is_object(self) -> bool:
        """Bound from a Python object by :meth:`Registry.bind` (the library API), not registered."""
        return self.source == OBJECT

    def load(self) -> Any:
        if self._loaded is None:
            try:
                self._loaded = resolve(self.target)
            except BenchError as e:
                raise BenchError(f"{self.name!r} ({self.source}) {e}") from e
        return self._loaded


def resolve(target: str) -> Any:
    """The object a ``module:attr`` target names (a one-line BenchError when it cannot load)."""
    mod, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise BenchError(f"could not be loaded from {target!r}: {e}") from e
    return obj


@dataclass(frozen=True)
class Source:
    """Models named ``<prefix>:<rest>`` (``hf:./my-clip``), answered by functions instead of one
    entry per name; each is a ``module:attr`` target taking the full name. ``family``,
    ``canonical`` and ``digest`` must not import torch (planning calls them); ``load`` builds the
    :class:`bench.model.Model`; ``code`` is the module whose closure is these models' code."""

    prefix: str
    load: str  # name -> Model
    family: str  # name -> "contrastive" | "generative" | "diffusion", from files alone
    canonical: str  # name -> the one name of the same model (e.g. an absolute path)
    digest: str  # name -> content digest of what the model is loaded from
    code: str

    def call(self, fn: str, name: str) -> Any:
        return resolve(getattr(self, fn))(name)


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, Entry] = {}
        self._sources: dict[str, Source] = {}
        self._eps_loaded = False

    def register_source(self, prefix: str, **targets: str) -> None:
        """Register a :class:`Source`: every name starting ``prefix:`` resolves through it."""
        if prefix in self._sources:
            raise DuplicateName(f"{self.kind} source {prefix!r} is registered twice")
        self._sources[prefix] = Source(prefix, **targets)

    def source_of(self, name: str) -> Source | None:
        """The source a ``prefix:rest`` name belongs to, or None for a plain registered name."""
        prefix, sep, _ = name.partition(":")
        return self._sources.get(prefix) if sep else None

    def register(self, name: str, target: str, source: str = "builtin", **meta: Any) -> None:
        if name in self._entries:
            raise DuplicateName(
                f"{self.kind} {name!r} is registered twice ({self._entries[name].source} and {source})")
        if ":" not in target:
            raise ValueError(f"registry target must be 'module:attr', got {target!r}")
        self._entries[name] = Entry(name, target, dict(meta), source)

    def bind(self, name: str, factory: Any, target: str, **meta: Any) -> None:
        """Make ``name`` resolve to ``factory`` in this process (an unregistered object handed to
        :func:`bench.app.api.evaluate`): ``target`` says where its class comes from (``module:qualname``,
        informational). A name bound before is rebound (a notebook redefines its method); a
        registered name is never shadowed."""
        self._load_entry_points()
        old = self._entries.get(name)
        if old is not None and not old.is_object:
            raise DuplicateName(f"{self.kind} {name!r} is already registered ({old.source}): give the "
                                f"unregistered {self.kind} another name")
        self._entries[name] = Entry(name, target, dict(meta), OBJECT, _loaded=factory)

    def _load_entry_points(self) -> None:
        if self._eps_loaded:
            return
        self._eps_loaded = True
        for ep in entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            dist_name = str(dist.name) if dist is not None and dist.name else "?"
            dist_version = str(dist.version) if dist is not None and dist.version else "?"
            where = f"distribution {dist_name} {dist_version}"
            if ep.name in self._entries:
                taken = self._entries[ep.name]
                warnings.warn(f"plugin {self.kind} {ep.name!r} from {where} refused: the name is already "
                              f"registered ({taken.source}); the other names keep working",
                              PluginConflict, stacklevel=3)
                continue
            if ":" not in ep.value:
                warnings.warn(f"plugin {self.kind} {ep.name!r} from {where} refused: its entry point "
                              f"{ep.value!r} is not 'module:attr'", PluginConflict, stacklevel=3)
                continue
            self._entries[ep.name] = Entry(ep.name, ep.value, {}, f"entry point {dist_name}",
                                           dist=dist_name, dist_version=dist_version)

    def names(self) -> list[str]:
        """Registered names (built-ins, then plugins); objects bound by :meth:`bind` resolve by name
        but are not listed (``all`` means every registered one)."""
        self._load_entry_points()
        return [n for n, e in self._entries.items() if not e.is_object]

    def entry(self, name: str) -> Entry:
        self._load_entry_points()
        if name not in self._entries:
            raise UnknownName(self.kind, name, self._entries)
        return self._entries[name]

    def builtin_names(self) -> list[str]:
        """The project's own names: no plugin's, no bound object's (the published grid's)."""
        return [n for n in self.names() if not self._entries[n].is_plugin]

    def get(self, name: str) -> T:
        return self.entry(name).load()

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


TASKS: Registry[Any] = Registry("task", "mmi_bench.tasks")
METHODS: Registry[Any] = Registry("method", "mmi_bench.methods")
MODELS: Registry[Any] = Registry("model", "mmi_bench.models")
_BY_KIND: dict[str, Registry[Any]] = {"task": TASKS, "method": METHODS, "model": MODELS}


def plugin_provenance(kind: str, name: str) -> dict[str, str] | None:
    """``{"distribution": ..., "version": ...}`` of the plugin that registered ``name`` as a
    ``kind`` (``task``, ``method`` or ``model``; plurals accepted); None for a built-in."""
    reg = _BY_KIND.get(kind[:-1] if kind.endswith("s") else kind)
    if reg is None:
        raise UnknownName("registry kind", kind, _BY_KIND)
    e = reg.entry(name)
    if e.dist is None:
        return None
    return {"distribution": e.dist, "version": e.dist_version or "?"}


# ---------------------------------------------------------------- built-ins
# Built-in tasks and methods are *discovered*: every module of the project's ``tasks`` and
# ``methods`` folders is read with :mod:`ast` (not imported: they import torch) for the classes that
# declare themselves: a method class whose body assigns ``name`` a string and ``capabilities`` a
# literal ``frozenset({...})`` (with ``families`` and ``reference`` when not the defaults); a task
# class whose body assigns ``spec = TaskSpec(name="...", version="...", families=frozenset({...}),
# capability="...", main_score="...")`` (and ``data_kinds``); a ``models`` module that assigns the
# literal dicts ``MMI_BENCH_MODELS`` (the zoo) or ``MMI_BENCH_MODEL_SOURCES`` (``hf:``). So a new
# method is one file and nothing else, and this core module names no built-in. What planning and listing read (capabilities, families, a task's version...) comes with the
# discovery, so neither imports a module; the result is kept by :mod:`bench.answers` (any edit to the
# project's code is a new stamp). tests/test_cli_traps.py checks the declarations against the
# classes, and that every Method/Task subclass defined in those folders is discovered.
ALL_FAMILIES = ("contrastive", "diffusion", "generative")
ALL_CAPABILITIES = ("attribute", "debias", "detect_hallucination", "edit", "localize")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _literal(node: ast.expr) -> Any:
    """A declaration's value: a literal, or ``frozenset``/``tuple`` of one (sorted for sets)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("frozenset", "set", "tuple") \
            and len(node.args) == 1 and not node.keywords:
        inner = ast.literal_eval(node.args[0])
        return tuple(sorted(inner)) if node.func.id != "tuple" else tuple(inner)
    return ast.literal_eval(node)


def _assigned(body: list[ast.stmt]) -> dict[str, ast.expr]:
    out: dict[str, ast.expr] = {}
    for stmt in body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            out[stmt.targets[0].id] = stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            out[stmt.target.id] = stmt.value
    return out


def declared(source: str, module: str, kind: str) -> list[tuple[str, str, dict[str, Any]]]:
    """``(name, "module:Class", meta)`` of each ``kind`` (``task``, ``method``, ``model`` or
    ``source``) a module's source declares (see above; models and sources: the module-level literal
    dicts ``MMI_BENCH_MODELS`` / ``MMI_BENCH_MODEL_SOURCES``, name → {"load": function, ...meta});
    a declaration that is not a literal is skipped."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    tree = ast.parse(source)
    if kind in ("model", "source"):
        value = _assigned(tree.body).get("MMI_BENCH_MODELS" if kind == "model" else "MMI_BENCH_MODEL_SOURCES")
        try:
            table = _literal(value) if value is not None else {}
        except (ValueError, TypeError, SyntaxError):
            table = {}
        for name, meta in table.items() if isinstance(table, dict) else ():
            if isinstance(name, str) and isinstance(meta, dict) and isinstance(meta.get("load"), str):
                meta = dict(meta)
                target = meta.pop("load")
                out.append((name, target if ":" in target else f"{module}:{target}", meta))
        return out
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        a = _assigned(node.body)
        try:
            if kind == "method" and "name" in a and "capabilities" in a:
                name = _literal(a["name"])
                meta = {"capabilities": _literal(a["capabilities"]),
                        "families": _literal(a["families"]) if "families" in a else ALL_FAMILIES,
                        "reference": bool(_literal(a["reference"])) if "reference" in a else False}
            elif kind == "task" and isinstance(a.get("spec"), ast.Call):
                kw = {k.arg: k.value for k in cast(ast.Call, a["spec"]).keywords if k.arg}  # a Call: checked above
                name = _literal(kw["name"])
                meta = {"families": _literal(kw["families"]), "capability": _literal(kw["capability"]),
                        "main_score": _literal(kw["main_score"]), "version": _literal(kw["version"]),
                        "data_kinds": _literal(a["data_kinds"]) if "data_kinds" in a else (),
                        "ground_truth": _literal(a["ground_truth"]) if "ground_truth" in a else {}}
            else:
                continue
        except (ValueError, KeyError, TypeError, SyntaxError):
            continue
        if isinstance(name, str) and name:
            out.append((name, f"{module}:{node.name}", meta))
    return out


def discover(package: str, kind: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The built-ins declared by the modules of the project's ``package`` folder, by file name."""
    def compute() -> list[Any]:
        found = []
        for path in sorted((PROJECT_ROOT / package).glob("*.py")):
            if path.name.startswith("_"):
                continue
            found += declared(path.read_text(), f"{package}.{path.stem}", kind)
        return [list(x) for x in found]

    return [(n, t, dict(m)) for n, t, m in answers.remember("builtins", [package, kind], compute)]


def _register_builtins() -> None:
    METHODS.register("random", "bench.method:RandomReference", capabilities=ALL_CAPABILITIES,
                     families=ALL_FAMILIES, reference=True)
    METHODS.register("oracle", "bench.method:OracleReference", capabilities=ALL_CAPABILITIES,
                     families=ALL_FAMILIES, reference=True)
    for reg, package, kind in ((TASKS, "tasks", "task"), (METHODS, "methods", "method"), (MODELS, "models", "model")):
        for name, target, meta in discover(package, kind):
            if kind == "task":
                meta.pop("version")  # read from the source when asked (bench.app.cli.task_meta): it moves
            # meta: the declaration's fields (never ``source``), lists as tuples
            reg.register(name, target,
                         **cast("dict[str, Any]", {k: tuple(v) if isinstance(v, list) else v for k, v in meta.items()}))
    # model sources (``hf:FOLDER``): every name ``prefix:rest`` resolves through the declared functions
    for prefix, load, meta in discover("models", "source"):
        MODELS.register_source(prefix, load=load, **meta)


_register_builtins()
