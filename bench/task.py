"""The task contract: a versioned spec, examples with ground truth, scoring.

**Real data.** A task builds its examples from the procedural world unless it is
given data files: a task that can read some kinds of :mod:`bench.realdata` files
declares them in :attr:`Task.data_kinds`, and :meth:`Task.with_data` returns a copy
that reads those files instead (``bench evaluate --data KIND=PATH``). The copy's
``spec.version`` is ``<version>+<kind>-<digest8>`` (one suffix per kind, kinds in
name order), ``digest8`` the first 8 hex digits of :attr:`DataSource.digest`: the
store and the scorer key on the task version, so results on different files, or
on the world, are never mixed.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from collections import OrderedDict
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Hashable, Literal, Mapping, Sequence, Union

import numpy as np

from bench.errors import BenchError
from bench.method import Method
from bench.model import Model
from bench.samples import Rows, check_rows, ones

Direction = Literal["higher", "lower", "none"]


@dataclass(frozen=True)
class MetricSpec:
    """A metric's direction and whether it gets a random/oracle-normalised score.

    ``normalise=True`` declares that the task's ``oracle`` reference attains the metric's best
    possible value *by construction* (it answers from the ground truth: a one-hot site score,
    the true label, a perfect edit), so ``(m − random) / (oracle − random)`` runs from chance (0)
    to a ceiling no method can pass (1). Metrics whose oracle is no ceiling (perturbation
    curves, where the mask is not the optimal deletion order; the model's own context
    figures) declare ``normalise=False`` and are shown raw. ``best`` is that attainable value
    (1.0 for a rate or an AUC, 0.0 for a false-positive rate); a test checks the oracle's rows
    reach it.
    """

    name: str
    direction: Direction
    description: str
    normalise: bool = True
    best: float | None = None

    def __post_init__(self) -> None:
        if self.normalise and self.best is None and self.direction != "none":
            object.__setattr__(self, "best", 1.0 if self.direction == "higher" else 0.0)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    version: str
    families: frozenset[str]
    capability: str
    main_score: str
    metrics: tuple[MetricSpec, ...]
    splits: tuple[str, ...] = ("fit", "dev", "test")
    # metrics ranked in their own right beside the main score, when a task measures against two
    # ground truths (localization: storage and mediation): tables show their rank groups and leaders too
    also_ranked: tuple[str, ...] = ()

    def metric(self, name: str) -> MetricSpec:
        """The spec of metric ``name``; a spec whose name holds ``*`` covers every metric matching
        it as a glob (metrics named after the data, e.g. ``group_*`` for a file's groups)."""
        for m in self.metrics:
            if m.name == name:
                return m
        for m in self.metrics:
            if "*" in m.name and fnmatch.fnmatchcase(name, m.name):
                return m
        raise KeyError(name)


@dataclass
class CellResult:
    """What one (task, method, model, seed) cell produced: its per-example rows
    (:mod:`bench.samples`) and the metrics :meth:`Task.metrics_from_rows` computes from them."""

    metrics: dict[str, float]
    example_hashes: list[str] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)
    rows: Rows | None = None


