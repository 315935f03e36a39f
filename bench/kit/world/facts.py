"""Entity-fact examples: a single glyph rendered alone, asked about a hidden fact.

The entity is identified by its glyph in the image only, never named in the text,
so a model must map glyph pixels to the fact (a memorised, non-visual attribute).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bench.kit.world.core import BACKGROUNDS, POSITIONS, SIZES, SPLITS, ObjectSpec, Scene, World, _background


def drawings(world: World, rng: np.random.Generator, colour: str, shapes: Sequence[str | None],
             split: str) -> list[np.ndarray]:
    """One random layout (place, size, background) of a single ``colour`` object, rendered once per
    shape in ``shapes`` (``None``: the background alone): images ``[H, W, 3]`` that differ only in
    the object's shape (what a diffusion model is asked to draw for an entity or a concept, and
    its counterfactuals)."""
    bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    pos = POSITIONS[int(rng.integers(len(POSITIONS)))]
    size = list(SIZES)[int(rng.integers(len(SIZES)))]
    draw_seed = int(rng.integers(2**31))
    out = []
    for sh in shapes:
        r = np.random.default_rng(draw_seed)
        if sh is None:  # render() draws the background first, from the same generator state
            out.append(np.clip(_background(bg, world.config.image_size, r), 0, 255).astype(np.uint8))
        else:
            out.append(world.render(bg, [ObjectSpec(sh, colour, size, pos)], r, split=split).image_HWC)
    return out


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
