"""Diffusion transformers (SD3, PixArt, Flux) at the component level: their adapters declare the
transformer's sites, and this module loads the transformer of a pipeline folder, builds a forward's
inputs from its config, and checks the sites against that forward. No pipeline wrapper exists yet
(text encoders, samplers): ``--model hf:`` refuses these folders with the adapter's reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.registry import resolve
from bench.sites import Site, SiteSpec, Trace
from models.adapters._format import Adapter, check_sites


def load_component(adapter: Adapter, folder: Path) -> nn.Module:
    """The adapter's ``model_class`` from ``folder/<component>`` (eval mode)."""
    module = resolve(adapter.model_class).from_pretrained(folder / adapter.component, local_files_only=True)
    return module.eval()


def probe_inputs(adapter: Adapter, module: nn.Module, batch: int = 2, seed: int = 0) -> dict[str, Any]:
    return resolve(adapter.options["probe"])(module.config, batch, torch.Generator().manual_seed(seed))


def sd3_inputs(cfg: Any, B: int, g: torch.Generator) -> dict[str, Any]:
    s = int(cfg.sample_size)
    return dict(hidden_states=torch.randn(B, int(cfg.in_channels), s, s, generator=g),
                encoder_hidden_states=torch.randn(B, 5, int(cfg.joint_attention_dim), generator=g),
                pooled_projections=torch.randn(B, int(cfg.pooled_projection_dim), generator=g),
                timestep=torch.full((B,), 500.0))


def pixart_inputs(cfg: Any, B: int, g: torch.Generator) -> dict[str, Any]:
    s = int(cfg.sample_size)
    return dict(hidden_states=torch.randn(B, int(cfg.in_channels), s, s, generator=g),
                encoder_hidden_states=torch.randn(B, 5, int(cfg.caption_channels), generator=g),
                timestep=torch.full((B,), 500), added_cond_kwargs={"resolution": None, "aspect_ratio": None})


def flux_inputs(cfg: Any, B: int, g: torch.Generator) -> dict[str, Any]:
    n_img, n_txt = 16, 5  # packed latents: a 4×4 grid of tokens
    return dict(hidden_states=torch.randn(B, n_img, int(cfg.in_channels), generator=g),
                encoder_hidden_states=torch.randn(B, n_txt, int(cfg.joint_attention_dim), generator=g),
                pooled_projections=torch.randn(B, int(cfg.pooled_projection_dim), generator=g),
                timestep=torch.full((B,), 0.5), img_ids=torch.zeros(n_img, 3), txt_ids=torch.zeros(n_txt, 3),
                guidance=torch.full((B,), 3.5) if cfg.guidance_embeds else None)


def component_sites(adapter: Adapter, module: nn.Module) -> tuple[list[Site], dict[str, SiteSpec]]:
    """The sites of a loaded transformer, checked against one forward (a wrong index is an error)."""
    sites, specs = adapter.site_map(module.config)
    kw = probe_inputs(adapter, module)
    check_sites(adapter, module.config, module, sites, specs, lambda: module(**kw))
    return sites, specs


def trace(module: nn.Module, specs: dict[str, SiteSpec], **kw: Any) -> Trace:
    return Trace(module, specs, **kw)
