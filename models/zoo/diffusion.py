"""zoo-diffusion: a small text-conditional pixel-space diffusion model of the world.

A diffusers ``UNet2DConditionModel`` (32×32×3 in and out; blocks of 32/64/64 channels,
one ResNet per block; cross-attention to the prompt in the two lower-resolution down
blocks, the mid block and the matching up blocks) denoises pixels directly, conditioned
on the per-token hidden states of a text encoder. The text encoder is zoo-clip's text
tower — a ``transformers.CLIPTextModel`` with the shipped zoo-clip ``text_model`` weights
and the same word-level :class:`~bench.world.text.Vocab` — kept frozen in phase 1, as in
Stable Diffusion (Rombach et al., 2022).

Training: prompts "a {colour} {shape}" (half of them "… at the {position}") on fresh
single-object scenes of the train split; a cosine (``squaredcos_cap_v2``) DDPM schedule
with v-prediction (Salimans & Ho, 2022); the prompt is dropped (replaced by the empty
prompt) 10% of the time so that classifier-free guidance (Ho & Salimans, 2022) works;
an EMA of the UNet weights is kept and used for sampling. Sampling: DDIM (eta 0,
"trailing" timestep spacing), deterministic from a seed.

Attention runs through diffusers' classic ``AttnProcessor`` (explicit attention
probabilities, like the zoo CLIP's eager attention) so that attention maps are sites.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.world import COLOURS, POSITIONS, SHAPES, Vocab, World, WorldConfig


@dataclass(frozen=True)
class DiffusionConfig:
    """Architecture and training recipe of zoo-diffusion."""

    name: str = "zoo-diffusion"
    world_seed: int = 0
    seed: int = 0
    text_init: str = "zoo-clip"  # the zoo CLIP whose text tower conditions the UNet
    image_size: int = 32
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_heads: int = 4  # diffusers' (legacy-named) ``attention_head_dim``: heads per attention
    norm_num_groups: int = 8
    max_text_len: int = 16
    num_train_timesteps: int = 1000
    position_prob: float = 0.5  # share of prompts "a {colour} {shape} at the {position}"
    cond_dropout: float = 0.1  # share of empty prompts (classifier-free guidance)
    steps: int = 8000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 200
    ema_decay: float = 0.999
    threads: int = 2
    extra: dict[str, Any] = field(default_factory=dict)


class ZooDiffusion(nn.Module):
    """The trained weights (``unet``), their EMA (``ema_unet``, used for sampling) and the
    frozen text encoder, with the vocabulary and config that go with them."""

    def __init__(self, unet: Any, text_encoder: Any, vocab: Vocab, cfg: DiffusionConfig) -> None:
        super().__init__()
        self.unet = unet
        self.ema_unet = copy.deepcopy(unet).requires_grad_(False)
        self.text_encoder = text_encoder.requires_grad_(False)
        self.vocab = vocab
        self.cfg = cfg

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts → (text encoder hidden states ``[B, L, D]``, attention mask ``[B, L]``)."""
        ids, mask = self.vocab.batch(list(prompts), self.cfg.max_text_len)
        self.text_encoder.eval()
        hidden = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden, mask

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        decay = min(self.cfg.ema_decay, (1 + step) / (10 + step))
        for pe, p in zip(self.ema_unet.parameters(), self.unet.parameters()):
            pe.lerp_(p.detach(), 1.0 - decay)


def build_unet(cfg: DiffusionConfig, cross_attention_dim: int) -> Any:
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    n = len(cfg.block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=cfg.image_size, in_channels=3, out_channels=3,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups, cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.attention_heads,
    )
    unet.set_attn_processor(AttnProcessor())
    return unet


def build_text_encoder(text_config: dict[str, Any]) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    enc = CLIPTextModel(CLIPTextConfig(**text_config))
    enc.set_attn_implementation("eager")
    return enc


def make_scheduler(cfg: DiffusionConfig) -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type="v_prediction", clip_sample=True, clip_sample_range=1.0)


def make_sampler(cfg: DiffusionConfig) -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type="v_prediction", clip_sample=True, clip_sample_range=1.0,
                         set_alpha_to_one=True, timestep_spacing="trailing")


