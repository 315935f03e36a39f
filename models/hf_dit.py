"""Diffusion transformers behind the diffusion contract: PixArt, SD3 and Flux.

PixArt (cross-attention DiT, epsilon prediction): :class:`PixArtWrapper`, the UNet wrapper's
sampler and prompt handling around a ``PixArtTransformer2DModel`` and a T5 encoder. SD3 and Flux
(joint-attention MMDiTs, rectified flows): :class:`FlowDiTWrapper` maps the contract's integer
timesteps to the flow's noise levels (:class:`FlowSchedule`) and samples with the folder's
``FlowMatchEulerDiscreteScheduler``; :class:`SD3Wrapper` and :class:`FluxWrapper` encode prompts and
call the transformer as their pipelines do. Their attention runs through processors that compute
the softmax explicitly, so the joint map and its image-query × text-key block (the cross map) are
sites."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.capabilities import EditObjective, EditRequest, ObjectiveOptions
from bench.errors import BenchError
from bench.model import PromptEncoding
from bench.registry import resolve
from models.adapters._format import Adapter
from models.hf_common import load_error, load_tokenizer, pipeline_parts, weights_hash
from models.hf_diffusion import (AttentionProbs, DiffusionWrapper, SamplingConfig, Tokenize, _cat, _check_prompts,
                                  install_site_processors)


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


# ------------------------------------------------------------------- joint attention with map sites
class JointSiteAttnProcessor(nn.Module):
    """diffusers' ``JointAttnProcessor2_0`` (SD3's MMDiT attention) with the softmax done by a child
    module, so the joint map is a site, and the image-query × text-key block of it passed through a
    second child (:attr:`cross`), so the cross map is a site whose writes reach the output.

    In a joint block image and text tokens attend together over one softmax: the joint map
    ``[B, heads, N+L, N+L]`` (``probs``; image tokens first, as the processor concatenates them) holds
    image→image, image→text, text→image and text→text attention. Its image-query × text-key block
    ``[B, heads, N, L]`` (``cross``) is what a UNet's cross-attention map is (how much each image
    position reads each prompt token); unlike a UNet's, its rows do not sum to 1 over the prompt,
    since the same softmax also spreads mass over image keys. Numbers: the processor's computation
    with an explicit softmax instead of ``scaled_dot_product_attention`` (equal up to rounding)."""

    def __init__(self) -> None:
        super().__init__()
        self.probs = AttentionProbs()
        self.cross = nn.Identity()

    def forward(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        B, N = hidden_states.shape[0], hidden_states.shape[1]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(B, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if encoder_hidden_states is not None:
            cq = heads(attn.add_q_proj(encoder_hidden_states))
            ck = heads(attn.add_k_proj(encoder_hidden_states))
            cv = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                cq = attn.norm_added_q(cq)
            if attn.norm_added_k is not None:
                ck = attn.norm_added_k(ck)
            q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        probs_BHQK = self.probs((q @ k.transpose(-1, -2)) * attn.scale)
        if encoder_hidden_states is not None:  # the image-query × text-key block, through its site
            cross_BHNL = self.cross(probs_BHQK[:, :, :N, N:])
            top = torch.cat([probs_BHQK[:, :, :N, :N], cross_BHNL], -1)
            probs_BHQK = torch.cat([top, probs_BHQK[:, :, N:]], 2)
        out = (probs_BHQK.to(v.dtype) @ v).transpose(1, 2).reshape(B, -1, attn.heads * v.shape[-1]).to(q.dtype)
        if encoder_hidden_states is None:
            return attn.to_out[1](attn.to_out[0](out))
        img, ctx = out[:, :N], out[:, N:]
        if not attn.context_pre_only:
            ctx = attn.to_add_out(ctx)
        return attn.to_out[1](attn.to_out[0](img)), ctx


def install_joint_processors(blocks: Any) -> None:
    """One :class:`JointSiteAttnProcessor` per joint block's attention (SD3)."""
    for blk in blocks:
        if not isinstance(blk.attn.processor, JointSiteAttnProcessor):
            blk.attn.set_processor(JointSiteAttnProcessor())


