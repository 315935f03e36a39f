"""Waterbirds-style group scenes (Sagawa et al., 2020): class = shape, spurious attribute = background.

The class is the object's shape (circle or square), the spurious attribute the
background (water or land). ``agreement`` is the share of scenes in which a circle
sits on water and a square on land; ``group`` forces a (class, background) pair, as
the group-balanced evaluation splits do. Objects are small, so the class is a few
pixels and the background most of the image, as in Waterbirds.
"""

from __future__ import annotations

from bench.kit.world.core import COLOURS, POSITIONS, ObjectSpec, Scene, World

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
