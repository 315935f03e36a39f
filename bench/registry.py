"""One generic, lazy registry for tasks, methods and models.

Built-ins register as ``"module:attr"`` strings, so nothing heavy is imported until
a name is used. Third-party packages register through entry points in the groups
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
TASKS.register("attribution", "tasks.attribution:AttributionTask")
TASKS.register("spurious", "tasks.spurious:SpuriousTask")
TASKS.register("hallucination", "tasks.hallucination:HallucinationTask")
TASKS.register("localization", "tasks.localization:LocalizationTask")
TASKS.register("editing", "tasks.editing:EditingTask")

METHODS.register("random", "bench.method:RandomReference")
METHODS.register("oracle", "bench.method:OracleReference")
METHODS.register("saliency", "methods.saliency:Saliency")
METHODS.register("input_x_gradient", "methods.input_x_gradient:InputXGradient")
METHODS.register("integrated_gradients", "methods.integrated_gradients:IntegratedGradients")
METHODS.register("occlusion", "methods.occlusion:Occlusion")
METHODS.register("attention_rollout", "methods.attention_rollout:AttentionRollout")
METHODS.register("gradcam", "methods.gradcam:GradCAM")
METHODS.register("leace", "methods.leace:Leace")
METHODS.register("entropy", "methods.entropy:OutputEntropy")
METHODS.register("causal_tracing", "methods.causal_tracing:CausalTracing")
METHODS.register("grad_x_activation", "methods.grad_x_activation:GradXActivation")
METHODS.register("activation_patching", "methods.activation_patching:ActivationPatching")
METHODS.register("finetune", "methods.finetune:ConstrainedFinetune")
METHODS.register("knowledge_neurons", "methods.knowledge_neurons:KnowledgeNeurons")
METHODS.register("probing", "methods.probing:Probing")
METHODS.register("logit_lens", "methods.logit_lens:LogitLens")
METHODS.register("decomposition", "methods.decomposition:Decomposition")
METHODS.register("attention_knockout", "methods.attention_knockout:AttentionKnockout")
METHODS.register("sae", "methods.sae:SAEMethod")
METHODS.register("attention_lens", "methods.attention_lens:AttentionLens")
METHODS.register("contextual_lens", "methods.contextual_lens:ContextualLens")
METHODS.register("rome", "methods.rome:ROME")
METHODS.register("memit", "methods.memit:MEMIT")
METHODS.register("uce", "methods.uce:UCE")
METHODS.register("steering", "methods.steering:Steering")
METHODS.register("textspan", "methods.textspan:TextSpan")
METHODS.register("head_ablation", "methods.head_ablation:HeadAblation")
METHODS.register("dfr", "methods.dfr:DFR")
METHODS.register("relevance", "methods.relevance:Relevance")
METHODS.register("rise", "methods.rise:RISE")
METHODS.register("cross_attention", "methods.cross_attention:CrossAttention")

MODELS.register("zoo-clip", "models.zoo_models:load_zoo_clip_model", family="contrastive")
MODELS.register("zoo-clip-spurious", "models.zoo_models:load_zoo_clip_model", family="contrastive")
MODELS.register("zoo-vlm", "models.zoo_models:load_zoo_vlm_model", family="generative")
MODELS.register("zoo-diffusion", "models.zoo_models:load_zoo_diffusion_model", family="diffusion")
