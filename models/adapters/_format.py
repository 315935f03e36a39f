"""The adapter format: one architecture as data, and the load-time check of its sites.

An :class:`Adapter` says, for the checkpoints whose ``config.json`` ``model_type`` (or whose
diffusers pipeline class) it names, which family they belong to, which class loads them, the
module paths of every site (:class:`Tower` per transformer tower, :class:`Blocks` for blocks that
are not a standard tower, e.g. diffusion transformers), the prompt template, the image-token
layout, the extra inputs the forward needs and which attention modules return their weights.
Counts (layers, heads, widths) are config attribute paths, read when a checkpoint loads.

:func:`check_sites` runs one forward and checks every site's hook against the module's actual
output: the module exists and runs, the tuple index picks a tensor (a bare tensor when the index
is ``None``), and the tensor has the shape the site's kind promises (a pattern is
``[B, heads, Q, K]`` with rows that sum to 1, a residual-stream site is ``d_model`` wide, a head
site splits into ``n_heads``). A wrong index is a load error, never a silent wrong read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import nn

from bench.errors import BenchError
from bench.sites import Site, SiteSpec
from models.site_maps import TowerMap, build_sites

LAYOUTS = ("fixed", "tiled", "dynamic", "none")


def config_value(config: Any, path: str) -> Any:
    """``config.a.b`` for ``path="a.b"`` (dict or attribute access at each step)."""
    value = config
    for part in path.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


@dataclass(frozen=True)
class Tower:
    """A transformer tower (:class:`models.site_maps.TowerMap`) with its counts as config paths."""

    tower: str  # site prefix: "vision", "text", "lm"
    stream: str  # "image" | "text" | "mixed"
    layers: str  # path of the ModuleList of blocks
    n_layers: str  # config path, e.g. "vision_config.num_hidden_layers"
    n_heads: str
    d_model: str = ""  # config path of the residual width ("": not checked)
    embed: SiteSpec | None = None
    attn: str = "self_attn"
    o_proj: str = "out_proj"
    mlp: str = "mlp"
    neurons: SiteSpec | None = None
    final: SiteSpec | None = None
    extra: tuple[tuple[str, str, SiteSpec], ...] = ()
    attn_index: int | None = 0  # element of the attention module's output that is its output
    pattern_index: int | None = 1  # element holding the probabilities; None: returns no weights

    def resolve(self, config: Any) -> TowerMap:
        return TowerMap(self.tower, self.stream, self.layers, int(config_value(config, self.n_layers)),
                        int(config_value(config, self.n_heads)), embed=self.embed, attn=self.attn,
                        o_proj=self.o_proj, mlp=self.mlp, neurons=self.neurons, final=self.final, extra=self.extra,
                        attn_index=self.attn_index, pattern_index=self.pattern_index,
                        d_model=int(config_value(config, self.d_model)) if self.d_model else 0)


@dataclass(frozen=True)
class BlockSite:
    """One site inside every block of a :class:`Blocks`: ``<prefix>.{i}.<suffix>``."""

    suffix: str  # "attn.joint", "ff", "" (the block's output)
    kind: str  # "block" | "attn" | "cross_attn" | "joint_attn" | "mlp" | ...
    spec: SiteSpec  # module path relative to the block
    stream: str = "image"
    all_but_last: bool = False  # absent from the last block (SD3's last block drops the text stream)


@dataclass(frozen=True)
class Blocks:
    """A list of blocks that is not a standard transformer tower (diffusion transformers)."""

    prefix: str  # "dit.blocks", "dit.single_blocks"
    tower: str  # "dit"
    layers: str  # path of the ModuleList
    n_layers: str  # config path
    sites: tuple[BlockSite, ...]
    d_model: str = ""


@dataclass(frozen=True)
class Adapter:
    """One architecture, declaratively (see the module docstring and README "Adding an architecture").

    ``load`` is the ``module:function`` that builds the wrapper, called as
    ``load(adapter, name, path, sidecar)``; an adapter whose architecture has sites but no wrapper
    yet leaves it empty and says why in ``refusal`` (loading then fails with that one line).
    ``tiny`` builds a tiny randomly initialised checkpoint folder of the architecture
    (``tiny(folder) -> folder``) for the generated tests; ``component`` names the module the site
    paths are relative to when it is not the whole model (a diffusers pipeline's ``transformer``).
    ``inert`` lists sites (``fnmatch`` patterns) whose writes cannot reach the family's output
    (a vision block after the layer the LM reads), so the generated write test expects no change.
    """

    name: str
    model_types: tuple[str, ...]  # config.json model_type, or a diffusers pipeline _class_name
    family: str  # "contrastive" | "generative" | "diffusion"
    load: str = ""
    refusal: str = ""
    model_class: str = ""  # "transformers:LlavaNextForConditionalGeneration"
    towers: tuple[Tower, ...] = ()
    blocks: tuple[Blocks, ...] = ()
    prompt_template: str = ""  # holds "<image>" once and "{prompt}"
    image_layout: str = "fixed"  # fixed grid | tiled (any resolution, tiles) | dynamic (packed patches)
    extra_inputs: tuple[str, ...] = ()  # forward inputs besides ids, mask and pixels
    inert: tuple[str, ...] = ()
    tiny: str = ""
    component: str = ""
    notes: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image_layout not in LAYOUTS:
            raise ValueError(f"adapter {self.name!r}: image_layout must be one of {LAYOUTS}")
        if self.prompt_template and (self.prompt_template.count("<image>") != 1
                                     or "{prompt}" not in self.prompt_template):
            raise ValueError(f"adapter {self.name!r}: prompt_template must hold '<image>' once and '{{prompt}}'")

    def tower_maps(self, config: Any) -> list[TowerMap]:
        return [t.resolve(config) for t in self.towers]

    def site_map(self, config: Any) -> tuple[list[Site], dict[str, SiteSpec]]:
        """Every site of a checkpoint with this config: towers first, then blocks."""
        sites, specs = build_sites(self.tower_maps(config))
        subs = self.placeholders(config)
        if subs:  # module paths that depend on a sub-architecture, e.g. a VLM's vision tower
            specs = {n: replace(sp, module=sp.module.format(**subs)) if "{" in sp.module else sp
                     for n, sp in specs.items()}
        for b in self.blocks:
            n = int(config_value(config, b.n_layers))
            for i in range(n):
                for s in b.sites:
                    if s.all_but_last and i == n - 1:
                        continue
                    name = f"{b.prefix}.{i}" + (f".{s.suffix}" if s.suffix else "")
                    module = f"{b.layers}.{i}" + (f".{s.spec.module}" if s.spec.module else "")
                    sites.append(Site(name, b.tower, i, s.kind, stream=s.stream))
                    specs[name] = SiteSpec(module, hook=s.spec.hook, index=s.spec.index, head=s.spec.head,
                                           read_only=s.spec.read_only)
        return sites, specs

    def placeholders(self, config: Any) -> dict[str, str]:
        """``options["placeholders"]``: ``{key: (config path, {value: substitution})}`` resolved."""
        out = {}
        for key, (path, table) in self.options.get("placeholders", {}).items():
            value = config_value(config, path)
            if value not in table:
                raise BenchError(f"hf: adapter {self.name!r} has no site map for {path} {value!r} (known: "
                                 f"{', '.join(table)}); add it to the adapter's placeholders")
            out[key] = table[value]
        return out

    def inert_sites(self, config: Any, names: list[str]) -> set[str]:
        """Sites whose writes cannot reach the family's output: the ``inert`` patterns, and the vision
        blocks after the one whose output the LM reads (``options["feature_layer"]``, a config path)."""
        import fnmatch

        out = {n for n in names if any(fnmatch.fnmatch(n, p) for p in self.inert)}
        path = self.options.get("feature_layer")
        if path:
            layer = config_value(config, path)
            layers = [layer] if isinstance(layer, int) else list(layer)
            n = int(config_value(config, "vision_config.num_hidden_layers"))
            last = max(l % (n + 1) for l in layers)  # hidden state index: 0 = embeddings, l = after block l-1
            vision = self.towers[0].tower  # the vision tower comes first in a VLM's adapter
            out |= {x for x in names if x.startswith(f"{vision}.blocks.") and int(x.split(".")[2]) >= last}
        return out

    def widths(self, config: Any) -> dict[str, tuple[int, int]]:
        """Per tower (or blocks prefix): ``(d_model, n_heads)`` where known (0: unknown)."""
        out: dict[str, tuple[int, int]] = {}
        for t in self.towers:
            out[t.tower] = (int(config_value(config, t.d_model)) if t.d_model else 0,
                            int(config_value(config, t.n_heads)))
        for b in self.blocks:
            out[b.prefix] = (int(config_value(config, b.d_model)) if b.d_model else 0, 0)
        return out


def site_config(model: Any) -> Any:
    """The config a wrapper's adapter reads its counts from: ``model.site_config`` where the wrapper
    assembles several modules (a pipeline), else its module's ``config``."""
    return getattr(model, "site_config", None) or getattr(model.module, "config", None)


# --------------------------------------------------------------------------- the load-time check
RESIDUAL_KINDS = ("resid_post", "attn", "mlp", "embed", "final")


def check_sites(adapter: Adapter, config: Any, root: nn.Module, sites: list[Site], specs: dict[str, SiteSpec],
                run: Callable[[], Any]) -> None:
    """Run ``run()`` (one forward on a small input) with a plain hook on every site's module and
    check each site's declared hook, index and shape against what the module returned. The first
    disagreement is one ``BenchError`` naming the adapter, the site and what was found."""
    widths = adapter.widths(config)
    by_module: dict[tuple[str, str], list[str]] = {}
    for s in sites:
        spec = specs[s.name]
        by_module.setdefault((spec.module, spec.hook), []).append(s.name)
    seen: dict[tuple[str, str], Any] = {}
    handles = []

    def where(site: str) -> str:
        return f"hf: adapter {adapter.name!r}: site {site!r}"

    try:
        for (path, hook) in by_module:
            try:
                module = root.get_submodule(path)
            except AttributeError:
                raise BenchError(f"{where(by_module[(path, hook)][0])} names module {path!r}, which the checkpoint "
                                 f"lacks") from None
            handles.append(capture(module, (path, hook), seen))
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    named = {s.name: s for s in sites}
    for key, names in by_module.items():
        if key not in seen:
            raise BenchError(f"{where(names[0])}: module {key[0]!r} did not run in a forward pass")
        for name in names:
            _check_one(where(name), name, specs[name], seen[key], named[name], widths)


def capture(module: nn.Module, key: tuple[str, str], seen: dict[tuple[str, str], Any]) -> Any:
    """A plain hook keeping the first value of ``module``'s input or output (and changing nothing:
    it returns None)."""
    if key[1] == "input":
        def pre(m: nn.Module, args: tuple) -> None:  # type: ignore[type-arg]
            seen.setdefault(key, args[0] if args else None)
        return module.register_forward_pre_hook(pre)

    def post(m: nn.Module, args: tuple, out: Any) -> None:  # type: ignore[type-arg]
        seen.setdefault(key, out)
    return module.register_forward_hook(post)


def _describe(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"a tensor of shape {tuple(v.shape)}"
    if isinstance(v, (tuple, list)):
        return f"a {type(v).__name__} of {len(v)} ({', '.join(type(x).__name__ for x in v)})"
    return f"a {type(v).__name__}"


def _check_one(where: str, name: str, spec: SiteSpec, value: Any, site: Site,
               widths: dict[str, tuple[int, int]]) -> None:
    if spec.index is not None:
        if not isinstance(value, (tuple, list)):
            raise BenchError(f"{where} reads element {spec.index} of {spec.module!r}'s {spec.hook}, which is "
                             f"{_describe(value)}, not a tuple (set its index to None)")
        if spec.index >= len(value) or not isinstance(value[spec.index], torch.Tensor):
            got = "missing" if spec.index >= len(value) else _describe(value[spec.index])
            hint = (" (the attention module returns no weights: declare pattern_index=None, or run it eagerly)"
                    if site.kind == "pattern" else "")
            raise BenchError(f"{where} reads element {spec.index} of {spec.module!r}'s {spec.hook}, "
                             f"{_describe(value)}: that element is {got}{hint}")
        t = value[spec.index]
    elif isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        t = value[0]  # the documented fallback of bench.sites._select
    else:
        raise BenchError(f"{where}: {spec.module!r}'s {spec.hook} is {_describe(value)}; declare which element "
                         f"is the site (index)")
    d_model, n_heads = widths.get(site.tower, (0, 0))
    for key, (d, h) in widths.items():  # blocks are keyed by their name prefix
        if name.startswith(key + "."):
            d_model, n_heads = d, h or n_heads
    if site.kind == "pattern":
        if t.ndim != 4 or (n_heads and t.shape[1] != n_heads):
            raise BenchError(f"{where} should be attention probabilities [B, {n_heads or 'heads'}, Q, K], got "
                             f"{_describe(t)}")
        if not torch.allclose(t.float().sum(-1), torch.ones((), dtype=torch.float32), atol=1e-3):
            raise BenchError(f"{where} should be attention probabilities, but its rows do not sum to 1")
    elif site.kind in RESIDUAL_KINDS and d_model and site.tower != "unet":
        if t.shape[-1] != d_model and not (site.kind == "embed" and t.ndim == 4):
            raise BenchError(f"{where} should be {d_model} wide (the {site.tower} tower's width), got "
                             f"{_describe(t)}")
    elif site.kind == "head" and spec.head is not None and t.shape[-1] % spec.head[1]:
        raise BenchError(f"{where}: the input of {spec.module!r} ({_describe(t)}) does not split into "
                         f"{spec.head[1]} heads")
