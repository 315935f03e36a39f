"""Entity-fact examples: a single glyph rendered alone, asked about a hidden fact.

The entity is identified by its glyph in the image only, never named in the text,
so a model must map glyph pixels to the fact (a memorised, non-visual attribute).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bench.world.core import BACKGROUNDS, POSITIONS, SPLITS, ObjectSpec, Scene, World


def fact_question(relation: str) -> str:
    return f"what is the {relation} of the glyph?"


def glyph_scene(world: World, name: str, rng: np.random.Generator, split: str,
                position: str | None = None, background: str | None = None) -> Scene:
    """One large glyph of entity ``name`` (random position and background unless given)."""
    e = world.entity(name)
    pos = position or POSITIONS[int(rng.integers(len(POSITIONS)))]
    bg = background or BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return world.render(bg, [ObjectSpec("glyph", e.colour, "large", pos, e.name)], rng, split=split)


def fact_examples(world: World, names: Sequence[str], relation: str | None, split: str, index: int,
                  n: int) -> list[tuple[Scene, str, str]]:
    """``n`` single-glyph scenes of the given entities with "what is the <relation> of the glyph?"
    (a random relation per example when ``relation`` is None) and the true answer."""
    rng = np.random.default_rng([world.seed, 31, SPLITS[split], index])
    out = []
    for _ in range(n):
        e = world.entity(names[int(rng.integers(len(names)))])
        rel = relation or list(e.facts)[int(rng.integers(len(e.facts)))]
        obj = ObjectSpec("glyph", e.colour, "large", POSITIONS[int(rng.integers(len(POSITIONS)))], e.name)
        scene = world.render(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], [obj], rng, split=split)
        out.append((scene, fact_question(rel), e.facts[rel]))
    return out
