"""Reading a planted fact out of a model of any family, and the loss that rewrites it.

Shared by the tasks that score facts (``localization``'s edits, ``editing``): a
generative model answers "what is the home of the glyph?" (first answer-token logits);
a contrastive model matches the glyph against the relation's filled templates; a
diffusion model is read as a classifier (Li et al., 2023, "Your Diffusion Model is
Secretly a Zero-Shot Classifier"): the prompt "a <entity>" should explain a render of
the entity drawn with its value's shape better than renders with the other values'.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from bench.model import DiffusionModel, DiffusionSubject, Model, PlantedRelation
from bench.kit.world import World
from bench.kit.world.facts import drawings

# DiffusionSubject lives on the model contract; importers of this module find it here too
__all__ = ["DiffusionSubject", "Subject", "diffusion_errors", "diffusion_subject", "edit_loss", "pixels_of",
           "value_logits"]


def pixels_of(images: Sequence[np.ndarray]) -> torch.Tensor:
    """``[N, H, W, 3]`` uint8 images → ``[N, 3, H, W]`` floats in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


Subject = Any  # pixels_NCHW (generative, contrastive) or DiffusionSubject


def value_logits(model: Model, rel: PlantedRelation) -> Callable[[Subject], torch.Tensor]:
    """``subject -> logits_NV``: the model's preference among ``rel.values`` for the fact shown,
    the family's read-out (:meth:`bench.model.Model.value_readout`)."""
    return model.value_readout(rel.question, rel.values)


def diffusion_errors(model: DiffusionModel, sub: DiffusionSubject,
                     values: Sequence[int] | None = None) -> torch.Tensor:
    """Denoising error ``[R, V, N]`` of every (draw, value render, row)."""
    return model.subject_errors(sub, values)


def edit_loss(model: Model, rel: PlantedRelation, shown: Subject, new_index: int) -> Callable[[], torch.Tensor]:
    """The constrained fine-tune's objective: the family's loss of the new value among the
    relation's values (:meth:`bench.model.Model.value_loss`)."""
    return model.value_loss(rel.question, rel.values, shown, new_index)


def diffusion_subject(model: DiffusionModel, rel: PlantedRelation, world: World, names: Sequence[str],
                      rng: np.random.Generator, split: str, draws: int,
                      t_range: tuple[float, float] = (0.2, 0.6)) -> DiffusionSubject:
    """Each named entity in one random layout (place, size, background), drawn in its colour with
    every value's shape, plus ``draws`` (timestep, noise) pairs per row."""
    shape_of = dict(rel.renders)
    shapes = [shape_of[v] for v in rel.values]
    imgs: list[list[np.ndarray]] = [[] for _ in rel.values]
    for name in names:
        for v, image in enumerate(drawings(world, rng, world.entity(name).colour, shapes, split)):
            imgs[v].append(image)
    with torch.no_grad():
        x0 = torch.stack([model.to_sample(pixels_of(v)) for v in imgs])
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    # (drawn on the host with a CPU generator: the same noise on every device)
    noise = torch.randn((draws, *x0.shape[1:]), generator=g, device="cpu").to(x0.device)
    lo, hi = (int(f * (model.num_train_timesteps - 1)) for f in t_range)
    return DiffusionSubject([rel.question.format(entity=n) for n in names], x0, noise,
                            torch.randint(lo, hi + 1, (draws, len(names)), generator=g, device="cpu").to(x0.device))
