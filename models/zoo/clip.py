"""zoo-clip: a tiny CLIP (ViT image tower + causal text transformer) trained on the world.

Built from transformers' own ``CLIPModel`` so that the zoo and the Hugging Face
wrapper share one code path and one site map. Training is contrastive (symmetric
InfoNCE, Radford et al. 2021) on freshly generated scenes, one caption sampled per
scene from its canonical caption and paraphrases.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from bench.world import COLOURS, SHAPES, Vocab, World, WorldConfig
from models.zoo.io import save_weights

PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


@dataclass(frozen=True)
class ZooClipConfig:
    """Architecture and training recipe of a zoo CLIP."""

    name: str = "zoo-clip"
    world_seed: int = 0
    seed: int = 0
    image_size: int = 32
    patch_size: int = 4
    width: int = 64
    layers: int = 4
    heads: int = 4
    mlp: int = 256
    text_width: int = 64
    text_layers: int = 4
    text_heads: int = 4
    text_mlp: int = 256
    max_text_len: int = 32
    embed_dim: int = 64
    steps: int = 3500
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 100
    threads: int = 2
    # spurious variant: probability that background agrees with the label (None = unbiased)
    spurious_agreement: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def build_clip(cfg: ZooClipConfig, vocab_size: int, eos_id: int, pad_id: int) -> Any:
    """A randomly initialised ``transformers.CLIPModel`` of the zoo's shape (eager attention)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=cfg.text_width, intermediate_size=cfg.text_mlp,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_text_len, projection_dim=cfg.embed_dim,
        eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=1, hidden_act="gelu",
    )
    vision = CLIPVisionConfig(
        hidden_size=cfg.width, intermediate_size=cfg.mlp, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        projection_dim=cfg.embed_dim, hidden_act="gelu",
    )
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=cfg.embed_dim)
    model = CLIPModel(config)
    model.set_attn_implementation("eager")
    return model


def images_to_tensor(images_BHWC: np.ndarray) -> torch.Tensor:
    """uint8 RGB ``[B, H, W, 3]`` → float ``[B, 3, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images_BHWC)).permute(0, 3, 1, 2).float() / 255.0


def normalise(pixels_BCHW: torch.Tensor) -> torch.Tensor:
    return (pixels_BCHW - PIXEL_MEAN) / PIXEL_STD


def _lr_at(step: int, cfg: ZooClipConfig) -> float:
    from models.zoo.io import warmup_cosine_lr

    return warmup_cosine_lr(step, cfg.lr, cfg.warmup, cfg.steps)


def zero_shot_accuracy(model: Any, vocab: Vocab, world: World, n: int = 512, split: str = "test") -> dict[str, float]:
    """Single-prompt zero-shot accuracy on held-out single-object scenes.

    Shape prompts are "a {shape}", colour prompts "a {colour} object" (one prompt
    per class, no ensembling).
    """
    one = World(world.seed, WorldConfig(**{**asdict(world.config), "min_objects": 1, "max_objects": 1}))
    scenes = list(one.scenes(split, n))
    pix = normalise(images_to_tensor(np.stack([s.image_HWC for s in scenes])))
    out: dict[str, float] = {}
    model.eval()
    with torch.no_grad():
        img = F.normalize(model.get_image_features(pixel_values=pix).pooler_output, dim=-1)
        for attr, classes, tmpl in (("shape", SHAPES, "a {}"), ("colour", list(COLOURS), "a {} object")):
            ids, mask = vocab.batch([tmpl.format(c) for c in classes], 8)
            txt = F.normalize(model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, dim=-1)
            pred = (img @ txt.T).argmax(-1)
            truth = torch.tensor([list(classes).index(getattr(s.objects[0], attr)) for s in scenes])
            out[f"zero_shot_{attr}"] = float((pred == truth).float().mean())
    return out


def train_clip(
    cfg: ZooClipConfig,
    log: Callable[[str], None] = print,
    scene_fn: Callable[[World, int], Any] | None = None,
    progress: bool = False,
    eval_fn: Callable[..., dict[str, float]] | None = None,
) -> tuple[Any, Vocab, dict[str, Any]]:
    """Train a zoo CLIP deterministically from ``cfg.seed``; returns (model, vocab, metrics).

    ``scene_fn(world, i)`` replaces the i-th training scene (the spurious variant);
    ``eval_fn(model, vocab, world, n, split)`` replaces the zero-shot evaluation."""
    evaluate = eval_fn or (lambda m, v, w, n, split: zero_shot_accuracy(m, v, w, n=n, split=split))
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    world = World(cfg.world_seed)
    vocab = Vocab.for_world(world)
    model = build_clip(cfg, len(vocab), vocab.eos_id, vocab.pad_id)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98),
    )
    rng = np.random.default_rng([cfg.seed, 7])
    t0 = time.time()
    history = []
    from tqdm.auto import tqdm

    bar = tqdm(range(cfg.steps), desc=f"train {cfg.name}", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        model.train()
        idx = range(step * cfg.batch_size, (step + 1) * cfg.batch_size)
        scenes = [scene_fn(world, i) if scene_fn else world.scene("train", i) for i in idx]
        caps = [s.captions[int(rng.integers(len(s.captions)))] for s in scenes]
        pix = normalise(images_to_tensor(np.stack([s.image_HWC for s in scenes])))
        ids, mask = vocab.batch(caps, cfg.max_text_len)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pix)
        logits = out.logits_per_image
        # Duplicate captions in a batch are true positives too: use soft targets.
        same = torch.tensor([[a == b for b in caps] for a in caps], dtype=torch.float32)
        soft = same / same.sum(-1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, soft) + F.cross_entropy(logits.T, soft))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % max(1, min(500, cfg.steps // 4)) == 0 or step == cfg.steps - 1:
            acc = evaluate(model, vocab, world, 256, "dev")
            history.append({"step": step, **acc})
            log(f"step {step} loss {loss.item():.3f} lr {_lr_at(step, cfg):.2e} {time.time() - t0:.0f}s "
                + " ".join(f"{k}={v:.3f}" for k, v in acc.items()))
    metrics = {"train_seconds": round(time.time() - t0, 1), "history": history}
    metrics.update(evaluate(model, vocab, world, 1024, "test"))
    model.eval()
    return model, vocab, metrics


def save_zoo_clip(model: Any, vocab: Vocab, cfg: ZooClipConfig, metrics: dict[str, Any], weights_dir: Path) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` (config, vocab, metrics, sha256)."""
    return save_weights(cfg.name, model.state_dict(), weights_dir, family="contrastive", config=asdict(cfg),
                        vocab=vocab.words, metrics=metrics)