class ProcessMemo:
    """What is the same for every method of a cell (the model's own outputs, what the unedited model
    answers, its samples): built once per worker process and reused by the cells that follow.
    Keys must name everything the value depends on (model name and weights hash, seed, profile,
    task config); the numerics the cell runs under (:func:`numerics`) are added here, so a
    bfloat16 cell never reuses a float32 one's value. Beyond ``size`` entries the least recently
    used go."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        key = (key, numerics())
        if key in self._values:
            self._values.move_to_end(key)
            return self._values[key]
        value = build()
        self._values[key] = value
        while len(self._values) > self.size:
            self._values.popitem(last=False)
        return value


def numerics() -> tuple[Any, ...]:
    """What a computed value depends on beyond its inputs and code: the autocast precision the cell
    runs under, torch's thread count (a reduction's order) and the CPU kernels torch dispatches to."""
    import torch

    amp = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    return (str(amp), torch.get_num_threads(), torch.backends.cpu.get_cpu_capability())


def shared_work(task: "Task", model: Model, kind: str, key: Any,
                build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Work that every method's cell of a task would otherwise redo (the edits behind
    localization's "does localization inform editing", reference passes), kept on disk
    (:func:`bench.fitting.cached`, kind ``kind``) so the cells of a grid, in any worker or
    run, compute it once. The key is a content hash of ``key`` (which must name the seed,
    the profile's sizes and the config) and of everything else the value depends on: the
    task's and the model wrapper's code (their module closures), the model's name and
    weights hash, the numeric packages' versions and :func:`numerics`. ``build`` returns
    tensors; the values come back bit for bit (``MMI_BENCH_CACHE=off`` disables the cache)."""
    from bench.fitting import cached, content_hash
    from bench.identity import code_digest, package_versions

    digest = content_hash(kind, key, code_digest(type(task).__module__), code_digest(type(model).__module__),
                          model.name, model.weights_hash, package_versions(), numerics())
    return cached(kind, digest, build)


PathLike = Union[str, Path]


