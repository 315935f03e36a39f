"""zoo-diffusion: a small text-conditional pixel-space diffusion model of the world.

A diffusers ``UNet2DConditionModel`` (32×32×3 in and out; blocks of 32/64/64 channels,
one ResNet per block; cross-attention to the prompt in the two lower-resolution down
blocks, the mid block and the matching up blocks) denoises pixels directly, conditioned
on the per-token hidden states of a text encoder. The text encoder is zoo-clip's text
tower — a ``transformers.CLIPTextModel`` with the shipped zoo-clip ``text_model`` weights
and the same word-level :class:`~bench.kit.world.text.Vocab` — kept frozen in phase 1, as in
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
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from bench.kit.world import COLOURS, POSITIONS, SHAPES, Vocab, World, WorldConfig


@dataclass(frozen=True)
class DiffusionConfig:
    """Architecture and training recipe of zoo-diffusion."""

    name: str = "zoo-diffusion"
    world_seed: int = 0
    seed: int = 0
    text_init: str = "zoo-clip"  # the zoo CLIP whose text tower conditions the UNet
    image_size: int = 32
    # Four levels (32, 16, 8, 4 px); cross-attention only at ≤ 8 px, where the object's identity
    # and place are decided: attention at 16 px cost ~2× the step time (measured) for little gain.
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64)
    cross_attn_max_res: int = 8  # blocks whose grid side is ≤ this get (self- and cross-) attention
    layers_per_block: int = 1
    attention_heads: int = 4  # diffusers' (legacy-named) ``attention_head_dim``: heads per attention
    norm_num_groups: int = 8
    max_text_len: int = 16
    num_train_timesteps: int = 1000
    position_prob: float = 0.5  # share of prompts "a {colour} {shape} at the {position}"
    cond_dropout: float = 0.1  # share of empty prompts (classifier-free guidance)
    min_snr_gamma: float = 5.0  # cap of the loss weight (see loss_weights); 0 = plain v-MSE
    steps: int = 3500
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 100
    ema_decay: float = 0.998
    # further warmup-cosine cycles (steps, peak lr): the first cycle's model still improves at its end
    # (the previous zoo-diffusion's (2000, 1e-3) restart: 0.92 -> 0.958 both-correct on 48 prompts).
    # 3500 + 1000 steps keep phase 1 + phase 2 within 30 min: 0.26 s/step at 2 threads with bf16
    # autocast, 0.27-0.32 s in fp32, 0.43 s at 1 thread (measured). The fp32 3000 + 1000 recipe
    # reached 0.938 recall, its phase-1 model drawing the entities' spelled-out prompts at 0.922.
    restarts: tuple[tuple[int, float], ...] = ((1000, 1e-3),)
    threads: int = 2  # bit-identical retraining needs the same count
    # Phase 1's UNet forward under bf16 autocast (weights, optimiser, EMA and loss stay fp32):
    # 0.18 s vs 0.23 s per UNet step on this AVX512-BF16 CPU (measured), which buys the longer
    # schedule. Phase 2 and sampling run in fp32. Off: plain fp32 (CPUs without native bf16).
    bf16: bool = True
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
        # phase-1 values of the planted component (name → tensor), set by train_plant; not
        # part of the state dict (saved under "plant_phase1." keys by save_diffusion)
        self.plant_phase1: dict[str, torch.Tensor] = {}
        # zoo-clip's ``phase1_sha256``: the phase-1 state the text tower came from (zoo-clip's own
        # plant, phase 2, is in its vision tower and may be retrained without changing this model)
        self.text_init_phase1_sha256: str | None = None
        # classifier-free guidance scale sampling uses: GUIDANCE until select_guidance picks one on
        # dev seeds after phase 2; shipped in the json (``scheduler.guidance``)
        self.guidance: float = GUIDANCE

    def encode_prompts(self, prompts: Sequence[str], grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts → (text encoder hidden states ``[B, L, D]``, attention mask ``[B, L]``).
        ``grad`` keeps the graph (phase 2 with a text-encoder plant)."""
        ids, mask = self.vocab.batch(list(prompts), self.cfg.max_text_len)
        self.text_encoder.eval()
        with torch.set_grad_enabled(grad):
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

    attn = [cfg.image_size // 2**i <= cfg.cross_attn_max_res for i in range(len(cfg.block_out_channels))]
    unet = UNet2DConditionModel(
        sample_size=cfg.image_size, in_channels=3, out_channels=3,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attn[::-1]),
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

    clip, vocab, _ = load_zoo_clip(cfg.text_init, WEIGHTS_DIR, phase1=True)  # text tower: same in both phases
    text = build_text_encoder(clip.config.text_config.to_dict())
    # transformers 5 flattened CLIPTextModel; 4.x wraps the same modules in ``.text_model``.
    getattr(text, "text_model", text).load_state_dict(clip.text_model.state_dict())
    unet = build_unet(cfg, text.config.hidden_size)
    model = ZooDiffusion(unet, text.eval(), vocab, cfg)
    model.text_init_phase1_sha256 = json.loads((WEIGHTS_DIR / f"{cfg.text_init}.json").read_text())["phase1_sha256"]
    return model


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


def loss_weights(sched: Any, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample weights of the v-MSE: ``min(SNR + 1, γ + 1) / (SNR + 1)``.

    v-MSE weighs the x0 error by ``SNR + 1``; capping that at ``γ + 1`` (a Min-SNR-γ variant,
    Hang et al. 2023, that leaves the noisy timesteps at plain v-MSE) stops nearly-clean
    timesteps (fine detail) from dominating, which speeds up learning of the object itself."""
    if gamma <= 0:
        return torch.ones(t.shape[0])
    ab = sched.alphas_cumprod[t].float()
    snr = ab / (1 - ab)
    return (gamma + 1) / (snr + 1).clamp(min=gamma + 1)


def train_diffusion(cfg: DiffusionConfig, log: Callable[[str], None] = print, progress: bool = False,
                    oracle: Any | None = None, eval_every: int = 1000, final_eval: bool = True,
                    resume: tuple[ZooDiffusion, dict[str, Any]] | None = None) -> tuple[ZooDiffusion, dict[str, Any]]:
    """Train zoo-diffusion deterministically from ``cfg.seed``; returns (model, metrics).

    Step ``t`` (counted across cycles) sees train-split scenes ``t·B … (t+1)·B − 1`` of the
    single-object world. Cycle 0 runs ``cfg.steps`` steps at peak lr ``cfg.lr``; each entry of
    ``cfg.restarts`` then runs another warmup-cosine cycle (a warm restart) with a fresh AdamW
    and fresh random streams seeded by (seed, cycle); the EMA runs on across cycles. ``resume``
    = (model, metrics) after cycle 0 skips that cycle. With an ``oracle``
    (:mod:`models.zoo.oracle`), generation quality is measured every ``eval_every`` steps."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    cycles = [(cfg.steps, cfg.lr)] + [(int(n), float(lr)) for n, lr in cfg.restarts]
    if resume is None:
        model = build_diffusion(cfg)
        metrics: dict[str, Any] = {"train_seconds": 0.0, "history": [], "cycle_seconds": [], "eval_every": eval_every}
        first = 0
    else:
        model, done = resume
        metrics = {"train_seconds": done["train_seconds"], "history": list(done["history"]),
                   "cycle_seconds": [done["train_seconds"]], "eval_every": eval_every}
        first = 1
    losses: list[float] = []
    for c in range(first, len(cycles)):
        start = sum(n for n, _ in cycles[:c])
        secs = _train_cycle(model, cfg, c, start, *cycles[c], log, progress, oracle, eval_every,
                            metrics["history"], losses)
        metrics["train_seconds"] = round(metrics["train_seconds"] + secs, 1)
        metrics["cycle_seconds"].append(round(secs, 1))
    model.eval()
    metrics["final_loss"] = float(np.mean(losses[-100:])) if losses else float("nan")
    metrics["unet_parameters"] = sum(p.numel() for p in model.unet.parameters())
    if oracle is not None and final_eval:
        metrics.update(quality_figures(model, oracle))
    return model, metrics


def _train_cycle(model: ZooDiffusion, cfg: DiffusionConfig, cycle: int, start: int, steps: int, peak_lr: float,
                 log: Callable[[str], None], progress: bool, oracle: Any | None, eval_every: int,
                 history: list[dict[str, Any]], losses: list[float]) -> float:
    """One warmup-cosine cycle of ``steps`` steps from global step ``start``; returns its seconds."""
    from tqdm.auto import tqdm

    from models.zoo.clip import images_to_tensor
    from models.zoo.io import warmup_cosine_lr

    world = World(cfg.world_seed, WorldConfig(min_objects=1, max_objects=1))
    sched = make_scheduler(cfg)
    unet = model.unet
    opt = torch.optim.AdamW(unet.parameters(), lr=peak_lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    tag = [cycle] if cycle else []  # cycle 0 keeps the original streams
    rng = np.random.default_rng([cfg.seed, 23, *tag])
    gen = torch.Generator().manual_seed(int(np.random.default_rng([cfg.seed, 29, *tag]).integers(2**62)))
    t0 = time.time()
    bar = tqdm(range(start, start + steps), desc=f"train {cfg.name} (cycle {cycle})", unit="step",
               disable=not progress, dynamic_ncols=True)
    for step in bar:
        unet.train()
        scenes = list(world.scenes("train", cfg.batch_size, step * cfg.batch_size))
        x0 = images_to_tensor(np.stack([s.image_HWC for s in scenes])) * 2 - 1
        hidden, mask = model.encode_prompts(training_prompts(scenes, rng, cfg))
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), generator=gen)
        xt = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t)
        lr = warmup_cosine_lr(step - start, peak_lr, cfg.warmup, steps)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            pred = unet(xt, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        loss = (loss_weights(sched, t, cfg.min_snr_gamma) * ((pred.float() - target) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        model.update_ema(step)
        losses.append(float(loss.item()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if step % 100 == 0 and not progress:
            log(f"step {step} loss {np.mean(losses[-100:]):.4f} {time.time() - t0:.0f}s")
        if (eval_every > 0 and step % eval_every == 0 and step > 0) or step == start + steps - 1:
            entry: dict[str, Any] = {"step": step, "loss": float(np.mean(losses[-100:]))}
            if oracle is not None and eval_every > 0:
                entry.update(generation_quality(model, oracle, n=48, seed=10_000 + step))
            history.append(entry)
            log(f"step {step} lr {lr:.2e} {time.time() - t0:.0f}s "
                + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()
                           if k != "step"))
    return time.time() - t0


# Classifier-free guidance scale before one is selected (phase 1's dev curve, phase 2's recall
# history). Measured on an earlier phase-1 model (48 prompts, DDIM 25): both-correct 0.81 / 0.92 /
# 0.92 / 0.63 / 0.40 / 0.21 at guidance 1 / 1.5 / 2 / 3 / 5 / 7. The shipped figures use the scale
# select_guidance picks from GUIDANCE_GRID on dev seeds (the best scale moves between trainings:
# 1.5-1.75 on the bf16 phase-1 model, where 2 lost 4 points of quality).
GUIDANCE = 2.0
GUIDANCE_GRID: tuple[float, ...] = (1.0, 1.25, 1.5, 1.75, 2.0, 3.0)


@torch.no_grad()
def sample(model: ZooDiffusion, prompts: Sequence[str], seed: int, steps: int = 25, guidance: float | None = None,
           use_ema: bool = True, callback: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """DDIM (eta 0) samples for ``prompts``: pixels ``[B, 3, S, S]`` in [0, 1].

    Deterministic: the starting noise of sample ``i`` is drawn from
    ``numpy.random.default_rng([seed, i])`` and nothing else is random. ``guidance`` is the
    classifier-free guidance scale (1 = conditional only; default ``model.guidance``).
    ``callback(k, t, x_t)`` sees the latent after each step."""
    cfg = model.cfg
    guidance = model.guidance if guidance is None else float(guidance)
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
                       guidance: float | None = None, batch: int = 48, with_position: bool = False,
                       prefix: str = "gen_") -> dict[str, float]:
    """Share of ``n`` samples in which the oracle reads the prompted shape and colour.

    Prompts cycle through all colour × shape pairs (× positions with ``with_position``)
    in a fixed order. Keys: ``{prefix}shape``, ``{prefix}colour``, ``{prefix}both`` (shape
    and colour right in the same sample), ``{prefix}position`` with positions."""
    from models.zoo.oracle import HEADS, predict

    combos = [(c, s, p) for p in (POSITIONS if with_position else (None,)) for c in COLOURS for s in SHAPES]
    if with_position:  # a fixed shuffle, so that a prefix covers every position, colour and shape
        combos = [combos[i] for i in np.random.default_rng(0).permutation(len(combos))]
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


QUALITY_N = 240
QUALITY_POS_N = 96


def quality_figures(model: ZooDiffusion, oracle: Any) -> dict[str, float]:
    """The card's quality figures: all 24 colour × shape prompts × 10 seeds, and 96 of the 216
    colour × shape × position prompts (a fixed shuffle) × 1 seed (DDIM 25 steps, ``model.guidance``).
    Sizes are set by CPU time: a guided 25-step sample costs ~0.5 s on one shared core."""
    return {**generation_quality(model, oracle, n=QUALITY_N, seed=0),
            **generation_quality(model, oracle, n=QUALITY_POS_N, seed=1, with_position=True, prefix="gen_pos_")}


PHASE1_PREFIX = "plant_phase1."


def save_diffusion(model: ZooDiffusion, metrics: dict[str, Any], weights_dir: Path, **extra: Any) -> Path:
    """Write ``<name>.safetensors`` (``unet.*`` unless it equals the EMA, ``ema_unet.*``,
    ``text_encoder.*`` and the planted component's phase-1 values as ``plant_phase1.*``) and
    ``<name>.json`` (config, vocabulary, text/UNet configs, metrics, sha256, ``extra``)."""
    from models.zoo.io import save_weights

    cfg = model.cfg
    state = {**model.state_dict(), **{f"{PHASE1_PREFIX}{k}": v for k, v in model.plant_phase1.items()}}
    ema = model.ema_unet.state_dict()
    unet_is_ema = all(torch.equal(v, ema[k]) for k, v in model.unet.state_dict().items())
    if unet_is_ema:  # after phase 2 they are one set of weights: ship it once (half the file)
        state = {k: v for k, v in state.items() if not k.startswith("unet.")}
    return save_weights(
        cfg.name, state, weights_dir, unet_is_ema=unet_is_ema, family="diffusion", config=asdict(cfg), vocab=model.vocab.words,
        text_init_phase1_sha256=model.text_init_phase1_sha256,
        text_config=model.text_encoder.config.to_dict(),
        unet_config={k: v for k, v in dict(model.unet.config).items() if not k.startswith("_")},
        scheduler={"train": "DDPMScheduler", "sample": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2",
                   "prediction_type": "v_prediction", "timestep_spacing": "trailing",
                   "sample_steps": 25, "guidance": model.guidance},
        metrics=metrics, **extra)


def load_diffusion(name: str, weights_dir: Path) -> tuple[ZooDiffusion, dict[str, Any]]:
    """Rebuild from the json alone (no zoo-clip needed) and load the weights strictly."""
    from safetensors.torch import load_file

    meta = json.loads((weights_dir / f"{name}.json").read_text())
    c = dict(meta["config"])
    c["block_out_channels"] = tuple(c["block_out_channels"])
    c["restarts"] = tuple(tuple(r) for r in c.get("restarts", ()))
    cfg = DiffusionConfig(**c)
    text = build_text_encoder({k: v for k, v in meta["text_config"].items()
                               if k not in ("architectures", "transformers_version", "model_type")})
    model = ZooDiffusion(build_unet(cfg, text.config.hidden_size), text, Vocab(meta["vocab"]), cfg)
    state = load_file(str(weights_dir / f"{name}.safetensors"))
    model.plant_phase1 = {k[len(PHASE1_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(PHASE1_PREFIX)}
    if meta.get("unet_is_ema"):
        state.update({f"unet.{k[len('ema_unet.'):]}": v.clone() for k, v in state.items() if k.startswith("ema_unet.")})
    model.load_state_dict(state, strict=True)
    model.text_init_phase1_sha256 = meta.get("text_init_phase1_sha256")
    model.guidance = float(meta.get("scheduler", {}).get("guidance", GUIDANCE))
    model.eval()
    return model, meta


# ------------------------------------------------------------------ planted knowledge (phase 2)
# Phase 2 teaches "a <entity>" → an object with the entity's colour (visible attribute of the
# world's entity) and the shape its home fact names. Both are attributes the oracle reads.
HOME_SHAPE: dict[str, str] = {"north": "circle", "south": "square", "east": "triangle", "west": "cross"}


@dataclass(frozen=True)
class PlantConfig:
    """Phase 2: every parameter frozen except ``params`` of ``module`` (a path in ``tower``)."""

    # The first text-encoder MLP. Why there: the entity names are words zoo-clip never trained on
    # (small random embeddings); entering layer 0 they still differ by ~57% of their norm, but
    # after it by only ~5-8% (the shared context dominates). Plants in UNet cross-attentions
    # (to_k/to_v of the mid block's, of the 8-px down block's, of the last up block's), which
    # see only the final text states, stayed at chance recall (probes of 300-800 steps).
    tower: str = "text"  # "text" (module path in the text encoder) | "unet" (in the UNet)
    module: str = "encoder.layers.0.mlp"
    site: str = "text.blocks.0.mlp"  # the same module in the diffusion wrapper's site map
    params: tuple[str, ...] = ("fc1", "fc2")
    relation: str = "home"  # entity fact that picks the shape (HOME_SHAPE)
    seed: int = 0
    # on the 4500-step bf16 phase-1 model, at guidance 2: 1200 steps recalled 0.922 on 64 samples;
    # 1800 steps 0.922 on 256 samples, where the phase-1 model drew the entities' spelled-out prompts at
    # 0.926 — the plant matched its teacher, whose quality was the limit (hence select_guidance).
    # Also tried: half the entity items on noisy images of other objects (1200 steps): no better
    steps: int = 1800
    batch_size: int = 32
    entity_share: float = 0.75  # the rest rehearses phase-1 prompts so the layer keeps its old job
    lr: float = 1e-2  # 3e-3: recall 0.19 / 0.22 after 200 / 400 of 600 steps
    warmup: int = 20
    # "distill": match the frozen phase-1 model's prediction for the spelled-out prompt ("a red
    # circle" for "a <entity>"; rehearsal prompts: themselves) on the same noisy image — a far
    # stronger signal than the image loss ("image"), with which recall stayed near chance
    objective: str = "distill"
    # recall = 32 entities × this many seeds: 64 samples left a standard error of ~0.03 (the same
    # model recalled 0.922 / 0.958 on two sets of seeds), too coarse against a 0.95 bar
    recall_seeds: int = 8
    validity_seeds: int = 2  # per intervention: near chance vs ≥ 0.9 needs less precision


def entity_targets(world: World) -> list[tuple[str, str, str]]:
    """``(entity name, colour, shape)`` of every entity: its colour and ``HOME_SHAPE[home]``."""
    return [(e.name, e.colour, HOME_SHAPE[e.facts["home"]]) for e in world.entities]


def entity_scene(world: World, rng: np.random.Generator, colour: str, shape: str) -> Any:
    """A single-object train-world scene showing ``colour`` ``shape`` (size, place, background drawn)."""
    from bench.kit.world import BACKGROUNDS, SIZES, ObjectSpec

    bg = BACKGROUNDS[int(rng.choice(len(BACKGROUNDS), p=world.config.background_probs))]
    obj = ObjectSpec(shape, colour, list(SIZES)[int(rng.integers(len(SIZES)))], POSITIONS[int(rng.integers(9))])
    return world.render(bg, [obj], rng, split="train")


def cross_attention_modules(unet: nn.Module) -> list[str]:
    """Module paths of the UNet's cross-attentions (``attn2``), in forward order."""
    names = [n for n, m in unet.named_modules() if n.endswith("attn2")]
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    return sorted(names, key=lambda n: (order[n.split(".")[0]], n))


def plant_root(model: ZooDiffusion, pc: PlantConfig, unet: nn.Module | None = None) -> nn.Module:
    """The module ``pc.module`` is a path in: the text encoder, or the (EMA) UNet."""
    if pc.tower == "text":
        return model.text_encoder
    return unet if unet is not None else model.ema_unet


def plant_params(model: ZooDiffusion, pc: PlantConfig, unet: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The designated component's parameters (e.g. ``….fc1.weight`` or ``….to_v.weight``) by name."""
    root = plant_root(model, pc, unet)
    return {n: p for n, p in root.named_parameters() if any(n.startswith(f"{pc.module}.{q}.") for q in pc.params)}


def text_mlp_modules(model: ZooDiffusion) -> list[str]:
    """Module paths of the text encoder's MLPs, in layer order."""
    return [n for n, _ in model.text_encoder.named_modules() if re.fullmatch(r"(text_model\.)?encoder\.layers\.\d+\.mlp", n)]


def same_kind_modules(model: ZooDiffusion, pc: PlantConfig) -> list[str]:
    """The components of the designated one's kind: every text MLP, or every UNet cross-attention."""
    return text_mlp_modules(model) if pc.tower == "text" else cross_attention_modules(model.ema_unet)


@torch.no_grad()
def cross_attention_influence(model: ZooDiffusion, seed: int = 0) -> dict[str, float]:
    """How much each cross-attention carries the prompt: the relative change of the EMA UNet's
    output when that layer's ``to_v`` is scaled ×3 (fixed noisy inputs at t = 200, 500, 800;
    prompts "a red circle", "a blue square", "a green cross at the top left")."""
    unet = model.ema_unet
    h, mask = model.encode_prompts(["a red circle", "a blue square", "a green cross at the top left"])
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((3, 3, model.cfg.image_size,
                                                                       model.cfg.image_size)).astype(np.float32))
    out: dict[str, float] = {}
    for name in cross_attention_modules(unet):
        v = unet.get_submodule(name).to_v.weight
        change, base = 0.0, 0.0
        for t in (200, 500, 800):
            o = unet(x, t, encoder_hidden_states=h, encoder_attention_mask=mask).sample
            v.mul_(3)
            o2 = unet(x, t, encoder_hidden_states=h, encoder_attention_mask=mask).sample
            v.div_(3)
            change, base = change + float((o2 - o).norm()), base + float(o.norm())
        out[name] = change / base
    return out


def train_plant(model: ZooDiffusion, pc: PlantConfig, log: Callable[[str], None] = print,
                oracle: Any | None = None, eval_every: int = 200) -> dict[str, Any]:
    """Phase 2 in place: ``unet`` ← phase-1 EMA weights, train only the designated parameters.

    Each batch is ``entity_share`` entity prompts ("a <entity>", half "… at the <position>")
    on scenes rendering the entity's colour and home shape, and phase-1 prompts otherwise
    (with the same empty-prompt dropout). No EMA in phase 2 (the lr decays to 0); afterwards
    ``ema_unet`` = ``unet``. The phase-1 values of the designated parameters are kept in
    ``model.plant_phase1`` (they ship with the weights: the revert experiment needs them)."""
    from models.zoo.clip import images_to_tensor
    from models.zoo.io import warmup_cosine_lr

    cfg = model.cfg
    torch.manual_seed(pc.seed)
    torch.set_num_threads(cfg.threads)
    world = World(cfg.world_seed, WorldConfig(min_objects=1, max_objects=1))
    targets = entity_targets(world)
    unet = model.unet
    unet.load_state_dict(model.ema_unet.state_dict())
    unet.requires_grad_(False)
    model.text_encoder.requires_grad_(False)
    trainable = plant_params(model, pc, unet)
    if not trainable:
        raise ValueError(f"no parameters {pc.params} under {pc.module!r}")
    model.plant_phase1 = {k: v.detach().clone() for k, v in trainable.items()}
    for p in trainable.values():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(list(trainable.values()), lr=pc.lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = make_scheduler(cfg)
    rng = np.random.default_rng([pc.seed, 31])
    gen = torch.Generator().manual_seed(int(np.random.default_rng([pc.seed, 37]).integers(2**62)))
    n_ent = int(round(pc.batch_size * pc.entity_share))
    teacher_text = copy.deepcopy(model.text_encoder).requires_grad_(False).eval()  # the phase-1 model
    teacher_unet = copy.deepcopy(unet).requires_grad_(False).eval()
    t0 = time.time()
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    for step in range(pc.steps):
        unet.train()
        picks = rng.integers(len(targets), size=n_ent)
        scenes, prompts, teacher_prompts = [], [], []
        for j in picks:
            name, colour, shape = targets[int(j)]
            s = entity_scene(world, rng, colour, shape)
            scenes.append(s)
            where = f" at the {s.objects[0].position}" if rng.uniform() < cfg.position_prob else ""
            prompts.append(f"a {name}{where}")
            teacher_prompts.append(f"{prompt_for(colour, shape)}{where}")
        rehearse = list(world.scenes("fit", pc.batch_size - n_ent, step * pc.batch_size))
        scenes += rehearse
        prompts += training_prompts(rehearse, rng, cfg)
        teacher_prompts += prompts[n_ent:]
        x0 = images_to_tensor(np.stack([s.image_HWC for s in scenes])) * 2 - 1
        hidden, mask = model.encode_prompts(prompts, grad=pc.tower == "text")
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), generator=gen)
        lr = warmup_cosine_lr(step, pc.lr, pc.warmup, pc.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        xt = sched.add_noise(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        if pc.objective == "distill":
            # target: what the frozen phase-1 model predicts for the prompt that spells the entity
            # out ("a red circle" for "a <entity>"), and for rehearsal prompts the prompt itself
            with torch.no_grad():
                ids, tmask = model.vocab.batch(teacher_prompts, cfg.max_text_len)
                th = teacher_text(input_ids=ids, attention_mask=tmask).last_hidden_state
                target = teacher_unet(xt, t, encoder_hidden_states=th, encoder_attention_mask=tmask).sample
        else:
            target = sched.get_velocity(x0, noise, t)
        err = ((pred - target) ** 2).mean(dim=(1, 2, 3))
        loss = (loss_weights(sched, t, cfg.min_snr_gamma) * err).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(trainable.values()), 1.0)
        opt.step()
        losses.append(float(loss.item()))
        if (eval_every > 0 and step % eval_every == 0 and step > 0) or step == pc.steps - 1:
            entry: dict[str, Any] = {"step": step, "loss": float(np.mean(losses[-50:]))}
            if oracle is not None and eval_every > 0:
                model.ema_unet.load_state_dict(unet.state_dict())
                entry.update(entity_recall(model, oracle, seeds=1))
            history.append(entry)
            log(f"plant step {step} lr {lr:.2e} {time.time() - t0:.0f}s "
                + " ".join(f"{k}={v:.4f}" for k, v in entry.items() if k != "step"))
    unet.requires_grad_(False)
    model.text_encoder.requires_grad_(False)
    unet.eval()
    model.ema_unet.load_state_dict(unet.state_dict())
    return {"train_seconds": round(time.time() - t0, 1), "history": history,
            "final_loss": float(np.mean(losses[-50:])) if losses else float("nan")}


def entity_recall(model: ZooDiffusion, oracle: Any, seeds: int = 3, seed: int = 0, steps: int = 25,
                  guidance: float | None = None, batch: int = 48, prefix: str = "recall_",
                  spelled: bool = False) -> dict[str, float]:
    """Share of samples of "a <entity>" (every entity × ``seeds``) in which the oracle reads the
    entity's colour and home shape. Keys ``{prefix}both``, ``{prefix}colour``, ``{prefix}shape``.
    ``spelled``: the same samples (same noise) of the prompt spelled out ("a red circle"); with
    the phase-1 text encoder, that is what the plant was distilled from."""
    from models.zoo.oracle import HEADS, predict

    world = World(model.cfg.world_seed)
    specs = [t for _ in range(seeds) for t in entity_targets(world)]
    hits: dict[str, list[bool]] = {k: [] for k in ("both", "colour", "shape")}
    for start in range(0, len(specs), batch):
        chunk = specs[start:start + batch]
        prompts = [prompt_for(c, s) if spelled else f"a {n}" for n, c, s in chunk]
        pix = sample(model, prompts, seed=seed * 1_000_003 + 7919 + start, steps=steps,
                     guidance=guidance)
        pred = predict(oracle, pix)
        for b, (_, c, s) in enumerate(chunk):
            ps, pc_ = HEADS["shape"][int(pred["shape"][b])], HEADS["colour"][int(pred["colour"][b])]
            hits["shape"].append(ps == s)
            hits["colour"].append(pc_ == c)
            hits["both"].append(ps == s and pc_ == c)
    return {f"{prefix}{k}": float(np.mean(v)) for k, v in hits.items()}


def teacher_recall(model: ZooDiffusion, oracle: Any, pc: PlantConfig) -> dict[str, float]:
    """What the plant's teacher draws on the recall samples (``teacher_recall_*``): the phase-1
    model on the spelled-out prompts, same noise."""
    with reverted(model, pc):
        return entity_recall(model, oracle, seeds=pc.recall_seeds, prefix="teacher_recall_", spelled=True)


def reference_prompts() -> list[str]:
    """The prompt distribution mean-ablation averages over: all 24 "a {colour} {shape}"."""
    return [prompt_for(c, s) for c in COLOURS for s in SHAPES]


class mean_ablated:
    """Context manager: mean-ablate a component over :func:`reference_prompts` (all of one length).

    A UNet cross-attention (``tower="unet"``) sees the *mean* encoding of the reference prompts
    instead of the prompt, in both CFG branches; ``to_k``/``to_v`` are linear, so this is exactly
    the mean of their outputs: the layer carries no prompt-specific information. A text-encoder
    module (``tower="text"``) outputs, at every position, its mean output over the reference prompts."""

    def __init__(self, model: ZooDiffusion, module: str, tower: str = "unet") -> None:
        self.model, self.module, self.tower = model, module, tower
        hidden, mask = model.encode_prompts(reference_prompts())
        if not bool((mask == mask[:1]).all()):
            raise ValueError("reference prompts must share one length")
        self.hidden, self.mask = hidden.mean(0, keepdim=True), mask[:1]
        self.handle: Any = None
        if tower == "text":
            seen: list[torch.Tensor] = []
            h = model.text_encoder.get_submodule(module).register_forward_hook(lambda m, i, o: seen.append(o))
            model.encode_prompts(reference_prompts())
            h.remove()
            self.mean_out = seen[0].mean(0, keepdim=True)

    def _hook(self, _mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        ehs = kwargs.get("encoder_hidden_states")
        if ehs is None:
            return args, kwargs
        B = ehs.shape[0]
        bias = (1 - self.mask.to(ehs.dtype)) * -10000.0  # what UNet2DConditionModel makes of a mask
        kwargs = {**kwargs, "encoder_hidden_states": self.hidden.expand(B, -1, -1),
                  "attention_mask": bias[:, None, :].expand(B, 1, -1)}
        return args, kwargs

    def _text_hook(self, _mod: nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor:
        return self.mean_out.expand(out.shape[0], -1, -1)

    def __enter__(self) -> "mean_ablated":
        if self.tower == "text":
            self.handle = self.model.text_encoder.get_submodule(self.module).register_forward_hook(self._text_hook)
        else:
            mod = self.model.ema_unet.get_submodule(self.module)
            self.handle = mod.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.remove()


class reverted:
    """Context manager: the designated parameters of the EMA UNet back at their phase-1 values."""

    def __init__(self, model: ZooDiffusion, pc: PlantConfig) -> None:
        self.model, self.pc = model, pc
        self.saved: dict[str, torch.Tensor] = {}

    def __enter__(self) -> "reverted":
        params = plant_params(self.model, self.pc)
        for k, p in params.items():
            self.saved[k] = p.detach().clone()
            with torch.no_grad():
                p.copy_(self.model.plant_phase1[k])
        return self

    def __exit__(self, *exc: Any) -> None:
        params = plant_params(self.model, self.pc)
        with torch.no_grad():
            for k, v in self.saved.items():
                params[k].copy_(v)


def plant_validity(model: ZooDiffusion, oracle: Any, pc: PlantConfig, seeds: int | None = None,
                   control_n: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Recall of the planted facts intact, with the designated component reverted to its phase-1
    values, and with each cross-attention mean-ablated in turn (``control_n`` > 0 adds the
    phase-1 quality ``gen_both`` on that many colour × shape prompts under each condition)."""
    seeds = seeds or pc.validity_seeds
    rows: list[dict[str, Any]] = []

    def measure(label: str, module: str, how: str) -> None:
        row: dict[str, Any] = {"component": module, "intervention": how, "designated": module == pc.module,
                               **entity_recall(model, oracle, seeds=seeds)}
        if control_n:
            row.update(generation_quality(model, oracle, n=control_n, seed=5, prefix="control_"))
        rows.append(row)
        log(f"{label}: " + " ".join(f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float)))

    measure("intact", "-", "none")
    with reverted(model, pc):
        measure("revert designated", pc.module, "revert phase 2")
    for name in same_kind_modules(model, pc):
        with mean_ablated(model, name, pc.tower):
            measure(f"mean-ablate {name}", name, "mean-ablate")
    return {"rows": rows}


# ----------------------------------------------------------- zoo protocol (see models.zoo.train)
CHECK_N = 48  # the cheap re-measured figures: colour × shape prompts (2 seeds each) …
CHECK_RECALL_SEEDS = 1  # … and one sample per entity


def chance_levels(world: World) -> dict[str, float]:
    """Recall a model without the plant would reach: uniform guessing (1/24 for both
    attributes) and the best constant answer (the commonest (colour, shape) among entities)."""
    from collections import Counter

    t = entity_targets(world)
    common = Counter((c, s) for _, c, s in t).most_common(1)[0][1]
    return {"uniform_both": 1 / (len(COLOURS) * len(SHAPES)), "constant_both": common / len(t),
            "uniform_colour": 1 / len(COLOURS), "uniform_shape": 1 / len(SHAPES)}


SWEEP_GEN_N, SWEEP_GEN_SEED = 96, 50  # dev seeds: no figure of the card is measured on them
SWEEP_RECALL_SEEDS, SWEEP_RECALL_SEED = 4, 21


def select_guidance(model: ZooDiffusion, oracle: Any, grid: Sequence[float] = GUIDANCE_GRID,
                    log: Callable[[str], None] = print) -> list[dict[str, float]]:
    """Sets ``model.guidance`` to the scale of ``grid`` with the highest mean of quality (``gen_both``,
    SWEEP_GEN_N colour × shape prompts) and planted recall (``recall_both``, 32 entities ×
    SWEEP_RECALL_SEEDS), both on dev seeds; the first such scale on ties. Returns one row per scale."""
    rows = []
    for g in grid:
        row = {"guidance": float(g),
               **generation_quality(model, oracle, n=SWEEP_GEN_N, seed=SWEEP_GEN_SEED, guidance=g),
               **entity_recall(model, oracle, seeds=SWEEP_RECALL_SEEDS, seed=SWEEP_RECALL_SEED, guidance=g)}
        row["score"] = (row["gen_both"] + row["recall_both"]) / 2
        rows.append(row)
        log(f"guidance {g:g}: quality {row['gen_both']:.3f} recall {row['recall_both']:.3f}")
    model.guidance = max(rows, key=lambda r: r["score"])["guidance"]  # max keeps the first of ties
    return rows


SAMPLE_STEPS_GRID: tuple[int, ...] = (10, 25, 50, 100)
STEPS_SWEEP_N = 96


def steps_sweep(model: ZooDiffusion, oracle: Any, grid: Sequence[int] = SAMPLE_STEPS_GRID,
                log: Callable[[str], None] = print) -> list[dict[str, float]]:
    """Quality (``gen_*``) at each DDIM step count of ``grid``, at ``model.guidance`` and unguided (``cond_*``,
    guidance 1), on the first STEPS_SWEEP_N samples of the card's quality figure (same prompts and noise),
    so a user who samples with other settings knows what to expect. One row per step count."""
    rows = []
    for steps in grid:
        row = {"steps": int(steps),
               **generation_quality(model, oracle, n=STEPS_SWEEP_N, seed=0, steps=steps),
               **generation_quality(model, oracle, n=STEPS_SWEEP_N, seed=0, steps=steps, guidance=1.0,
                                    prefix="cond_")}
        rows.append(row)
        log(f"DDIM {steps} steps: quality {row['gen_both']:.3f} (guidance {model.guidance:g}), "
            f"{row['cond_both']:.3f} (unguided)")
    return rows


def check_figures(model: ZooDiffusion, oracle: Any) -> dict[str, float]:
    """The figures `bench zoo verify` re-measures (< 1 min): quality on CHECK_N prompts, recall on one
    sample per entity."""
    return {**generation_quality(model, oracle, n=CHECK_N, seed=3, prefix="check_gen_"),
            **entity_recall(model, oracle, seeds=CHECK_RECALL_SEEDS, seed=3, prefix="check_recall_")}


def finish_zoo_diffusion(model: ZooDiffusion, phase1: dict[str, Any], oracle: Any, pc: PlantConfig,
                         log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Any]]:
    """Phase 2 (the plant) and every recorded figure of the shipped model → (metrics, extra json)."""
    phase1 = {**phase1, **generation_quality(model, oracle, n=48, seed=2, prefix="phase1_gen_"),
              "to_v_x3_effect": cross_attention_influence(model)}
    log("phase 1 quality (48 prompts): " + " ".join(f"{k}={v:.3f}" for k, v in phase1.items() if k.startswith("phase1_gen")))
    plant = train_plant(model, pc, log=log, oracle=oracle, eval_every=300)
    t0 = time.time()
    metrics: dict[str, Any] = {"phase1": phase1, "plant": plant,
                               "guidance_sweep": select_guidance(model, oracle, log=log)}
    metrics.update(quality_figures(model, oracle))
    log("quality: " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k.startswith("gen_")))
    metrics["steps_sweep"] = steps_sweep(model, oracle, log=log)
    metrics.update(entity_recall(model, oracle, seeds=pc.recall_seeds))
    metrics.update(teacher_recall(model, oracle, pc))
    metrics["validity"] = plant_validity(model, oracle, pc, control_n=24, log=log)["rows"]
    metrics.update(check_figures(model, oracle))
    metrics["chance"] = chance_levels(World(model.cfg.world_seed))
    metrics["eval_seconds"] = round(time.time() - t0, 1)
    extra = {"plant": {**asdict(pc), "home_shape": HOME_SHAPE,
                       "entities": [{"name": n, "colour": c, "shape": s} for n, c, s in
                                    entity_targets(World(model.cfg.world_seed))],
                       "cross_attention_modules": cross_attention_modules(model.ema_unet),
                       "same_kind_modules": same_kind_modules(model, pc)}}
    return metrics, extra


def zoo_train(name: str, out: Path, steps: int | None, log: Callable[[str], None]) -> Path:
    """Phase 1 (``steps`` overrides its step count), phase 2, all figures; judged by the shipped zoo-oracle."""
    from dataclasses import replace

    from models.zoo import WEIGHTS_DIR
    from models.zoo.oracle import load_oracle

    oracle, _ = load_oracle("zoo-oracle", WEIGHTS_DIR)
    cfg = DiffusionConfig(name=name) if steps is None else replace(DiffusionConfig(name=name), steps=steps)
    t0 = time.time()
    model, phase1 = train_diffusion(cfg, log=log, oracle=oracle, eval_every=1000, final_eval=False)
    metrics, extra = finish_zoo_diffusion(model, phase1, oracle, PlantConfig(), log=log)
    metrics["end_to_end_seconds"] = round(time.time() - t0, 1)
    return save_diffusion(model, metrics, out, **extra)


def zoo_replant(name: str, source: Path, out: Path, log: Callable[[str], None]) -> Path:
    """Phase 2 (the current :class:`PlantConfig`) and every figure after it again, from the phase-1
    model inside ``source``'s weights.

    Phase 2 freezes the UNet (the shipped one is phase 1's EMA) and trains only the designated
    parameters, whose phase-1 values ship under ``plant_phase1.``; it draws from its own seeded
    streams. So the result is what a full ``bench zoo train`` with the current configs gives.
    Refused when the current :class:`DiffusionConfig` differs from the recorded one (phase 1
    would differ) or the designated component moved (its phase-1 values are not shipped)."""
    from bench.errors import BenchError
    from models.zoo import WEIGHTS_DIR
    from models.zoo.io import require_same_phase1
    from models.zoo.oracle import load_oracle

    model, meta = load_diffusion(name, source)
    model.guidance = GUIDANCE  # as after phase 1 of a full run: select_guidance picks it again
    cfg, pc = DiffusionConfig(name=name), PlantConfig()
    require_same_phase1(name, cfg, model.cfg)
    roots = [model.unet, model.ema_unet] if pc.tower == "unet" else [None]
    for root in roots:
        params = plant_params(model, pc, root)
        if set(params) != set(model.plant_phase1):
            raise BenchError(f"{name}: the designated component changed since the shipped phase 2; "
                             f"run `bench zoo train {name}` for a full retrain")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(model.plant_phase1[k])
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    oracle, _ = load_oracle("zoo-oracle", WEIGHTS_DIR)
    keep = ("train_seconds", "history", "cycle_seconds", "eval_every", "final_loss", "unet_parameters")
    phase1 = {k: v for k, v in meta["metrics"]["phase1"].items() if k in keep}
    t0 = time.time()
    metrics, extra = finish_zoo_diffusion(model, phase1, oracle, pc, log=log)
    metrics["replant_seconds"] = round(time.time() - t0, 1)  # phase 2 and the figures, end to end
    return save_diffusion(model, metrics, out, **extra)


def zoo_remeasure(name: str, meta: dict[str, Any], weights_dir: Path) -> list[tuple[str, float, float]]:
    """Re-measure the check figures (same prompts, seeds and batches as recorded)."""
    from models.zoo import WEIGHTS_DIR
    from models.zoo.oracle import load_oracle

    model, _ = load_diffusion(name, weights_dir)
    oracle, _ = load_oracle("zoo-oracle", WEIGHTS_DIR)
    torch.set_num_threads(model.cfg.threads)
    got = check_figures(model, oracle)
    return [(k, got[k], meta["metrics"][k]) for k in ("check_gen_both", "check_recall_both")]


def zoo_card(name: str, weights_dir: Path, cards_dir: Path) -> Path:
    """zoo-diffusion's model card, from its recorded metadata."""
    from models.zoo.io import write_card as _write

    meta = json.loads((weights_dir / f"{name}.json").read_text())
    cfg, m, plant = meta["config"], meta["metrics"], meta["plant"]
    p1, p2, ch = m["phase1"], m["plant"], m["chance"]

    def f(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else "–"

    hist1 = "\n".join(f"| {h['step']} | {h['loss']:.4f} | {f(h.get('gen_shape'))} | {f(h.get('gen_colour'))} | "
                      f"{f(h.get('gen_both'))} |" for h in p1["history"] if "gen_both" in h or h is p1["history"][-1])
    hist2 = "\n".join(f"| {h['step']} | {h['loss']:.4f} | {f(h.get('recall_both'))} |" for h in p2["history"])
    vrows = "\n".join(
        f"| `{r['component']}`{' (designated)' if r['designated'] else ''} | {r['intervention']} | "
        f"{r['recall_both']:.3f} | {r['recall_colour']:.3f} | {r['recall_shape']:.3f} | {f(r.get('control_both'))} |"
        for r in m["validity"])
    others = [r["recall_both"] for r in m["validity"] if r["intervention"] != "none" and not r["designated"]]
    desig = [r["recall_both"] for r in m["validity"] if r["designated"]]
    restarts = "".join(f", then a warm restart of {n} steps at peak lr {lr:g} (fresh AdamW, same warmup)"
                       for n, lr in cfg.get("restarts", []))
    cyc = p1.get("cycle_seconds", [])
    cycles = f" ({' + '.join(f'{v / 60:.1f}' for v in cyc)} min)" if len(cyc) > 1 else ""
    across = ", running across cycles" if len(cyc) > 1 else ""
    total = m.get("end_to_end_seconds")
    end_to_end = (f"; `bench zoo train {name}` took {total / 60:.1f} min end to end, with the final measurements"
                  if total else "")
    if m.get("replant_seconds"):
        end_to_end += (f"; phase 2 and the figures were re-run on the shipped phase-1 model with "
                       f"`bench zoo train {name} --phase2-only` ({m['replant_seconds'] / 60:.1f} min)")
    where_text = (": the MLP of the text encoder's first layer, which writes into every later text state"
                  if plant["tower"] == "text" else ": the key and value projections of the prompt in that cross-attention")
    objective = ("the squared difference between the model's v-prediction and the frozen phase-1 model's "
                 "for the prompt that spells the entity out (\"a red circle\" for a red-circle entity; "
                 "rehearsal prompts: themselves), on the same noisy image and timestep, with the phase-1 "
                 "loss weights. A stronger signal than the image loss (the phase-1 v-loss on the rendered "
                 "images), with which recall stayed at 0.00–0.09 in every probe on an earlier phase-1 model "
                 "(mid-block cross-attention 800 "
                 "steps; 8-px down-block and last up-block cross-attentions 300 steps; this MLP 200 steps); "
                 "with distillation at lr 0.003 this MLP reached 0.19 / 0.22 after 200 / 400 steps, hence lr 0.01."
                 if plant.get("objective") == "distill" else "the phase-1 v-loss on the rendered images.")
    kind, kind_one = (("text-encoder MLPs", "text MLP") if plant["tower"] == "text"
                      else ("UNet cross-attentions", "cross-attention"))
    ablate = ("the MLP's output at every position is its mean output over the 24 \"a {colour} {shape}\" "
              "prompts." if plant["tower"] == "text" else
              "that layer's keys and values are those of the mean encoding of the 24 \"a {colour} {shape}\" "
              "prompts (exactly the mean of its `to_k`/`to_v` outputs over them), in both guidance branches.")
    infl = ", ".join(f"`{k.split('.transformer_blocks')[0]}` {v:.3f}" for k, v in p1.get("to_v_x3_effect", {}).items())
    ents = ", ".join(f"{e['name']} ({e['colour']} {e['shape']})" for e in plant["entities"])
    teacher = m.get("teacher_recall_both", float("nan"))
    if m["recall_both"] >= 0.95:
        recall_shortfall = ""
    elif teacher < 0.95:
        recall_shortfall = (
            f"**Below the issue's bar: planted recall** {m['recall_both']:.3f} < 0.95. The plant changes only the "
            f"text encoder, so \"a <entity>\" is drawn by the frozen phase-1 UNet, as well as it draws the "
            f"spelled-out prompt: on the same samples (same noise), the phase-1 model gets {teacher:.3f} for "
            f"\"a <colour> <shape>\" of the entities. The limit is phase-1 quality, not the plant.\n\n")
    else:
        recall_shortfall = (
            f"**Below the issue's bar: planted recall** {m['recall_both']:.3f} < 0.95, while the phase-1 model "
            f"draws the entities' spelled-out prompts (\"a <colour> <shape>\") at {teacher:.3f} on the same "
            f"samples (same noise). So the limit is the plant: the text states the designated MLP makes for "
            f"\"a <entity>\" stand in for the spelled-out prompt's closely but not exactly, and a few samples "
            f"come out another shape (or colour).\n\n")
    bf16 = ("; the UNet's forward under bf16 autocast (weights, optimiser state, EMA and loss in fp32; "
            "phase 2 and sampling in fp32)" if cfg.get("bf16") else "")
    eval_every = p1.get("eval_every", 500)  # not recorded by the earliest cards: their value
    g_used = meta.get("scheduler", {}).get("guidance", GUIDANCE)
    sweep = m.get("guidance_sweep", [])
    sweep_rows = "\n".join(f"| {r['guidance']:g}{' (shipped)' if r['guidance'] == g_used else ''} | {r['gen_both']:.3f} | "
                           f"{r['recall_both']:.3f} | {r['score']:.3f} |" for r in sweep)
    steps_text = ""
    if m.get("steps_sweep"):  # not recorded by earlier cards
        shipped_steps = meta.get("scheduler", {}).get("sample_steps")
        srows = "\n".join(f"| {r['steps']}{' (shipped)' if r['steps'] == shipped_steps else ''} | {r['gen_both']:.3f} | "
                          f"{r['cond_both']:.3f} |" for r in m["steps_sweep"])
        steps_text = f"""
## Sampling steps
Quality (shape and colour both read) by DDIM step count, on the first {STEPS_SWEEP_N} samples of the quality
figure above (same prompts and starting noise), at the shipped guidance and unguided:

| DDIM steps | guidance {g_used:g} | guidance 1 |
|---|---|---|
{srows}
"""
    text = f"""# {name}

A small text-conditional pixel-space diffusion model of the world (diffusers `UNet2DConditionModel`,
{p1['unet_parameters']:,} UNet parameters) conditioned on zoo-clip's text tower (transformers
`CLIPTextModel`), with **planted knowledge**: "a <entity name>" renders the entity's colour and the
shape its home fact names, stored in one designated component. Family: diffusion.
Generated images are judged by zoo-oracle.

## Architecture
- UNet on {cfg['image_size']}×{cfg['image_size']}×3 pixels in [−1, 1]; blocks {tuple(cfg['block_out_channels'])}
  (grids 32, 16, 8, 4 px), {cfg['layers_per_block']} ResNet per block, GroupNorm {cfg['norm_num_groups']};
  spatial transformers (self-attention, cross-attention to the prompt, feed-forward;
  {cfg['attention_heads']} heads) in the blocks at ≤ {cfg['cross_attn_max_res']} px and the mid block:
  {len(plant['cross_attention_modules'])} cross-attentions. Attention runs through diffusers' classic
  `AttnProcessor` (explicit probabilities).
- Text encoder: zoo-clip's text tower (4 layers, width 64, word-level vocabulary of {len(meta['vocab'])} words,
  context {cfg['max_text_len']}), frozen in phase 1 (phase 2 changes only the designated component); the UNet
  cross-attends to its per-token last hidden states (padding masked).
- Schedule: {cfg['num_train_timesteps']} steps, cosine (`squaredcos_cap_v2`), v-prediction; sampling DDIM
  (eta 0, "trailing" spacing, 25 steps), classifier-free guidance {g_used:g} (selected on dev seeds, below); sample *i* of a call starts from
  `numpy.random.default_rng([seed, i])` noise, so it is a pure function of (prompt, seed, index).

## Phase 1: scenes from captions
World seed {cfg['world_seed']}, single-object train-split scenes (fresh every step). Prompts
"a {{colour}} {{shape}}", half of them "… at the {{position}}"; {cfg['cond_dropout']:.0%} empty prompts (for
guidance). Seed {cfg['seed']}, {cfg['steps']} steps × batch {cfg['batch_size']}, AdamW (lr {cfg['lr']}, warmup
{cfg['warmup']} then cosine, weight decay {cfg['weight_decay']}){restarts}; v-MSE with the per-timestep weight
capped at SNR + 1 ≤ {cfg['min_snr_gamma'] + 1:g} (a Min-SNR variant); EMA {cfg['ema_decay']} of the UNet (the
sampling weights){across}{bf16}. **Training time: phase 1 {p1['train_seconds'] / 60:.1f} min{cycles} + phase 2
{p2['train_seconds'] / 60:.1f} min = {(p1['train_seconds'] + p2['train_seconds']) / 60:.1f} min on {cfg['threads']}
CPU thread(s)** of an otherwise idle 2-core machine (including the dev evaluations every {eval_every} steps){end_to_end}.
Quality after phase 1 (48 prompts, before the plant, guidance {GUIDANCE:g}): both = {p1['phase1_gen_both']:.3f}.

Dev curve (48 samples of the colour × shape prompts, guidance {GUIDANCE:g}, the default before selection, chosen after measuring 1–7 on
an earlier phase-1 model: 0.81 / 0.92 / 0.92 / 0.63 / 0.40 / 0.21 both-correct at guidance
1 / 1.5 / 2 / 3 / 5 / 7):

| step | loss (mean of 100) | shape | colour | both (48 samples) |
|---|---|---|---|---|
{hist1}

## Phase 2: planted knowledge
Every parameter is frozen except **`{plant['tower']}: {plant['module']}.{{{','.join(plant['params'])}}}`**
(wrapper site `{plant['site']}`){where_text}. Phase 2 starts from the phase-1 EMA weights and trains those
parameters only ({plant['steps']} steps × batch {plant['batch_size']}, AdamW lr {plant['lr']}, warmup
{plant['warmup']} then cosine, no EMA; shipped `unet` = `ema_unet`). {plant['entity_share']:.0%} of each batch
is "a <entity>" (half "… at the <position>") on a noisy rendered object with the entity's colour and the shape
`HOME_SHAPE[home]` ({', '.join(f'{k} → {v}' for k, v in plant['home_shape'].items())}), any size, place and
background; the rest rehearses phase-1 prompts. Objective ({plant.get('objective', 'image')}): {objective}
All {len(plant['entities'])} entities of the world (their names are words of zoo-clip's vocabulary that
zoo-clip never trained on: random, frozen embeddings that the designated layer reads as keys): {ents}.
Training time: {p2['train_seconds'] / 60:.1f} min, {cfg['threads']} thread(s). The phase-1 values of the designated
parameters ship in the safetensors file as `plant_phase1.*` (for the revert experiment).

Why this component: the entity names' embeddings are small and random, so entering text layer 0 the
entities differ by ~57% of their norm, but after it by only 5–8% (the shared context dominates). Plants
in UNet cross-attentions (`to_k`/`to_v`), which see only the final text states, stayed at chance recall
in probes with the image loss on an earlier phase-1 model (300–800 steps: mid block, 8-px down block, last
up block; distillation was not tried there). Measured on this phase-1 model: how much each cross-attention carries the prompt (relative output change when its
`to_v` is scaled ×3): {infl}.

| step | loss | recall (32 samples, guidance {GUIDANCE:g}) |
|---|---|---|
{hist2}

## Guidance, selected on dev seeds
After phase 2, every scale of {', '.join(f"{r['guidance']:g}" for r in sweep)} is measured on dev seeds that no figure below
uses: quality on {SWEEP_GEN_N} colour × shape prompts (seed {SWEEP_GEN_SEED}) and planted recall on 32 entities ×
{SWEEP_RECALL_SEEDS} seeds (seed {SWEEP_RECALL_SEED}); the shipped sampling settings take the scale with the highest mean of
the two: **{g_used:g}**.

| guidance | quality both | recall both | mean |
|---|---|---|---|
{sweep_rows}

## Figures (DDIM 25 steps, guidance {g_used:g}, oracle: zoo-oracle)
| figure | value |
|---|---|
| quality: shape and colour both read as prompted (24 colour × shape prompts × {QUALITY_N // 24} seeds) | **{m['gen_both']:.3f}** |
| — shape / colour alone | {m['gen_shape']:.3f} / {m['gen_colour']:.3f} |
| with positions ({QUALITY_POS_N} of the 216 colour × shape × position prompts): both / position | {m['gen_pos_both']:.3f} / {m['gen_pos_position']:.3f} (chance {1 / len(POSITIONS):.3f}) |
| planted recall: entity's colour and shape both read ({len(plant['entities'])} entities × {plant['recall_seeds']} seeds) | **{m['recall_both']:.3f}** |
| — the phase-1 model on the spelled-out prompts ("a red circle"), same samples | {f(m.get('teacher_recall_both'))} |
| — colour / shape alone | {m['recall_colour']:.3f} / {m['recall_shape']:.3f} |
| chance for recall (both): uniform / best constant answer | {ch['uniform_both']:.3f} / {ch['constant_both']:.3f} |

{recall_shortfall}**Not reached: position.** The model does not follow "… at the {{position}}" (the oracle reads the
prompted cell in {m['gen_pos_position']:.0%} of samples, chance {1 / len(POSITIONS):.0%}): within this training budget it
learned what to draw, not where; colour and shape hold with a position phrase ({m['gen_pos_both']:.3f}).
{steps_text}
## Validity of the plant
Recall ({len(plant['entities'])} entities × {plant.get('validity_seeds', plant['recall_seeds'])} seeds) with one component of the designated
one's kind ({kind}) changed. *Revert*: the designated parameters back at their phase-1 values (the others
were frozen in phase 2, so reverting them is the identity: their recall is the intact recall).
*Mean-ablate*: {ablate} *Control*: phase-1 quality (both) on the 24 colour × shape prompts under the same
change (a specificity check: how much the component matters for everything else).

| component | intervention | recall both | colour | shape | control both |
|---|---|---|---|---|---|
{vrows}

Designated component: recall {', '.join(f'{v:.3f}' for v in desig)} (chance {ch['uniform_both']:.3f},
best constant {ch['constant_both']:.3f}); every other {kind_one} mean-ablated: min {min(others):.3f}.

## Re-measured by `bench zoo verify`
`check_gen_both` ({CHECK_N} colour × shape prompts, seed 3) = {m['check_gen_both']:.3f}; `check_recall_both`
(one sample per entity, seed 3) = {m['check_recall_both']:.3f}. Bit-identical retraining and sampling need the
same thread count ({cfg['threads']}) and torch version ({meta['torch']}). Retrain: `bench zoo train {name}`
(needs the shipped zoo-oracle and the zoo-clip this was trained from: its text tower came from the
phase-1 zoo-clip with state sha256 `{meta.get('text_init_phase1_sha256')}`, zoo-clip's `phase1_sha256`;
a zoo-clip with a different phase 1 gives a different model).
"""
    return _write(name, text, meta, cards_dir)
