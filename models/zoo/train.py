"""``bench zoo train`` / ``bench zoo verify``: retrain and check the shipped zoo."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.errors import BenchError
from models.zoo import CARDS_DIR, WEIGHTS_DIR

ZOO: dict[str, str] = {"zoo-clip": "contrastive", "zoo-vlm": "generative", "zoo-clip-spurious": "contrastive"}


def _log(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(msg, file=sys.stderr)  # keeps progress bars intact


def train(name: str, out: Path | None = None, steps: int | None = None) -> Path:
    """Retrain ``name`` from its recorded config and seed; writes weights, metadata and card."""
    if name not in ZOO:
        from bench.errors import UnknownName

        raise UnknownName("zoo model", name, ZOO)
    from dataclasses import replace

    out = out or WEIGHTS_DIR
    if steps is not None and steps <= 0:
        raise BenchError("--steps must be positive")
    if name == "zoo-vlm":
        from models.zoo.vlm import ZooVlmConfig, save_zoo_vlm, train_vlm, write_vlm_card

        vcfg = ZooVlmConfig(name=name) if steps is None else replace(ZooVlmConfig(name=name), steps=steps)
        vlm, vvocab, vmetrics = train_vlm(vcfg, log=_log, progress=True)
        path = save_zoo_vlm(vlm, vvocab, vcfg, vmetrics, out)
        write_vlm_card(name, out, CARDS_DIR if out == WEIGHTS_DIR else out)
        _log(f"wrote {path}")
        return path
    from models.zoo.clip import ZooClipConfig, save_zoo_clip, train_clip

    if name == "zoo-clip-spurious":
        from models.zoo.spurious import group_accuracy, scene_fn, spurious_config

        cfg = spurious_config()
        cfg = cfg if steps is None else replace(cfg, steps=steps)
        model, vocab, metrics = train_clip(
            cfg, log=_log, progress=True, scene_fn=scene_fn(cfg.spurious_agreement or 0.95),
            eval_fn=lambda m, v, w, n, split: group_accuracy(m, v, w, n_per_group=n // 4, split=split))
        path = save_zoo_clip(model, vocab, cfg, metrics, out)
        write_spurious_card(name, out, CARDS_DIR if out == WEIGHTS_DIR else out)
        _log(f"wrote {path}")
        return path
    cfg = ZooClipConfig(name=name) if steps is None else replace(ZooClipConfig(name=name), steps=steps)
    model, vocab, metrics = train_clip(cfg, log=_log, progress=True)
    path = save_zoo_clip(model, vocab, cfg, metrics, out)
    write_card(name, out, CARDS_DIR if out == WEIGHTS_DIR else out)
    _log(f"wrote {path}")
    return path


def write_card(name: str, weights_dir: Path = WEIGHTS_DIR, cards_dir: Path = CARDS_DIR) -> Path:
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


def verify(name: str | None = None, quality: bool = True, tolerance: float = 0.02) -> bool:
    """Check each shipped model's sha256 and (optionally) re-measure its recorded figures."""
    from models.zoo.io import sha256_file

    names = [name] if name else list(ZOO)
    ok = True
    for n in names:
        if n not in ZOO:
            from bench.errors import UnknownName

            raise UnknownName("zoo model", n, ZOO)
        meta_path = WEIGHTS_DIR / f"{n}.json"
        if not meta_path.exists():
            if name:
                raise BenchError(f"no shipped weights for {n!r}; run `bench zoo train {n}`")
            print(f"{n}: not shipped yet (train it with `bench zoo train {n}`)")
            continue
        meta = json.loads(meta_path.read_text())
        digest = sha256_file(WEIGHTS_DIR / f"{n}.safetensors")
        good = digest == meta["sha256"]
        print(f"{n}: sha256 {'ok' if good else 'MISMATCH'} ({digest[:16]}…)")
        ok &= good
        if quality:
            for k, v, rec in _remeasure(n, meta):
                fine = abs(v - rec) <= tolerance
                print(f"{n}: {k} {v:.3f} (recorded {rec:.3f}) {'ok' if fine else 'MOVED'}")
                ok &= fine
    return ok


def _remeasure(name: str, meta: dict) -> list[tuple[str, float, float]]:
    """Re-measure a shipped model's cheap figures with the code that recorded them."""
    if ZOO[name] == "generative":
        from models.zoo.vlm import ZooVlmConfig, evaluate_vlm, load_zoo_vlm

        vlm, vocab, _ = load_zoo_vlm(name, WEIGHTS_DIR)
        got = evaluate_vlm(vlm, vocab, ZooVlmConfig(**meta["config"]), n=256, split="test")
        keys = ("caption_object_recall", "qa_visible_attributes")
    elif name == "zoo-clip-spurious":
        from bench.world import World
        from models.zoo.clip import load_zoo_clip
        from models.zoo.spurious import group_accuracy

        clip, vocab, _ = load_zoo_clip(name, WEIGHTS_DIR)
        got = group_accuracy(clip, vocab, World(meta["config"]["world_seed"]), n_per_group=256, split="test")
        keys = ("average_accuracy", "worst_group_accuracy")
    else:
        from bench.world import World
        from models.zoo.clip import load_zoo_clip, zero_shot_accuracy

        clip, vocab, _ = load_zoo_clip(name, WEIGHTS_DIR)
        got = zero_shot_accuracy(clip, vocab, World(meta["config"]["world_seed"]), n=1024, split="test")
        keys = ("zero_shot_shape", "zero_shot_colour")
    return [(k, got[k], meta["metrics"][k]) for k in keys]


def write_spurious_card(name: str, weights_dir: Path = WEIGHTS_DIR, cards_dir: Path = CARDS_DIR) -> Path:
    """The model card of zoo-clip-spurious, from its recorded metadata."""
    meta = json.loads((weights_dir / f"{name}.json").read_text())
    cfg, m = meta["config"], meta["metrics"]
    groups = "\n".join(f"| {k[6:].replace('_', ' on ')} | {v:.3f} |" for k, v in m.items() if k.startswith("group_"))
    ratio = m["worst_group_accuracy"] / max(1e-9, m["average_accuracy"])
    text = f"""# {name}

zoo-clip's architecture (transformers `CLIPModel`) trained on a Waterbirds-style biased world
(Sagawa et al., 2020). Family: contrastive.

## Data
Single-object scenes; the class is the shape (circle or square), the spurious attribute the background:
a circle sits on water and a square on land in {cfg['spurious_agreement']:.0%} of training scenes. Captions
name colour, shape, size and position, never the background.

## Training
Seed {cfg['seed']}, {cfg['steps']} steps × batch {cfg['batch_size']}, same recipe as zoo-clip,
{cfg['threads']} CPU threads, torch {meta['torch']}. Training time: {m['train_seconds']:.0f} s.
Retrain: `bench zoo train {name}`.

## Figures (zero-shot "a circle" vs "a square", group-balanced test split, 256 scenes per group)
| group (class on background) | accuracy |
|---|---|
{groups}

| metric | value |
|---|---|
| average accuracy | {m['average_accuracy']:.3f} |
| worst-group accuracy | {m['worst_group_accuracy']:.3f} |
| worst-group / average | {ratio:.3f} |
"""
    from models.zoo.io import write_card as _write

    return _write(name, text, meta, cards_dir)
