"""Sites: named points in a model's computation, and the ``trace`` intervention primitive.

A site name is TransformerLens-style with the tower as prefix, e.g.
``vision.blocks.3.attn.head.2``, ``text.blocks.0.mlp``, ``vision.blocks.1.resid_post``.
Each model declares its sites *as data*: a mapping from site names to
:class:`SiteSpec` (module path, which hook, which tuple element, which head slice),
the way TransformerLens adapters and pyvene model cards do. ``trace`` turns specs
into plain PyTorch hooks, registered per trace and always removed.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

EditFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Site:
    """A named point in the computation.

    ``stream`` says what the sequence positions are: ``"image"`` (vision tokens,
    see the model's token layout), ``"text"``, ``"mixed"`` (image and text tokens
    in one sequence) or ``"timestep"``.
    """

    name: str
    tower: str
    layer: int | None
    kind: str  # resid_post | attn | head | pattern | mlp | neurons | embed | ...
    head: int | None = None
    stream: str = "image"


@dataclass(frozen=True)
class SiteSpec:
    """Where a site lives in the module tree.

    ``hook="output"`` reads a module's output, ``"input"`` its first positional input.
    ``index`` picks an element when that value is a tuple. ``head=(h, n_heads)``
    views the last dimension as ``n_heads`` equal chunks and picks chunk ``h``.
    """

    module: str
    hook: str = "output"
    index: int | None = None
    head: tuple[int, int] | None = None
    # a site whose value is returned after it was used (e.g. attention probabilities handed back
    # beside the attention output) can be read but not written: a write would silently do nothing
    read_only: str = ""  # why, when the site is read-only


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass after the last read."""


def _select(value: Any, index: int | None) -> torch.Tensor:
    if index is None and isinstance(value, (tuple, list)):
        index = 0  # modules that return (hidden, extras) in some library versions
    return value[index] if index is not None else value


def _replace(value: Any, index: int | None, new: torch.Tensor) -> Any:
    if index is None and isinstance(value, (tuple, list)):
        index = 0
    if index is None:
        return new
    items = list(value)
    items[index] = new
    return type(value)(items) if isinstance(value, tuple) else items


