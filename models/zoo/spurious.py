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

from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.world import COLOURS, POSITIONS, Vocab, World
from bench.world.core import ObjectSpec, Scene

CLASSES: tuple[str, ...] = ("circle", "square")
BACKGROUND_OF: dict[str, str] = {"circle": "water", "square": "land"}
GROUPS: tuple[tuple[str, str], ...] = tuple((c, b) for c in CLASSES for b in ("water", "land"))


def spurious_scene(world: World, split: str, index: int, agreement: float | None,
                   group: tuple[str, str] | None = None) -> Scene:
    """One single-object scene; ``group`` forces (class, background), else the split's bias applies."""
    rng = world.rng(split, index)
    if group is None:
        shape = CLASSES[int(rng.integers(len(CLASSES)))]
        agree = agreement is None or rng.uniform() < agreement
        other = "land" if BACKGROUND_OF[shape] == "water" else "water"
        background = BACKGROUND_OF[shape] if agree else other
        if agreement is None:
            background = ("water", "land")[int(rng.integers(2))]
    else:
        shape, background = group
    # small objects only: the class is a few pixels, the background most of the image (as in Waterbirds)
    obj = ObjectSpec(shape, list(COLOURS)[int(rng.integers(len(COLOURS)))], "small",
                     POSITIONS[int(rng.integers(len(POSITIONS)))])
    scene = world.render(background, [obj], rng, split=split, index=index)
    # captions never mention the background
    scene.captions = [f"a {obj.colour} {obj.shape}", f"a {obj.shape}", f"a {obj.colour} object",
                      f"a {obj.colour} {obj.shape} at the {obj.position}"]
    return scene


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
