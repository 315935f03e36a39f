"""One generic, lazy registry for tasks, methods and models.

Built-ins register as ``"module:attr"`` strings, so nothing heavy is imported until
a name is used; their metadata (a task's spec fields, a method's capabilities and families, a
model's family) is declared beside each registration, so listing and planning read it without
importing anything. Third-party packages register through entry points in the groups
``mmi_bench.tasks``, ``mmi_bench.methods`` and ``mmi_bench.models``.

A built-in registered twice in code is an error (:class:`DuplicateName`). A plugin cannot
break the house: an entry point whose name is already taken (by a built-in or an earlier
plugin), or whose value is not ``module:attr``, is refused for that name alone, with one
:class:`PluginConflict` warning naming the distribution; every other name keeps working.
Entry points are read once per process and registry. A plugin's entry records its
distribution's name and version (:func:`plugin_provenance`), so records can carry them.
An unknown name gets a "did you mean".
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, Iterator, TypeVar

from bench.errors import BenchError, UnknownName

T = TypeVar("T")


class DuplicateName(BenchError):
    pass


class PluginConflict(UserWarning):
    """A plugin's entry point was refused (its name is taken, or its value is malformed)."""


@dataclass
class Entry:
    name: str
    target: str  # "module:attr"
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = "builtin"
    dist: str | None = None  # the plugin's distribution (None: built-in)
    dist_version: str | None = None
    _loaded: Any = None

    @property
    def is_plugin(self) -> bool:
        return self.dist is not None

    def load(self) -> Any:
        if self._loaded is None:
            mod, _, attr = self.target.partition(":")
            try:
                obj: Any = importlib.import_module(mod)
                for part in attr.split("."):
                    obj = getattr(obj, part)
            except (ImportError, AttributeError) as e:
                raise BenchError(f"{self.name!r} ({self.source}) could not be loaded from {self.target!r}: {e}") from e
            self._loaded = obj
        return self._loaded


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, Entry] = {}
        self._eps_loaded = False

    def register(self, name: str, target: str, source: str = "builtin", **meta: Any) -> None:
        if name in self._entries:
            raise DuplicateName(
                f"{self.kind} {name!r} is registered twice ({self._entries[name].source} and {source})")
        if ":" not in target:
            raise ValueError(f"registry target must be 'module:attr', got {target!r}")
        self._entries[name] = Entry(name, target, dict(meta), source)

    def _load_entry_points(self) -> None:
        if self._eps_loaded:
            return
        self._eps_loaded = True
        for ep in entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            dist_name = str(dist.name) if dist is not None and dist.name else "?"
            dist_version = str(dist.version) if dist is not None and dist.version else "?"
            where = f"distribution {dist_name} {dist_version}"
            if ep.name in self._entries:
                taken = self._entries[ep.name]
                warnings.warn(f"plugin {self.kind} {ep.name!r} from {where} refused: the name is already "
                              f"registered ({taken.source}); the other names keep working",
                              PluginConflict, stacklevel=3)
                continue
            if ":" not in ep.value:
                warnings.warn(f"plugin {self.kind} {ep.name!r} from {where} refused: its entry point "
                              f"{ep.value!r} is not 'module:attr'", PluginConflict, stacklevel=3)
                continue
            self._entries[ep.name] = Entry(ep.name, ep.value, {}, f"entry point {dist_name}",
                                           dist=dist_name, dist_version=dist_version)

    def names(self) -> list[str]:
        self._load_entry_points()
        return list(self._entries)

    def entry(self, name: str) -> Entry:
        self._load_entry_points()
        if name not in self._entries:
            raise UnknownName(self.kind, name, self._entries)
        return self._entries[name]

    def get(self, name: str) -> T:
        return self.entry(name).load()

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


TASKS: Registry[Any] = Registry("task", "mmi_bench.tasks")
METHODS: Registry[Any] = Registry("method", "mmi_bench.methods")
MODELS: Registry[Any] = Registry("model", "mmi_bench.models")
_BY_KIND: dict[str, Registry[Any]] = {"task": TASKS, "method": METHODS, "model": MODELS}


def plugin_provenance(kind: str, name: str) -> dict[str, str] | None:
    """``{"distribution": ..., "version": ...}`` of the plugin that registered ``name`` as a
    ``kind`` (``task``, ``method`` or ``model``; plurals accepted); None for a built-in."""
    reg = _BY_KIND.get(kind[:-1] if kind.endswith("s") else kind)
    if reg is None:
        raise UnknownName("registry kind", kind, _BY_KIND)
    e = reg.entry(name)
    if e.dist is None:
        return None
    return {"distribution": e.dist, "version": e.dist_version or "?"}


