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
import torch.nn.functional as F

from bench.capabilities import EditObjective, EditRequest, ObjectiveOptions
from bench.errors import BenchError
from bench.model import DiffusionModel, DiffusionSubject, GenerativeModel, Model, PlantedRelation
from bench.kit.world import World
from bench.kit.world.facts import drawings

# DiffusionSubject lives on the model contract; importers of this module find it here too
__all__ = ["DiffusionSubject", "Subject", "answer_token_counts", "diffusion_errors", "diffusion_subject", "edit_loss",
           "pixels_of", "sequence_objective", "value_logits"]


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


# ------------------------------------------------------------------ whole answers (real data)
def answer_token_counts(model: GenerativeModel, prompts: Sequence[str], answers: Sequence[str]) -> list[int]:
    """How many tokens each answer takes after its prompt, in ``model``'s tokenizer."""
    enc = model.encode_spans(list(prompts), [""] * len(prompts), list(answers))
    return [int(n) for n in enc.span_BL.sum(1).tolist()]


def sequence_objective(model: Any, request: EditRequest, options: ObjectiveOptions) -> EditObjective:
    """A generative edit request read over the **whole** answer (an :attr:`EditRequest.readout`): the
    task sets it on real data whose answers span several tokens, where the family's read-out
    (:meth:`bench.model.GenerativeModel.edit_objective`) sees the first token only.

    With ``log p(a)`` the teacher-forced log-probability of answer ``a`` summed over its tokens (as
    ROME's and MEMIT's rewriting loss, Meng et al., 2022, §3.1, and CounterFact's probability
    comparisons): ``loss_B = −log p(new)``, ``margin_B = log p(new) − log p(old)``, ``prefers_new_B``:
    the new answer has the highest ``log p`` among the rewrite's values. Every answer is fed after its
    question, all padded on the right to one length ``L`` (causal attention: the shared question
    prefix sees the same activations whichever answer follows), so ``subject_BL`` and ``valid_BL`` mark
    one token layout: ``"readout"`` the position that predicts the answer's first token (the last
    question token, as the first-token read-out), else the image tokens."""
    K, R = request.K, int(request.pixels_KRCHW.shape[1])
    if not (len(request.prompts) == len(request.new) == len(request.old) == K):
        raise BenchError(f"edit request: {K} subjects but {len(request.prompts)} prompts, "
                         f"{len(request.old)} old and {len(request.new)} new answers")
    pixels = request.pixels_KRCHW.flatten(0, 1)
    prompts = [p for p in request.prompts for _ in range(R)]
    B = len(prompts)
    values = request.values if len(request.values) == K else [(o, n) for o, n in zip(request.old, request.new)]
    # every answer the read-outs score, row-aligned with the B rows: new, old, then each value slot
    width = max(len(v) for v in values)
    answers = {"new": [a for a in request.new for _ in range(R)], "old": [a for a in request.old for _ in range(R)]}
    for j in range(width):
        answers[f"v{j}"] = [values[k][j] if j < len(values[k]) else request.new[k] for k in range(K) for _ in range(R)]
    enc = {name: model.encode_spans(prompts, [""] * B, a) for name, a in answers.items()}
    L = max(int(e.ids_BL.shape[1]) for e in enc.values())

    def padded(x_BL: torch.Tensor) -> torch.Tensor:
        return F.pad(x_BL, (0, L - x_BL.shape[1]))  # right padding: id 0 / mask 0 / not in the span

    ids = {n: padded(e.ids_BL) for n, e in enc.items()}
    mask = {n: padded(e.mask_BL) for n, e in enc.items()}
    span = {n: padded(e.span_BL.long()).bool() for n, e in enc.items()}
    first_B = span["new"].float().argmax(1)

    def logp(name: str, idx: torch.Tensor | None) -> torch.Tensor:
        rows = torch.arange(B) if idx is None else idx.to("cpu")
        out = model.forward_tokens(pixels[rows], ids[name][rows], mask[name][rows])
        lp_BLV = torch.log_softmax(out[:, :-1].float(), -1)  # position p predicts token p + 1
        tok_BL = ids[name][rows][:, 1:].to(lp_BLV.device)
        on_BL = span[name][rows][:, 1:].to(lp_BLV.device)
        return (lp_BLV.gather(-1, tok_BL[..., None])[..., 0] * on_BL).sum(1)

    def loss(idx: torch.Tensor | None) -> torch.Tensor:
        return -logp("new", idx)

    def margin(idx: torch.Tensor | None) -> torch.Tensor:
        return logp("new", idx) - logp("old", idx)

    def prefers_new(idx: torch.Tensor | None) -> torch.Tensor:
        rows = torch.arange(B) if idx is None else idx.to("cpu")
        k_B = rows // R
        lp_BJ = torch.stack([logp(f"v{j}", idx).detach().cpu() for j in range(width)], 1)
        n_valid = torch.tensor([len(values[int(k)]) for k in k_B])
        lp_BJ = lp_BJ.masked_fill(torch.arange(width)[None] >= n_valid[:, None], float("-inf"))
        target = torch.tensor([list(values[int(k)]).index(request.new[int(k)]) for k in k_B])
        return lp_BJ.argmax(1) == target

    def subject(positions: str) -> torch.Tensor:
        out = torch.zeros(B, L, dtype=torch.bool)
        if positions == "readout":
            out[torch.arange(B), first_B - 1] = True
        else:
            img = model.image_positions(prompts).cpu()
            w = min(L, img.shape[1])
            out[:, :w] = img[:, :w]
        return out

    return EditObjective(K, R, 1, torch.arange(K).repeat_interleave(R), loss, margin, prefers_new, subject,
                         mask["new"].bool().cpu())