def _head_view(t: torch.Tensor, head: tuple[int, int] | None) -> torch.Tensor:
    if head is None:
        return t
    h, n = head
    return t.unflatten(-1, (n, t.shape[-1] // n))[..., h, :]


def _head_write(t: torch.Tensor, head: tuple[int, int] | None, fn: EditFn) -> torch.Tensor:
    if head is None:
        return fn(t)
    h, n = head
    parts = list(t.unflatten(-1, (n, t.shape[-1] // n)).unbind(-2))
    parts[h] = fn(parts[h])
    return torch.stack(parts, dim=-2).flatten(-2)


def _register_first(module: nn.Module, hook: Callable, pre: bool) -> Any:
    """Register a trace hook to run after the hooks of traces opened earlier (so a nested trace
    sees the outer trace's edits) but before every other hook on the module: an edit must be what
    other hooks see, notably transformers' output recorders, whose captured hidden states LLaVA
    feeds to its projector (appended, the edit came after the capture and was lost)."""
    hook._mmi_trace = True  # type: ignore[attr-defined]
    handle = module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook)
    hooks = module._forward_pre_hooks if pre else module._forward_hooks
    if all(getattr(h, "_mmi_trace", False) for h in hooks.values()):
        return handle  # only trace hooks (the common case): appended is already in order
    order = sorted(hooks.items(), key=lambda kv: not getattr(kv[1], "_mmi_trace", False))  # stable
    hooks.clear()
    hooks.update(order)
    return handle


def _submodule(root: nn.Module, path: str) -> nn.Module:
    """``root.get_submodule(path)`` through the children dicts directly: the same module, about a
    third of the cost (the checked walk was ~60% of entering a many-site trace); always walked anew,
    so a module swapped into the tree is found."""
    module = root
    try:
        for name in path.split(".") if path else ():
            module = module._modules[name]  # type: ignore[assignment]
    except (KeyError, TypeError):
        return root.get_submodule(path)  # its error names the missing part
    if module is None:
        return root.get_submodule(path)
    return module


class Trace(AbstractContextManager["Trace"]):
    """Reads and writes sites during the forward passes run inside the ``with`` block.

    Reads are collected per site (a list, one entry per forward pass that reached
    the site); ``trace[site]`` concatenates them along the batch dimension.
    ``write`` maps a site to an edit function ``value -> new value``; the function
    sees the whole batch, so one forward pass can carry a batch of different edits
    (row ``i`` patched at site ``A``, row ``j`` at site ``B``…).
    With ``stop_after_reads=True`` the forward pass is cut short once every read
    site has fired; the exception that does it is swallowed on exit, so the
    forward call must be the last statement in the block.
    """

    def __init__(
        self,
        root: nn.Module,
        specs: Mapping[str, SiteSpec],
        read: Iterable[str] = (),
        write: Mapping[str, EditFn] | None = None,
        stop_after_reads: bool = False,
        keep_grad: bool = False,
    ) -> None:
        self.root = root
        self.read_sites = list(dict.fromkeys(read))
        self.write_fns = dict(write or {})
        unknown = [s for s in [*self.read_sites, *self.write_fns] if s not in specs]
        if unknown:
            from bench.errors import UnknownName

            raise UnknownName("site", unknown[0], specs)
        for site in self.write_fns:
            if specs[site].read_only:
                from bench.errors import BenchError

                raise BenchError(f"site {site!r} cannot be written: {specs[site].read_only}")
        self.specs = specs
        self.stop_after_reads = stop_after_reads and bool(self.read_sites)
        self.keep_grad = keep_grad
        self.values: dict[str, list[torch.Tensor]] = {s: [] for s in self.read_sites}
        self._handles: list[Any] = []
        self._pending: set[str] = set()

    # -------------------------------------------------------------- results
    def __getitem__(self, site: str) -> torch.Tensor:
        vals = self.values[site]
        if not vals:
            raise KeyError(f"site {site!r} was not reached by any forward pass in this trace")
        return vals[0] if len(vals) == 1 else torch.cat(vals, dim=0)

    # -------------------------------------------------------------- hooks
    def _make_hook(self, module_path: str, entries: list[tuple[str, SiteSpec, str]], pre: bool) -> Callable:
        def apply(value: Any) -> Any:
            for site, spec, role in entries:
                if role == "write":
                    t = _select(value, spec.index)
                    value = _replace(value, spec.index, _head_write(t, spec.head, self.write_fns[site]))
            for site, spec, role in entries:
                if role == "read":
                    raw = _select(value, spec.index)
                    if self.keep_grad and torch.is_grad_enabled() and not raw.requires_grad:
                        # frozen weights and discrete inputs leave no graph to differentiate
                        # through: make the activation itself the leaf
                        raw = raw.detach().requires_grad_(True)
                        value = _replace(value, spec.index, raw)
                    t = _head_view(raw, spec.head)
                    self.values[site].append(t if self.keep_grad else t.detach())
                    self._pending.discard(site)
            return value

        def check_stop() -> None:
            if self.stop_after_reads and not self._pending:
                raise _StopForward

        if pre:
            def pre_hook(module: nn.Module, args: tuple) -> tuple | None:
                if not args:
                    return None
                new0 = apply(args[0])
                check_stop()
                return (new0, *args[1:])
            return pre_hook

        def fwd_hook(module: nn.Module, args: tuple, output: Any) -> Any:
            out = apply(output)
            check_stop()
            return out
        return fwd_hook

    def __enter__(self) -> "Trace":
        by_module: dict[tuple[str, str], list[tuple[str, SiteSpec, str]]] = {}
        for site, fn in self.write_fns.items():
            spec = self.specs[site]
            by_module.setdefault((spec.module, spec.hook), []).append((site, spec, "write"))
        for site in self.read_sites:
            spec = self.specs[site]
            by_module.setdefault((spec.module, spec.hook), []).append((site, spec, "read"))
        self._pending = set(self.read_sites)
        try:
            for (path, hook), entries in by_module.items():
                module = _submodule(self.root, path)
                if hook not in ("input", "output"):
                    raise ValueError(f"unknown hook kind {hook!r}")
                self._handles.append(_register_first(module, self._make_hook(path, entries, pre=hook == "input"),
                                                     pre=hook == "input"))
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self._remove()
        return exc_type is _StopForward


# ----------------------------------------------------------------- edit helpers
def replace_rows(rows: torch.Tensor, source: torch.Tensor) -> EditFn:
    """An edit that sets batch rows ``rows`` to ``source`` (``[len(rows), ...]``).

    Used for batched patching: one forward pass, each row patched at its own site.
    """

    def fn(value: torch.Tensor) -> torch.Tensor:
        out = value.clone()
        out[rows] = source.to(value.dtype)
        return out

    return fn


def zero_ablate() -> EditFn:
    return lambda value: torch.zeros_like(value)


def mean_ablate(mean: torch.Tensor, rows: torch.Tensor | None = None) -> EditFn:
    """Replace the value (or the given rows) with a precomputed mean activation."""

    def fn(value: torch.Tensor) -> torch.Tensor:
        out = value.clone()
        if rows is None:
            out[:] = mean.to(value.dtype)
        else:
            out[rows] = mean.to(value.dtype)
        return out

    return fn
