"""Weight-editing primitives shared by editing methods and by tasks that edit.

:func:`constrained_finetune` is the plain editor of Zhu et al. (2020), "Modifying
Memories in Transformer Models": Adam on one module's parameters, each weight kept
within ±``max_delta`` of its value before the edit. :class:`ParameterSnapshot` makes
any edit reversible bit for bit.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Callable

import torch

from bench.errors import BenchError

if TYPE_CHECKING:
    from bench.capabilities import Intervention
    from bench.model import Model


# the tower a family's facts about a subject are recalled in: where editors look by default
FACT_TOWER = {"generative": "lm", "contrastive": "vision", "diffusion": "text"}


def fact_mlp_sites(model: "Model") -> list[str]:
    """The per-layer MLP sites of the tower the family's facts live in, in layer order."""
    return model.layer_sites(FACT_TOWER[model.family], "mlp")


def middle_fact_mlp(model: "Model", who: str, option: str = "site") -> str:
    """The default site of a single-layer editor: the middle MLP of the fact tower."""
    mlps = fact_mlp_sites(model)
    if not mlps:
        raise BenchError(f"{who}: {model.name!r} has no {FACT_TOWER[model.family]} MLP sites; "
                         f"set --config {option}=...")
    return mlps[len(mlps) // 2]


class ParameterSnapshot:
    """A copy of every parameter of ``module``; :meth:`restore` writes it back exactly."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.saved = {n: p.detach().clone() for n, p in module.named_parameters()}

    @torch.no_grad()
    def restore(self) -> None:
        for n, p in self.module.named_parameters():
            p.copy_(self.saved[n])

    def unchanged(self) -> bool:
        return all(torch.equal(p, self.saved[n]) for n, p in self.module.named_parameters())

    def check_restored(self, what: str) -> None:
        if not self.unchanged():
            raise BenchError(f"the model's parameters were not restored bit-identically after {what}")


def constrained_finetune(root: torch.nn.Module, module: torch.nn.Module, loss_fn: Callable[[], torch.Tensor],
                         steps: int, lr: float, max_delta: float) -> None:
    """Minimise ``loss_fn()`` over ``module``'s parameters only (every other parameter of
    ``root`` frozen for the duration), projecting each weight back into ±``max_delta`` of
    its starting value after every step. Deterministic: full-batch, no sampling."""
    params = list(module.parameters())
    if not params:
        raise BenchError("constrained fine-tuning: the chosen module has no parameters")
    original = [p.detach().clone() for p in params]
    flags = {id(p): p.requires_grad for p in root.parameters()}
    for p in root.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    try:
        with torch.enable_grad():
            for _ in range(steps):
                loss = loss_fn()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for p, p0 in zip(params, original):
                        p.copy_(torch.maximum(torch.minimum(p, p0 + max_delta), p0 - max_delta))
    finally:
        for p in root.parameters():
            p.requires_grad_(flags[id(p)])


def applied_edit(model: "Model", edit: "Intervention | None") -> AbstractContextManager[Any]:
    """Keep an edit method's activation edits (``Intervention.writes``) applied inside the block;
    a no-op for parameter edits (``None``)."""
    if edit is None or not edit.writes:
        return nullcontext()
    return model.trace(write=edit.writes)
