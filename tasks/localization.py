"""Knowledge localization: does a method find the component a fact was planted in?

Zoo models carry planted knowledge (:class:`bench.model.PlantedRelation`): facts about
named entities taught in a second training phase in which only one component was
trainable, so the fact's location is known by construction (the setting of Meng et
al., 2022, "Locating and Editing Factual Associations in GPT", with the ground truth
that real models lack). Each example asks a planted fact about an entity shown only
by its glyph: a generative model is asked "what is the home of the glyph?"; a
contrastive model matches the image against the relation's value texts (its
``PlantedRelation.question`` is a template such as "a glyph from the {value}"). The
counterfactual shows, at the same
place on the same background, another planted entity with a different answer. A
method scores every candidate site (all sites of the planted site's kind in its
tower) per example.

Metrics, per example then averaged (ties count as the expected value over random
tie-breaking):

- ``top1`` ↑ (main): the planted site has the highest score.
- ``mrr`` ↑: reciprocal rank of the planted site.
- ``auroc`` ↑: share of the other candidates scored below the planted site
  (the AUROC of planted vs other sites of the same kind).

References: ``random`` scores sites uniformly at random; ``oracle`` scores the planted
site 1 and the others 0.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from bench.capabilities import LocalizeRequest
from bench.errors import BenchError
from bench.method import Method
from bench.model import ContrastiveModel, GenerativeModel, Model, PlantedRelation
from bench.task import CellResult, MetricSpec, Task, TaskSpec
from bench.world import World, WorldConfig
from bench.world.facts import glyph_scene


@dataclass(frozen=True)
class LocalizationConfig:
    n_examples: int = 64
    quick_examples: int = 32


def rank_metrics(scores_NS: torch.Tensor, planted_N: torch.Tensor) -> dict[str, float]:
    """top-1, reciprocal rank and AUROC of the planted site per example, averaged; ties at expectation."""
    s = scores_NS.double()
    p = s.gather(1, planted_N[:, None])  # [N, 1]
    S = s.shape[1]
    above = (s > p).sum(1).double()
    ties = (s == p).sum(1).double() - 1  # other sites tied with the planted one
    top1 = torch.where(above == 0, 1.0 / (ties + 1), torch.zeros_like(above))
    # expected reciprocal rank over a uniform order of the tied group
    rr = torch.stack([torch.tensor([1.0 / (a + 1 + k) for k in range(int(t) + 1)], dtype=torch.float64).mean()
                      for a, t in zip(above.tolist(), ties.tolist())])
    below = (S - 1) - above - ties
    auroc = (below + 0.5 * ties) / max(1, S - 1)
    return {"top1": float(top1.mean()), "mrr": float(rr.mean()), "auroc": float(auroc.mean())}


@dataclass
class FactExamples:
    clean_BCHW: torch.Tensor
    corrupt_BCHW: torch.Tensor
    prompts: list[str]
    answers: list[str]
    alternatives: list[str]
    planted_site: list[str]
    hashes: list[str]


def _pixels(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def build_examples(planted: Sequence[PlantedRelation], n: int, seed: int, split: str = "test") -> FactExamples:
    """``n`` examples cycling over the relations: a planted entity's glyph, and the same scene with
    another planted entity whose answer differs."""
    clean, corrupt, prompts, answers, alts, sites, hashes = [], [], [], [], [], [], []
    worlds: dict[tuple[int, int], World] = {}
    for i in range(n):
        rel = planted[i % len(planted)]
        world = worlds.setdefault((rel.world_seed, rel.n_entities),
                                  World(rel.world_seed, WorldConfig(n_entities=rel.n_entities)))
        rng = np.random.default_rng([seed, 53, i])
        name = rel.entities[int(rng.integers(len(rel.entities)))]
        value = world.entity(name).facts[rel.relation]
        others = [e for e in rel.entities if world.entity(e).facts[rel.relation] != value]
        other = others[int(rng.integers(len(others)))]
        s = glyph_scene(world, name, rng, split)
        bg, pos = s.background, s.objects[0].position
        c = glyph_scene(world, other, np.random.default_rng([seed, 59, i]), split, position=pos, background=bg)
        clean.append(s.image_HWC)
        corrupt.append(c.image_HWC)
        prompts.append(rel.question)
        answers.append(value)
        alts.append(world.entity(other).facts[rel.relation])
        sites.append(rel.site)
        hashes.append(hashlib.sha256(s.image_HWC.tobytes() + c.image_HWC.tobytes() + rel.question.encode())
                      .hexdigest()[:16])
    return FactExamples(_pixels(clean), _pixels(corrupt), prompts, answers, alts, sites, hashes)


def generative_evaluate(model: GenerativeModel, ex: FactExamples) -> Callable[..., tuple[torch.Tensor, Any]]:
    """The ``evaluate`` closure of a :class:`LocalizeRequest` for a generative model."""
    inp = model.answer_inputs(ex.prompts, ex.answers)
    alt_N = model.answer_inputs(ex.prompts, ex.alternatives).answer_B
    pos_N, ans_N, ids, mask = inp.pos_B, inp.answer_B, inp.ids_BL, inp.mask_BL

    def evaluate(which: str, read: Sequence[str] = (), write: Mapping[str, Any] | None = None,
                 copies: int = 1, keep_grad: bool = False) -> tuple[torch.Tensor, Any]:
        if which not in ("clean", "corrupt"):
            raise BenchError(f"evaluate: which must be 'clean' or 'corrupt', not {which!r}")
        pix = (ex.clean_BCHW if which == "clean" else ex.corrupt_BCHW).repeat(copies, 1, 1, 1)
        rep = lambda t: t.repeat(copies, *([1] * (t.dim() - 1)))  # noqa: E731
        with torch.set_grad_enabled(keep_grad), model.trace(read=read, write=write, keep_grad=keep_grad) as t:
            logits = model.forward_tokens(pix, rep(ids), rep(mask))
        rows = torch.arange(logits.shape[0])
        last = logits[rows, rep(pos_N)]
        return last[rows, rep(ans_N)] - last[rows, rep(alt_N)], t

    return evaluate


def contrastive_evaluate(model: ContrastiveModel, ex: FactExamples,
                         values: dict[str, tuple[str, ...]]) -> Callable[..., tuple[torch.Tensor, Any]]:
    """The ``evaluate`` closure for a contrastive model: the metric is the similarity of the
    image to the text of the clean answer minus that of the counterfactual answer, where the
    texts fill each relation's template (``PlantedRelation.question``) with a value."""
    texts = sorted({t.format(value=v) for t, vals in values.items() for v in vals})
    with torch.no_grad():
        text_TD = model.encode_text(texts)
    ans_N = torch.tensor([texts.index(q.format(value=a)) for q, a in zip(ex.prompts, ex.answers)])
    alt_N = torch.tensor([texts.index(q.format(value=a)) for q, a in zip(ex.prompts, ex.alternatives)])

    def evaluate(which: str, read: Sequence[str] = (), write: Mapping[str, Any] | None = None,
                 copies: int = 1, keep_grad: bool = False) -> tuple[torch.Tensor, Any]:
        if which not in ("clean", "corrupt"):
            raise BenchError(f"evaluate: which must be 'clean' or 'corrupt', not {which!r}")
        pix = (ex.clean_BCHW if which == "clean" else ex.corrupt_BCHW).repeat(copies, 1, 1, 1)
        with torch.set_grad_enabled(keep_grad), model.trace(read=read, write=write, keep_grad=keep_grad) as t:
            sims = model.similarity_to(model.encode_image(pix), text_TD)
        rows = torch.arange(sims.shape[0])
        return sims[rows, ans_N.repeat(copies)] - sims[rows, alt_N.repeat(copies)], t

    return evaluate