# ------------------------------------------------------------------- flow matching (SD3, Flux)
class FlowSchedule:
    """The rectified-flow forward process of a ``FlowMatchEulerDiscreteScheduler`` config, on the
    contract's integer timesteps ``t ∈ 0 … T−1`` (Esser et al., 2024, "Scaling Rectified Flow
    Transformers for High-Resolution Image Synthesis", eq. 1 and §3.1):

        x_t = (1 − σ_t)·x_0 + σ_t·ε,   target v = ε − x_0 (what the transformer predicts),

    with ``σ_t`` the scheduler's training table read backwards (``t = 0`` least noise, as in DDPM):
    ``σ_t = shift·s / (1 + (shift − 1)·s)``, ``s = (t + 1)/T`` for a static ``shift`` (SD3: 3.0),
    or the scheduler's ``time_shift(mu, 1, s)`` when it shifts by resolution (Flux, ``mu`` from the
    image's token count). The denoiser is fed ``σ_t·T``, as the pipelines feed it."""

    def __init__(self, scheduler: Any, mu: float | None = None) -> None:
        self.scheduler = scheduler
        self.mu = mu
        T = int(scheduler.config.num_train_timesteps)
        s = torch.arange(1, T + 1, dtype=torch.float64) / T  # unshifted s for t = 0 … T−1
        if scheduler.config.use_dynamic_shifting:
            if mu is None:
                raise BenchError("a flow schedule with resolution-dependent shift needs mu")
            sig = scheduler.time_shift(mu, 1.0, s)
        else:
            shift = float(scheduler.config.shift)
            sig = shift * s / (1 + (shift - 1) * s)
        self.sigma_T = sig.float()
        self.T = T

    def sigma(self, t_B: torch.Tensor) -> torch.Tensor:
        return self.sigma_T.to(t_B.device)[t_B.long()]


