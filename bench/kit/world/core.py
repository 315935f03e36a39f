"""Scene generation for the MMI-Bench world.

A scene is 1–3 objects (shape, colour, size, 3×3 grid position) on a background
(plain, or textured "water" stripes / "land" noise). Objects occupy distinct grid
cells, so every object's mask is exact and masks never overlap. Each scene carries
its scene graph, captions (with paraphrase templates) and question/answer pairs.

Named entities are distinct glyphs with facts that are *not* visible in the pixels
(e.g. an entity's home region); models must memorise them.

Determinism: scene ``i`` of split ``s`` of ``World(seed)`` is drawn from
``numpy.random.default_rng([seed, split_id, i])``, so any scene can be produced on
its own, in any order, on any machine.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Iterator, Sequence

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (170, 60, 220),
    "white": (245, 245, 245),
}
SIZES: dict[str, float] = {"small": 0.65, "large": 0.85}  # fraction of a grid cell
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
BACKGROUNDS: tuple[str, ...] = ("plain", "water", "land")
SPLITS: dict[str, int] = {"train": 0, "fit": 1, "dev": 2, "test": 3}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three")

# Relations for entity facts. Values are words the models learn in phase 1.
RELATIONS: dict[str, tuple[str, ...]] = {
    "home": ("north", "south", "east", "west"),
    "season": ("spring", "summer", "autumn", "winter"),
}
_SYLLABLES = ("ka", "lo", "mi", "ru", "te", "zo", "na", "vi", "pe", "su", "do", "ga")


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of the world; the defaults are the zoo's."""

    image_size: int = 32
    min_objects: int = 1
    max_objects: int = 3
    background_probs: tuple[float, float, float] = (0.5, 0.25, 0.25)
    n_entities: int = 32
    glyph_size: int = 5
    entity_prob: float = 0.0  # chance that an object in a scene is an entity glyph
    # Co-occurrence bias: pairs of (colour, shape) objects; when one partner is drawn, the
    # other is added (if absent and there is room) with probability ``cooccurrence_prob``.
    cooccurrence: tuple[tuple[tuple[str, str], tuple[str, str]], ...] = ()
    cooccurrence_prob: float = 0.0


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a scene graph. ``entity`` is set for entity glyphs (shape "glyph")."""

    shape: str
    colour: str
    size: str
    position: str
    entity: str | None = None

    @property
    def cell(self) -> tuple[int, int]:
        i = POSITIONS.index(self.position)
        return divmod(i, 3)

    def noun_phrase(self, with_size: bool = False, with_position: bool = False) -> str:
        if self.entity is not None:
            words = [self.entity]
        else:
            words = ([self.size] if with_size else []) + [self.colour, self.shape]
        text = "a " + " ".join(words)
        if with_position:
            text += " at the " + self.position
        return text


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    kind: str  # colour | shape | position | count | exists | fact:<relation>
    object_index: int | None = None


@dataclass(frozen=True)
class Entity:
    """A named glyph with hidden facts (relation -> value)."""

    name: str
    glyph: tuple[tuple[int, ...], ...]  # binary glyph_size × glyph_size pattern
    colour: str
    facts: dict[str, str] = field(default_factory=dict)


@dataclass
class Scene:
    """A rendered scene with exact ground truth.

    ``image_HWC`` is uint8 RGB; ``masks_NHW`` is one boolean mask per object.
    """

    seed: int
    split: str
    index: int
    background: str
    objects: list[ObjectSpec]
    image_HWC: np.ndarray
    masks_NHW: np.ndarray
    captions: list[str]
    qa: list[QAPair]

    @property
    def uid(self) -> str:
        return f"{self.seed}/{self.split}/{self.index}"

    def graph(self) -> dict[str, Any]:
        return {"background": self.background, "objects": [asdict(o) for o in self.objects]}


def _name_for(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        n = int(rng.integers(2, 4))
        name = "".join(_SYLLABLES[int(j)] for j in rng.integers(0, len(_SYLLABLES), n))
        if name not in used:
            used.add(name)
            return name


@lru_cache(maxsize=64)
def _shape_mask(shape: str, diameter: int) -> np.ndarray:
    """A binary sprite of ``shape`` inside a ``diameter``×``diameter`` box (4× supersampled)."""
    ss = 4
    n = diameter * ss
    c = (np.arange(n) + 0.5) / n * 2 - 1  # [-1, 1]
    y, x = np.meshgrid(c, c, indexing="ij")
    if shape == "circle":
        m = x**2 + y**2 <= 1.0
    elif shape == "square":
        m = (np.abs(x) <= 1.0) & (np.abs(y) <= 1.0)  # the full box: never a pixel-twin of the circle
    elif shape == "triangle":
        # apex up; base at the bottom
        m = (y <= 0.9) & (y >= -0.9) & (np.abs(x) <= (y + 0.9) / 1.8)
    elif shape == "cross":
        m = ((np.abs(x) <= 0.3) & (np.abs(y) <= 1.0)) | ((np.abs(y) <= 0.3) & (np.abs(x) <= 1.0))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return m.reshape(diameter, ss, diameter, ss).mean(axis=(1, 3)) >= 0.5


def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "plain":
        base = np.array([30, 30, 30], dtype=np.float32)
        return np.broadcast_to(base, (size, size, 3)).copy()
    if kind == "water":
        phase = rng.uniform(0, 2 * np.pi)
        period = rng.uniform(3.0, 5.0)
        rows = 0.5 + 0.5 * np.sin(2 * np.pi * np.arange(size) / period + phase)
        lo, hi = np.array([20, 40, 90], np.float32), np.array([40, 90, 140], np.float32)
        img = lo + rows[:, None, None] * (hi - lo)
        return np.broadcast_to(img, (size, size, 3)).copy()
    if kind == "land":
        coarse = rng.uniform(0, 1, (size // 4 + 1, size // 4 + 1))
        noise = np.kron(coarse, np.ones((4, 4)))[:size, :size]
        noise = 0.6 * noise + 0.4 * rng.uniform(0, 1, (size, size))
        lo, hi = np.array([60, 45, 20], np.float32), np.array([110, 90, 40], np.float32)
        return lo + noise[:, :, None] * (hi - lo)
    raise ValueError(f"unknown background {kind!r}")


class World:
    """A world: a seed, a config, and the entities that seed implies.

    ``World(seed).scene(split, i)`` is a pure function of ``(seed, split, i, config)``.
    """

    def __init__(self, seed: int = 0, config: WorldConfig | None = None) -> None:
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"world seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.config = config or WorldConfig()
        self.entities = self._make_entities()

    # ---------------------------------------------------------------- entities
    def _make_entities(self) -> list[Entity]:
        # Entities depend on the world seed only, never on the split.
        rng = np.random.default_rng([self.seed, 99, 0])
        used: set[str] = set()
        glyphs: set[bytes] = set()
        out = []
        g = self.config.glyph_size
        for _ in range(self.config.n_entities):
            while True:
                glyph = rng.integers(0, 2, (g, g)).astype(np.uint8)
                glyph = np.maximum(glyph, glyph[:, ::-1])  # mirror-symmetric: reads as a glyph
                if 8 <= glyph.sum() <= 20 and glyph.tobytes() not in glyphs:
                    glyphs.add(glyph.tobytes())
                    break
            facts = {r: vals[int(rng.integers(len(vals)))] for r, vals in RELATIONS.items()}
            colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            out.append(Entity(_name_for(rng, used), tuple(map(tuple, glyph.tolist())), colour, facts))
        return out

    def entity(self, name: str) -> Entity:
        for e in self.entities:
            if e.name == name:
                return e
        raise KeyError(name)

    # ------------------------------------------------------------------ scenes
    def rng(self, split: str, index: int) -> np.random.Generator:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
        return np.random.default_rng([self.seed, SPLITS[split], int(index)])

    def sample_objects(self, rng: np.random.Generator) -> tuple[str, list[ObjectSpec]]:
        cfg = self.config
        bg = BACKGROUNDS[int(rng.choice(len(BACKGROUNDS), p=cfg.background_probs))]
        n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        cells = rng.choice(len(POSITIONS), size=n, replace=False)
        objs = []
        for c in cells:
            if cfg.entity_prob > 0 and rng.uniform() < cfg.entity_prob:
                e = self.entities[int(rng.integers(len(self.entities)))]
                objs.append(ObjectSpec("glyph", e.colour, "large", POSITIONS[int(c)], e.name))
            else:
                objs.append(
                    ObjectSpec(
                        SHAPES[int(rng.integers(len(SHAPES)))],
                        list(COLOURS)[int(rng.integers(len(COLOURS)))],
                        list(SIZES)[int(rng.integers(len(SIZES)))],
                        POSITIONS[int(c)],
                    )
                )
        if cfg.cooccurrence and cfg.cooccurrence_prob > 0:
            objs = self._add_partners(objs, rng)
        return bg, objs

    def _add_partners(self, objs: list[ObjectSpec], rng: np.random.Generator) -> list[ObjectSpec]:
        for a, b in self.config.cooccurrence:
            for have, want in ((a, b), (b, a)):
                kinds = {(o.colour, o.shape) for o in objs}
                if have in kinds and want not in kinds and rng.uniform() < self.config.cooccurrence_prob:
                    keep = [o for o in objs if (o.colour, o.shape) in (a, b)]
                    others = [o for o in objs if (o.colour, o.shape) not in (a, b)]
                    if len(objs) >= self.config.max_objects and others:
                        others.pop(int(rng.integers(len(others))))  # make room
                    if len(keep) + len(others) >= self.config.max_objects:
                        continue
                    used = {o.position for o in keep + others}
                    free = [p for p in POSITIONS if p not in used]
                    pos = free[int(rng.integers(len(free)))]
                    size = list(SIZES)[int(rng.integers(len(SIZES)))]
                    new = ObjectSpec(want[1], want[0], size, pos)
                    objs = sorted(keep + others + [new], key=lambda o: POSITIONS.index(o.position))
        return objs

    def scene(self, split: str, index: int) -> Scene:
        rng = self.rng(split, index)
        bg, objs = self.sample_objects(rng)
        return self.render(bg, objs, rng, split=split, index=index)

    def scenes(self, split: str, n: int, start: int = 0) -> Iterator[Scene]:
        for i in range(start, start + n):
            yield self.scene(split, i)

    def render(
        self,
        background: str,
        objects: Sequence[ObjectSpec],
        rng: np.random.Generator,
        split: str = "custom",
        index: int = 0,
    ) -> Scene:
        """Draw a scene graph. Objects must sit in distinct grid cells."""
        cells = [o.position for o in objects]
        if len(set(cells)) != len(cells):
            raise ValueError("objects must occupy distinct grid positions")
        S = self.config.image_size
        img = _background(background, S, rng)
        masks = np.zeros((len(objects), S, S), dtype=bool)
        cell = S / 3
        for k, o in enumerate(objects):
            r, c = o.cell
            if o.entity is not None:
                glyph = np.array(self.entity(o.entity).glyph, dtype=bool)
                scale = max(1, round(cell * SIZES[o.size] / glyph.shape[0]))
                sprite = np.kron(glyph, np.ones((scale, scale), dtype=bool))
            else:
                sprite = _shape_mask(o.shape, max(3, int(round(cell * SIZES[o.size]))))
            d = sprite.shape[0]
            slack = max(0, int(cell) - d)
            jy = int(rng.integers(0, slack + 1)) if slack > 0 else 0
            jx = int(rng.integers(0, slack + 1)) if slack > 0 else 0
            y0 = min(S - d, int(r * cell) + jy)
            x0 = min(S - d, int(c * cell) + jx)
            masks[k, y0 : y0 + d, x0 : x0 + d] = sprite
            img[masks[k]] = np.array(COLOURS[o.colour], dtype=np.float32)
        image = np.clip(img, 0, 255).astype(np.uint8)
        captions = captions_for(objects, background, rng)
        qa = qa_for(objects, rng, self)
        return Scene(self.seed, split, index, background, list(objects), image, masks, captions, qa)

    # --------------------------------------------------------------- datasets
    def to_dataset(self, split: str, n: int, start: int = 0) -> Any:
        """Export ``n`` scenes of ``split`` as a Hugging Face ``datasets.Dataset``."""
        import datasets

        rows: dict[str, list[Any]] = {k: [] for k in (
            "uid", "image", "masks", "background", "objects", "captions", "questions", "answers", "qa_kinds")}
        for s in self.scenes(split, n, start):
            rows["uid"].append(s.uid)
            rows["image"].append(s.image_HWC)
            rows["masks"].append(s.masks_NHW.astype(np.uint8))
            rows["background"].append(s.background)
            rows["objects"].append([asdict(o) for o in s.objects])
            rows["captions"].append(s.captions)
            rows["questions"].append([q.question for q in s.qa])
            rows["answers"].append([q.answer for q in s.qa])
            rows["qa_kinds"].append([q.kind for q in s.qa])
        return datasets.Dataset.from_dict(rows)


# --------------------------------------------------------------------- text
_CAPTION_TEMPLATES = (
    "{objs}",
    "a picture of {objs}",
    "there is {objs}",
    "an image with {objs}",
)
_BACKGROUND_PHRASES = {"plain": "", "water": " on water", "land": " on land"}


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def captions_for(objects: Sequence[ObjectSpec], background: str, rng: np.random.Generator) -> list[str]:
    """Captions of a scene: the canonical one first, then paraphrases.

    Object order in paraphrases is shuffled; the canonical caption lists objects in
    the order they were drawn and names colour and shape.
    """
    canonical = _join([o.noun_phrase() for o in objects])
    caps = [canonical]
    # Partial descriptions (shape only / colour only) make single-attribute prompts meaningful.
    caps.append(_join([f"a {o.shape}" if o.entity is None else f"a {o.entity}" for o in objects]))
    caps.append(_join([f"a {o.colour} object" if o.entity is None else f"a {o.entity}" for o in objects]))
    for t in _CAPTION_TEMPLATES[1:]:
        order = rng.permutation(len(objects))
        with_pos = bool(rng.integers(2))
        with_size = bool(rng.integers(2))
        phrase = _join([objects[int(i)].noun_phrase(with_size, with_pos) for i in order])
        caps.append(t.format(objs=phrase) + _BACKGROUND_PHRASES[background])
    return caps


def qa_for(objects: Sequence[ObjectSpec], rng: np.random.Generator, world: World) -> list[QAPair]:
    qa: list[QAPair] = []
    shapes = [o.shape for o in objects]
    for k, o in enumerate(objects):
        if o.entity is not None:
            e = world.entity(o.entity)
            for rel, val in e.facts.items():
                qa.append(QAPair(f"what is the {rel} of the {o.entity}?", val, f"fact:{rel}", k))
            continue
        if shapes.count(o.shape) == 1:
            qa.append(QAPair(f"what colour is the {o.shape}?", o.colour, "colour", k))
            qa.append(QAPair(f"where is the {o.shape}?", o.position, "position", k))
        qa.append(QAPair(f"what shape is the {o.colour} object?", o.shape, "shape", k)
                  if [x.colour for x in objects].count(o.colour) == 1 else
                  QAPair(f"what size is the {o.colour} {o.shape}?", o.size, "size", k))
    qa.append(QAPair("how many objects are there?", NUMBER_WORDS[len(objects)], "count"))
    present = {(o.colour, o.shape) for o in objects}
    # one positive and one negative existence question
    o = objects[int(rng.integers(len(objects)))]
    if o.entity is None:
        qa.append(QAPair(f"is there a {o.colour} {o.shape}?", "yes", "exists", objects.index(o)))
    while True:
        c = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        s = SHAPES[int(rng.integers(len(SHAPES)))]
        if (c, s) not in present:
            qa.append(QAPair(f"is there a {c} {s}?", "no", "exists"))
            break
    return qa


def stable_hash(text: str) -> int:
    """A process-independent 32-bit hash (Python's ``hash`` is salted per process)."""
    return zlib.crc32(text.encode())
