"""zoo-clip-spurious: zoo-clip trained where the background agrees with the class ~95% of the time.

A Waterbirds analogue (Sagawa et al., 2020, "Distributionally Robust Neural
Networks for Group Shifts"): the class is the object's shape (circle or square),
the spurious attribute the background (water or land). In training scenes a
circle sits on water and a square on land with probability ``agreement``;
captions name colour, shape, size and position but never the background, so the
background is a shortcut feature the model may lean on, not a described one.
Groups are (class × background); the test split is group-balanced.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from bench.kit.world import Vocab, World
from bench.kit.world.core import Scene
from bench.kit.world.spurious import CLASSES, GROUPS, spurious_scene


def group_accuracy(model: Any, vocab: Vocab, world: World, n_per_group: int = 256,
                   split: str = "test") -> dict[str, float]:
    """Zero-shot class accuracy ("a circle" vs "a square") per (class, background) group on a
    balanced split; average over all scenes and worst group (Sagawa et al., 2020)."""
    from models.zoo.clip import images_to_tensor, normalise

    ids, mask = vocab.batch([f"a {c}" for c in CLASSES], 8)
    out: dict[str, float] = {}
    model.eval()
    with torch.no_grad():
        txt = F.normalize(model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, dim=-1)
        accs = []
        for gi, g in enumerate(GROUPS):
            scenes = [spurious_scene(world, split, 1_000_000 * gi + i, None, group=g) for i in range(n_per_group)]
            pix = normalise(images_to_tensor(np.stack([s.image_HWC for s in scenes])))
            img = F.normalize(model.get_image_features(pixel_values=pix).pooler_output, dim=-1)
            acc = float(((img @ txt.T).argmax(-1) == CLASSES.index(g[0])).float().mean())
            out[f"group_{g[0]}_{g[1]}"] = acc
            accs.append(acc)
    out["average_accuracy"] = float(np.mean(accs))
    out["worst_group_accuracy"] = float(np.min(accs))
    return out


def spurious_config() -> Any:
    from models.zoo.clip import ZooClipConfig

    return replace(ZooClipConfig(), name="zoo-clip-spurious", steps=500, spurious_agreement=0.95, threads=1)


def scene_fn(agreement: float) -> Any:
    def fn(world: World, i: int) -> Scene:
        return spurious_scene(world, "train", i, agreement)

    return fn


# ----------------------------------------------------------- zoo protocol (see models.zoo.train)
def zoo_train(name: str, out: Path, steps: int | None, log: Callable[[str], None]) -> Path:
    from models.zoo.clip import save_zoo_clip, train_clip

    cfg = spurious_config()
    cfg = cfg if steps is None else replace(cfg, steps=steps)
    model, vocab, metrics = train_clip(
        cfg, log=log, progress=True, scene_fn=scene_fn(cfg.spurious_agreement or 0.95),
        eval_fn=lambda m, v, w, n, split: group_accuracy(m, v, w, n_per_group=n // 4, split=split))
    return save_zoo_clip(model, vocab, cfg, metrics, out)


def zoo_remeasure(name: str, meta: dict[str, Any], weights_dir: Path) -> list[tuple[str, float, float]]:
    from models.zoo.clip import load_zoo_clip

    clip, vocab, _ = load_zoo_clip(name, weights_dir)
    got = group_accuracy(clip, vocab, World(meta["config"]["world_seed"]), n_per_group=256, split="test")
    return [(k, got[k], meta["metrics"][k]) for k in ("average_accuracy", "worst_group_accuracy")]


def zoo_card(name: str, weights_dir: Path, cards_dir: Path) -> Path:
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