class FlowDiTWrapper(DiffusionWrapper):
    """A flow-matching diffusion transformer behind the diffusion contract (SD3 here; Flux's packing
    is its own wrapper): ``prediction_type`` ``"flow_prediction"`` (a velocity ``ε − x_0``),
    :meth:`add_noise` / :meth:`training_target` from :class:`FlowSchedule`, sampling with the
    checkpoint's ``FlowMatchEulerDiscreteScheduler`` (Euler, deterministic). Prompt handling and
    pixels are the UNet wrapper's, with a pooled prompt vector carried as the last row of
    :attr:`PromptEncoding.hidden_BLD` (mask 0): the contract's prompt encoding has one tensor of
    conditioning, which tasks slice and repeat per row, and a row keeps the pooled vector with it."""

    denoiser_tower = "dit"
    flow: FlowSchedule  # set by the subclass's constructor
    pooled_dim: int
    joint_dim: int
    vae: Any

    @property
    def prediction_type(self) -> str:
        return "flow_prediction"

    @property
    def num_train_timesteps(self) -> int:
        return self.flow.T

    def add_noise(self, x0_BCHW: torch.Tensor, noise_BCHW: torch.Tensor, t: Any) -> torch.Tensor:
        self._check_samples(x0_BCHW)
        s = self.flow.sigma(self._timesteps(t, x0_BCHW.shape[0])).to(x0_BCHW.dtype)[:, None, None, None]
        return (1 - s) * x0_BCHW + s * noise_BCHW

    def training_target(self, x0_BCHW: torch.Tensor, noise_BCHW: torch.Tensor, t: Any) -> torch.Tensor:
        self._timesteps(t, x0_BCHW.shape[0])  # same checks as add_noise
        return noise_BCHW - x0_BCHW

    def _unet(self, x_BCHW: torch.Tensor, t_B: torch.Tensor, enc: Any) -> torch.Tensor:
        """The contract's integer timesteps → the transformer's ``σ·T``."""
        return self._dit(x_BCHW, self.flow.sigma(t_B) * self.flow.T, enc)

    def _dit(self, x_BCHW: torch.Tensor, time_B: torch.Tensor, enc: Any) -> torch.Tensor:
        raise NotImplementedError

    def edit_objective(self, request: EditRequest, options: ObjectiveOptions) -> EditObjective:
        """The contract's objective, with the subject and valid-token masks cut to the ``text``
        tower's token stream (where facts live): the encoding's rows beyond it (other encoders'
        tokens, the pooled row) are not the text tower's positions."""
        obj = super().edit_objective(request, options)
        with torch.device("cpu"):
            L = int(self.tokenize(list(request.prompts[:1]))[0].shape[1])
        subject = obj.subject_BL
        return dataclasses.replace(obj, subject_BL=lambda positions: subject(positions)[:, :L],
                                   valid_BL=obj.valid_BL[:, :L])

    def _sampling_sigmas(self, steps: int) -> list[float] | None:
        """The unshifted noise levels the pipeline samples at (None: the scheduler's default)."""
        return None

    def _split(self, enc: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(context ``[B, L, D]``, pooled ``[B, P]``) of a prompt encoding (pooled: its last row)."""
        return enc.hidden_BLD[:, :-1], enc.hidden_BLD[:, -1, : self.pooled_dim]

    def to_sample(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        z = self.vae.encode(pixels_BCHW * 2 - 1).latent_dist.mean  # the posterior mean: deterministic
        return (z - self._vae_shift) * self.vae.config.scaling_factor

    def to_pixels(self, x0_BCHW: torch.Tensor) -> torch.Tensor:
        x = self.vae.decode(x0_BCHW / self.vae.config.scaling_factor + self._vae_shift).sample
        return ((x + 1) / 2).clamp(0, 1)

    @property
    def _vae_shift(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    def _sample(self, prompts: list[str], noise_BCHW: torch.Tensor, seed: int, steps: int,
                guidance: float) -> torch.Tensor:
        sampler = type(self.scheduler).from_config(self.scheduler.config)  # fresh state per call
        kw: dict[str, Any] = {"mu": self.flow.mu} if sampler.config.use_dynamic_shifting else {}
        sigmas = self._sampling_sigmas(steps)
        if sigmas is not None:
            kw["sigmas"] = sigmas
        sampler.set_timesteps(None if sigmas is not None else steps, device=self.device, **kw)
        cond = self.encode_prompts(prompts)
        enc = cond if guidance == 1.0 else _cat(cond, self.encode_prompts([self.sampling.uncond_prompt] * len(prompts)))
        x = noise_BCHW
        for t in sampler.timesteps:  # already σ·T
            if guidance == 1.0:
                pred = self._dit(x, t.expand(x.shape[0]), enc)
            else:
                c, u = self._dit(torch.cat([x, x]), t.expand(2 * x.shape[0]), enc).chunk(2)
                pred = u + guidance * (c - u)
            x = sampler.step(pred, t, x).prev_sample
        return self.to_pixels(x)


class SD3Modules(nn.Module):
    """The SD3 wrapper's module tree: ``transformer``, ``text_encoder`` (CLIP-L), ``text_encoder_2``
    (CLIP-G), ``text_encoder_3`` (T5, optional) and ``vae``, as the pipeline folder names them."""

    def __init__(self, transformer: nn.Module, te: nn.Module, te2: nn.Module, te3: nn.Module | None,
                 vae: nn.Module) -> None:
        super().__init__()
        self.transformer, self.text_encoder, self.text_encoder_2 = transformer, te, te2
        self.text_encoder_3, self.vae = te3, vae


class SD3Wrapper(FlowDiTWrapper):
    """A ``StableDiffusion3Pipeline`` folder behind the diffusion contract; sites from the ``sd3``
    adapter. Prompts are encoded as the pipeline does (``encode_prompt``): the penultimate hidden
    states of CLIP-L and CLIP-G side by side, zero-padded to the T5 width, followed by T5's states
    (zeros of ``max_sequence_length`` tokens without a T5); the pooled vector is both CLIPs'
    projected embeddings side by side. :meth:`prompt_token_positions` are CLIP token positions, the
    first ``L_clip`` rows of the context (CLIP-L and CLIP-G tokenize alike)."""

    def __init__(self, name: str, transformer: Any, encoders: tuple[Any, Any, Any | None],
                 tokenizers: tuple[Tokenize, Tokenize, Tokenize | None], scheduler: Any, weights_hash: str,
                 vae: Any, sampling: SamplingConfig, adapter: Adapter, t5_length: int) -> None:
        from dataclasses import replace as dc_replace

        te, te2, te3 = encoders
        for m in (te, te2, te3):
            if m is not None:
                m.set_attn_implementation("eager")  # attention weights: the text towers' pattern sites
        install_joint_processors(transformer.transformer_blocks)
        for m in (transformer, te, te2, te3, vae):
            if m is not None:
                m.eval()
        cfg = transformer.config
        self.pooled_dim = int(cfg.pooled_projection_dim)
        self.joint_dim = int(cfg.joint_attention_dim)
        clip_w = int(te.config.hidden_size) + int(te2.config.hidden_size)
        pooled_w = int(te.config.projection_dim) + int(te2.config.projection_dim)
        if clip_w > self.joint_dim or pooled_w != self.pooled_dim or self.pooled_dim > self.joint_dim:
            raise BenchError(f"SD3 pipeline: CLIP widths {clip_w} (hidden) / {pooled_w} (projected) do not fit the "
                             f"transformer's joint_attention_dim {self.joint_dim} / pooled_projection_dim "
                             f"{self.pooled_dim}")
        if te3 is not None and int(te3.config.d_model) != self.joint_dim:
            raise BenchError(f"SD3 pipeline: T5 width {te3.config.d_model} ≠ joint_attention_dim {self.joint_dim}")
        self.site_config = SimpleNamespace(transformer=cfg, text_encoder=te.config, text_encoder_2=te2.config,
                                           text_encoder_3=None if te3 is None else te3.config)
        site_adapter = adapter if te3 is not None else dc_replace(
            adapter, towers=tuple(t for t in adapter.towers if t.tower != "text_3"))
        self.adapter = site_adapter  # what the load-time check reads (no T5 tower without a T5)
        sites, specs = site_adapter.site_map(self.site_config)
        side = int(cfg.sample_size) // int(cfg.patch_size)
        self._grids = {s.name: (side, side) for s in sites
                       if s.kind in ("joint_attn", "cross_pattern", "block", "mlp") and s.tower == "dit"}
        super(DiffusionWrapper, self).__init__(name, SD3Modules(transformer, te, te2, te3, vae), specs, sites)
        self.unet = transformer
        self.text_encoder, self.text_encoder_2, self.text_encoder_3 = te, te2, te3
        self.tokenize, self.tokenize_2, self.tokenize_3 = tokenizers
        self.t5_length = t5_length
        self.vae = vae
        self.scheduler = scheduler
        self.flow = FlowSchedule(scheduler)
        self.sampling = sampling
        self._hash = weights_hash
        self._parts = (encoders, tokenizers)

    def encode_prompts(self, prompts: Sequence[str]) -> PromptEncoding:
        prompts = _check_prompts(prompts)
        B = len(prompts)
        with torch.device("cpu"):  # tokenizers build on the host
            ids, mask = self.tokenize(prompts)
            ids2, _ = self.tokenize_2(prompts)
        dev = self.device
        out1 = self.text_encoder(input_ids=ids.to(dev), output_hidden_states=True)
        out2 = self.text_encoder_2(input_ids=ids2.to(dev), output_hidden_states=True)
        clip_BLD = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], -1)
        clip_BLD = F.pad(clip_BLD, (0, self.joint_dim - clip_BLD.shape[-1]))
        pooled_BP = torch.cat([out1.text_embeds, out2.text_embeds], -1)
        if self.text_encoder_3 is not None and self.tokenize_3 is not None:
            with torch.device("cpu"):
                ids3, mask3 = self.tokenize_3(prompts)
            t5_BLD = self.text_encoder_3(input_ids=ids3.to(dev)).last_hidden_state
            mask3 = mask3.to(dev)
        else:  # the pipeline's stand-in without a T5: zeros, which still take part in the attention
            t5_BLD = torch.zeros(B, self.t5_length, self.joint_dim, device=dev, dtype=clip_BLD.dtype)
            mask3 = torch.zeros(B, self.t5_length, dtype=mask.dtype, device=dev)
        pooled_row = F.pad(pooled_BP, (0, self.joint_dim - pooled_BP.shape[-1]))[:, None]
        hidden_BLD = torch.cat([clip_BLD, t5_BLD.to(clip_BLD.dtype), pooled_row], 1)
        mask_BL = torch.cat([mask.to(dev), mask3, torch.zeros(B, 1, dtype=mask.dtype, device=dev)], 1)
        return PromptEncoding(hidden_BLD, mask_BL)

    def _dit(self, x_BCHW: torch.Tensor, time_B: torch.Tensor, enc: Any) -> torch.Tensor:
        ctx_BLD, pooled_BP = self._split(enc)
        return self.unet(hidden_states=x_BCHW, encoder_hidden_states=ctx_BLD, pooled_projections=pooled_BP,
                         timestep=time_B.to(x_BCHW.dtype)).sample

    def randomized(self, seed: int) -> "SD3Wrapper":
        torch.manual_seed(seed)
        transformer = type(self.unet).from_config(self.unet.config)
        (te, te2, te3), toks = self._parts
        fresh = tuple(None if m is None else type(m)(m.config) for m in (te, te2, te3))
        return SD3Wrapper(f"{self.name}[randomized:{seed}]", transformer, fresh, toks,  # type: ignore[arg-type]
                          self.scheduler, f"random-init:{seed}", self.vae, self.sampling, self.adapter,
                          self.t5_length)


def _tokenizer_fn(tok: Any, max_len: int) -> Tokenize:
    def tokenize(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tok(prompts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
        ids = enc["input_ids"]
        return ids, enc.get("attention_mask", (ids != tok.pad_token_id).long())
    return tokenize


def load_sd3(adapter: Adapter, name: str, path: Path, sidecar: dict[str, Any]) -> SD3Wrapper:
    """A ``StableDiffusion3Pipeline`` folder: transformer, CLIP-L/CLIP-G (with projection), T5 when
    the folder has ``text_encoder_3``, VAE and a flow-matching scheduler config."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

    parts = pipeline_parts(path, ("transformer", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                                  "vae", "scheduler"))
    clip = resolve(adapter.options["text_encoder"])
    has_t5 = (path / "text_encoder_3").is_dir() and (path / "tokenizer_3").is_dir()
    try:
        transformer = resolve(adapter.model_class).from_pretrained(parts["transformer"], local_files_only=True)
        te = clip.from_pretrained(parts["text_encoder"], local_files_only=True)
        te2 = clip.from_pretrained(parts["text_encoder_2"], local_files_only=True)
        te3 = (resolve(adapter.options["t5"]).from_pretrained(path / "text_encoder_3", local_files_only=True)
               if has_t5 else None)
        vae = AutoencoderKL.from_pretrained(parts["vae"], local_files_only=True)
        cfg = FlowMatchEulerDiscreteScheduler.load_config(parts["scheduler"], local_files_only=True)
        sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise load_error("SD3 pipeline", path, e) from None
    if sched.config.use_dynamic_shifting:
        raise BenchError(f"hf: {path}: SD3 pipeline with a resolution-dependent scheduler shift "
                         f"(use_dynamic_shifting) is not supported; its scheduler config must set a fixed shift")
    toks = [load_tokenizer(parts[k], "SD3") for k in ("tokenizer", "tokenizer_2")]
    fns = [_tokenizer_fn(t, int(getattr(t, "model_max_length", 77) or 77)) for t in toks]
    t5_len = int(adapter.options.get("max_sequence_length", 256))
    fn3 = None
    if te3 is not None:
        tok3 = load_tokenizer(path / "tokenizer_3", "SD3")
        t5_len = min(t5_len, int(getattr(tok3, "model_max_length", t5_len) or t5_len))
        fn3 = _tokenizer_fn(tok3, t5_len)
    sampling = SamplingConfig(**{**adapter.options.get("sampling", {}), **sidecar.get("sampling", {})})
    return SD3Wrapper(name, transformer, (te, te2, te3), (fns[0], fns[1], fn3), sched, weights_hash(path), vae,
                      sampling, adapter, t5_len)


# ------------------------------------------------------------------------------------------- Flux
class FluxSiteAttnProcessor(nn.Module):
    """diffusers' ``FluxAttnProcessor`` with an explicit softmax (:attr:`probs`: the joint map over
    text then image tokens, as Flux concatenates them) and its image-query × text-key block passed
    through :attr:`cross` (the cross map; see :class:`JointSiteAttnProcessor`). A single-stream block
    attends over the concatenated sequence without telling its attention where the text ends, so the
    wrapper records the text length on the processor before each block runs (:attr:`text_tokens`)."""

    def __init__(self) -> None:
        super().__init__()
        self.probs = AttentionProbs()
        self.cross = nn.Identity()
        self.text_tokens = 0

    def forward(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, image_rotary_emb: Any = None) -> Any:
        from diffusers.models.embeddings import apply_rotary_emb

        d = attn.head_dim
        q = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (-1, d)))
        k = attn.norm_k(attn.to_k(hidden_states).unflatten(-1, (-1, d)))
        v = attn.to_v(hidden_states).unflatten(-1, (-1, d))
        L = self.text_tokens
        if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
            L = encoder_hidden_states.shape[1]
            cq = attn.norm_added_q(attn.add_q_proj(encoder_hidden_states).unflatten(-1, (-1, d)))
            ck = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(-1, (-1, d)))
            cv = attn.add_v_proj(encoder_hidden_states).unflatten(-1, (-1, d))
            q, k, v = torch.cat([cq, q], 1), torch.cat([ck, k], 1), torch.cat([cv, v], 1)
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, S, d]
        probs_BHQK = self.probs((q @ k.transpose(-1, -2)) * d ** -0.5)
        if L:  # the image-query × text-key block, through its site
            cross_BHNL = self.cross(probs_BHQK[:, :, L:, :L])
            low = torch.cat([cross_BHNL, probs_BHQK[:, :, L:, L:]], -1)
            probs_BHQK = torch.cat([probs_BHQK[:, :, :L], low], 2)
        out = (probs_BHQK.to(v.dtype) @ v).transpose(1, 2).flatten(2, 3).to(q.dtype)
        if encoder_hidden_states is None:
            return out
        ctx, img = out[:, :L], out[:, L:]
        return attn.to_out[1](attn.to_out[0](img.contiguous())), attn.to_add_out(ctx.contiguous())