# ---------------------------------------------------------------- built-ins
# Each built-in carries, as metadata, what listing and planning read about it, so neither imports
# its module (tasks and methods import torch): a task's families, capability, main score and
# data kinds; a method's capabilities, families and whether it is a reference; a
# model's family. tests/test_cli_traps.py checks the metadata against the classes.
ALL_FAMILIES = ("contrastive", "diffusion", "generative")
ALL_CAPABILITIES = ("attribute", "debias", "detect_hallucination", "edit", "localize")


def _task(name: str, target: str, families: tuple[str, ...], capability: str, main_score: str,
          data_kinds: tuple[str, ...] = ()) -> None:
    # (the version is not repeated here: it changes with the task, and is read from the module's
    # source by bench.cli.task_meta)
    TASKS.register(name, target, families=families, capability=capability, main_score=main_score,
                   data_kinds=data_kinds)


def _method(name: str, target: str, capabilities: tuple[str, ...], families: tuple[str, ...] = ALL_FAMILIES,
            reference: bool = False) -> None:
    METHODS.register(name, target, capabilities=capabilities, families=families, reference=reference)


_task("attribution", "tasks.attribution:AttributionTask", ALL_FAMILIES, "attribute", "pointing_game",
      ("masks",))
_task("spurious", "tasks.spurious:SpuriousTask", ("contrastive",), "debias", "worst_group_accuracy",
      ("waterbirds",))
_task("hallucination", "tasks.hallucination:HallucinationTask", ("generative",), "detect_hallucination",
      "auroc", ("captions", "pope"))
_task("localization", "tasks.localization:LocalizationTask", ALL_FAMILIES, "localize", "top1")
_task("editing", "tasks.editing:EditingTask", ALL_FAMILIES, "edit", "score")

_method("random", "bench.method:RandomReference", ALL_CAPABILITIES, reference=True)
_method("oracle", "bench.method:OracleReference", ALL_CAPABILITIES, reference=True)
_method("saliency", "methods.saliency:Saliency", ("attribute",))
_method("input_x_gradient", "methods.input_x_gradient:InputXGradient", ("attribute",))
_method("integrated_gradients", "methods.integrated_gradients:IntegratedGradients", ("attribute",))
_method("occlusion", "methods.occlusion:Occlusion", ("attribute",))
_method("attention_rollout", "methods.attention_rollout:AttentionRollout", ("attribute",), ("contrastive", "generative"))
_method("gradcam", "methods.gradcam:GradCAM", ("attribute",), ("contrastive", "generative"))
_method("leace", "methods.leace:Leace", ("debias",), ("contrastive",))
_method("entropy", "methods.entropy:OutputEntropy", ("detect_hallucination",), ("generative",))
_method("causal_tracing", "methods.causal_tracing:CausalTracing", ("localize",))
_method("grad_x_activation", "methods.grad_x_activation:GradXActivation", ("localize",))
_method("activation_patching", "methods.activation_patching:ActivationPatching", ("localize",))
_method("finetune", "methods.finetune:ConstrainedFinetune", ("edit",))
_method("knowledge_neurons", "methods.knowledge_neurons:KnowledgeNeurons", ("localize",))
_method("probing", "methods.probing:Probing", ("detect_hallucination", "localize"))
_method("logit_lens", "methods.logit_lens:LogitLens", ("detect_hallucination", "localize"), ("generative",))
_method("decomposition", "methods.decomposition:Decomposition", ("localize",))
_method("attention_knockout", "methods.attention_knockout:AttentionKnockout", ("localize",))
_method("sae", "methods.sae:SAEMethod", ("debias", "detect_hallucination", "edit", "localize"))
_method("attention_lens", "methods.attention_lens:AttentionLens", ("detect_hallucination",), ("generative",))
_method("contextual_lens", "methods.contextual_lens:ContextualLens", ("detect_hallucination",), ("generative",))
_method("rome", "methods.rome:ROME", ("edit",))
_method("memit", "methods.memit:MEMIT", ("edit",))
_method("uce", "methods.uce:UCE", ("edit",), ("diffusion",))
_method("steering", "methods.steering:Steering", ("debias", "detect_hallucination", "edit"))
_method("textspan", "methods.textspan:TextSpan", ("debias",), ("contrastive",))
_method("head_ablation", "methods.head_ablation:HeadAblation", ("debias",), ("contrastive",))
_method("dfr", "methods.dfr:DFR", ("debias",), ("contrastive",))
_method("relevance", "methods.relevance:Relevance", ("attribute",), ("contrastive", "generative"))
_method("rise", "methods.rise:RISE", ("attribute",))
_method("cross_attention", "methods.cross_attention:CrossAttention", ("attribute",), ("diffusion",))

MODELS.register("zoo-clip", "models.zoo_models:load_zoo_clip_model", family="contrastive")
MODELS.register("zoo-clip-spurious", "models.zoo_models:load_zoo_clip_model", family="contrastive")
MODELS.register("zoo-vlm", "models.zoo_models:load_zoo_vlm_model", family="generative")
MODELS.register("zoo-diffusion", "models.zoo_models:load_zoo_diffusion_model", family="diffusion")
