"""Work shared by the cells of a task: kept per process (:class:`ProcessMemo`) or on disk
(:func:`shared_work`), keyed by everything the value depends on, the numerics a cell runs under
(:func:`numerics`) included."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Hashable

from bench.kit.digests import code_digest, package_versions
from bench.kit.fitting import cached, content_hash
from bench.model import Model

if TYPE_CHECKING:
    from bench.task import Task


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
    (:func:`bench.kit.fitting.cached`, kind ``kind``) so the cells of a grid, in any worker or
    run, compute it once. The key is a content hash of ``key`` (which must name the seed,
    the profile's sizes and the config) and of everything else the value depends on: the
    task's and the model wrapper's code (their module closures), the model's name and
    weights hash, the numeric packages' versions and :func:`numerics`. ``build`` returns
    tensors; the values come back bit for bit (``MMI_BENCH_CACHE=off`` disables the cache)."""
    digest = content_hash(kind, key, code_digest(type(task).__module__), code_digest(type(model).__module__),
                          model.name, model.weights_hash, package_versions(), numerics())
    return cached(kind, digest, build)
