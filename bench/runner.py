"""Plan and run the grid: (task × method × model × seed) cells, checkpointed per cell.

The runner takes any ``concurrent.futures.Executor``; ``jobs=1`` runs in-process.
Every completed cell is written to the store at once, so an interrupted run
resumes where it stopped; cells already stored are skipped unless ``force``, or
unless what they depend on changed since: the zoo weights they were obtained with were
retrained, or the record's fingerprint (:mod:`bench.identity`: the task's, method's and model's
code, the model's weights by content, the numeric packages' versions) differs from the current
one. Those are re-run and replaced, and :attr:`GridResult.rerun` says why, so a store never
mixes old and new code or weights silently. ``hf:`` folders are named by their absolute path
in cells and keys, so two folders named ``clip`` never share results.
"""

from __future__ import annotations

import json
import os
import resource
import time
import traceback
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from bench.errors import BenchError
from bench.identity import canonical_model
from bench.method import Method
from bench.model import Model
from bench.records import CellKey, RunRecord, config_hash, environment
from bench.registry import METHODS, MODELS, TASKS
from bench.store import Store
from bench.task import Task

ALL = "all"


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """How a cell runs, not what it measures: recorded in every RunRecord, not part of its key
    (a re-run under other settings needs ``--force``, or another store, to be compared).

    ``dtype`` other than float32 runs the task under ``torch.autocast`` at that precision
    (weights stay float32; matmuls and convolutions run reduced), so every method and site
    works unchanged. ``batch_size`` overrides the model's default (examples per forward pass).
    ``device``: only ``cpu`` for now (see :func:`check_runtime`).
    """

    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int | None = None


def check_runtime(rt: Runtime) -> Runtime:
    """One-line errors for settings this build cannot honour."""
    if rt.dtype not in DTYPES:
        raise BenchError(f"unknown dtype {rt.dtype!r} (known: {', '.join(DTYPES)})")
    if rt.batch_size is not None and rt.batch_size < 1:
        raise BenchError(f"the batch size must be a positive integer, got {rt.batch_size}")
    if rt.device != "cpu":
        # tasks and methods build their inputs on the CPU; moving them is not wired and could not
        # be tested here, so a GPU run would fail midway instead of at the start
        raise BenchError(f"device {rt.device!r} is not supported yet: cells run on the CPU "
                         "(use --jobs to run several at once)")
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
_MODEL_CACHE: dict[str, Model] = {}
_HF_DIGEST: dict[str, str] = {}  # hf: model -> the folder digest its cached model was loaded from
_DEFAULT_BATCH: dict[str, int] = {}


def load_model(name: str) -> Model:
    """Load (once per process) a registered model; an ``hf:`` folder re-saved since it was loaded
    is loaded again."""
    from models.hf_loader import is_hf, load_hf

    if is_hf(name):
        from bench.identity import hf_folder_digest

        try:
            digest = hf_folder_digest(Path(canonical_model(name)[3:]))
        except OSError:
            digest = ""
        if _HF_DIGEST.get(name, digest) != digest:
            _MODEL_CACHE.pop(name, None)
            _DEFAULT_BATCH.pop(name, None)
        _HF_DIGEST[name] = digest
    if name not in _MODEL_CACHE:
        if is_hf(name):
            model = load_hf(name)
        else:
            factory = MODELS.get(name)
            model = factory(name) if _takes_name(factory) else factory()
        _MODEL_CACHE[name] = model
    return _MODEL_CACHE[name]


def _takes_name(fn: Callable[..., Any]) -> bool:
    import inspect

    try:
        return len(inspect.signature(fn).parameters) > 0
    except (TypeError, ValueError):
        return False


def make_task(name: str, data: Sequence[tuple[str, str]] = ()) -> Task:
    """The registered task ``name``, reading the ``(kind, path)`` data files instead of the world."""
    task = TASKS.get(name)()
    return task.with_data(dict(data)) if data else task


