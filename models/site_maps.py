"""Site maps as data: how a transformer tower's modules map to site names.

A :class:`TowerMap` names the module paths of one tower; :func:`build_sites`
expands it into every site (embedding, and per block the residual output,
attention output and pattern, each head, the MLP output and its neurons, final
norm). A new architecture is a new ``TowerMap``, not new code.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.sites import Site, SiteSpec


@dataclass(frozen=True)
class TowerMap:
    tower: str  # site prefix: "vision", "text", "lm"
    stream: str  # "image" | "text" | "mixed"
    layers: str  # path of the ModuleList of blocks
    n_layers: int
    n_heads: int
    embed: SiteSpec | None = None
    attn: str = "self_attn"  # attention module inside a block; returns (output, pattern)
    o_proj: str = "out_proj"  # output projection inside the attention module (per-head values enter it)
    mlp: str = "mlp"
    neurons: SiteSpec | None = None  # relative to the MLP module; default: output of ``activation_fn``
    final: SiteSpec | None = None
    extra: tuple[tuple[str, str, SiteSpec], ...] = ()  # (name, kind, spec) of tower-level sites
    # which element of the attention module's output is its output, and which its probabilities
    # (``None``: the module returns a bare tensor / no weights, so there is no ``attn.pattern``
    # site); checked against a real forward when an ``hf:`` checkpoint loads (models.adapters)
    attn_index: int | None = 0
    pattern_index: int | None = 1
    d_model: int = 0  # width of the residual stream (0: unknown; load-time checks skip it)


def build_sites(towers: list[TowerMap]) -> tuple[list[Site], dict[str, SiteSpec]]:
    sites: list[Site] = []
    specs: dict[str, SiteSpec] = {}

    def add(site: Site, spec: SiteSpec) -> None:
        sites.append(site)
        specs[site.name] = spec

    for t in towers:
        if t.embed is not None:
            add(Site(f"{t.tower}.embed", t.tower, None, "embed", stream=t.stream), t.embed)
        for i in range(t.n_layers):
            b = f"{t.layers}.{i}"
            n = f"{t.tower}.blocks.{i}"
            add(Site(f"{n}.resid_post", t.tower, i, "resid_post", stream=t.stream), SiteSpec(b))
            add(Site(f"{n}.attn", t.tower, i, "attn", stream=t.stream), SiteSpec(f"{b}.{t.attn}", index=t.attn_index))
            if t.pattern_index is not None:
                add(Site(f"{n}.attn.pattern", t.tower, i, "pattern", stream=t.stream),
                    SiteSpec(f"{b}.{t.attn}", index=t.pattern_index,
                             read_only="transformers returns the attention pattern after applying it; "
                                       "write the attention output or the heads instead"))
            for h in range(t.n_heads):
                add(Site(f"{n}.attn.head.{h}", t.tower, i, "head", head=h, stream=t.stream),
                    SiteSpec(f"{b}.{t.attn}.{t.o_proj}", hook="input", head=(h, t.n_heads)))
            add(Site(f"{n}.mlp", t.tower, i, "mlp", stream=t.stream), SiteSpec(f"{b}.{t.mlp}"))
            nspec = t.neurons or SiteSpec("activation_fn")
            add(Site(f"{n}.mlp.neurons", t.tower, i, "neurons", stream=t.stream),
                SiteSpec(f"{b}.{t.mlp}.{nspec.module}", hook=nspec.hook, index=nspec.index))
        if t.final is not None:
            add(Site(f"{t.tower}.final", t.tower, None, "final", stream=t.stream), t.final)
        for name, kind, spec in t.extra:
            add(Site(name, t.tower, None, kind, stream=t.stream), spec)
    return sites, specs