def build_diffusion(cfg: DiffusionConfig) -> ZooDiffusion:
    """A fresh UNet (seeded by the caller) + the text tower of the shipped ``cfg.text_init``."""
    from models.zoo import WEIGHTS_DIR
    from models.zoo.clip import load_zoo_clip

    clip, vocab, _ = load_zoo_clip(cfg.text_init, WEIGHTS_DIR)
    text = build_text_encoder(clip.config.text_config.to_dict())
    # transformers 5 flattened CLIPTextModel; 4.x wraps the same modules in ``.text_model``.
    getattr(text, "text_model", text).load_state_dict(clip.text_model.state_dict())
    unet = build_unet(cfg, text.config.hidden_size)
    return ZooDiffusion(unet, text.eval(), vocab, cfg)


def prompt_for(colour: str, shape: str, position: str | None = None) -> str:
    return f"a {colour} {shape}" + (f" at the {position}" if position else "")


def training_prompts(scenes: Sequence[Any], rng: np.random.Generator, cfg: DiffusionConfig) -> list[str]:
    out = []
    for s in scenes:
        o = s.objects[0]
        with_pos = rng.uniform() < cfg.position_prob
        drop = rng.uniform() < cfg.cond_dropout
        out.append("" if drop else prompt_for(o.colour, o.shape, o.position if with_pos else None))
    return out


def _lr_at(step: int, cfg: DiffusionConfig) -> float:
    from models.zoo.io import warmup_cosine_lr

    return warmup_cosine_lr(step, cfg.lr, cfg.warmup, cfg.steps)


