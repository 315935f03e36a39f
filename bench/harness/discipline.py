"""The device-discipline mode (issue 24): a CPU-only check for the bugs a GPU run would hit.

The rule it checks (README, "Device discipline"; :mod:`bench.method`): **method-side code** -- a
method, and the shared code it runs through (the contracts in ``bench/*.py``, ``bench/kit``, the model
wrappers in ``models/``) -- creates every tensor on the device of the tensors it works with
(``device=x.device``), or says where it wants it (``device="cpu"`` for host bookkeeping). On a GPU a
factory call without ``device=`` makes a CPU tensor next to the model's CUDA tensors and the cell fails;
on a CPU-only machine nothing fails, so this mode makes such a call fail here too: while a method's
capability call runs (:func:`bench.harness.runner.guard_method`), a torch factory call (``zeros``,
``ones``, ``empty``, ``full``, ``arange``, ``rand*``, ``randn*``, ``randint``, ``tensor``, ``eye``,
``linspace``, ... -- torch's own list of device constructors) made **without** ``device=`` by
method-side code gets ``device="meta"``: a meta tensor cannot mix with the model's CPU tensors (nor be
copied back), so the cell fails loudly, as it would on a GPU.

What it deliberately leaves on the real default device (a false positive there would be no bug):

* **third-party code** (anything in ``site-packages`` / the standard library: torch's own Python code,
  captum, transformers, diffusers): those libraries place what they create on their inputs' device, or
  do not, and a GPU run would show it either way; we cannot fix them here, so the mode does not judge
  them. The frame that *called* the factory decides, so a method that calls ``torch.zeros`` directly
  is judged, while ``captum``'s ``torch.tensor(...)`` inside a method's call is not.
* **the host side** -- ``tasks/``, ``bench/harness``, ``bench/app``, ``leaderboard/``: tasks build
  their examples and score on the host by contract, and the model wrappers move what they are given to
  the model's device. A task's **callback** handed to a method in a request (e.g. the localization
  task's ``evaluate`` closure, a score function) runs on the host even though a method calls it.

Shared code (contracts, ``bench/kit``, ``models/``) is judged by who it runs for: the mode walks the
stack outward from the caller to the nearest frame that is either the host side (a task callback
calling a model wrapper: host) or a method's own code (``methods/``, or any code outside the project's
packages and the libraries: a test's or a user's method): that frame decides. Reaching the guarded
call itself without either means the method-call machinery runs it for the method: judged.

Why not ``torch.set_default_device("meta")`` for the whole call (the first version): it also sent
task callbacks and third-party libraries to meta, so correct cells failed (integrated gradients inside
captum; the localization task's ``evaluate`` closure, which then returned NaN scores).
"""

from __future__ import annotations

import collections
import functools
import sys
import sysconfig
import time
from pathlib import Path
from types import CodeType, FrameType
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors  # the factories torch.set_default_device redirects

ROOT = Path(__file__).resolve().parents[2]
# the host side of the project (relative to ROOT): builds examples and scores on the CPU by contract
HOST = ("tasks", "bench/harness", "bench/app", "leaderboard")
# shared code that runs for whoever calls it: judged by the nearest host or method frame outward
SHARED = ("bench", "models")
# factories that take a tensor and keep its device when given no device= (not a forgotten device)
_KEEPS_DATA_DEVICE = frozenset({torch.as_tensor, torch.asarray})
_LIBRARY_ROOTS = tuple({str(Path(p).resolve()) for p in (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
                                                        sysconfig.get_paths()["platlib"], Path(torch.__file__).parents[1])})

THIRD_PARTY, HOST_SIDE, SHARED_CODE, METHOD_SIDE = "third-party", "host", "shared", "method"

# code objects of the guarded wrappers (the outer edge of a method call): registered by the runner
GUARD_CODES: set[CodeType] = set()
# where the mode last sent a factory call to meta (file:line function), newest last: what a failing
# cell's report names, since the error itself surfaces later, where the meta tensor meets a real one
SENT: "collections.deque[str]" = collections.deque(maxlen=8)


@functools.lru_cache(maxsize=4096)
def classify(filename: str) -> str:
    """Which side the code in ``filename`` is on: third-party, host, shared or method (see module doc)."""
    if filename.startswith("<"):  # generated code (dataclass __init__, exec): not ours to judge
        return THIRD_PARTY
    path = Path(filename).resolve()
    text = str(path)
    if "site-packages" in path.parts or "dist-packages" in path.parts:
        return THIRD_PARTY
    try:
        rel = path.relative_to(ROOT).as_posix()
    except ValueError:  # outside the project: a library, or a user's own method file
        return THIRD_PARTY if any(text.startswith(r + "/") for r in _LIBRARY_ROOTS) else METHOD_SIDE
    if any(rel == h or rel.startswith(h + "/") for h in HOST):
        return HOST_SIDE
    if any(rel.startswith(s + "/") for s in SHARED):
        return SHARED_CODE
    return METHOD_SIDE  # methods/, tests/, scripts/: a method's own code


def judged(frame: FrameType | None) -> bool:
    """Whether a factory call made from ``frame`` must carry a device (see module doc)."""
    if frame is None:
        return False
    side = classify(frame.f_code.co_filename)
    if side != SHARED_CODE:
        return side == METHOD_SIDE
    f = frame.f_back
    while f is not None and f.f_code not in GUARD_CODES:
        side = classify(f.f_code.co_filename)
        if side == HOST_SIDE:
            return False
        if side == METHOD_SIDE:
            return True
        f = f.f_back
    return True  # reached the guarded call: the method-call machinery, for the method