@dataclass(frozen=True)
class DataSource:
    """One real-data file a task reads instead of the world, as recorded in a run's provenance.

    ``digest`` is the sha256 (hex) of the sha256 digests of the annotation file's bytes and
    then of every image and mask file its records name (each once, in record order; see
    :func:`bench.realdata.fingerprint`): any change to the annotations or to an image changes it.
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


# (kind, path, mtime, size) -> loaded: make_task runs several times per cell (plan, key, run), the
# files are read and hashed once per process. An image replaced in place without touching the
# annotation file goes unnoticed until the next process.
_LOADED: dict[tuple[str, str, int, int], LoadedData] = {}


def load_data(kind: str, path: PathLike) -> LoadedData:
    """Load and fingerprint a data file of ``kind`` (one-line BenchErrors from the loaders)."""
    from bench import realdata

    realdata.kind(kind)  # "did you mean" before any file is touched
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
        key = (kind, str(p), st.st_mtime_ns, st.st_size)
    except OSError:
        key = None  # the loader says what is wrong, in its words
    if key is not None and key in _LOADED:
        return _LOADED[key]
    records = realdata.load(kind, p)
    digest, per_file = realdata.fingerprint(p, records)
    loaded = LoadedData(DataSource(kind, str(p), digest, len(records), len(per_file)), tuple(records), per_file)
    if key is not None:
        _LOADED[key] = loaded
    return loaded


def input_size(model: Model) -> int:
    """The side in pixels of the square images ``model`` reads: its ``image_size``, else its image
    token grid times its patch size (generative models). Real data is resized to it."""
    size = getattr(model, "image_size", None)
    if isinstance(size, int):
        return size
    layout = model.token_layout()
    if layout is None:
        raise BenchError(f"model {model.name!r} declares no image size or image token layout")
    return layout.grid[0] * layout.patch_size


def example_hash(*parts: str) -> str:
    """16 hex digits naming one example by its parts (file digests, question, object, ...)."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class Task(ABC):
    """A versioned task. Its metrics are one function of its per-example rows
    (:meth:`metrics_from_rows`), used for the stored record and for every bootstrap resample;
    :attr:`strata` names the row columns (constant within an example) whose proportions every
    resample keeps, e.g. the item kind when a metric is a mean over kinds."""

    spec: ClassVar[TaskSpec]
    strata: ClassVar[tuple[str, ...]] = ()
    # The real-data kinds (bench.realdata) the task can read instead of the world; () = world only.
    data_kinds: ClassVar[tuple[str, ...]] = ()
    # Set on the copies :meth:`with_data` returns: what the task reads, by kind.
    data: Mapping[str, LoadedData] = MappingProxyType({})
    # The task's settings, where its ``__init__`` takes any (every built-in task sets a frozen
    # dataclass, stored with the record as ``task_config``); absent otherwise, so read it with
    # ``getattr(task, "config", None)``.
    config: Any

    @property
    def data_sources(self) -> list[DataSource]:
        """The data files this task reads (empty: the world), kinds in name order."""
        return [self.data[k].source for k in sorted(self.data)]

    def data_mismatch(self, kinds: Sequence[str]) -> str | None:
        """Why this task cannot read data of these kinds, or None when it reads them all."""
        unread = [k for k in kinds if k not in self.data_kinds]
        if not unread:
            return None
        reads = (f"reads {' or '.join(self.data_kinds)} data" if self.data_kinds
                 else "reads no data files (it builds its examples from the world)")
        return f"task {self.spec.name!r} {reads}, not {', '.join(unread)}"

    def with_data(self, files: Mapping[str, PathLike]) -> "Task":
        """A copy of this task that reads ``files`` (kind -> annotation file) instead of the world.

        Every kind must be one of :attr:`data_kinds`; files are loaded and validated now
        (one-line BenchErrors naming the file), then :meth:`check_data` sees them. The copy's
        ``spec.version`` carries each file's kind and digest (see the module docstring).
        """
        if not files:
            return self
        reason = self.data_mismatch(sorted(files))
        if reason:
            raise BenchError(reason)
        new = copy.copy(self)
        new.data = {k: load_data(k, files[k]) for k in sorted(files)}
        base = type(self).spec
        new.spec = dataclasses.replace(  # type: ignore[misc]  # an instance spec shadows the class's
            base, version=base.version + "".join(f"+{s.tag}" for s in new.data_sources))
        new.check_data()
        return new

    def check_data(self) -> None:
        """Raise a one-line BenchError when the loaded :attr:`data` cannot make this task's
        examples (e.g. no test split); called by :meth:`with_data`."""

    def supports(self, model: Model) -> str | None:
        if model.family not in self.spec.families:
            return (f"task {self.spec.name!r} supports {', '.join(sorted(self.spec.families))} models; "
                    f"{model.name!r} is {model.family}")
        return None

    def strata_of(self, rows: Rows) -> list[tuple[Any, ...]]:
        """Each row's stratum (constant within an example): the values of :attr:`strata`'s columns.
        A task whose strata depend on the row kind overrides it."""
        cols = [rows[c] if c in rows else None for c in self.strata]
        return [tuple(None if c is None else c[i] for c in cols) for i in range(len(rows["example"]))]

    def metrics_from_rows(self, rows: Rows, w_BN: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric ``[B]`` of the rows under ``B`` weightings ``w_BN`` (row multiplicities; see
        :mod:`bench.samples`). A function of the rows alone: no model, data file or config."""
        raise NotImplementedError(f"task {self.spec.name!r} does not compute its metrics from rows")

    def example_quality(self, rows: Rows) -> np.ndarray:
        """Per row, how well the method did on it (higher = better; NaN where a row says nothing
        about the method, e.g. context rows): what ``bench inspect`` sorts by to show a method's
        worst examples. The default: the main score's column when the rows carry one."""
        col = rows.get(self.spec.main_score)
        if col is None or col.dtype == object:
            raise BenchError(f"task {self.spec.name!r} does not say how to rank its examples")
        return np.asarray(col, dtype=np.float64)

    def metrics_of(self, rows: Rows) -> dict[str, float]:
        """The cell's metrics: :meth:`metrics_from_rows` under unit weights (what the record stores)."""
        check_rows(rows)
        return {k: float(v[0]) for k, v in self.metrics_from_rows(rows, ones(rows)).items()}

    def result(self, rows: Rows, artifacts: dict[str, Any] | None = None) -> CellResult:
        """A :class:`CellResult` whose metrics are computed from ``rows`` (example hashes: the
        distinct ``hash`` values in row order)."""
        return CellResult(self.metrics_of(rows), list(dict.fromkeys(rows["hash"].tolist())), artifacts or {}, rows)

    @abstractmethod
    def run(self, model: Model, method: Method, seed: int, quick: bool = False) -> CellResult:
        """Build examples for ``seed``, ask ``method`` (or the task's own reference
        for ``random``/``oracle``) through the task's capability, and score."""
