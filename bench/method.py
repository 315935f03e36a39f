"""The method contract, and the two reference methods every task supports."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, cast

import torch

from bench.capabilities import (
    CAPABILITIES,
    AttributionRequest,
    DebiasRequest,
    EditRequest,
    HallucinationRequest,
    Intervention,
    LocalizeRequest,
)
from bench.errors import BenchError, Incompatible
from bench.model import Model

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


@dataclass(frozen=True)
class MethodConfig:
    """Base for method configs; subclasses add typed fields with defaults."""


class Method:
    """A registered interpretability method.

    Subclasses set ``name``, ``capabilities`` (a subset of
    :data:`bench.capabilities.CAPABILITIES`), ``families`` they work on, a
    ``Config`` dataclass, a docstring citing the paper they follow, and implement
    one method per capability (``attribute``, ``localize``, ...).

    The contract guards every capability call: before ``edit(model, request)`` (and the
    others) runs, :meth:`unsupported` checks the model's family against the capability's
    families and asks :meth:`supports`; a model the method cannot handle is an
    :class:`~bench.errors.Incompatible` error with the reason, so a capability's body never
    needs to test the model's family.

    Devices: the model may sit on a GPU (``model.device``). A method creates every tensor on the
    device of the tensors it works with -- ``torch.zeros(n, device=x.device)``,
    ``torch.arange(L, device=ids.device)``, ``nn.Parameter(torch.zeros(d, device=acts.device))`` --
    and draws random numbers with a CPU ``torch.Generator`` and ``device="cpu"``, then moves the
    result (``.to(x.device)``: the same draw on every device). Host-side bookkeeping says
    ``device="cpu"`` explicitly. A tensor a capability returns is brought back to the CPU by the
    runner, to be scored. A number that is moved later (``torch.as_tensor(alpha, device="cpu")``, then
    ``.to(x.device)`` where it is applied) is host bookkeeping too and says so. The CPU test suite
    enforces this: under the runner's device-discipline mode (``Runtime(meta_check=True)``,
    :mod:`bench.harness.discipline`) a torch factory call that method-side code (the method, and the
    contracts, ``bench/kit`` and model wrappers it runs through) makes without ``device=`` lands on
    ``meta`` and the cell fails (``tests/test_device_discipline.py``); task callbacks in requests and
    third-party libraries are not judged.
    """

    name: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[str]] = frozenset()
    families: ClassVar[frozenset[str]] = frozenset({"contrastive", "generative", "diffusion"})
    # per capability, the families it runs on where narrower than ``families`` (a method that edits
    # every family but debiases only contrastive models: {"debias": frozenset({"contrastive"})})
    capability_families: ClassVar[Mapping[str, frozenset[str]]] = {}
    Config: ClassVar[type] = MethodConfig
    reference: ClassVar[bool] = False  # random / oracle: answered by the task itself
    # what a reference stands for, which is what a task answers for it (never its name): "chance"
    # (an output that ignores the input) or "ceiling" (the task's own ground truth); None for a method
    bound: ClassVar[str | None] = None
    # learns from the request's fit split first (probes, SAEs, directions) and records what it
    # fitted with bench.kit.fitting.record_fit; a test checks fitted state never depends on test items
    fits: ClassVar[bool] = False
    # per capability, the question its scores answer, in a few words, e.g. {"localize": "mediation
    # (necessity)"}: a localization method may find where a fact's answer depends on (mediation),
    # what is decodable, or a direct effect, rather than where it is stored; records and tables show it
    answers: ClassVar[dict[str, str]] = {}
    # what the method fitted, artifact name -> content hash: an instance attribute that
    # bench.kit.fitting.record_fit creates on the first fit (absent until then, so read it with
    # ``getattr(method, "fitted", None)``); the runner stores it with the record
    fitted: dict[str, str]

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        if config is None:
            config = self.Config()
        if overrides:
            known = {f.name for f in fields(self.Config)}
            bad = sorted(set(overrides) - known)
            if bad:
                raise BenchError(f"method {self.name!r} has no config option {bad[0]!r} (options: {sorted(known)})")
            config = type(config)(**{**asdict(config), **overrides})
        self.config = config
        # figures the method measures about its own work (an SAE's reconstruction, a probe's
        # fit accuracy), stored with the run record; see :meth:`report`
        self.diagnostics: dict[str, float] = {}

    def report(self, **figures: float) -> None:
        """Record diagnostics (floats) of this method's run, e.g. ``report(sae_fvu=0.08)``."""
        self.diagnostics.update({k: float(v) for k, v in figures.items()})

    def config_dict(self) -> dict[str, Any]:
        # a dataclass config is an instance (``Config()`` or one passed in), never the class itself
        return asdict(cast("DataclassInstance", self.config)) if is_dataclass(self.config) else {}

    def supports(self, model: Model) -> str | None:
        """``None`` if the method can run on ``model``, else the reason it cannot."""
        if model.family not in self.families:
            return f"method {self.name!r} does not support the {model.family} family"
        return None

    def unsupported(self, model: Model, capability: str) -> str | None:
        """Why ``capability`` cannot run on ``model`` (``None`` if it can): the capability's
        families, then :meth:`supports`."""
        families = self.capability_families.get(capability, self.families)
        if model.family not in families:
            return (f"method {self.name!r} can {capability} {', '.join(sorted(families))} models, "
                    f"not {model.name!r} ({model.family})")
        return self.supports(model)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for capability in CAPABILITIES:
            fn = cls.__dict__.get(capability)
            if callable(fn) and not getattr(fn, "_guarded", False):
                setattr(cls, capability, _guarded(capability, fn))

    # Capabilities (override the ones in ``capabilities``).
    def attribute(self, model: Model, request: AttributionRequest) -> torch.Tensor:
        raise NotImplementedError

    def debias(self, model: Model, request: DebiasRequest) -> Intervention:
        raise NotImplementedError

    def edit(self, model: Model, request: EditRequest) -> Intervention | None:
        """Apply the requested rewrites: either to ``model``'s parameters in place (return
        ``None``; the task restores them), or as activation edits the task keeps applied while
        it scores the edited model (return an :class:`Intervention` whose ``writes`` run inside
        ``model.trace``; steering vectors, SAE feature clamping)."""
        raise NotImplementedError

    def localize(self, model: Model, request: LocalizeRequest) -> torch.Tensor:
        """Scores ``[n, len(request.candidates)]``, higher = the site is more responsible."""
        raise NotImplementedError

    def detect_hallucination(self, model: Model, request: HallucinationRequest) -> torch.Tensor:
        """A hallucination score per item ``[N]`` (higher = more likely hallucinated)."""
        raise NotImplementedError


def _guarded(capability: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a capability of a method class) behind :meth:`Method.unsupported`."""
    @functools.wraps(fn)
    def call(self: Method, model: Model, request: Any) -> Any:
        # a model-free call (an attribution method on a request's score alone) has nothing to check
        reason = None if model is None else self.unsupported(model, capability)
        if reason:
            raise Incompatible(reason)
        return fn(self, model, request)

    call._guarded = True  # type: ignore[attr-defined]
    return call


def _check_caps(cls: type[Method]) -> None:
    bad = set(cls.capabilities) - set(CAPABILITIES)
    if bad:
        raise ValueError(f"{cls.__name__} declares unknown capabilities {sorted(bad)}")


class RandomReference(Method):
    """Chance: the task draws an output that ignores the input (seeded)."""

    name = "random"
    capabilities = frozenset(CAPABILITIES)
    reference = True
    bound = "chance"


class OracleReference(Method):
    """Ceiling: the task answers from its own ground truth."""

    name = "oracle"
    capabilities = frozenset(CAPABILITIES)
    reference = True
    bound = "ceiling"


_check_caps(RandomReference)
