"""The task contract: a versioned spec, examples with ground truth, scoring.

**Real data.** A task builds its examples from the procedural world unless it is
given data files: a task that can read some kinds of :mod:`bench.kit.realdata` files
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
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Mapping, Sequence

import numpy as np

from bench.errors import BenchError
from bench.records import DataSource, LoadedData
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
    # The real-data kinds (bench.kit.realdata) the task can read instead of the world; () = world only.
    data_kinds: ClassVar[tuple[str, ...]] = ()
    # What the task scores against, ``{"zoo": ..., "real": ...}`` (a literal: `bench list tasks` reads it
    # without importing the task); empty when undeclared.
    ground_truth: ClassVar[dict[str, str]] = {}
    # Whether the task scores generated images with the model's judge (editing, attribution on
    # diffusion models): only then does ``--judge`` reach its cells (:meth:`with_judge`).
    reads_judge: ClassVar[bool] = False
    # Set on the copies :meth:`with_judge` returns: the judge's name and weights digest ("" = the model's own).
    judge: tuple[str, str] = ("", "")
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

    def with_data(self, data: Mapping[str, LoadedData]) -> "Task":
        """A copy of this task that reads ``data`` (kind -> loaded file,
        :func:`bench.kit.realdata.load_data`) instead of the world.

        Every kind must be one of :attr:`data_kinds`; :meth:`check_data` then sees them. The copy's
        ``spec.version`` carries each file's kind and digest (see the module docstring).
        """
        if not data:
            return self
        reason = self.data_mismatch(sorted(data))
        if reason:
            raise BenchError(reason)
        new = copy.copy(self)
        new.data = {k: data[k] for k in sorted(data)}
        base = type(self).spec
        new.spec = dataclasses.replace(  # type: ignore[misc]  # an instance spec shadows the class's
            base, version=base.version + "".join(f"+{s.tag}" for s in new.data_sources))
        new.check_data()
        return new

    def with_judge(self, name: str, digest: str) -> "Task":
        """A copy of this task whose generations are read by the judge ``name`` (``--judge hf:FOLDER``,
        weights digest ``digest``) instead of the model's own; its ``spec.version`` gains
        ``+judge-<digest8>``, so a stored result is reused only with the same judge. A task that reads
        no judge (:attr:`reads_judge` false) is returned unchanged."""
        if not self.reads_judge:
            return self
        new = copy.copy(self)
        new.judge = (name, digest)
        new.spec = dataclasses.replace(  # type: ignore[misc]  # an instance spec shadows the class's
            self.spec, version=f"{self.spec.version}+judge-{digest[:8]}")
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
