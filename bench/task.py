"""The task contract: a versioned spec, examples with ground truth, scoring."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from collections import OrderedDict
from typing import Any, Callable, ClassVar, Hashable, Literal

from bench.method import Method
from bench.model import Model

Direction = Literal["higher", "lower", "none"]


@dataclass(frozen=True)
class MetricSpec:
    """A metric's direction and whether it gets a random/oracle-normalised score.

    ``normalise=False`` for metrics whose reference values are not chance and
    ceiling (e.g. a sanity check that random maps fail by construction).
    """

    name: str
    direction: Direction
    description: str
    normalise: bool = True


@dataclass(frozen=True)
class TaskSpec:
    name: str
    version: str
    families: frozenset[str]
    capability: str
    main_score: str
    metrics: tuple[MetricSpec, ...]
    splits: tuple[str, ...] = ("fit", "dev", "test")

    def metric(self, name: str) -> MetricSpec:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)


@dataclass
class CellResult:
    """What one (task, method, model, seed) cell produced."""

    metrics: dict[str, float]
    example_hashes: list[str] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)


class ProcessMemo:
    """What is the same for every method of a cell (the model's own outputs, what the unedited model
    answers, its samples): built once per worker process and reused by the cells that follow.
    Keys must name everything the value depends on (model name and weights hash, seed, profile,
    task config); beyond ``size`` entries the least recently used go."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        if key in self._values:
            self._values.move_to_end(key)
            return self._values[key]
        value = build()
        self._values[key] = value
        while len(self._values) > self.size:
            self._values.popitem(last=False)
        return value


class Task(ABC):
    spec: ClassVar[TaskSpec]

    def supports(self, model: Model) -> str | None:
        if model.family not in self.spec.families:
            return (f"task {self.spec.name!r} supports {', '.join(sorted(self.spec.families))} models; "
                    f"{model.name!r} is {model.family}")
        return None

    @abstractmethod
    def run(self, model: Model, method: Method, seed: int, quick: bool = False) -> CellResult:
        """Build examples for ``seed``, ask ``method`` (or the task's own reference
        for ``random``/``oracle``) through the task's capability, and score."""