class LocalizationTask(Task):
    spec = TaskSpec(
        name="localization",
        version="1.0",
        families=frozenset({"contrastive", "generative"}),
        capability="localize",
        main_score="top1",
        metrics=(
            MetricSpec("top1", "higher", "the planted site scores highest (per example)"),
            MetricSpec("mrr", "higher", "reciprocal rank of the planted site"),
            MetricSpec("auroc", "higher", "share of other same-kind sites scored below the planted one"),
        ),
    )

    def __init__(self, config: LocalizationConfig | None = None) -> None:
        self.config = config or LocalizationConfig()

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        if not model.planted:
            return f"task 'localization' needs planted knowledge (a zoo model); {model.name!r} declares none"
        return None

    def candidates(self, model: Model) -> list[str]:
        site = model.site(model.planted[0].site)
        cands = model.layer_sites(site.tower, site.kind)
        missing = [r.site for r in model.planted if r.site not in cands]
        if missing:
            raise BenchError(f"planted sites {missing} are not of kind {site.kind!r} in tower {site.tower!r}")
        return cands

    def run(self, model: Model, method: Method, seed: int, quick: bool = False) -> CellResult:
        n = self.config.quick_examples if quick else self.config.n_examples
        ex = build_examples(model.planted, n, seed)
        cands = self.candidates(model)
        planted_N = torch.tensor([cands.index(s) for s in ex.planted_site])
        if method.name == "oracle":
            scores = torch.nn.functional.one_hot(planted_N, len(cands)).double()
        elif method.name == "random":
            scores = torch.rand(n, len(cands), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        else:
            if isinstance(model, GenerativeModel):
                evaluate = generative_evaluate(model, ex)
            elif isinstance(model, ContrastiveModel):
                evaluate = contrastive_evaluate(model, ex, {r.question: r.values for r in model.planted})
            else:
                raise BenchError(f"task 'localization' has no {model.family} setting yet")
            request = LocalizeRequest(n, list(cands), evaluate, batch_size=model.batch_size)
            scores = method.localize(model, request)
            if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (n, len(cands)):
                raise BenchError(f"method {method.name!r} must return scores of shape {(n, len(cands))}")
            if not torch.isfinite(scores).all():
                raise BenchError(f"method {method.name!r} returned NaN or infinite scores")
        return CellResult(rank_metrics(scores, planted_N), example_hashes=ex.hashes)