def train_diffusion(cfg: DiffusionConfig, log: Callable[[str], None] = print, progress: bool = False,
                    oracle: Any | None = None, eval_every: int = 1000,
                    final_eval: bool = True) -> tuple[ZooDiffusion, dict[str, Any]]:
    """Train zoo-diffusion deterministically from ``cfg.seed``; returns (model, metrics).

    Step ``t`` sees train-split scenes ``t·B … (t+1)·B − 1`` of the single-object world.
    With an ``oracle`` (:mod:`models.zoo.oracle`), generation quality is measured every
    ``eval_every`` steps and at the end; without one only losses are recorded."""
    from models.zoo.clip import images_to_tensor

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    world = World(cfg.world_seed, WorldConfig(min_objects=1, max_objects=1))
    model = build_diffusion(cfg)
    sched = make_scheduler(cfg)
    unet = model.unet
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    rng = np.random.default_rng([cfg.seed, 23])
    gen = torch.Generator().manual_seed(int(np.random.default_rng([cfg.seed, 29]).integers(2**62)))
    from tqdm.auto import tqdm

    t0 = time.time()
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc=f"train {cfg.name}", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        unet.train()
        scenes = list(world.scenes("train", cfg.batch_size, step * cfg.batch_size))
        x0 = images_to_tensor(np.stack([s.image_HWC for s in scenes])) * 2 - 1
        hidden, mask = model.encode_prompts(training_prompts(scenes, rng, cfg))
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), generator=gen)
        xt = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        pred = unet(xt, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        model.update_ema(step)
        losses.append(float(loss.item()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if (step % eval_every == 0 and step > 0) or step == cfg.steps - 1:
            entry: dict[str, Any] = {"step": step, "loss": float(np.mean(losses[-100:]))}
            if oracle is not None and final_eval:
                entry.update(generation_quality(model, oracle, n=48, seed=10_000 + step))
            history.append(entry)
            log(f"step {step} lr {_lr_at(step, cfg):.2e} {time.time() - t0:.0f}s "
                + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()
                           if k != "step"))
    model.eval()
    metrics: dict[str, Any] = {
        "train_seconds": round(time.time() - t0, 1), "history": history,
        "final_loss": float(np.mean(losses[-100:])) if losses else float("nan"),
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
    }
    if oracle is not None and final_eval:
        metrics.update(generation_quality(model, oracle, n=480, seed=0))
        metrics.update(generation_quality(model, oracle, n=216, seed=1, with_position=True, prefix="gen_pos_"))
    return model, metrics


@torch.no_grad()
def sample(model: ZooDiffusion, prompts: Sequence[str], seed: int, steps: int = 25, guidance: float = 3.0,
           use_ema: bool = True, callback: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """DDIM (eta 0) samples for ``prompts``: pixels ``[B, 3, S, S]`` in [0, 1].

    Deterministic: the starting noise of sample ``i`` is drawn from
    ``numpy.random.default_rng([seed, i])`` and nothing else is random. ``guidance`` is the
    classifier-free guidance scale (1 = conditional only). ``callback(k, t, x_t)`` sees the
    latent after each step."""
    cfg = model.cfg
    unet = model.ema_unet if use_ema else model.unet
    unet.eval()
    S = cfg.image_size
    x = torch.from_numpy(np.stack([np.random.default_rng([seed, i]).standard_normal((3, S, S))
                                   for i in range(len(prompts))]).astype(np.float32))
    cond, cmask = model.encode_prompts(prompts)
    if guidance != 1.0:
        unc, umask = model.encode_prompts([""] * len(prompts))
        hidden, mask = torch.cat([cond, unc]), torch.cat([cmask, umask])
    else:
        hidden, mask = cond, cmask
    sampler = make_sampler(cfg)
    sampler.set_timesteps(steps)
    for k, t in enumerate(sampler.timesteps):
        inp = torch.cat([x, x]) if guidance != 1.0 else x
        out = unet(inp, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        if guidance != 1.0:
            c, u = out.chunk(2)
            out = u + guidance * (c - u)
        x = sampler.step(out, t, x, eta=0.0).prev_sample
        if callback is not None:
            callback(k, int(t), x)
    return ((x + 1) / 2).clamp(0, 1)


def generation_quality(model: ZooDiffusion, oracle: Any, n: int = 240, seed: int = 0, steps: int = 25,
                       guidance: float = 3.0, batch: int = 48, with_position: bool = False,
                       prefix: str = "gen_") -> dict[str, float]:
    """Share of ``n`` samples in which the oracle reads the prompted shape and colour.

    Prompts cycle through all colour × shape pairs (× positions with ``with_position``)
    in a fixed order. Keys: ``{prefix}shape``, ``{prefix}colour``, ``{prefix}both`` (shape
    and colour right in the same sample), ``{prefix}position`` with positions."""
    from models.zoo.oracle import HEADS, predict

    combos = [(c, s, p) for p in (POSITIONS if with_position else (None,)) for c in COLOURS for s in SHAPES]
    specs = [combos[i % len(combos)] for i in range(n)]
    hits: dict[str, list[bool]] = {k: [] for k in ("shape", "colour", "both", "position")}
    for start in range(0, n, batch):
        chunk = specs[start:start + batch]
        pix = sample(model, [prompt_for(*sp) for sp in chunk], seed=seed * 1_000_003 + start, steps=steps,
                     guidance=guidance)
        pred = predict(oracle, pix)
        for b, (c, s, p) in enumerate(chunk):
            ps, pc = HEADS["shape"][int(pred["shape"][b])], HEADS["colour"][int(pred["colour"][b])]
            hits["shape"].append(ps == s)
            hits["colour"].append(pc == c)
            hits["both"].append(ps == s and pc == c)
            if p is not None:
                hits["position"].append(HEADS["position"][int(pred["position"][b])] == p)
    return {f"{prefix}{k}": float(np.mean(v)) for k, v in hits.items() if v}


def save_diffusion(model: ZooDiffusion, metrics: dict[str, Any], weights_dir: Path) -> Path:
    """Write ``<name>.safetensors`` (``unet.*``, ``ema_unet.*``, ``text_encoder.*``) and
    ``<name>.json`` (config, vocabulary, text/UNet configs, metrics, sha256)."""
    from models.zoo.io import save_weights

    cfg = model.cfg
    return save_weights(
        cfg.name, model.state_dict(), weights_dir, family="diffusion", config=asdict(cfg), vocab=model.vocab.words,
        text_config=model.text_encoder.config.to_dict(),
        unet_config={k: v for k, v in dict(model.unet.config).items() if not k.startswith("_")},
        scheduler={"train": "DDPMScheduler", "sample": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2",
                   "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
        metrics=metrics)


def load_diffusion(name: str, weights_dir: Path) -> tuple[ZooDiffusion, dict[str, Any]]:
    """Rebuild from the json alone (no zoo-clip needed) and load the weights strictly."""
    from safetensors.torch import load_file

    meta = json.loads((weights_dir / f"{name}.json").read_text())
    c = dict(meta["config"])
    c["block_out_channels"] = tuple(c["block_out_channels"])
    cfg = DiffusionConfig(**c)
    text = build_text_encoder({k: v for k, v in meta["text_config"].items()
                               if k not in ("architectures", "transformers_version", "model_type")})
    model = ZooDiffusion(build_unet(cfg, text.config.hidden_size), text, Vocab(meta["vocab"]), cfg)
    model.load_state_dict(load_file(str(weights_dir / f"{name}.safetensors")), strict=True)
    model.eval()
    return model, meta