def install_flux_processors(transformer: Any) -> None:
    """A :class:`FluxSiteAttnProcessor` in every block, and a pre-hook telling single-stream blocks'
    processors how many text tokens lead their sequence."""
    def text_length(block: Any, args: tuple, kwargs: dict) -> None:  # type: ignore[type-arg]
        block.attn.processor.text_tokens = int(kwargs["encoder_hidden_states"].shape[1])

    for blk in transformer.transformer_blocks:
        if not isinstance(blk.attn.processor, FluxSiteAttnProcessor):
            blk.attn.set_processor(FluxSiteAttnProcessor())
    for blk in transformer.single_transformer_blocks:
        if not isinstance(blk.attn.processor, FluxSiteAttnProcessor):
            blk.attn.set_processor(FluxSiteAttnProcessor())
            blk.register_forward_pre_hook(text_length, with_kwargs=True)


class FluxModules(nn.Module):
    """The Flux wrapper's module tree: ``transformer``, ``text_encoder`` (CLIP), ``text_encoder_2``
    (T5) and ``vae``, as the pipeline folder names them."""

    def __init__(self, transformer: nn.Module, te: nn.Module, te2: nn.Module, vae: nn.Module) -> None:
        super().__init__()
        self.transformer, self.text_encoder, self.text_encoder_2, self.vae = transformer, te, te2, vae


