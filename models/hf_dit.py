"""Diffusion transformers (SD3, PixArt, Flux).

PixArt (cross-attention DiT, epsilon prediction) runs behind the diffusion contract:
:class:`PixArtWrapper` is the UNet wrapper's sampler and prompt handling around a
``PixArtTransformer2DModel`` and a T5 encoder. SD3 and Flux predict a flow-matching velocity, which
the contract cannot express yet: their adapters declare the transformer's sites only, and this
module loads the transformer of a pipeline folder, builds a forward's inputs from its config and
checks the sites against that forward (``--model hf:`` refuses those folders with the reason)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from types import SimpleNamespace

from bench.registry import resolve
from bench.sites import Site, SiteSpec, Trace
from models.adapters._format import Adapter, check_sites
from models.hf_common import load_error, load_tokenizer, pipeline_parts, weights_hash
from models.hf_diffusion import DiffusionWrapper, SamplingConfig, Tokenize, install_site_processors


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


# ------------------------------------------------------------------------------- PixArt pipeline
class DiTModules(nn.Module):
    """The wrapper's module tree (sites are paths in it): ``transformer``, ``text_encoder``, ``vae``."""

    def __init__(self, transformer: nn.Module, text_encoder: nn.Module, vae: nn.Module | None) -> None:
        super().__init__()
        self.transformer = transformer
        self.text_encoder = text_encoder
        self.vae = vae


class PixArtWrapper(DiffusionWrapper):
    denoiser_tower = "dit"

    def cross_attention_context(self, hidden_BLD: torch.Tensor) -> torch.Tensor:
        proj = getattr(self.unet, "caption_projection", None)
        if proj is None:
            return hidden_BLD
        out = proj(hidden_BLD.to(next(proj.parameters()).dtype))
        return out.view(hidden_BLD.shape[0], -1, out.shape[-1])
    """A ``PixArtTransformer2DModel`` + T5 encoder + scheduler (+ VAE) behind the diffusion contract;
    sites from the ``pixart`` adapter. Sampling, noising and pixels are the UNet wrapper's."""

    def __init__(self, name: str, transformer: Any, text_encoder: Any, tokenize: Tokenize, scheduler: Any,
                 weights_hash: str, vae: Any | None, sampling: SamplingConfig, adapter: Adapter) -> None:
        text_encoder.set_attn_implementation("eager")  # T5's attention weights: text.blocks.*.attn.pattern
        install_site_processors(transformer)  # attention probabilities as a module: the pattern sites
        for m in (transformer, text_encoder, vae):
            if m is not None:
                m.eval()
        self.adapter = adapter
        config = SimpleNamespace(transformer=transformer.config, text_encoder=text_encoder.config)
        self.site_config = config
        sites, specs = adapter.site_map(config)
        p = int(transformer.config.patch_size)
        side = int(transformer.config.sample_size) // p
        self._grids = {s.name: (side, side) for s in sites if s.kind in ("attn", "pattern", "cross_attn",
                                                                         "cross_pattern") and s.tower == "dit"}
        super(DiffusionWrapper, self).__init__(name, DiTModules(transformer, text_encoder, vae), specs, sites)
        self.unet = transformer  # the denoiser (the UNet wrapper's sampler calls it through _unet)
        self.text_encoder = text_encoder
        self.vae = vae
        self.tokenize = tokenize
        self.scheduler = scheduler
        self.sampling = sampling
        self._hash = weights_hash

    def _unet(self, x_BCHW: torch.Tensor, t_B: torch.Tensor, enc: Any) -> torch.Tensor:
        mask = enc.mask_BL if self.sampling.mask_padding else None
        out = self.unet(x_BCHW, encoder_hidden_states=enc.hidden_BLD, encoder_attention_mask=mask, timestep=t_B,
                        added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
        return out[:, : x_BCHW.shape[1]]  # learned sigma: the second half is the variance

    def randomized(self, seed: int) -> "PixArtWrapper":
        torch.manual_seed(seed)
        transformer = type(self.unet).from_config(self.unet.config)
        text = type(self.text_encoder)(self.text_encoder.config)
        return PixArtWrapper(f"{self.name}[randomized:{seed}]", transformer, text, self.tokenize, self.scheduler,
                             f"random-init:{seed}", self.vae, self.sampling, self.adapter)


def load_pixart(adapter: Adapter, name: str, path: Path, sidecar: dict[str, Any]) -> PixArtWrapper:
    from diffusers import AutoencoderKL, DDIMScheduler

    parts = pipeline_parts(path, ("transformer", "text_encoder", "tokenizer", "scheduler"))
    try:
        transformer = resolve(adapter.model_class).from_pretrained(parts["transformer"], local_files_only=True)
        text = resolve(adapter.options["text_encoder"]).from_pretrained(parts["text_encoder"], local_files_only=True)
        vae = (AutoencoderKL.from_pretrained(path / "vae", local_files_only=True)
               if (path / "vae").is_dir() else None)
        # any scheduler config → DDIM with eta 0: deterministic sampling from a seed
        sched = DDIMScheduler.from_config(DDIMScheduler.load_config(parts["scheduler"], local_files_only=True))
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise load_error("PixArt pipeline", path, e) from None
    tok = load_tokenizer(parts["tokenizer"], "PixArt")
    max_len = int(getattr(tok, "model_max_length", 120) or 120)

    def tokenize(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tok(prompts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
        ids = enc["input_ids"]
        return ids, enc.get("attention_mask", (ids != tok.pad_token_id).long())

    sampling = SamplingConfig(**{**adapter.options.get("sampling", {}), **sidecar.get("sampling", {})})
    return PixArtWrapper(name, transformer, text, tokenize, sched, weights_hash(path), vae, sampling, adapter)
