"""``bench world show``: a grid of scenes with each object's mask outlined."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.kit.world.core import World  # noqa: E402


def show(seed: int, out: Path, n: int = 16, split: str = "train") -> None:
    world = World(seed)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.6 * rows), squeeze=False)
    palette = ["#ff00ff", "#00ffff", "#ffff00"]
    for ax, scene in zip(axes.flat, world.scenes(split, n)):
        ax.imshow(scene.image_HWC, interpolation="nearest")
        for k, m in enumerate(scene.masks_NHW):
            ax.contour(m.astype(float), levels=[0.5], colors=[palette[k % len(palette)]], linewidths=1.2)
        title = "\n".join(o.noun_phrase(with_size=True, with_position=True)[2:] for o in scene.objects)
        ax.set_title(f"[{scene.background}]\n{title}", fontsize=7)
        ax.axis("off")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"MMI-Bench world, seed {seed}, split {split}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