class FluxWrapper(FlowDiTWrapper):
    """A ``FluxPipeline`` folder behind the diffusion contract; sites from the ``flux`` adapter.

    As the pipeline: the context is T5's last hidden states (so :meth:`prompt_token_positions` are T5
    token positions and the ``text`` tower is the T5), the pooled vector CLIP's pooled output (the
    ``text_2`` tower); samples ``[B, C, H, W]`` are the VAE's latents, packed into 2×2 patches of
    ``4C`` channels (one token each, position ids ``(0, row, col)``) for the transformer and unpacked
    after it; the transformer reads ``σ`` as its timestep; the scheduler's shift depends on the
    token count (``mu``, the pipeline's ``calculate_shift``). A guidance-distilled transformer
    (``guidance_embeds``, FLUX.1-dev) reads the guidance scale as an input instead of running
    classifier-free guidance: :meth:`generate`'s ``guidance`` goes there, and :meth:`noise_pred`
    (conditional) feeds the sampling default; one without it (FLUX.1-schnell) samples unguided, as its
    pipeline does by default. The image side is the VAE config's ``sample_size``
    (Flux's transformer config does not fix one)."""

    def __init__(self, name: str, transformer: Any, te: Any, te2: Any, tokenizers: tuple[Tokenize, Tokenize],
                 scheduler: Any, weights_hash: str, vae: Any, sampling: SamplingConfig, adapter: Adapter) -> None:
        te.set_attn_implementation("eager")
        te2.set_attn_implementation("eager")
        install_flux_processors(transformer)
        for m in (transformer, te, te2, vae):
            m.eval()
        cfg = transformer.config
        self.pooled_dim = int(cfg.pooled_projection_dim)
        self.joint_dim = int(cfg.joint_attention_dim)
        latent = int(vae.config.latent_channels)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        side = int(vae.config.sample_size) // factor
        if (int(cfg.patch_size) != 1 or int(cfg.in_channels) != 4 * latent or side % 2
                or int(te.config.hidden_size) != self.pooled_dim or int(te2.config.d_model) != self.joint_dim
                or self.pooled_dim > self.joint_dim):
            raise BenchError(f"Flux pipeline: the parts do not fit together (transformer in_channels {cfg.in_channels} "
                             f"= 4 × VAE latent channels {latent}, patch_size 1, an even latent side ({side}), CLIP "
                             f"width {te.config.hidden_size} = pooled_projection_dim {self.pooled_dim}, T5 width "
                             f"{te2.config.d_model} = joint_attention_dim {self.joint_dim})")
        self.adapter = adapter
        self.site_config = SimpleNamespace(transformer=cfg, text_encoder=te.config, text_encoder_2=te2.config)
        sites, specs = adapter.site_map(self.site_config)
        self._side = side
        self._grids = {s.name: (side // 2, side // 2) for s in sites
                       if s.kind in ("joint_attn", "cross_pattern", "block", "mlp") and s.tower == "dit"}
        super(DiffusionWrapper, self).__init__(name, FluxModules(transformer, te, te2, vae), specs, sites)
        self.unet = transformer
        self.text_encoder, self.text_encoder_2 = te, te2
        self.tokenize_clip, self.tokenize = tokenizers
        self.vae = vae
        self.scheduler = scheduler
        sc = scheduler.config
        n = (side // 2) ** 2  # the pipeline's calculate_shift: mu linear in the image's token count
        slope = (sc.max_shift - sc.base_shift) / (sc.max_image_seq_len - sc.base_image_seq_len)
        self.flow = FlowSchedule(scheduler, mu=n * slope + sc.base_shift - slope * sc.base_image_seq_len
                                 if sc.use_dynamic_shifting else None)
        self.sampling = sampling
        self._embedded = float(sampling.guidance)
        self._hash = weights_hash
        self._parts = (te, te2, tokenizers)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return int(self.unet.config.in_channels) // 4, self._side, self._side

    @property
    def image_size(self) -> int:
        return int(self.vae.config.sample_size)

    def encode_prompts(self, prompts: Sequence[str]) -> PromptEncoding:
        prompts = _check_prompts(prompts)
        with torch.device("cpu"):
            ids_clip, _ = self.tokenize_clip(prompts)
            ids, mask = self.tokenize(prompts)
        dev = self.device
        pooled_BP = self.text_encoder(input_ids=ids_clip.to(dev)).pooler_output
        t5_BLD = self.text_encoder_2(input_ids=ids.to(dev)).last_hidden_state
        pooled_row = F.pad(pooled_BP, (0, self.joint_dim - pooled_BP.shape[-1]))[:, None].to(t5_BLD.dtype)
        B = len(prompts)
        return PromptEncoding(torch.cat([t5_BLD, pooled_row], 1),
                              torch.cat([mask.to(dev), torch.zeros(B, 1, dtype=mask.dtype, device=dev)], 1))

    def _dit(self, x_BCHW: torch.Tensor, time_B: torch.Tensor, enc: Any) -> torch.Tensor:
        ctx_BLD, pooled_BP = self._split(enc)
        B, C, H, W = x_BCHW.shape
        packed = x_BCHW.view(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (H // 2) * (W // 2), 4 * C)
        img_ids = torch.zeros(H // 2, W // 2, 3, device=x_BCHW.device)
        img_ids[..., 1] += torch.arange(H // 2, device=x_BCHW.device)[:, None]
        img_ids[..., 2] += torch.arange(W // 2, device=x_BCHW.device)[None, :]
        txt_ids = torch.zeros(ctx_BLD.shape[1], 3, device=x_BCHW.device)
        guidance = (torch.full((B,), self._embedded, device=x_BCHW.device)
                    if self.unet.config.guidance_embeds else None)
        out = self.unet(hidden_states=packed, timestep=(time_B / self.flow.T).to(x_BCHW.dtype), guidance=guidance,
                        pooled_projections=pooled_BP, encoder_hidden_states=ctx_BLD, txt_ids=txt_ids,
                        img_ids=img_ids.reshape(-1, 3)).sample
        return out.view(B, H // 2, W // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)

    def _sampling_sigmas(self, steps: int) -> list[float] | None:
        return [float(x) for x in np.linspace(1.0, 1 / steps, steps)]  # as FluxPipeline

    def _sample(self, prompts: list[str], noise_BCHW: torch.Tensor, seed: int, steps: int,
                guidance: float) -> torch.Tensor:
        if not self.unet.config.guidance_embeds:  # FLUX.1-schnell: the pipeline runs no guidance at all
            return super()._sample(prompts, noise_BCHW, seed, steps, 1.0)
        before, self._embedded = self._embedded, float(guidance)
        try:  # guidance-distilled: the scale is an input, one conditional pass per step
            return super()._sample(prompts, noise_BCHW, seed, steps, 1.0)
        finally:
            self._embedded = before

    def randomized(self, seed: int) -> "FluxWrapper":
        torch.manual_seed(seed)
        te, te2, toks = self._parts
        return FluxWrapper(f"{self.name}[randomized:{seed}]", type(self.unet).from_config(self.unet.config),
                           type(te)(te.config), type(te2)(te2.config), toks, self.scheduler, f"random-init:{seed}",
                           self.vae, self.sampling, self.adapter)


def load_flux(adapter: Adapter, name: str, path: Path, sidecar: dict[str, Any]) -> FluxWrapper:
    """A ``FluxPipeline`` folder: transformer, CLIP (pooled) and T5 (context) encoders, their
    tokenizers, VAE and a flow-matching scheduler config."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

    parts = pipeline_parts(path, ("transformer", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                                  "vae", "scheduler"))
    try:
        transformer = resolve(adapter.model_class).from_pretrained(parts["transformer"], local_files_only=True)
        te = resolve(adapter.options["text_encoder"]).from_pretrained(parts["text_encoder"], local_files_only=True)
        te2 = resolve(adapter.options["t5"]).from_pretrained(parts["text_encoder_2"], local_files_only=True)
        vae = AutoencoderKL.from_pretrained(parts["vae"], local_files_only=True)
        cfg = FlowMatchEulerDiscreteScheduler.load_config(parts["scheduler"], local_files_only=True)
        sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise load_error("Flux pipeline", path, e) from None
    tok, tok2 = (load_tokenizer(parts[k], "Flux") for k in ("tokenizer", "tokenizer_2"))
    t5_len = min(int(adapter.options.get("max_sequence_length", 512)),
                 int(getattr(tok2, "model_max_length", 512) or 512))
    fns = (_tokenizer_fn(tok, int(getattr(tok, "model_max_length", 77) or 77)), _tokenizer_fn(tok2, t5_len))
    sampling = SamplingConfig(**{**adapter.options.get("sampling", {}), **sidecar.get("sampling", {})})
    return FluxWrapper(name, transformer, te, te2, fns, sched, weights_hash(path), vae, sampling, adapter)