class MetaForMethods(TorchFunctionMode):
    """While on: a torch factory call made without ``device=`` by method-side code gets ``device="meta"``."""

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if (func in _FACTORIES and kwargs.get("device") is None
                and not (func in _KEEPS_DATA_DEVICE and args and isinstance(args[0], torch.Tensor))
                and judged(sys._getframe(1))):
            kwargs["device"] = "meta"
            f = sys._getframe(1)
            SENT.append(f"{Path(f.f_code.co_filename).name}:{f.f_lineno} {getattr(func, '__name__', func)}")
        return func(*args, **kwargs)


_FACTORIES = frozenset(_device_constructors())


def device_check(enabled: bool) -> Any:
    """The mode as a context manager (a no-op when not ``enabled``)."""
    import contextlib

    return MetaForMethods() if enabled else contextlib.nullcontext()


# ------------------------------------------------------------------ the sweep

# The sweep's profile: the quick profile's sizes cut down (fewer examples, requests, neighbours and
# scenes; fewer steps where a task optimises), per task config field. Only sizes change, so every
# (task, method, family) runs the same code path as its published quick cell, in a fraction of the
# time (a quick zoo-diffusion cell takes minutes on a CPU core); the figures are meaningless and are
# not compared with anything. A field a task's config lacks is an error (the profile went stale).
SWEEP_PROFILE: dict[str, dict[str, Any]] = {
    "attribution": {"quick_examples": 4, "quick_diffusion_examples": 2, "sanity_examples": 4},
    "editing": {"quick_requests": 2, "quick_diffusion_requests": 1, "fresh_renders": 2, "neighbours": 4,
                "quality_scenes": 8, "diffusion_neighbours": 2, "diffusion_quality": 4},
    "hallucination": {"caption_scenes": 32, "pope_images": 16, "fit_caption_scenes": 96, "fit_pope_images": 24},
    "localization": {"quick_examples": 4, "quick_edit_requests": 1, "edit_fresh": 2, "edit_neighbours": 4,
                     "edit_steps": 4, "random_orders": 2},
    "spurious": {"fit_per_group": 16, "quick_test_per_group": 8},
}


def sweep_task(name: str) -> Any:
    """The registered task ``name`` with :data:`SWEEP_PROFILE`'s sizes (unchanged when it has none)."""
    import dataclasses

    from bench.harness.runner import make_task

    task = make_task(name)
    sizes = SWEEP_PROFILE.get(name)
    if sizes:
        known = {f.name for f in dataclasses.fields(task.config)}
        stale = sorted(set(sizes) - known)
        if stale:
            raise ValueError(f"SWEEP_PROFILE[{name!r}] names fields {stale} that {type(task.config).__name__} lacks")
        task.config = dataclasses.replace(task.config, **sizes)
    return task


def triples(cells: Any) -> list[Any]:
    """The first cell of each (task, method, family) among ``cells`` (the sweep: one per triple of the
    published default plan, ``leaderboard.publish.default_plan()``, which this layer does not import)."""
    from bench.harness import runner

    seen: dict[tuple[str, str, str | None], Any] = {}
    for c in cells:
        seen.setdefault((c.task, c.method, runner.model_family(c.model)), c)
    return list(seen.values())


def sweep_cell(cell: Any) -> dict[str, Any]:
    """Run ``cell`` with the sweep's sizes under the mode and without it. On the CPU the mode changes
    no device that method-side code names, so a disciplined cell gives the same figures bit for bit
    both ways. ``status``: ``ok``; ``device`` (fails under the mode only: a forgotten device);
    ``differs`` (both run, the figures differ: a meta tensor was read back silently, e.g. as NaN);
    ``fails`` (fails without the mode too: not a device matter)."""
    import dataclasses
    import math

    from bench.harness import runner

    t0 = time.perf_counter()
    SENT.clear()
    rec = runner.run_cell(dataclasses.replace(cell, runtime=runner.Runtime(meta_check=True)), task=sweep_task(cell.task))
    sent = sorted(set(SENT))
    plain = runner.run_cell(cell, task=sweep_task(cell.task))
    out: dict[str, Any] = {"cell": cell.label, "family": runner.model_family(cell.model), "status": "ok"}
    if sent:
        out["sent_to_meta"] = sent

    def same(a: float, b: float) -> bool:
        return a == b or (math.isnan(a) and math.isnan(b))

    if plain.status != "ok":
        out["status"], out["error"] = "fails", plain.error
    elif rec.status != "ok":
        out["status"], out["error"] = "device", rec.error
        out["where"] = rec.provenance.get("traceback", "").strip().splitlines()[-4:]
    elif rec.metrics.keys() != plain.metrics.keys() or not all(same(rec.metrics[k], plain.metrics[k]) for k in rec.metrics):
        out["status"] = "differs"
        out["error"] = {k: (rec.metrics.get(k), plain.metrics.get(k)) for k in sorted(set(rec.metrics) | set(plain.metrics))
                        if not same(rec.metrics.get(k, math.nan), plain.metrics.get(k, math.nan))}
    out["s"] = round(time.perf_counter() - t0, 1)
    return out
