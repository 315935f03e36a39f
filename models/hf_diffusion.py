"""Diffusion wrapper: a diffusers ``UNet2DConditionModel`` conditioned on a transformers
``CLIPTextModel``, with a scheduler and an optional ``AutoencoderKL`` (zoo-diffusion and
``hf:`` Stable Diffusion checkpoints).

Sites are data. The text encoder reuses the CLIP text map of :mod:`models.hf_clip`
(``text.embed``, ``text.blocks.{i}.{resid_post,attn,attn.pattern,attn.head.{h},mlp,mlp.neurons}``,
``text.final``), so a word means the same site in zoo-clip and zoo-diffusion. The UNet map
(:class:`UNetMap`, read off the module tree) names, in forward order:

- ``unet.time_embed``: the timestep embedding ``[B, D_t]`` (stream ``"timestep"``);
- ``unet.down.{i}``, ``unet.mid``, ``unet.up.{i}``: each block's main output ``[B, C, H, W]``
  (a down block's skip outputs are not part of the site);
- ``unet.{down.i|mid|up.i}.resnet.{j}``: each ResNet's output;
- ``unet.{…}.attn.{j}``: each spatial transformer's output ``[B, C, H, W]``;
- inside a spatial transformer (``.block.{k}`` is inserted when it has several blocks):
  ``.self`` / ``.cross`` (self- and cross-attention outputs ``[B, HW, C]``),
  ``.self.pattern`` / ``.cross.pattern`` (attention probabilities ``[B, heads, HW, L]``,
  queries on the block's grid, see :meth:`DiffusionWrapper.attention_grid`),
  ``.cross.k`` / ``.cross.v`` (``to_k``/``to_v`` of the prompt ``[B, L, inner]``: where
  closed-form cross-attention edits (UCE/TIME) act) and ``.ff`` (feed-forward output).

``Site.layer`` of a UNet site is its index among the UNet sites of the same kind in forward
order, so ``model.layer_sites("unet", "cross_attn")`` lists the cross-attentions in order.

Attention probabilities are a site because the wrapper installs :class:`SiteAttnProcessor`
in every attention: diffusers' classic ``AttnProcessor`` with the softmax done by a child
module (:class:`AttentionProbs`), so reading or writing a map is a plain forward hook.
It computes exactly what ``AttnProcessor`` computes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from bench.errors import BenchError
from bench.model import DiffusionModel, PromptEncoding, Prompts, Timesteps
from bench.sites import Site, SiteSpec
from models.hf_clip import clip_site_map

Tokenize = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


# ------------------------------------------------------------------ attention with a probability site
class AttentionProbs(nn.Module):
    """``softmax(scores)`` over keys, as a module: its output ``[B, heads, Q, K]`` is the map."""

    def forward(self, scores_BHQK: torch.Tensor) -> torch.Tensor:
        return scores_BHQK.softmax(dim=-1)


class SiteAttnProcessor(nn.Module):
    """diffusers' ``AttnProcessor`` with the probabilities computed by :attr:`probs`.

    A module (not a plain callable) so that it, and its ``probs`` child, sit in the module
    tree under ``<attention>.processor``; it holds no parameters, so state dicts are unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.probs = AttentionProbs()

    def forward(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                *args: Any, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape)
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query = attn.head_to_batch_dim(query)  # [B·heads, Q, d], batch-major
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)

        # == Attention.get_attention_scores, with the softmax moved into ``self.probs``
        dtype = query.dtype
        if attn.upcast_attention:
            query, key = query.float(), key.float()
        if attention_mask is None:
            base = torch.empty(query.shape[0], query.shape[1], key.shape[1], dtype=query.dtype, device=query.device)
            beta = 0
        else:
            base, beta = attention_mask, 1
        scores = torch.baddbmm(base, query, key.transpose(-1, -2), beta=beta, alpha=attn.scale)
        if attn.upcast_softmax:
            scores = scores.float()
        probs_BHQK = self.probs(scores.unflatten(0, (-1, attn.heads)))
        attention_probs = probs_BHQK.flatten(0, 1).to(dtype)

        hidden_states = torch.bmm(attention_probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_site_processors(unet: nn.Module) -> None:
    """One :class:`SiteAttnProcessor` per attention module (a shared instance would be one
    module reachable under every attention's path, so its hooks would fire everywhere)."""
    from diffusers.models.attention_processor import Attention

    for m in unet.modules():
        if isinstance(m, Attention) and not isinstance(m.processor, SiteAttnProcessor):
            m.set_processor(SiteAttnProcessor())


# ------------------------------------------------------------------------------- site maps (data)
@dataclass(frozen=True)
class UNetBlockMap:
    """One down/mid/up block: its module path, ResNets, spatial transformers and grid side."""

    site: str  # "down.0" | "mid" | "up.1"
    path: str  # "down_blocks.0" | "mid_block" | "up_blocks.1"
    n_resnets: int
    transformer_blocks: tuple[int, ...]  # per spatial transformer: number of transformer blocks
    grid: int  # side of the feature map the block's resnets/attention work on


@dataclass(frozen=True)
class UNetMap:
    """A ``UNet2DConditionModel`` as data: the blocks in forward order."""

    prefix: str  # path of the UNet in the wrapper's module tree, also the site prefix
    blocks: tuple[UNetBlockMap, ...]
    time_embed: str = "time_embedding"

    @classmethod
    def from_unet(cls, unet: Any, prefix: str = "unet") -> "UNetMap":
        side = int(unet.config.sample_size)
        blocks: list[UNetBlockMap] = []

        def describe(site: str, path: str, blk: Any) -> UNetBlockMap:
            attns = getattr(blk, "attentions", None) or []
            return UNetBlockMap(site, path, len(blk.resnets), tuple(len(a.transformer_blocks) for a in attns), side)

        for i, blk in enumerate(unet.down_blocks):
            blocks.append(describe(f"down.{i}", f"down_blocks.{i}", blk))
            if getattr(blk, "downsamplers", None):
                side //= 2
        if unet.mid_block is not None:
            blocks.append(describe("mid", "mid_block", unet.mid_block))
        for i, blk in enumerate(unet.up_blocks):
            blocks.append(describe(f"up.{i}", f"up_blocks.{i}", blk))
            if getattr(blk, "upsamplers", None):
                side *= 2
        return cls(prefix, tuple(blocks))


def _forward_order(b: UNetBlockMap) -> list[tuple[str, int]]:
    """(kind, index) of a block's resnets and spatial transformers in the order they run."""
    if b.site == "mid":  # resnet 0, then (attention j, resnet j+1)
        return [("resnet", 0)] + [x for j in range(len(b.transformer_blocks))
                                  for x in (("attn", j), ("resnet", j + 1))]
    out: list[tuple[str, int]] = []
    for j in range(b.n_resnets):
        out.append(("resnet", j))
        if j < len(b.transformer_blocks):
            out.append(("attn", j))
    return out


def build_unet_sites(m: UNetMap) -> tuple[list[Site], dict[str, SiteSpec], dict[str, tuple[int, int]]]:
    """Sites, specs and the query grid of every attention site of a :class:`UNetMap`."""
    sites: list[Site] = []
    specs: dict[str, SiteSpec] = {}
    grids: dict[str, tuple[int, int]] = {}
    counters: dict[str, int] = {}
    p = m.prefix

    def add(name: str, kind: str, spec: SiteSpec, stream: str = "image") -> None:
        layer = counters.get(kind, 0)
        counters[kind] = layer + 1
        sites.append(Site(f"unet.{name}", "unet", layer, kind, stream=stream))
        specs[f"unet.{name}"] = spec

    sites.append(Site("unet.time_embed", "unet", None, "time_embed", stream="timestep"))
    specs["unet.time_embed"] = SiteSpec(f"{p}.{m.time_embed}")
    for b in m.blocks:
        for kind, j in _forward_order(b):
            if kind == "resnet":
                add(f"{b.site}.resnet.{j}", "resnet", SiteSpec(f"{p}.{b.path}.resnets.{j}"))
                continue
            tpath = f"{p}.{b.path}.attentions.{j}"
            add(f"{b.site}.attn.{j}", "transformer", SiteSpec(tpath))  # returns (sample,): index 0
            n_tb = b.transformer_blocks[j]
            for k in range(n_tb):
                n = f"{b.site}.attn.{j}" + (f".block.{k}" if n_tb > 1 else "")
                tb = f"{tpath}.transformer_blocks.{k}"
                entries = (("self", "attn", SiteSpec(f"{tb}.attn1"), "image"),
                           ("self.pattern", "pattern", SiteSpec(f"{tb}.attn1.processor.probs"), "image"),
                           ("cross", "cross_attn", SiteSpec(f"{tb}.attn2"), "image"),
                           ("cross.pattern", "cross_pattern", SiteSpec(f"{tb}.attn2.processor.probs"), "image"),
                           ("cross.k", "cross_k", SiteSpec(f"{tb}.attn2.to_k"), "text"),
                           ("cross.v", "cross_v", SiteSpec(f"{tb}.attn2.to_v"), "text"),
                           ("ff", "mlp", SiteSpec(f"{tb}.ff"), "image"))
                for suffix, kind2, spec, stream in entries:
                    add(f"{n}.{suffix}", kind2, spec, stream)
                    if kind2 in ("attn", "pattern", "cross_attn", "cross_pattern"):
                        grids[f"unet.{n}.{suffix}"] = (b.grid, b.grid)
        add(b.site, "block", SiteSpec(f"{p}.{b.path}"))  # down blocks return (hidden, skips): index 0
    # blocks were appended after their parts; keep the site list in forward order per block
    return sites, specs, grids


def text_encoder_site_map(text_encoder: Any, prefix: str = "text_encoder") -> tuple[list[Site], dict[str, SiteSpec]]:
    """The CLIP text map of :func:`models.hf_clip.clip_site_map`, re-rooted at ``prefix``
    (a ``CLIPTextModel`` has no projection, so ``text.proj`` is dropped)."""
    cfg = text_encoder.config
    sites, specs = clip_site_map({"vision": 0, "text": cfg.num_hidden_layers},
                                 {"vision": 1, "text": cfg.num_attention_heads})
    # transformers 5 flattened CLIPTextModel; 4.x wraps the same modules in ``.text_model``
    root = f"{prefix}.text_model." if hasattr(text_encoder, "text_model") else f"{prefix}."
    keep = [s for s in sites if s.tower == "text" and s.name != "text.proj"]
    return keep, {s.name: replace(specs[s.name], module=root + specs[s.name].module.removeprefix("text_model."))
                  for s in keep}


# ------------------------------------------------------------------------------------ the wrapper
@dataclass(frozen=True)
class SamplingConfig:
    """How :meth:`DiffusionWrapper.generate` samples, and how prompts condition the UNet.

    ``guidance`` is the classifier-free guidance scale (1 = conditional only), which needs a
    model trained with prompt dropout; ``uncond_prompt`` is what replaced dropped prompts.
    ``mask_padding`` passes the prompt mask to the text encoder and to cross-attention (the
    zoo was trained with it; Stable Diffusion attends to padding and needs ``False``).
    ``eta`` is DDIM's noise scale (0 = deterministic).
    """

    steps: int = 25
    guidance: float = 3.0
    eta: float = 0.0
    mask_padding: bool = True
    uncond_prompt: str = ""


class DiffusionModules(nn.Module):
    """The wrapper's module tree (sites are paths in it): ``unet``, ``text_encoder``, ``vae``."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, vae: nn.Module | None) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.vae = vae


class DiffusionWrapper(DiffusionModel):
    """A diffusers UNet + CLIP text encoder + scheduler (+ VAE) behind the diffusion contract.

    ``tokenize(prompts) -> (ids_BL, mask_BL)`` must pad to a fixed length and, CLIP-style,
    add one begin and one end token. ``scheduler`` is any diffusers scheduler (DDIM for the
    zoo); it is copied for every :meth:`generate` call, so calls do not share state, and its
    ``prediction_type`` is the one :meth:`noise_pred` returns. Without ``vae`` the UNet works
    on pixels in [-1, 1]; with an ``AutoencoderKL`` on its scaled latents (Stable Diffusion).
    The wrapper installs :class:`SiteAttnProcessor` in the UNet's attentions (same numbers).
    """

    def __init__(self, name: str, unet: Any, text_encoder: Any, tokenize: Tokenize, scheduler: Any,
                 weights_hash: str, vae: Any | None = None, sampling: SamplingConfig = SamplingConfig()) -> None:
        text_encoder.set_attn_implementation("eager")  # so that text.blocks.*.attn.pattern exist
        install_site_processors(unet)
        unet.eval()
        text_encoder.eval()
        if vae is not None:
            vae.eval()
        self.unet_map = UNetMap.from_unet(unet, "unet")
        tsites, tspecs = text_encoder_site_map(text_encoder, "text_encoder")
        usites, uspecs, self._grids = build_unet_sites(self.unet_map)
        super().__init__(name, DiffusionModules(unet, text_encoder, vae), {**tspecs, **uspecs}, [*tsites, *usites])
        self.unet = unet
        self.text_encoder = text_encoder
        self.vae = vae
        self.tokenize = tokenize
        self.scheduler = scheduler
        self.sampling = sampling
        self._hash = weights_hash

    # ------------------------------------------------------------------ properties
    @property
    def weights_hash(self) -> str:
        return self._hash

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler.config.prediction_type)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        s = int(self.unet.config.sample_size)
        return int(self.unet.config.in_channels), s, s

    @property
    def image_size(self) -> int:
        s = int(self.unet.config.sample_size)
        return s if self.vae is None else s * 2 ** (len(self.vae.config.block_out_channels) - 1)

    def attention_grid(self, site: str) -> tuple[int, int]:
        self.site(site)  # unknown names get "did you mean"
        if site not in self._grids:
            raise BenchError(f"site {site!r} is not an attention output or map, so it has no query grid")
        return self._grids[site]

    # ------------------------------------------------------------------ prompts
    def encode_prompts(self, prompts: Sequence[str]) -> PromptEncoding:
        prompts = _check_prompts(prompts)
        with torch.device("cpu"):  # the tokenizer builds on the host; the ids go to the model's device
            ids_BL, mask_BL = self.tokenize(prompts)
        ids_BL, mask_BL = ids_BL.to(self.device), mask_BL.to(self.device)
        am = mask_BL if self.sampling.mask_padding else None
        hidden_BLD = self.text_encoder(input_ids=ids_BL, attention_mask=am).last_hidden_state
        return PromptEncoding(hidden_BLD, mask_BL)

    def prompt_token_positions(self, prompts: Sequence[str], word: str) -> list[list[int]]:
        prompts = _check_prompts(prompts)
        pattern = re.compile(rf"(?<!\w){re.escape(word.strip())}(?!\w)", re.IGNORECASE)
        out = []
        for p in prompts:
            m = pattern.search(p) if word.strip() else None
            if m is None:
                raise BenchError(f"word {word!r} is not in prompt {p!r}")
            # token counts of the text before and through the word; minus the end token
            with torch.device("cpu"):  # (host-side: only its lengths are read)
                _, mask = self.tokenize([p[: m.start()].rstrip(), p[: m.end()]])
            before, through = (int(n) - 1 for n in mask.sum(1))
            positions = [i for i in range(before, through) if i < mask.shape[1] - 1]
            if not positions:
                raise BenchError(f"word {word!r} of prompt {p!r} falls beyond the text encoder's "
                                 f"{mask.shape[1]} tokens")
            out.append(positions)
        return out

    # ------------------------------------------------------------------ denoiser
    def _unet(self, x_BCHW: torch.Tensor, t_B: torch.Tensor, enc: PromptEncoding) -> torch.Tensor:
        mask = enc.mask_BL if self.sampling.mask_padding else None
        return self.unet(x_BCHW, t_B, encoder_hidden_states=enc.hidden_BLD, encoder_attention_mask=mask).sample

    def _timesteps(self, t: Timesteps, batch: int) -> torch.Tensor:
        t_B = torch.as_tensor(t, device=self.device)
        if t_B.ndim == 0:
            t_B = t_B.expand(batch)
        if t_B.shape != (batch,):
            raise BenchError(f"timesteps must be one value or one per sample ({batch}), got shape {tuple(t_B.shape)}")
        if bool((t_B < 0).any()) or bool((t_B >= self.num_train_timesteps).any()):
            raise BenchError(f"timesteps must lie in [0, {self.num_train_timesteps - 1}], got {t_B.tolist()}")
        return t_B

    def _check_samples(self, x_BCHW: torch.Tensor) -> None:
        if x_BCHW.ndim != 4 or tuple(x_BCHW.shape[1:]) != self.sample_shape:
            raise BenchError(f"{self.name} denoises samples of shape [B, {', '.join(map(str, self.sample_shape))}], "
                             f"got {tuple(x_BCHW.shape)}")

    def noise_pred(self, x_t_BCHW: torch.Tensor, t: Timesteps, prompts: Prompts,
                   guidance: float = 1.0) -> torch.Tensor:
        """The UNet's raw output (:attr:`prediction_type`; ``v_prediction`` for the zoo)."""
        self._check_samples(x_t_BCHW)
        enc = prompts if isinstance(prompts, PromptEncoding) else self.encode_prompts(prompts)
        B = x_t_BCHW.shape[0]
        if len(enc) != B:
            raise BenchError(f"{len(enc)} prompts for {B} samples")
        t_B = self._timesteps(t, B)
        x_t_BCHW = x_t_BCHW.to(self.device)
        if guidance == 1.0:
            return self._unet(x_t_BCHW, t_B, enc)
        both = _cat(enc, self.encode_prompts([self.sampling.uncond_prompt] * B))
        cond, uncond = self._unet(torch.cat([x_t_BCHW, x_t_BCHW]), torch.cat([t_B, t_B]), both).chunk(2)
        return uncond + guidance * (cond - uncond)

    def add_noise(self, x0_BCHW: torch.Tensor, noise_BCHW: torch.Tensor, t: Timesteps) -> torch.Tensor:
        self._check_samples(x0_BCHW)
        return self.scheduler.add_noise(x0_BCHW, noise_BCHW, self._timesteps(t, x0_BCHW.shape[0]))

    def training_target(self, x0_BCHW: torch.Tensor, noise_BCHW: torch.Tensor, t: Timesteps) -> torch.Tensor:
        kind = self.prediction_type
        if kind == "epsilon":
            return noise_BCHW
        if kind == "sample":
            return x0_BCHW
        if kind == "v_prediction":
            return self.scheduler.get_velocity(x0_BCHW, noise_BCHW, self._timesteps(t, x0_BCHW.shape[0]))
        raise BenchError(f"unknown prediction type {kind!r}")

    # ------------------------------------------------------------------ pixels ↔ samples
    def to_sample(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        x = pixels_BCHW * 2 - 1
        if self.vae is None:
            return x
        # the posterior mean: deterministic, as methods need
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    def to_pixels(self, x0_BCHW: torch.Tensor) -> torch.Tensor:
        x = x0_BCHW if self.vae is None else self.vae.decode(x0_BCHW / self.vae.config.scaling_factor).sample
        return ((x + 1) / 2).clamp(0, 1)

    # ------------------------------------------------------------------ sampling
    def initial_noise(self, n: int, seed: int) -> torch.Tensor:
        """Starting noise ``[n, C, H, W]``: row ``i`` from ``numpy.random.default_rng([seed, i])``
        alone, so a sample does not depend on what it is batched with (as in the zoo's sampler)."""
        shape = self.sample_shape
        return torch.from_numpy(np.stack([np.random.default_rng([seed, i]).standard_normal(shape)
                                          for i in range(n)]).astype(np.float32))

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seed: int, steps: int | None = None,
                 guidance: float | None = None) -> torch.Tensor:
        prompts = _check_prompts(prompts)
        steps = self.sampling.steps if steps is None else int(steps)
        guidance = self.sampling.guidance if guidance is None else float(guidance)
        if steps < 1:
            raise BenchError(f"steps must be ≥ 1, got {steps}")
        if int(seed) < 0:
            raise BenchError(f"seed must be a non-negative integer, got {seed}")
        noise = self.initial_noise(len(prompts), int(seed)).to(self.device)
        bs = max(1, int(self.batch_size))
        out = [self._sample(prompts[i:i + bs], noise[i:i + bs], int(seed), steps, guidance)
               for i in range(0, len(prompts), bs)]
        return torch.cat(out)

    def _sample(self, prompts: list[str], noise_BCHW: torch.Tensor, seed: int, steps: int,
                guidance: float) -> torch.Tensor:
        import inspect

        sampler = type(self.scheduler).from_config(self.scheduler.config)  # fresh state per call
        sampler.set_timesteps(steps, device=self.device)
        accepts = set(inspect.signature(sampler.step).parameters)
        kw: dict[str, Any] = {}
        if "eta" in accepts:
            kw["eta"] = self.sampling.eta
        if "generator" in accepts:  # stochastic samplers (DDPM, DDIM with eta > 0)
            kw["generator"] = torch.Generator().manual_seed(seed)
        cond = self.encode_prompts(prompts)
        enc = cond if guidance == 1.0 else _cat(cond, self.encode_prompts([self.sampling.uncond_prompt] * len(prompts)))
        x = noise_BCHW * sampler.init_noise_sigma
        for t in sampler.timesteps:
            inp = sampler.scale_model_input(x, t)
            if guidance == 1.0:
                pred = self._unet(inp, t.expand(x.shape[0]), enc)
            else:
                c, u = self._unet(torch.cat([inp, inp]), t.expand(2 * x.shape[0]), enc).chunk(2)
                pred = u + guidance * (c - u)
            x = sampler.step(pred, t, x, **kw).prev_sample
        return self.to_pixels(x)

    # ------------------------------------------------------------------ provenance
    def randomized(self, seed: int) -> "DiffusionWrapper":
        """Fresh UNet and text encoder of the same architecture (the VAE, a fixed pixel codec, is kept)."""
        torch.manual_seed(seed)
        unet = type(self.unet).from_config(self.unet.config)
        text = type(self.text_encoder)(self.text_encoder.config)
        return DiffusionWrapper(f"{self.name}[randomized:{seed}]", unet, text, self.tokenize, self.scheduler,
                                f"random-init:{seed}", self.vae, self.sampling)


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise BenchError("prompts must be a list of strings, got a single string")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise BenchError("prompts must be a non-empty list of strings")
    return prompts


def _cat(a: PromptEncoding, b: PromptEncoding) -> PromptEncoding:
    if a.hidden_BLD.shape[1:] != b.hidden_BLD.shape[1:]:
        raise BenchError("conditional and unconditional prompts encode to different lengths; "
                         "the tokenizer must pad to a fixed length")
    return PromptEncoding(torch.cat([a.hidden_BLD, b.hidden_BLD]), torch.cat([a.mask_BL, b.mask_BL]))
