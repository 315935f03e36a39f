"""The procedurally generated world: scenes, masks, captions, QA pairs and entities.

Everything here is a pure function of a seed (see :class:`World`).
"""

from bench.kit.world.core import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Entity,
    ObjectSpec,
    QAPair,
    Scene,
    World,
    WorldConfig,
)
from bench.kit.world.text import Vocab

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Entity",
    "ObjectSpec",
    "QAPair",
    "Scene",
    "Vocab",
    "World",
    "WorldConfig",
]