def load_zoo_clip(name: str, weights_dir: Path) -> tuple[Any, Vocab, dict[str, Any]]:
    from safetensors.torch import load_file

    meta = json.loads((weights_dir / f"{name}.json").read_text())
    cfg = ZooClipConfig(**meta["config"])
    vocab = Vocab(meta["vocab"])
    model = build_clip(cfg, len(vocab), vocab.eos_id, vocab.pad_id)
    state = load_file(str(weights_dir / f"{name}.safetensors"))
    model.load_state_dict(state, strict=False)
    model.eval()
    return model, vocab, meta


# ----------------------------------------------------------- zoo protocol (see models.zoo.train)
def zoo_train(name: str, out: Path, steps: int | None, log: Callable[[str], None]) -> Path:
    from dataclasses import replace

    cfg = ZooClipConfig(name=name) if steps is None else replace(ZooClipConfig(name=name), steps=steps)
    model, vocab, metrics = train_clip(cfg, log=log, progress=True)
    return save_zoo_clip(model, vocab, cfg, metrics, out)


def zoo_remeasure(name: str, meta: dict[str, Any], weights_dir: Path) -> list[tuple[str, float, float]]:
    clip, vocab, _ = load_zoo_clip(name, weights_dir)
    got = zero_shot_accuracy(clip, vocab, World(meta["config"]["world_seed"]), n=1024, split="test")
    return [(k, got[k], meta["metrics"][k]) for k in ("zero_shot_shape", "zero_shot_colour")]


def zoo_card(name: str, weights_dir: Path, cards_dir: Path) -> Path:
    """The model card of a zoo CLIP, from its recorded metadata."""
    meta = json.loads((weights_dir / f"{name}.json").read_text())
    cfg, m = meta["config"], meta["metrics"]
    hist = "\n".join(f"| {h['step']} | {h['zero_shot_shape']:.3f} | {h['zero_shot_colour']:.3f} |"
                     for h in m.get("history", []))
    text = f"""# {name}

A tiny CLIP (transformers `CLIPModel`) trained contrastively, on this repository's
procedural world, on a CPU. Family: contrastive.

## Architecture
- Vision: ViT, image {cfg['image_size']}×{cfg['image_size']}, patch {cfg['patch_size']}, width {cfg['width']},
  {cfg['layers']} layers, {cfg['heads']} heads, MLP {cfg['mlp']}.
- Text: causal transformer over a closed word-level vocabulary ({len(meta['vocab'])} words), width
  {cfg['text_width']}, {cfg['text_layers']} layers, {cfg['text_heads']} heads, context {cfg['max_text_len']}.
- Joint embedding {cfg['embed_dim']}; eager attention (attention patterns are sites).

## Data
World seed {cfg['world_seed']}: scenes of 1–3 objects (4 shapes × 6 colours × 2 sizes on a 3×3 grid) on plain,
"water" or "land" backgrounds; one caption sampled per scene from its canonical caption, a shape-only and
a colour-only description, and paraphrases with sizes, positions and backgrounds. Fresh scenes every step
(train split), no scene repeated.

## Training
Seed {cfg['seed']}, {cfg['steps']} steps × batch {cfg['batch_size']}, AdamW (lr {cfg['lr']}, cosine, warmup
{cfg['warmup']}, weight decay {cfg['weight_decay']}), symmetric InfoNCE with soft targets for duplicate captions,
{cfg['threads']} CPU threads (bit-identical retraining needs the same thread count and torch version:
{meta['torch']}). Training time: {m['train_seconds']:.0f} s. Retrain: `bench zoo train {name}`.

## Figures (held-out test split, single-object scenes, one prompt per class)
| metric | value |
|---|---|
| zero-shot shape ("a {{shape}}", 4-way) | {m['zero_shot_shape']:.3f} |
| zero-shot colour ("a {{colour}} object", 6-way) | {m['zero_shot_colour']:.3f} |

Dev-split curve during training:

| step | shape | colour |
|---|---|---|
{hist}
"""
    from models.zoo.io import write_card as _write

    return _write(name, text, meta, cards_dir)
