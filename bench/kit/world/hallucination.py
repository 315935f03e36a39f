"""Object hallucination in the world: co-occurring pairs, mentions, POPE probes and metrics.

The world's training distribution may carry a co-occurrence bias (:data:`COOCCURRENCE_PAIRS`
with ``WorldConfig(cooccurrence=...)``): named object pairs that nearly always appear
together, the analogue of the object co-occurrences that make real VLMs hallucinate
(Li et al., 2023, "Evaluating Object Hallucination in Large Vision-Language Models",
POPE; Rohrbach et al., 2018, "Object Hallucination in Image Captioning", CHAIR).
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from bench.kit.world.core import COLOURS, SHAPES, Scene, World

COOCCURRENCE_PAIRS: tuple[tuple[tuple[str, str], tuple[str, str]], ...] = (
    (("red", "circle"), ("blue", "square")),
    (("green", "triangle"), ("yellow", "cross")),
)
_OBJ_RE = re.compile(r"\b(" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")\b")




def mentioned_objects(text: str) -> set[tuple[str, str]]:
    """``(colour, shape)`` pairs named in a generated text."""
    return {(m.group(1), m.group(2)) for m in _OBJ_RE.finditer(text)}


def object_mentions(text: str) -> list[tuple[int, str, tuple[str, str]]]:
    """Every "colour shape" mention in ``text`` in order: ``(char offset, "colour shape", (colour, shape))``."""
    return [(m.start(), m.group(0), (m.group(1), m.group(2))) for m in _OBJ_RE.finditer(text)]


def object_statistics(world: World, n: int = 20_000) -> tuple[dict[tuple[str, str], int], dict[tuple[tuple[str, str], tuple[str, str]], int]]:
    """Object frequencies and pairwise co-occurrence counts over ``n`` training scenes."""
    freq: dict[tuple[str, str], int] = {}
    co: dict[tuple[tuple[str, str], tuple[str, str]], int] = {}
    for i in range(n):
        rng = world.rng("train", i)
        _, objs = world.sample_objects(rng)
        kinds = sorted({(o.colour, o.shape) for o in objs})
        for k in kinds:
            freq[k] = freq.get(k, 0) + 1
            for j in kinds:
                if j != k:
                    co[(k, j)] = co.get((k, j), 0) + 1
    return freq, co


def pope_probes(world: World, train_world: World, n_images: int = 100, per_image: int = 3,
                split: str = "test", start: int = 0) -> dict[str, list[tuple[Scene, str, str]]]:
    """POPE probes (Li et al., 2023): per image, up to ``per_image`` present objects ("yes")
    and as many absent ones ("no") drawn at random, from the most frequent objects
    ("popular"), or from those co-occurring most with the present ones ("adversarial")."""
    freq, co = object_statistics(train_world)
    every = [(c, s) for c in COLOURS for s in SHAPES]
    out: dict[str, list[tuple[Scene, str, str]]] = {"random": [], "popular": [], "adversarial": []}
    for i in range(start, start + n_images):
        scene = world.scene(split, i)
        rng = np.random.default_rng([world.seed, 23, i])
        present = sorted({(o.colour, o.shape) for o in scene.objects})
        pos = present[:per_image]
        absent = [k for k in every if k not in present]
        ranked = {
            "random": [absent[int(j)] for j in rng.permutation(len(absent))],
            "popular": sorted(absent, key=lambda k: (-freq.get(k, 0), k)),
            "adversarial": sorted(absent, key=lambda k: (-sum(co.get((p, k), 0) for p in present), k)),
        }
        for setting, order in ranked.items():
            for k in pos:
                out[setting].append((scene, f"is there a {k[0]} {k[1]}?", "yes"))
            for k in order[: len(pos)]:
                out[setting].append((scene, f"is there a {k[0]} {k[1]}?", "no"))
    return out


def pope_metrics(answers: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive = "yes") and yes-ratio, as reported by POPE."""
    pred = np.array([a.strip() == "yes" for a in answers])
    gold = np.array([l == "yes" for l in labels])
    tp = float((pred & gold).sum())
    precision = tp / max(1.0, float(pred.sum()))
    recall = tp / max(1.0, float(gold.sum()))
    f1 = 2 * precision * recall / max(1e-12, precision + recall)
    return {"accuracy": float((pred == gold).mean()), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": float(pred.mean())}
