"""Reading a planted fact out of a model of any family, and the loss that rewrites it.

Shared by the tasks that score facts (``localization``'s edits, ``editing``): a
generative model answers "what is the home of the glyph?" (first answer-token logits);
a contrastive model matches the glyph against the relation's filled templates; a
diffusion model is read as a classifier (Li et al., 2023, "Your Diffusion Model is
Secretly a Zero-Shot Classifier"): the prompt "a <entity>" should explain a render of
the entity drawn with its value's shape better than renders with the other values'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from bench.errors import BenchError
from bench.model import ContrastiveModel, DiffusionModel, GenerativeModel, Model, PlantedRelation, PromptEncoding
from bench.kit.world import World
from bench.kit.world.facts import drawings


def pixels_of(images: Sequence[np.ndarray]) -> torch.Tensor:
    """``[N, H, W, 3]`` uint8 images → ``[N, 3, H, W]`` floats in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


@dataclass
class DiffusionSubject:
    """An entity as a diffusion model sees it: its prompt, and per row one layout rendered with
    every value's shape (``x0_VNCHW``), scored at shared (timestep, noise) draws."""

    prompts: list[str]
    x0_VNCHW: torch.Tensor
    noise_RNCHW: torch.Tensor
    t_RN: torch.Tensor


Subject = Any  # pixels_NCHW (generative, contrastive) or DiffusionSubject


def value_logits(model: Model, rel: PlantedRelation) -> Callable[[Subject], torch.Tensor]:
    """``subject -> logits_NV``: the model's preference among ``rel.values`` for the fact shown
    (generative: first answer-token logits; contrastive: similarity to the filled templates;
    diffusion: minus the denoising error of each value's render, a diffusion classifier)."""
    if isinstance(model, GenerativeModel):
        ids_V = model.word_token_ids(list(rel.values))

        def gen(pixels_NCHW: torch.Tensor) -> torch.Tensor:
            inp = model.answer_inputs([rel.question] * len(pixels_NCHW), [rel.values[0]] * len(pixels_NCHW))
            logits = model.forward_tokens(pixels_NCHW, inp.ids_BL, inp.mask_BL)
            return logits[torch.arange(len(inp.pos_B), device=logits.device), inp.pos_B.to(logits.device)][:, ids_V]
        return gen
    if isinstance(model, ContrastiveModel):
        texts = [rel.question.format(value=v) for v in rel.values]

        def con(pixels_NCHW: torch.Tensor) -> torch.Tensor:
            return model.similarity_to(model.encode_image(pixels_NCHW), model.encode_text(texts))
        return con
    if isinstance(model, DiffusionModel):
        def dif(sub: DiffusionSubject) -> torch.Tensor:
            return -diffusion_errors(model, sub).mean(0).T  # [N, V]
        return dif
    raise BenchError(f"no fact read-out for a {model.family} model")


def diffusion_errors(model: DiffusionModel, sub: DiffusionSubject,
                      values: Sequence[int] | None = None) -> torch.Tensor:
    """Denoising error ``[R, V, N]`` of every (draw, value render, row)."""
    V, N = sub.x0_VNCHW.shape[:2]
    R = sub.t_RN.shape[0]
    vs = list(range(V)) if values is None else list(values)
    x0 = torch.cat([sub.x0_VNCHW[v] for _ in range(R) for v in vs])
    noise = torch.cat([sub.noise_RNCHW[r] for r in range(R) for _ in vs])
    t = torch.cat([sub.t_RN[r] for r in range(R) for _ in vs])
    enc = model.encode_prompts(sub.prompts)
    rep = R * len(vs)
    both = PromptEncoding(enc.hidden_BLD.repeat(rep, 1, 1), enc.mask_BL.repeat(rep, 1))
    return model.denoising_error_B(x0, noise, t, both).view(R, len(vs), N)


def edit_loss(model: Model, rel: PlantedRelation, shown: Subject, new_index: int) -> Callable[[], torch.Tensor]:
    """The constrained fine-tune's objective: cross-entropy of the new value among the relation's
    values; for diffusion, the denoising error of the renders showing the new value (fine-tuning
    on target images)."""
    if isinstance(model, DiffusionModel):
        return lambda: diffusion_errors(model, shown, [new_index]).mean()
    logits_of = value_logits(model, rel)
    target = torch.full((len(shown),), new_index, device=model.device)
    return lambda: torch.nn.functional.cross_entropy(logits_of(shown), target)


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
