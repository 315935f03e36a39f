"""Plan and run the grid: (task × method × model × seed) cells, checkpointed per cell.

The runner takes any ``concurrent.futures.Executor``; ``jobs=1`` runs in-process.
Every completed cell is written to the store at once, so an interrupted run
resumes where it stopped; cells already stored are skipped unless ``force``, or
unless what they depend on changed since: the zoo weights they were obtained with were
retrained, or the record's fingerprint (:mod:`bench.harness.identity`: the task's, method's and model's
code, the model's weights by content, the numeric packages' versions) differs from the current
one. Those are re-run and replaced, and :attr:`GridResult.rerun` says why, so a store never
mixes old and new code or weights silently. ``hf:`` folders are named by their absolute path
in cells and keys, so two folders named ``clip`` never share results.

Planning reads families and capabilities first and asks a loaded model whether a task or method
supports it only once: the answers (and tasks' versions, methods' configs, zoo weights hashes)
are kept on disk by :mod:`bench.answers`, keyed by the project's code, so planning known names
imports no task or method module (nor torch) and loads no model, and a grid that is entirely
stored starts no worker. Workers (``jobs``) never outnumber the cells left to run; they ignore
Ctrl-C (the parent stops them), die with their parent, and are terminated when the grid is
interrupted (:func:`run_grid`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import resource
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from bench import answers
from bench.errors import BenchError
from bench.harness.cluster import ClusterSpec
from bench.harness.identity import canonical_model
from bench.records import CellKey, RunRecord, config_hash, environment
from bench.registry import METHODS, MODELS, TASKS
from bench.harness.store import Store

if TYPE_CHECKING:  # torch and the contracts import torch (~2 s): only where a cell runs or a model loads
    from bench.method import Method
    from bench.model import Model
    from bench.task import Task

ALL = "all"
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def __getattr__(name: str) -> Any:
    if name == "DTYPES":  # {"float32": torch.float32, ...}, built when asked (it imports torch)
        import torch

        return {n: getattr(torch, n) for n in DTYPE_NAMES}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Runtime:
    """How a cell runs, not what it measures: recorded in every RunRecord, not part of its key
    (a re-run under other settings needs ``--force``, or another store, to be compared).

    ``device``: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (the first of cuda, mps, cpu this
    process has): the model's weights and every tensor a cell creates live there; results come back
    to the CPU only to be scored and stored. ``dtype`` other than float32: on a GPU (cuda, mps) the
    weights are loaded in that dtype and the cell runs under ``torch.autocast`` at it; on the CPU
    the weights stay float32 and only autocast applies (the record's ``provenance["weights_dtype"]``
    says which). ``batch_size`` overrides the model's default (examples per forward pass).
    ``meta_check``: the device-discipline mode (:func:`device_check`; :mod:`bench.harness.discipline`), for tests.
    """

    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int | None = None
    meta_check: bool = False


DEVICE_FORMS = "cpu, cuda, cuda:N, mps, auto"


def check_device(device: str) -> str:
    """``device`` checked for its form (not whether this machine has it): one line otherwise."""
    head, sep, index = device.partition(":")
    if head in ("cpu", "mps", "auto") and not sep:
        return device
    if head == "cuda" and (not sep or index.isdigit()):
        return device
    raise BenchError(f"unknown device {device!r} (known: {DEVICE_FORMS})")


def resolve_device(device: str) -> str:
    """The device this process will use for ``device``: ``auto`` becomes the first of cuda, mps, cpu
    that torch sees; a device this machine lacks is one line (e.g. ``cuda`` on a CPU-only build)."""
    check_device(device)
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            built = torch.version.cuda or "no CUDA (a CPU-only build)"
            raise BenchError(f"device {device!r} is not available here: torch {torch.__version__} sees no CUDA "
                             f"GPU (built with {built}); use --device cpu, or --device auto")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise BenchError(f"device {device!r} is not available here: torch sees "
                             f"{torch.cuda.device_count()} CUDA GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return device
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        raise BenchError("device 'mps' is not available here (Apple GPUs only); use --device cpu, or --device auto")
    return device


def resolve_runtime(rt: Runtime) -> Runtime:
    """``rt`` with its device resolved in this process (:func:`resolve_device`): for grids that run
    here or on a local cluster. Cells on a remote cluster resolve it on their worker instead."""
    from dataclasses import replace

    return replace(rt, device=resolve_device(rt.device))


def check_runtime(rt: Runtime) -> Runtime:
    """One-line errors for settings this build cannot honour."""
    if rt.dtype not in DTYPE_NAMES:
        raise BenchError(f"unknown dtype {rt.dtype!r} (known: {', '.join(DTYPE_NAMES)})")
    if rt.batch_size is not None and rt.batch_size < 1:
        raise BenchError(f"the batch size must be a positive integer, got {rt.batch_size}")
    check_device(rt.device)
    return rt


@dataclass(frozen=True)
class Cell:
    task: str
    method: str
    model: str
    seed: int
    quick: bool = False
    method_overrides: tuple[tuple[str, Any], ...] = ()
    runtime: Runtime = Runtime()
    # real-data files the task reads instead of the world: (kind, absolute path), kinds sorted;
    # they reach the key through the task version (which carries each file's digest)
    data: tuple[tuple[str, str], ...] = ()
    # the judge reading the model's samples (``--judge``: a contrastive ``hf:`` folder, canonical name);
    # "" = the model's own. It reaches the key through the task version (which carries its weights digest)
    judge: str = ""

    def key(self, task_version: str, method_config: dict[str, Any]) -> CellKey:
        return CellKey(self.task, task_version, self.method, config_hash(method_config), canonical_model(self.model),
                       self.seed, "quick" if self.quick else "full")

    @property
    def label(self) -> str:
        return f"{self.task}/{self.model}/{self.method}/seed={self.seed}"


@dataclass
class Plan:
    cells: list[Cell] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (label, reason)
    # labels of skipped (task, method) pairs where the method lacks the task's capability: the
    # grid's shape rather than an incompatibility worth reporting one by one
    lacking_capability: set[str] = field(default_factory=set)


# ------------------------------------------------------------------ loading
_MODEL_CACHE: dict[str, "Model"] = {}
_SOURCE_DIGEST: dict[str, str] = {}  # source model -> the digest its cached model was loaded from
_DEFAULT_BATCH: dict[str, int] = {}


def load_model(name: str) -> "Model":
    """Load (once per process) a registered model, or a model of a registered source (``hf:``); a
    source model whose files changed since it was loaded (a folder re-saved) is loaded again."""
    src = MODELS.source_of(name)
    if src is not None:
        try:
            digest = str(src.call("digest", canonical_model(name)))
        except (OSError, BenchError):
            digest = ""
        if _SOURCE_DIGEST.get(name, digest) != digest:
            forget_model(name)
        _SOURCE_DIGEST[name] = digest
    if name not in _MODEL_CACHE:
        if src is not None:
            model = src.call("load", name)
        else:
            factory = MODELS.get(name)
            model = factory(name) if _takes_name(factory) else factory()
        _MODEL_CACHE[name] = model
    return _MODEL_CACHE[name]


_PLACED: dict[str, tuple[str, str]] = {}  # model name -> (device, weights dtype) its cached copy is at


def place_model(name: str, device: str, weights_dtype: str = "float32") -> "Model":
    """The model ``name`` (loaded once per process, :func:`load_model`) with its weights, and its
    reference weights, on ``device`` in ``weights_dtype``. A copy whose weights were reduced is
    loaded again rather than cast back (a bfloat16 round trip is lossy)."""
    import torch

    model = load_model(name)
    now = _PLACED.get(name, ("cpu", "float32"))
    if now == (device, weights_dtype):
        return model
    if now[1] != weights_dtype and now[1] != "float32":
        forget_model(name)
        model = load_model(name)
    dtype = getattr(torch, weights_dtype)
    model.module.to(device=device, dtype=dtype)  # (integer buffers keep their dtype)
    model.reference_weights = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
                               for k, v in model.reference_weights.items()}
    _PLACED[name] = (device, weights_dtype)
    return model


def device_check(enabled: bool) -> Any:
    """The device-discipline mode (:mod:`bench.harness.discipline`): while on, a torch factory call
    that method-side code makes without ``device=`` lands on the ``meta`` device, which cannot mix
    with the model's (CPU) tensors, so a forgotten device fails at once, on a CPU-only machine, as it
    would fail on a GPU. Task callbacks (host code by contract) and third-party libraries (captum,
    transformers, diffusers, torch's own Python code) are left on the real default: the frame that
    calls the factory decides (see that module for the rule and why). Off: nothing changes."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext()
    from bench.harness import discipline  # (imports torch: only where the mode is asked for)

    return discipline.device_check(True)


METHOD_CALLS = ("localize", "detect_hallucination", "edit", "debias", "attribute", "fit")


def guard_method(method: "Method", meta_check: bool = False) -> "Method":
    """``method`` with its capability calls (and ``fit``) guarded, on this instance only (a cell's
    method is built for the cell): a tensor a call returns comes back to the CPU, where the task
    scores it (an intervention it returns stays on the model's device: it acts on the model);
    with ``meta_check``, each call runs under :func:`device_check`, so a tensor the method creates
    without the model's device fails the cell loudly. Tasks build their examples and score on the
    host, so the check covers the methods -- sites, readouts, SAEs, probes, editors -- where a GPU
    run would meet mixed devices; a task callback the method calls (a request's ``evaluate``) and
    third-party code are not judged (:mod:`bench.harness.discipline`), and the mode's walk up the
    stack stops at this wrapper."""
    import functools

    import torch

    for name in METHOD_CALLS:
        fn = getattr(method, name, None)
        if fn is None or not callable(fn):
            continue

        def guarded(*args: Any, _fn: Callable[..., Any] = fn, **kwargs: Any) -> Any:
            with device_check(meta_check):
                out = _fn(*args, **kwargs)
            return out.cpu() if isinstance(out, torch.Tensor) else out

        setattr(method, name, functools.wraps(fn)(guarded))
        if meta_check:  # the mode stops its walk up the stack at the guarded call
            from bench.harness import discipline

            discipline.GUARD_CODES.add(guarded.__code__)
    return method


def cached_model(name: str) -> "Model | None":
    """The model loaded under ``name`` in this process, if any."""
    return _MODEL_CACHE.get(name)


def forget_model(name: str) -> None:
    """Drop the model loaded under ``name`` (a name rebound to another object)."""
    _MODEL_CACHE.pop(name, None)
    _PLACED.pop(name, None)
    _DEFAULT_BATCH.pop(name, None)


def _takes_name(fn: Callable[..., Any]) -> bool:
    import inspect

    try:
        return len(inspect.signature(fn).parameters) > 0
    except (TypeError, ValueError):
        return False


def make_task(name: str, data: Sequence[tuple[str, str]] = (), judge: str = "") -> "Task":
    """The registered task ``name``, reading the ``(kind, path)`` data files instead of the world, its
    generations read by ``judge`` (``--judge``; "" = the model's own: :meth:`bench.task.Task.with_judge`)."""
    task = TASKS.get(name)()
    if data:
        from bench.kit.realdata import load_data  # (numpy: only when data files are given)

        files = dict(data)
        reason = task.data_mismatch(sorted(files))  # before any file is read
        if reason:
            raise BenchError(reason)
        task = task.with_data({k: load_data(k, files[k]) for k in sorted(files)})
    # (after with_data, which versions from the class's spec: the judge's suffix comes last)
    return task.with_judge(judge, _judge_digest(judge)) if judge else task


# ------------------------------------------------------------------ judges (--judge)
_JUDGES: dict[tuple[str, str, str, str], Any] = {}  # (judge, digest, device, dtype) -> its ContrastiveJudge


def _judge_digest(judge: str) -> str:
    """A judge's weights digest (an ``hf:`` folder's content, :func:`models.hf_source.folder_digest`)."""
    src = MODELS.source_of(judge)
    if src is None:  # check_judge refuses these before any cell is built
        raise BenchError(f"--judge names an hf:FOLDER checkpoint, got {judge!r}")
    return str(src.call("digest", judge))


def check_judge(judge: str) -> str:
    """``--judge`` checked: an ``hf:`` folder of a contrastive (CLIP-style) checkpoint that loads;
    its canonical name (one-line ``BenchError`` otherwise)."""
    if MODELS.source_of(judge) is None:
        raise BenchError(f"--judge expects hf:FOLDER, a contrastive (CLIP-style) checkpoint folder; got {judge!r} "
                         f"(zoo models keep their own judge, zoo-oracle)")
    try:
        family = model_family(judge)
    except BenchError as e:  # a missing or unreadable folder: the source's one line, said to be the judge's
        raise BenchError(f"--judge: {e}") from None
    if family != "contrastive":
        raise BenchError(f"--judge {judge}: a judge reads images zero-shot, so it is a contrastive (CLIP-style) "
                         f"checkpoint; this one is {family}")
    name = canonical_model(judge)
    load_judge(name, "cpu", "float32")  # a folder that does not load: one line now, not a failed cell per cell
    return name


def load_judge(judge: str, device: str, weights_dtype: str = "float32") -> Any:
    """The judge ``judge`` (an ``hf:`` contrastive checkpoint read zero-shot,
    :class:`bench.kit.judge.ContrastiveJudge`), loaded once per process like models
    (:func:`place_model`) and placed on ``device``; loaded again when its folder changed."""
    from bench.kit.judge import ContrastiveJudge
    from bench.model import ContrastiveModel

    digest = _judge_digest(judge)
    key = (judge, digest, device, weights_dtype)
    if key not in _JUDGES:
        model = place_model(judge, device, weights_dtype)
        if not isinstance(model, ContrastiveModel):
            raise BenchError(f"--judge {judge}: a judge is a contrastive (CLIP-style) checkpoint; this one is "
                             f"{model.family}")
        model.module.eval()
        _JUDGES[key] = ContrastiveJudge(model, judge, digest)
    return _JUDGES[key]


def check_data(data: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``(kind, path)`` pairs checked (known kind, one file per kind) with absolute paths, by kind."""
    from bench.kit.realdata import kind

    out: dict[str, str] = {}
    for k, path in data:
        kind(k)  # "did you mean"
        if k in out:
            raise BenchError(f"data kind {k!r} is given twice (one file per kind)")
        out[k] = str(Path(path).expanduser().resolve())
    return tuple(sorted(out.items()))


def make_method(name: str, overrides: Sequence[tuple[str, Any]] = ()) -> "Method":
    return METHODS.get(name)(**dict(overrides))


def _expand(values: Sequence[str] | None, known: list[str], kind: str) -> list[str]:
    if not values or ALL in values:
        return list(known)
    out = []
    for v in values:
        if kind == "model" and MODELS.source_of(v) is not None:  # e.g. a checkpoint folder, by its absolute path
            out.append(canonical_model(v))
            continue
        if v not in known:
            # raises UnknownName with "did you mean"
            {"task": TASKS, "method": METHODS, "model": MODELS}[kind].entry(v)
        out.append(v)
    return list(dict.fromkeys(out))


def validate_seeds(seeds: Iterable[Any]) -> list[int]:
    out = []
    for s in seeds:
        try:
            v = int(s)
        except (TypeError, ValueError):
            raise BenchError(f"invalid seed {s!r}: seeds are non-negative integers") from None
        if v < 0 or str(s).strip() not in (str(v), f"+{v}"):
            raise BenchError(f"invalid seed {s!r}: seeds are non-negative integers")
        out.append(v)
    return list(dict.fromkeys(out))


def _per_method_overrides(method_names: Sequence[str], common: Mapping[str, Any] | None,
                          scoped: Mapping[str, Mapping[str, Any]] | None) -> dict[str, tuple[tuple[str, Any], ...]]:
    """``{method: sorted (option, value) pairs}`` for the grid's methods (references get none)."""
    real = [m for m in method_names if not _is_reference(m)]
    for name, opts in (scoped or {}).items():
        METHODS.entry(name)  # an unknown name: "did you mean"
        first = next(iter(opts), "KEY")
        if _is_reference(name):
            raise BenchError(f"--config {name}.{first}=...: the reference {name!r} has no config options")
        if name not in method_names:
            shown = ", ".join(real[:8]) + (f", ... ({len(real)} in all)" if len(real) > 8 else "")
            raise BenchError(f"--config {name}.{first}=... names method {name!r}, which is not in the grid "
                             f"(methods: {shown or 'only the references'}); add --method {name}")
    out = {}
    for me in real:
        merged = {**dict(common or {}), **dict((scoped or {}).get(me, {}))}
        if merged:
            out[me] = tuple(sorted(merged.items()))
    return out


def _is_reference(method: str) -> bool:
    return bool(method_facts(method)["reference"])


# ------------------------------------------------------------------- facts
# What planning and keys read about a task, method or model, computed once and kept on disk
# (:mod:`bench.answers`, keyed by the project's code and zoo weights), so a plan of known names
# imports no task or method module and loads no model. A plugin's facts are computed each time.
def _plugin(kind: str, name: str) -> bool:
    """Whether ``name`` comes from a plugin (or is unknown): its answers are not kept."""
    if kind == "model" and MODELS.source_of(name) is not None:
        return False  # the source's code is the project's; the model's digest is in the key
    try:
        entry = {"task": TASKS, "method": METHODS, "model": MODELS}[kind].entry(name)
        return entry.is_plugin or entry.is_object  # an object's facts are its own, never kept
    except BenchError:
        return True


def _model_id(model: str) -> list[str]:
    """A model's name and what the answers' stamp cannot see about it (a source model's digest)."""
    src = MODELS.source_of(model)
    if src is not None:
        try:
            return [model, str(src.call("digest", model))]
        except (OSError, BenchError):
            return [model, "?"]
    return [model]


def task_facts(name: str) -> dict[str, Any]:
    """The registered task's ``version``, ``families``, ``capability`` and ``data_kinds`` (from
    its class, kept on disk)."""
    def compute() -> dict[str, Any]:
        cls = TASKS.get(name)
        spec = cls.spec
        return {"version": spec.version, "families": sorted(spec.families), "capability": spec.capability,
                "main_score": spec.main_score, "data_kinds": list(getattr(cls, "data_kinds", ()))}

    return answers.remember("task-facts", name, compute, keep=not _plugin("task", name))


def method_facts(name: str) -> dict[str, Any]:
    """The registered method's ``capabilities``, ``families`` and ``reference`` (from its class)."""
    def compute() -> dict[str, Any]:
        cls = METHODS.get(name)
        return {"capabilities": sorted(cls.capabilities), "families": sorted(cls.families),
                "reference": bool(getattr(cls, "reference", False))}

    return answers.remember("method-facts", name, compute, keep=not _plugin("method", name))


def method_config(name: str, overrides: Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
    """The method's config under ``overrides`` (``config_dict()``; a bad option raises, and is
    never kept)."""
    return answers.remember("method-config", [name, [list(o) for o in overrides]],
                            lambda: make_method(name, overrides).config_dict(), keep=not _plugin("method", name))


def model_family(name: str) -> str | None:
    """A registered model's family (registry metadata; None when it declares none), a source
    model's from its files (an ``hf:`` folder's config.json; nothing loaded)."""
    src = MODELS.source_of(name)
    if src is not None:
        return answers.remember("source-family", _model_id(name), lambda: str(src.call("family", name)))
    return MODELS.entry(name).meta.get("family")


def _load_reason(model: str) -> str | None:
    try:
        load_model(model)
    except BenchError as e:
        return str(e)
    return None


def task_supports(task: str, model: str, data: Sequence[tuple[str, str]] = (), task_obj: "Task | None" = None
                  ) -> str | None:
    """Why ``task`` (reading ``data``; ``task_obj``: that task, built already) cannot run on
    ``model`` (a load error included), or None. Loads the model unless the answer is kept (never
    kept with data files: they are not stamped)."""
    def compute() -> str | None:
        obj = task_obj if task_obj is not None else make_task(task, data)
        return _load_reason(model) or obj.supports(load_model(model))

    keep = not data and not _plugin("task", task) and not _plugin("model", model)
    return answers.remember("task-supports", [task, *_model_id(model)], compute, keep=keep)


def method_supports(method: str, overrides: Sequence[tuple[str, Any]], model: str) -> str | None:
    """Why ``method`` (under ``overrides``) cannot run on ``model``, or None."""
    def compute() -> str | None:
        return _load_reason(model) or make_method(method, overrides).supports(load_model(model))

    keep = not _plugin("method", method) and not _plugin("model", model)
    return answers.remember("method-supports", [method, [list(o) for o in overrides], *_model_id(model)],
                            compute, keep=keep)


def plan(
    tasks: Sequence[str] | None,
    methods: Sequence[str] | None,
    models: Sequence[str] | None,
    seeds: Sequence[Any],
    quick: bool = False,
    method_overrides: dict[str, Any] | None = None,
    runtime: Runtime = Runtime(),
    data: Sequence[tuple[str, str]] = (),
    overrides_by_method: Mapping[str, Mapping[str, Any]] | None = None,
    judge: str = "",
) -> Plan:
    """Expand the grid and keep the compatible cells; the rest are listed with the reason.

    ``method_overrides``: config options for every non-reference method of the grid;
    ``overrides_by_method``: ``{method: {option: value}}``, options for one method each (they win
    over ``method_overrides``; a method not in the grid, or a reference, is an error).
    ``data``: ``(kind, path)`` files read instead of the world; each task gets the kinds it reads
    (:attr:`Task.data_kinds`) and a task that reads none of them is skipped, never run on the world.
    ``judge``: an ``hf:`` contrastive checkpoint (``--judge``) that reads the samples of every ``hf:``
    diffusion model in the cells of tasks that score generations (:attr:`Task.reads_judge`); zoo models
    keep their own judge (zoo-oracle), and the other cells are unchanged.

    Families and capabilities come first (nothing loaded); whether a task or method supports a
    model is asked of the loaded model once and then kept (:func:`task_supports`), so planning
    known names loads no model and imports no task or method module.
    """
    check_runtime(runtime)
    data = check_data(data)
    judge = check_judge(judge) if judge else ""
    judged = False  # whether a cell of the grid is read by the judge
    task_names = _expand(tasks, TASKS.names(), "task")
    method_names = _expand(methods, METHODS.names(), "method")
    model_names = _expand(models, MODELS.names(), "model")
    seed_list = validate_seeds(seeds)
    per_method = _per_method_overrides(method_names, method_overrides, overrides_by_method)
    p = Plan()
    read: set[str] = set()
    for t in task_names:
        facts = task_facts(t)
        task_data = tuple((k, path) for k, path in data if k in facts["data_kinds"])
        read.update(k for k, _ in task_data)
        if data and not task_data:
            p.skipped.append((f"{t}/*/*", make_task(t).data_mismatch([k for k, _ in data]) or ""))
            continue
        # with data files, the task is built (its files loaded and checked: one line if bad) once
        task_obj = make_task(t, task_data) if task_data else None
        capability = facts["capability"]
        for mo in model_names:
            family = model_family(mo)
            if family is not None and family not in facts["families"]:
                p.skipped.append((f"{t}/{mo}/*", f"task {t!r} does not support {family} models like {mo!r}"))
                continue
            cell_judge = judge if (judge and family == "diffusion" and MODELS.source_of(mo) is not None
                                   and (task_obj or make_task(t)).reads_judge) else ""
            if cell_judge:  # asked with the judge in place (a folder without a sidecar judge is then supported)
                judged = True
                reason = _load_reason(mo) or _supports_judged(task_obj or make_task(t), mo, cell_judge)
            else:
                reason = task_supports(t, mo, task_data, task_obj)
            if reason:
                p.skipped.append((f"{t}/{mo}/*", reason))
                continue
            for me in method_names:
                if capability not in method_facts(me)["capabilities"]:
                    p.skipped.append((f"{t}/{mo}/{me}", f"method {me!r} has no {capability!r} capability "
                                      f"(needed by task {t!r})"))
                    p.lacking_capability.add(f"{t}/{mo}/{me}")
                    continue
                overrides = per_method.get(me, ())
                method_config(me, overrides)  # a bad option: one line now
                reason = method_supports(me, overrides, mo)
                if reason:
                    p.skipped.append((f"{t}/{mo}/{me}", reason))
                    continue
                for s in seed_list:
                    p.cells.append(Cell(t, me, mo, s, quick, overrides, runtime, task_data, cell_judge))
    if judge and not judged:  # a judge nothing uses is most likely a mistake: say so
        p.skipped.append((f"--judge {judge}", "no cell of the grid scores the samples of an hf: diffusion model "
                          "(zoo models keep their own judge, zoo-oracle)"))
    for k, path in data:
        if k not in read:  # a file nothing reads is most likely a mistake: say so
            p.skipped.append((f"--data {k}={path}", f"no task of the grid reads {k} data"))
    return p


def _supports_judged(task: "Task", model: str, judge: str) -> str | None:
    """Why ``task`` cannot run on ``model`` with its samples read by ``judge``, or None."""
    loaded = load_model(model)
    with judged_by(loaded, load_judge(judge, "cpu")):
        return task.supports(loaded)


@contextlib.contextmanager
def judged_by(model: "Model", judge: Any) -> Iterator[None]:
    """``model``'s samples read by ``judge`` inside the block; its own judge back afterwards (a loaded
    model is shared by the cells of a process, with and without ``--judge``)."""
    own = getattr(model, "judge", None)
    model.judge = judge  # type: ignore[attr-defined]
    try:
        yield
    finally:
        model.judge = own  # type: ignore[attr-defined]


def references() -> list[str]:
    """The registered references (``random``, ``oracle``), from their registry metadata."""
    return [n for n in METHODS.names() if METHODS.entry(n).meta.get("reference")]


def with_references(methods: Sequence[str]) -> list[str]:
    """``methods`` with every reference added (the normalised score needs both; they are cheap and
    stored once per cell), unless it is empty or says ``all``."""
    out = list(methods)
    if not out or ALL in out:
        return out
    return out + [r for r in references() if r not in out]


def require_cells(p: Plan) -> None:
    """A one-line error when a plan has no cell to run, with the reasons cells were skipped."""
    if not p.cells:
        reasons = "; ".join(sorted({r for _, r in p.skipped})) or "nothing matched"
        raise BenchError(f"no compatible cells to run: {reasons}")


# ---------------------------------------------------------------- one cell
def cell_key(cell: Cell) -> CellKey:
    """The cell's key, from kept facts (no import) unless the task reads data files."""
    version = (make_task(cell.task, cell.data, cell.judge).spec.version if cell.data or cell.judge
               else task_facts(cell.task)["version"])
    return cell.key(version, method_config(cell.method, cell.method_overrides))


def cell_fingerprint(cell: Cell) -> dict[str, str]:
    """The cell's current fingerprint (:func:`bench.harness.identity.fingerprint`)."""
    return _fingerprints([cell])[_triple(cell)]


def _triple(cell: Cell) -> tuple[str, str, str]:
    return (cell.task, cell.method, canonical_model(cell.model))


def _fingerprints(cells: Iterable[Cell]) -> dict[tuple[str, str, str], dict[str, str]]:
    """The current fingerprints of the cells' (task, method, model) triples
    (:func:`bench.harness.identity.fingerprints`: source digests kept on disk by content, nothing imported
    for a built-in)."""
    from bench.harness.identity import fingerprints

    return fingerprints(dict.fromkeys(_triple(c) for c in cells))


def run_cell(cell: Cell, threads: int = 1, fingerprint: dict[str, str] | None = None,
             task: "Task | None" = None) -> RunRecord:
    """Run one cell in this process and return its record (failures become failed records).
    ``fingerprint``: the cell's, when the caller computed it already (else computed here).
    ``task``: the task object to run instead of the registered one built afresh (the device-discipline
    sweep's smaller configs, :func:`bench.harness.discipline.sweep_task`; the record says which config ran)."""
    import torch

    torch.set_num_threads(threads)  # fixed per cell so results do not depend on --jobs
    peak_own = _reset_peak_memory()  # the record's peak is this cell's, not the process's so far
    t0 = time.perf_counter()
    task = task if task is not None else make_task(cell.task, cell.data, cell.judge)
    method = make_method(cell.method, cell.method_overrides)
    key = cell.key(task.spec.version, method.config_dict())
    record = RunRecord(key=key, status="failed", main_score=task.spec.main_score,
                       method_config=method.config_dict(), provenance=dict(environment()))
    try:
        record.provenance["fingerprint"] = dict(fingerprint or cell_fingerprint(cell))
        rt = cell.runtime
        device = resolve_device(rt.device)  # (auto, on a worker: that worker's device)
        record.device = device
        # on a GPU the weights themselves are in the reduced dtype; on the CPU autocast alone
        weights_dtype = rt.dtype if device != "cpu" else "float32"
        model = place_model(cell.model, device, weights_dtype)
        t_load = time.perf_counter()
        record.model_hash = model.weights_hash
        # the model object is shared by the cells of a process: set (or restore) its batch size per cell
        default_batch = _DEFAULT_BATCH.setdefault(cell.model, model.batch_size)
        model.batch_size = rt.batch_size or default_batch
        model.dtype, model.device = rt.dtype, device
        record.batch_size, record.dtype = model.batch_size, rt.dtype
        record.provenance["weights_dtype"] = weights_dtype
        if device.startswith("cuda"):
            record.provenance["device_name"] = torch.cuda.get_device_name(torch.device(device))
        judge = None
        if cell.judge:  # the second model of the cell: loaded once per process, on the cell's device
            judge = load_judge(cell.judge, device, weights_dtype)
            record.provenance["judge"] = {"name": judge.name, "weights_hash": judge.weights_hash}
        torch.manual_seed(cell.seed)
        with torch.autocast(torch.device(device).type, dtype=getattr(torch, rt.dtype), enabled=rt.dtype != "float32"), \
                (judged_by(model, judge) if judge is not None else contextlib.nullcontext()):
            result = task.run(model, guard_method(method, rt.meta_check), cell.seed, quick=cell.quick)
        record.metrics = {k: float(v) for k, v in result.metrics.items()}
        record.example_hashes = list(result.example_hashes)
        record.rows = result.rows
        record.status = "ok"
        record.timings = {"load_s": round(t_load - t0, 3), "run_s": round(time.perf_counter() - t_load, 3)}
    except Exception as e:  # a failing method must not stop the grid
        record.error = f"{type(e).__name__}: {e}"
        record.provenance["traceback"] = traceback.format_exc(limit=8)
        record.timings = {"run_s": round(time.perf_counter() - t0, 3)}
    record.provenance["threads"] = threads
    unregistered = {kind: reg.entry(name).target for kind, reg, name in
                    (("method", METHODS, cell.method), ("model", MODELS, cell.model))
                    if name in reg and reg.entry(name).is_object}
    if unregistered:  # objects handed to bench.app.api.evaluate: their class, never a registered name
        record.provenance["unregistered"] = unregistered
    answers = getattr(method, "answers", {}).get(task.spec.capability)
    if answers:  # the question the method's scores answer (e.g. mediation rather than storage)
        record.provenance["answers"] = answers
    if method.diagnostics:  # what the method measured about itself (e.g. SAE reconstruction)
        record.provenance["method_diagnostics"] = dict(method.diagnostics)
    if getattr(method, "fitted", None):
        record.provenance["fitted"] = dict(method.fitted)
    if is_dataclass(getattr(task, "config", None)):
        record.provenance["task_config"] = asdict(task.config)
    if task.data:  # the files read instead of the world (their digests are in the task version too)
        record.provenance["data"] = [asdict(d) for d in task.data_sources]
    record.peak_memory_mb = _peak_memory_mb(peak_own)
    if not peak_own:
        record.provenance["peak_memory"] = ("the process's peak so far (ru_maxrss), which may be an earlier "
                                            "cell's: /proc/self/clear_refs is unavailable here")
    return record


def lost_record(cell: Cell, fingerprint: dict[str, str], error: str) -> RunRecord:
    """The failed record of a cell that returned none (its worker died, more than the allowed
    times): built from kept facts, nothing loaded, so the driver of a cluster stays light."""
    main = (make_task(cell.task, cell.data, cell.judge).spec.main_score if cell.data or cell.judge
            else str(task_facts(cell.task)["main_score"]))
    record = RunRecord(key=cell_key(cell), status="failed", main_score=main,
                       method_config=method_config(cell.method, cell.method_overrides),
                       provenance=dict(environment()))
    record.provenance["fingerprint"] = dict(fingerprint)
    record.error = error
    record.device, record.dtype = cell.runtime.device, cell.runtime.dtype
    return record


def _reset_peak_memory() -> bool:
    """Reset this process's peak resident memory (Linux ``VmHWM``) to its current resident memory,
    by writing ``5`` to ``/proc/self/clear_refs``: True when done, False where /proc offers no
    such reset (then only the process's peak so far is known, :func:`_peak_memory_mb`).

    First the memory earlier cells freed goes back to the system (glibc's ``malloc_trim``, ~0.3 ms):
    freed blocks the allocator keeps count as resident, so without it a cell's peak would start
    from what the worker's earlier cells left. (No ``gc.collect()``: ~0.45 s a call with the zoo
    loaded, and tensors are freed by reference counting.)"""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to give back this way
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _vmhwm_kb() is not None
    except OSError:
        return False


def _vmhwm_kb() -> int | None:
    """``VmHWM`` of ``/proc/self/status`` (peak resident memory since the last reset), in kB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _peak_memory_mb(own: bool) -> float:
    """Peak resident memory in MB: since :func:`_reset_peak_memory` when ``own`` (``VmHWM``), else
    the process's peak so far (``ru_maxrss``: kB on Linux, bytes on macOS)."""
    kb: float | None = _vmhwm_kb() if own else None
    if kb is None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = rss / 1024 if sys.platform == "darwin" else rss
    return round(kb / 1024, 1)


# ------------------------------------------------------------------- grid
@dataclass
class GridResult:
    ran: list[RunRecord] = field(default_factory=list)
    already: list[Cell] = field(default_factory=list)
    retrained: list[Cell] = field(default_factory=list)  # stored, but from other zoo weights: re-run
    # stored cells re-run and replaced because what they depend on changed: label -> reasons
    # (the retrained ones included), e.g. ["method code changed since the stored record"]
    rerun: dict[str, list[str]] = field(default_factory=dict)
    interrupted: int = 0  # the signal that stopped the grid (SIGINT 2, SIGTERM 15); 0: it ran to the end
    # a Dask run's own costs (:func:`bench.harness.cluster.run_cells`): connect_s, first_cell_s, overhead_s
    cluster_timings: dict[str, float] = field(default_factory=dict)

    def rerun_lines(self) -> list[str]:
        """The reasons of :attr:`rerun`, one line per (reason, task/model/method) group with a count."""
        from bench.harness.identity import summary_lines

        return summary_lines(self.rerun)


def zoo_weights_hash(name: str) -> str | None:
    """The weights hash a zoo model's records carry, read from its shipped metadata without
    loading the weights (kept on disk: :mod:`bench.answers` stamps the metadata files); ``None``
    for models outside the zoo (``hf:`` folders, test models)."""
    if MODELS.source_of(name) is not None:
        return None
    try:
        entry = MODELS.entry(name)
    except (BenchError, KeyError):
        return None
    if not entry.meta.get("zoo"):
        return None
    from models.zoo import WEIGHTS_DIR

    meta = WEIGHTS_DIR / f"{name}.json"
    if not meta.exists():
        raise BenchError(f"zoo weights for {name!r} are missing; run `bench zoo train {name}`")

    def compute() -> str:
        from models.zoo.io import records_hash  # (imports torch)

        return records_hash(json.loads(meta.read_text()))

    return answers.remember("zoo-weights", [name, str(WEIGHTS_DIR)], compute, keep=WEIGHTS_DIR.parent.parent.parent
                            == answers.PROJECT_ROOT)


def _stored_identities(store: Store, seconds: dict[tuple[str, str, str, str], float] | None = None
                       ) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """Successful stored cells' ids -> (the weights hash, the fingerprint) their record holds
    (fingerprint None for a record made before fingerprints were stored). ``seconds``, when
    given, receives each stored (task, method, model, profile)'s largest ``run_s`` (any seed or
    version: what a re-run will roughly cost)."""
    out: dict[str, tuple[str, dict[str, Any] | None]] = {}
    for rec in store.records(status="ok"):
        fp = rec.provenance.get("fingerprint") if isinstance(rec.provenance, dict) else None
        out[rec.key.id] = (str(rec.model_hash), fp if isinstance(fp, dict) else None)
        if seconds is not None and isinstance(rec.timings, dict) and "run_s" in rec.timings:
            k = (rec.key.task, rec.key.method, rec.key.model, rec.key.profile)
            seconds[k] = max(seconds.get(k, 0.0), float(rec.timings["run_s"]))
    return out


# a cell's relative cost when the store has never timed it: by family (the zoo's ratios, one
# default quick grid), the references at a third (they only score)
FAMILY_COST = {"contrastive": 1.0, "generative": 4.0, "diffusion": 20.0}


def order_cells(todo: Sequence[Cell], seconds: Mapping[tuple[str, str, str, str], float]) -> list[Cell]:
    """The order in which a grid runs its cells: first the (task, model) table that is cheapest
    to complete, so a whole table lands early; then the other tables, the costliest first and
    each one's cells longest first, so the last cells of a pool are short ones (longest-
    processing-time order bounds the makespan) and a table's cells run together (a worker
    reuses what they share: the model, the unedited model's outputs, the samples). Costs are the
    store's earlier ``run_s`` for the same cell (any seed) where it has one, else a family
    estimate; ties keep the plan's order, so the order is deterministic. The order changes no
    figure: every cell is seeded on its own."""
    if len(todo) < 2:
        return list(todo)

    def cost(c: Cell) -> float:
        k = (c.task, c.method, canonical_model(c.model), "quick" if c.quick else "full")
        if k in seconds:
            return seconds[k]
        fam = model_family(c.model) if MODELS.source_of(c.model) is None else None
        base = FAMILY_COST.get(fam or "", 4.0) * (1.0 if c.quick else 4.0)
        return base / 3 if _is_reference(c.method) else base

    costs = {c: cost(c) for c in todo}
    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in todo:
        groups.setdefault((c.task, c.model), []).append(c)
    total = {g: sum(costs[c] for c in cells) for g, cells in groups.items()}
    first = min(groups, key=lambda g: total[g])
    out = sorted(groups.pop(first), key=lambda c: costs[c])
    for g in sorted(groups, key=lambda g: -total[g]):
        out += sorted(groups[g], key=lambda c: -costs[c])
    return out


# ------------------------------------------------------------- interrupts
class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM asked a grid to stop (a KeyboardInterrupt, so code that stops on Ctrl-C
    stops on either); ``exit_code`` is the shell's ``128 + signal``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_word(signum: int) -> str:
    return "terminated" if signum == signal.SIGTERM else "interrupted"


_LAST_SIGNAL: list[int] = []  # the last SIGINT/SIGTERM a grid received (for the exit code)


def last_signal() -> int | None:
    return _LAST_SIGNAL[-1] if _LAST_SIGNAL else None


class _Signals:
    """While a grid runs in the main thread: the first SIGINT or SIGTERM raises :class:`Interrupted`
    (held back while a record is being written, so a stored cell is whole); the second stops
    the process at once: the workers are killed and it exits ``128 + signal`` without cleanup."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.pending: int | None = None
        self.critical = 0
        self.workers: list[Any] = []  # processes to kill on the second signal
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.getsignal(s)
                signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            _kill(self.workers)
            try:
                sys.stderr.write(f"\n{signal_word(signum)} again: stopping now; completed cells are stored\n")
                sys.stderr.flush()
            finally:
                os._exit(128 + signum)
        self.received = signum
        _LAST_SIGNAL.append(signum)
        if self.critical:
            self.pending = signum
            return
        raise Interrupted(signum)

    def write(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` with the first signal held back until it returns."""
        self.critical += 1
        try:
            return fn()
        finally:
            self.critical -= 1
            if not self.critical and self.pending is not None:
                signum, self.pending = self.pending, None
                raise Interrupted(signum)


def _kill(procs: Iterable[Any]) -> None:
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except (OSError, AttributeError, TypeError):
            pass


def _workers(executor: Executor | None) -> list[Any]:
    """The worker processes of a ProcessPoolExecutor (its ``_processes``; empty otherwise)."""
    procs = getattr(executor, "_processes", None) or {}
    return [p for p in list(procs.values()) if p is not None]


def stop_workers(executor: Executor, grace: float = 3.0) -> None:
    """Cancel what is queued, terminate the running workers (SIGTERM, then SIGKILL after
    ``grace`` seconds) and shut the executor down without waiting for its cells."""
    procs = _workers(executor)
    for p in procs:
        try:
            p.terminate()
        except (OSError, AttributeError):
            pass
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(1.0)
    executor.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------ workers
def _die_with_parent(parent: int) -> None:
    """End this worker when its parent dies: ``PR_SET_PDEATHSIG`` on Linux (the kernel sends
    SIGKILL), and everywhere a daemon thread that polls :func:`os.getppid` twice a second (an
    orphan is adopted by another process)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="mmi-bench-parent-watch", daemon=True).start()


# one thread for every BLAS/OpenMP runtime of a worker process (read when each library loads)
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def one_thread_per_worker() -> None:
    """Make this worker process compute on one core: torch's intra-op threads, and every BLAS and
    OpenMP runtime, those already loaded (numpy's OpenBLAS, through threadpoolctl) and those a cell
    loads later (the environment). Workers of a grid run side by side, one per core; a pool worker
    that left numpy's and scipy's BLAS at the machine's core count oversubscribed the CPU (on the
    2-core CPU, 12 localization cells took 14.3 s with ``--jobs 2`` against 11.3 s at one thread)."""
    os.environ.update(ONE_THREAD_ENV)
    import torch

    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # (scikit-learn's dependency; without it, the environment covers later loads)
        return
    threadpool_limits(limits=1)


def _pool_init(parent: int | None = None) -> None:
    # the parent handles Ctrl-C (sent to the whole process group) and stops the workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent is not None:
        _die_with_parent(parent)
    one_thread_per_worker()
    atexit.register(_exit_now)


def _exit_now() -> None:
    """A pool worker's last step: leave without the interpreter's shutdown. Registered with
    :mod:`atexit` by :func:`_pool_init`, so it runs after multiprocessing has finished the worker
    (its result queue flushed and joined, its streams flushed). Freeing every module (torch,
    transformers, the models a worker kept) one object at a time took ~1.4 s per pool's shutdown on
    the 2-core CPU, and 0.08 s without; a worker forked by multiprocessing ends the same way.
    Only ever in a child process: a main process (a test calling :func:`_pool_init`) keeps its exit."""
    import multiprocessing

    if multiprocessing.parent_process() is None:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(0)


def default_executor(jobs: int) -> Executor | None:
    """A pool of ``jobs`` worker processes (None for one: cells run in this process). Workers
    ignore SIGINT (the parent stops them) and end when the parent dies."""
    if jobs <= 1:
        return None
    import multiprocessing as mp

    return ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_pool_init,
                               initargs=(os.getpid(),))


def run_grid(
    cells: Sequence[Cell],
    store: Store,
    executor: Executor | None = None,
    force: bool = False,
    progress: bool = True,
    on_record: Callable[[RunRecord], None] | None = None,
    jobs: int | None = None,
    on_table: Callable[[str, str], None] | None = None,
    cluster: ClusterSpec | None = None,
) -> GridResult:
    """Run the cells not yet stored; write each record as soon as its cell completes.

    ``cluster``: run the cells on a Dask cluster instead (:mod:`bench.harness.cluster`): workers
    return records and this process alone writes them, exactly as with the process pool; a cell
    whose worker died more than the allowed times is stored as a failed record.

    ``executor``: where cells run (None: in this process), or ``jobs``: worker processes started
    here for the cells left to run (never more than those cells; none when every cell is stored)
    and stopped before returning. Cells go to the workers one at a time as workers free up, and
    a cell another process stored meanwhile is not run again.

    ``on_table(task, model)`` is called when the last cell of a (task, model) table that had
    cells to run has finished (cells are ordered by :func:`order_cells`, so the cheapest table
    lands first): a caller can show that table while the grid goes on.

    Interrupts (main thread only): the first SIGINT or SIGTERM stops the grid: queued cells are
    cancelled, running workers terminated, every completed cell stays stored, and the result
    says :attr:`GridResult.interrupted` (the signal). A second one exits the process at once.
    """
    out = GridResult()
    seconds: dict[tuple[str, str, str, str], float] = {}
    stored = _stored_identities(store, seconds)
    if force:
        stored = {}
    todo = []
    replace: set[str] = set()  # ids whose stored record is stale: replaced by the re-run
    current: dict[str, str | None] = {}  # model -> its zoo weights hash, read once per model
    # (task, method, model) -> its fingerprint, each computed once (and kept: bench.answers)
    fps = _fingerprints(cells)
    fp_of = {c: fps[_triple(c)] for c in cells}
    keys = {c: cell_key(c) for c in cells}
    for c in cells:
        cid = keys[c].id
        if cid in stored:
            model_hash, old_fp = stored[cid]
            if c.model not in current:
                current[c.model] = zoo_weights_hash(c.model)
            reasons = []
            if current[c.model] not in (None, model_hash):
                out.retrained.append(c)
                reasons.append("zoo weights were retrained since the stored record")
            if old_fp:  # (none: a record from before fingerprints; the weights check alone, as before)
                from bench.harness.identity import differences

                reasons += differences(old_fp, fp_of[c], skip=("model_weights",) if reasons else ())
            if not reasons:
                out.already.append(c)
                continue
            replace.add(cid)
            out.rerun[c.label] = reasons
        todo.append(c)
    if not todo:
        return out
    if cluster is not None:  # a local cluster's workers start importing now, while this process goes on
        from bench.harness.cluster import prestart

        prestart(cluster)
    todo = order_cells(todo, seconds)
    left: dict[tuple[str, str], int] = {}
    for c in todo:
        left[(c.task, c.model)] = left.get((c.task, c.model), 0) + 1

    def landed(c: Cell) -> None:
        left[(c.task, c.model)] -= 1
        if on_table and not left[(c.task, c.model)]:
            on_table(c.task, c.model)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(cells), initial=len(out.already), unit="cell", disable=not progress,
               dynamic_ncols=True, desc="cells")
    sig = _Signals()

    def stored_meanwhile(c: Cell) -> bool:
        """Another process stored this cell since the grid started: count it as stored."""
        if force or keys[c].id in replace or not store.has_ok(keys[c]):
            return False
        out.already.append(c)
        bar.update(1)
        landed(c)
        return True

    def finish(c: Cell, rec: RunRecord) -> None:
        def commit() -> None:  # stored and counted together: a held-back signal fires after both
            store.put(rec, force=force or rec.key.id in replace)
            out.ran.append(rec)

        sig.write(commit)
        bar.update(1)
        if on_record:
            on_record(rec)
        landed(c)

    own = executor is None and jobs is not None and min(jobs, len(todo)) > 1
    done = False
    with sig:  # (also while workers are stopped: a second signal then exits at once)
        try:
            if own:
                executor = default_executor(min(jobs or 1, len(todo)))
            if cluster is not None:
                from bench.harness.cluster import connect, run_cells

                gpu = any(c.runtime.device.startswith("cuda") for c in todo)
                with connect(cluster, gpu=gpu) as session:
                    out.cluster_timings = run_cells(
                        session, todo, lambda c: (c, 1, fp_of[c]), run_cell, stored_meanwhile, finish,
                        lambda c, err: lost_record(c, fp_of[c], err), bar, {"GPU": 1} if gpu else None)
            elif executor is None:
                for c in todo:
                    if stored_meanwhile(c):
                        continue
                    bar.set_postfix_str(c.label)
                    finish(c, run_cell(c, fingerprint=fp_of[c]))
            else:
                _run_pool(executor, todo, fp_of, stored_meanwhile, finish, bar, sig)
            done = True
        except Interrupted as e:
            out.interrupted = e.signum
        except KeyboardInterrupt:  # raised before the handlers were in place, or outside the main thread
            out.interrupted = int(signal.SIGINT)
        finally:
            if executor is not None and (own or not done):
                if done:
                    executor.shutdown(wait=True, cancel_futures=True)
                else:  # interrupted, or an error on the way: running cells are not waited for
                    stop_workers(executor)
            bar.close()
    return out


def _run_pool(executor: Executor, todo: list[Cell], fp_of: dict[Cell, dict[str, str]],
              stored_meanwhile: Callable[[Cell], bool], finish: Callable[[Cell, RunRecord], None], bar: Any,
              sig: _Signals) -> None:
    """Feed ``todo`` to ``executor``, as many cells in flight as it has workers."""
    width = max(1, int(getattr(executor, "_max_workers", 1) or 1))
    queue = list(reversed(todo))
    running: dict[Future[RunRecord], Cell] = {}

    def top_up() -> None:
        while queue and len(running) < width:
            c = queue.pop()
            if not stored_meanwhile(c):
                running[executor.submit(run_cell, c, 1, fp_of[c])] = c
        sig.workers = _workers(executor)

    top_up()
    while running:
        fut = next(as_completed(running))
        c = running.pop(fut)
        bar.set_postfix_str(c.label)
        finish(c, fut.result())
        top_up()


def check_jobs(jobs: int | None) -> int:
    """``jobs`` checked: a positive integer (one line otherwise), at most the cores (a one-line
    warning when capped); the default is :func:`cpu_jobs`."""
    if jobs is None:
        return cpu_jobs()
    if jobs < 1:
        raise BenchError(f"--jobs must be a positive integer (worker processes), got {jobs}")
    cores = os.cpu_count() or 1
    if jobs > cores:
        print(f"warning: --jobs {jobs} is more than the {cores} cores of this machine; using {cores}",
              file=sys.stderr)
        return cores
    return jobs


def cpu_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))