def check_data(data: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``(kind, path)`` pairs checked (known kind, one file per kind) with absolute paths, by kind."""
    from bench.realdata import kind

    out: dict[str, str] = {}
    for k, path in data:
        kind(k)  # "did you mean"
        if k in out:
            raise BenchError(f"data kind {k!r} is given twice (one file per kind)")
        out[k] = str(Path(path).expanduser().resolve())
    return tuple(sorted(out.items()))


def make_method(name: str, overrides: Sequence[tuple[str, Any]] = ()) -> Method:
    return METHODS.get(name)(**dict(overrides))


def _expand(values: Sequence[str] | None, known: list[str], kind: str) -> list[str]:
    if not values or ALL in values:
        return list(known)
    out = []
    for v in values:
        if kind == "model" and v.startswith("hf:"):  # a checkpoint folder, by its absolute path
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


def plan(
    tasks: Sequence[str] | None,
    methods: Sequence[str] | None,
    models: Sequence[str] | None,
    seeds: Sequence[Any],
    quick: bool = False,
    method_overrides: dict[str, Any] | None = None,
    runtime: Runtime = Runtime(),
    data: Sequence[tuple[str, str]] = (),
) -> Plan:
    """Expand the grid and keep the compatible cells; the rest are listed with the reason.

    ``data``: ``(kind, path)`` files read instead of the world; each task gets the kinds it reads
    (:attr:`Task.data_kinds`) and a task that reads none of them is skipped, never run on the world.
    """
    check_runtime(runtime)
    data = check_data(data)
    task_names = _expand(tasks, TASKS.names(), "task")
    method_names = _expand(methods, METHODS.names(), "method")
    model_names = _expand(models, MODELS.names(), "model")
    seed_list = validate_seeds(seeds)
    overrides = tuple(sorted((method_overrides or {}).items()))
    p = Plan()
    read: set[str] = set()
    for t in task_names:
        task = make_task(t)
        task_data = tuple((k, path) for k, path in data if k in task.data_kinds)
        read.update(k for k, _ in task_data)
        if data and not task_data:
            p.skipped.append((f"{t}/*/*", task.data_mismatch([k for k, _ in data]) or ""))
            continue
        if task_data:
            task = task.with_data(dict(task_data))
        for mo in model_names:
            if mo.startswith("hf:"):
                from models.hf_loader import family_of

                family = family_of(mo)
            else:
                family = MODELS.entry(mo).meta.get("family")
            if family is not None and family not in task.spec.families:
                p.skipped.append((f"{t}/{mo}/*", f"task {t!r} does not support {family} models like {mo!r}"))
                continue
            try:
                model = load_model(mo)
            except BenchError as e:
                p.skipped.append((f"{t}/{mo}/*", str(e)))
                continue
            reason = task.supports(model)
            if reason:
                p.skipped.append((f"{t}/{mo}/*", reason))
                continue
            for me in method_names:
                cls = METHODS.get(me)
                if task.spec.capability not in cls.capabilities:
                    p.skipped.append((f"{t}/{mo}/{me}", f"method {me!r} has no {task.spec.capability!r} capability "
                                      f"(needed by task {t!r})"))
                    p.lacking_capability.add(f"{t}/{mo}/{me}")
                    continue
                method = make_method(me, overrides if me not in ("random", "oracle") else ())
                reason = method.supports(model)
                if reason:
                    p.skipped.append((f"{t}/{mo}/{me}", reason))
                    continue
                for s in seed_list:
                    p.cells.append(Cell(t, me, mo, s, quick, overrides if not cls.reference else (), runtime,
                                        task_data))
    for k, path in data:
        if k not in read:  # a file nothing reads is most likely a mistake: say so
            p.skipped.append((f"--data {k}={path}", f"no task of the grid reads {k} data"))
    return p


# ---------------------------------------------------------------- one cell
def cell_key(cell: Cell) -> CellKey:
    task = make_task(cell.task, cell.data)
    method = make_method(cell.method, cell.method_overrides)
    return cell.key(task.spec.version, method.config_dict())


def cell_fingerprint(cell: Cell) -> dict[str, str]:
    """The cell's current fingerprint (:func:`bench.identity.fingerprint`)."""
    from bench.identity import fingerprint

    return fingerprint(cell.task, cell.method, canonical_model(cell.model))


def run_cell(cell: Cell, threads: int = 1, fingerprint: dict[str, str] | None = None) -> RunRecord:
    """Run one cell in this process and return its record (failures become failed records).
    ``fingerprint``: the cell's, when the caller computed it already (else computed here)."""
    torch.set_num_threads(threads)  # fixed per cell so results do not depend on --jobs
    t0 = time.perf_counter()
    task = make_task(cell.task, cell.data)
    method = make_method(cell.method, cell.method_overrides)
    key = cell.key(task.spec.version, method.config_dict())
    record = RunRecord(key=key, status="failed", main_score=task.spec.main_score,
                       method_config=method.config_dict(), provenance=dict(environment()))
    try:
        record.provenance["fingerprint"] = dict(fingerprint or cell_fingerprint(cell))
        model = load_model(cell.model)
        t_load = time.perf_counter()
        record.model_hash = model.weights_hash
        rt = cell.runtime
        # the model object is shared by the cells of a process: set (or restore) its batch size per cell
        default_batch = _DEFAULT_BATCH.setdefault(cell.model, model.batch_size)
        model.batch_size = rt.batch_size or default_batch
        model.dtype, model.device = rt.dtype, rt.device
        record.batch_size, record.dtype, record.device = model.batch_size, rt.dtype, rt.device
        torch.manual_seed(cell.seed)
        with torch.autocast(rt.device, dtype=DTYPES[rt.dtype], enabled=rt.dtype != "float32"):
            result = task.run(model, method, cell.seed, quick=cell.quick)
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
    if method.diagnostics:  # what the method measured about itself (e.g. SAE reconstruction)
        record.provenance["method_diagnostics"] = dict(method.diagnostics)
    if getattr(method, "fitted", None):
        record.provenance["fitted"] = dict(method.fitted)
    if is_dataclass(getattr(task, "config", None)):
        record.provenance["task_config"] = asdict(task.config)
    if task.data:  # the files read instead of the world (their digests are in the task version too)
        record.provenance["data"] = [asdict(d) for d in task.data_sources]
    record.peak_memory_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return record


# ------------------------------------------------------------------- grid
@dataclass
class GridResult:
    ran: list[RunRecord] = field(default_factory=list)
    already: list[Cell] = field(default_factory=list)
    retrained: list[Cell] = field(default_factory=list)  # stored, but from other zoo weights: re-run
    # stored cells re-run and replaced because what they depend on changed: label -> reasons
    # (the retrained ones included), e.g. ["method code changed since the stored record"]
    rerun: dict[str, list[str]] = field(default_factory=dict)
    interrupted: bool = False

    def rerun_lines(self) -> list[str]:
        """The reasons of :attr:`rerun`, one line per (reason, task/model/method) group with a count."""
        from bench.identity import summary_lines

        return summary_lines(self.rerun)


def zoo_weights_hash(name: str) -> str | None:
    """The weights hash a zoo model's records carry, read from its shipped metadata without
    loading the weights; ``None`` for models outside the zoo (``hf:`` folders, test models)."""
    if name.startswith("hf:"):
        return None
    try:
        entry = MODELS.entry(name)
    except (BenchError, KeyError):
        return None
    if not entry.target.startswith("models.zoo_models:"):
        return None
    from models.zoo import WEIGHTS_DIR

    meta = WEIGHTS_DIR / f"{name}.json"
    if not meta.exists():
        raise BenchError(f"zoo weights for {name!r} are missing; run `bench zoo train {name}`")
    from models.zoo.io import records_hash

    return records_hash(json.loads(meta.read_text()))


def _stored_identities(store: Store) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """Successful stored cells' ids -> (the weights hash, the fingerprint) their record holds
    (fingerprint None for a record made before fingerprints were stored)."""
    out: dict[str, tuple[str, dict[str, Any] | None]] = {}
    for rec in store.records(status="ok"):
        fp = rec.provenance.get("fingerprint") if isinstance(rec.provenance, dict) else None
        out[rec.key.id] = (str(rec.model_hash), fp if isinstance(fp, dict) else None)
    return out


def _pool_init() -> None:
    torch.set_num_threads(1)


def default_executor(jobs: int) -> Executor | None:
    if jobs <= 1:
        return None
    import multiprocessing as mp

    return ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_pool_init)


