"""A word-level vocabulary for the world's closed language."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from bench.kit.world.core import BACKGROUNDS, COLOURS, NUMBER_WORDS, POSITIONS, RELATIONS, SHAPES, SIZES, World

# EOS must not be id 2: transformers' CLIP treats eos_token_id == 2 as a legacy "argmax id" pooling.
_SPECIALS = ("<pad>", "<bos>", "<unk>", "<eos>")
_FUNCTION_WORDS = (
    "a", "an", "the", "and", "at", "on", "of", "with", "there", "is", "picture", "image", "photo",
    "what", "colour", "shape", "size", "where", "how", "many", "objects", "object", "are", "yes", "no",
    "glyph", "from", "in", "this", ",", "?", "land", "water", "plain",
)
_TOKEN_RE = re.compile(r"[a-z]+|[,?]")


@dataclass
class Vocab:
    """Word-level vocabulary. Index 0 is padding, 1 BOS, 2 unknown, 3 EOS."""

    words: list[str]

    def __post_init__(self) -> None:
        self._index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def for_world(cls, world: World) -> "Vocab":
        words: list[str] = list(_SPECIALS)
        pool = list(_FUNCTION_WORDS) + list(SHAPES) + list(COLOURS) + list(SIZES) + list(BACKGROUNDS)
        pool += [w for p in POSITIONS for w in p.split()] + list(NUMBER_WORDS)
        pool += [r for r in RELATIONS] + [v for vals in RELATIONS.values() for v in vals]
        pool += [e.name for e in world.entities]
        for w in pool:
            if w not in words:
                words.append(w)
        return cls(words)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 3

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        return [self._index.get(t, 2) for t in _TOKEN_RE.findall(text.lower())]

    def batch(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise to ``<bos> words <eos> <pad>…``; returns ``(ids_BL, mask_BL)``."""
        ids = torch.zeros(len(texts), max_len, dtype=torch.long)
        for b, t in enumerate(texts):
            toks = [self.bos_id] + self.encode(t)[: max_len - 2] + [self.eos_id]
            ids[b, : len(toks)] = torch.tensor(toks)
        return ids, (ids != self.pad_id).long()