def run_grid(
    cells: Sequence[Cell],
    store: Store,
    executor: Executor | None = None,
    force: bool = False,
    progress: bool = True,
    on_record: Callable[[RunRecord], None] | None = None,
) -> GridResult:
    """Run the cells not yet stored; write each record as soon as its cell completes."""
    from tqdm.auto import tqdm

    out = GridResult()
    stored = {} if force else _stored_identities(store)
    todo = []
    replace: set[str] = set()  # ids whose stored record is stale: replaced by the re-run
    current: dict[str, str | None] = {}  # model -> its zoo weights hash, read once per model
    from bench.identity import fingerprints

    # (task, method, model) -> its fingerprint, each ingredient computed once per grid
    fps = fingerprints(dict.fromkeys((c.task, c.method, canonical_model(c.model)) for c in cells))
    fp_of = {c: fps[(c.task, c.method, canonical_model(c.model))] for c in cells}
    for c in cells:
        cid = cell_key(c).id
        if cid in stored:
            model_hash, old_fp = stored[cid]
            if c.model not in current:
                current[c.model] = zoo_weights_hash(c.model)
            reasons = []
            if current[c.model] not in (None, model_hash):
                out.retrained.append(c)
                reasons.append("zoo weights were retrained since the stored record")
            if old_fp:  # (none: a record from before fingerprints; the weights check alone, as before)
                from bench.identity import differences

                reasons += differences(old_fp, fp_of[c], skip=("model_weights",) if reasons else ())
            if not reasons:
                out.already.append(c)
                continue
            replace.add(cid)
            out.rerun[c.label] = reasons
        todo.append(c)
    bar = tqdm(total=len(cells), initial=len(out.already), unit="cell", disable=not progress,
               dynamic_ncols=True, desc="cells")

    def finish(rec: RunRecord) -> None:
        store.put(rec, force=force or rec.key.id in replace)
        out.ran.append(rec)
        bar.update(1)
        if on_record:
            on_record(rec)

    try:
        if executor is None:
            for c in todo:
                bar.set_postfix_str(c.label)
                finish(run_cell(c, fingerprint=fp_of[c]))
        else:
            futures: dict[Future[RunRecord], Cell] = {executor.submit(run_cell, c, 1, fp_of[c]): c for c in todo}
            for fut in as_completed(futures):
                bar.set_postfix_str(futures[fut].label)
                finish(fut.result())
    except KeyboardInterrupt:
        out.interrupted = True
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
    finally:
        bar.close()
    return out


def cpu_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))
