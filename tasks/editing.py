"""Knowledge editing: rewrite a planted fact and nothing else.

Each request asks a generative zoo model to change a planted fact ("what is the home
of the glyph?" for entity E: north → west), showing the entity by a few renders of its
glyph (ROME-style rewrites, Meng et al., 2022; CounterFact's metrics). Two settings:
``single`` (one request at a time, the model restored in between) and ``batch`` (all
requests at once, as MEMIT, Meng et al., 2023). Editors are asked to edit at the
relation's planted site (``site="planted"``) or wherever they choose (``site="method"``).

Metrics (an answer is the model's top first answer token):

- ``efficacy`` ↑: the new answer, on the renders shown to the editor.
- ``generalization`` ↑: the new answer, on fresh renders of the entity (other positions
  and backgrounds).
- ``specificity`` ↑: neighbouring facts keep the answer the model gave before the edit:
  other planted entities on the same relation, and the edited entity's other relations.
- ``score`` ↑ (main): harmonic mean of the three (the aggregate of Meng et al., 2022).
- ``quality`` ↑: one-word visible-attribute answer accuracy on held-out scenes after the
  edit (``quality_before``: the unedited model, context).
- ``batch_*``: the same for the batch setting.

References: ``random`` answers every scored question with a uniformly random value of its
relation (chance); ``oracle`` answers as a perfect editor would (the ceiling).
The model's parameters are snapshotted before any edit and restored after every
setting; the cell fails if they are not bit-identical afterwards.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from bench.capabilities import EditRequest
from bench.errors import BenchError
from bench.method import Method
from bench.model import GenerativeModel, Model, PlantedRelation
from bench.task import CellResult, MetricSpec, Task, TaskSpec
from bench.world import World, WorldConfig
from bench.world.facts import fact_question, glyph_scene

QA_KINDS = ("colour", "shape", "size", "count", "exists")


@dataclass(frozen=True)
class EditingConfig:
    n_requests: int = 8
    quick_requests: int = 4
    renders: int = 4  # renders of the entity shown to the editor
    fresh_renders: int = 8  # unseen renders for generalization
    neighbours: int = 16  # other planted entities scored for specificity
    quality_scenes: int = 32
    site: str = "planted"  # "planted" | "method"


@dataclass
class Probe:
    """Questions scored as one block: images, prompts, the answer counted as success."""

    pixels_BCHW: torch.Tensor
    prompts: list[str]
    targets: list[str]
    values: list[tuple[str, ...]]  # the relation's possible answers per row (for the random reference)


def _pixels(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def top_answers(model: GenerativeModel, pixels_BCHW: torch.Tensor, prompts: list[str], vocab_of: list[str],
                batch_size: int) -> list[str]:
    """The model's top first answer token per row, among the candidate words ``vocab_of``."""
    cand_ids = model.word_token_ids(vocab_of)
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        sl = slice(i, i + batch_size)
        inp = model.answer_inputs(prompts[sl], [vocab_of[0]] * len(prompts[sl]))
        logits = model.forward_tokens(pixels_BCHW[sl], inp.ids_BL, inp.mask_BL)
        last = logits[torch.arange(len(inp.pos_B)), inp.pos_B]
        out += [vocab_of[j] for j in last[:, cand_ids].argmax(-1).tolist()]
    return out


def harmonic_mean(*xs: float) -> float:
    return 0.0 if min(xs) <= 0 else len(xs) / sum(1.0 / x for x in xs)


@dataclass
class EditCase:
    relation: PlantedRelation
    entity: str
    old: str
    new: str
    shown: Probe
    fresh: Probe
    neighbours: Probe  # targets = the model's answers before the edit (filled in later)


def build_cases(planted: list[PlantedRelation], k: int, cfg: EditingConfig, seed: int) -> list[EditCase]:
    rel0 = planted[0]
    world = World(rel0.world_seed, WorldConfig(n_entities=rel0.n_entities))
    rng = np.random.default_rng([seed, 61])
    entities = [rel0.entities[int(i)] for i in rng.permutation(len(rel0.entities))[:k]]
    cases = []
    for j, name in enumerate(entities):
        rel = planted[j % len(planted)]
        old = world.entity(name).facts[rel.relation]
        new = [v for v in rel.values if v != old][int(rng.integers(len(rel.values) - 1))]
        q = fact_question(rel.relation)

        def renders(split: str, n: int, tag: int) -> list[np.ndarray]:
            r = np.random.default_rng([seed, tag, j])
            return [glyph_scene(world, name, r, split).image_HWC for _ in range(n)]

        shown = renders("fit", cfg.renders, 67)
        fresh = renders("test", cfg.fresh_renders, 71)
        others = [e for e in rel.entities if e not in entities][: cfg.neighbours]
        nr = np.random.default_rng([seed, 73, j])
        n_img = [glyph_scene(world, e, nr, "test").image_HWC for e in others]
        n_q = [q] * len(others)
        n_vals = [rel.values] * len(others)
        for other_rel in planted:  # the same entity's other relations
            if other_rel.relation != rel.relation:
                n_img.append(glyph_scene(world, name, nr, "test").image_HWC)
                n_q.append(fact_question(other_rel.relation))
                n_vals.append(other_rel.values)
        cases.append(EditCase(rel, name, old, new,
                              Probe(_pixels(shown), [q] * len(shown), [new] * len(shown), [rel.values] * len(shown)),
                              Probe(_pixels(fresh), [q] * len(fresh), [new] * len(fresh), [rel.values] * len(fresh)),
                              Probe(_pixels(n_img), n_q, [""] * len(n_q), n_vals)))
    return cases


def _quality_probe(world: World, n: int, seed: int) -> Probe:
    scenes = list(world.scenes("test", n, 20_000 * seed))
    rows = [(s.image_HWC, q.question, q.answer) for s in scenes for q in s.qa if q.kind in QA_KINDS]
    return Probe(_pixels([r[0] for r in rows]), [r[1] for r in rows], [r[2] for r in rows], [()] * len(rows))


class EditingTask(Task):
    spec = TaskSpec(
        name="editing",
        version="1.0",
        families=frozenset({"generative"}),
        capability="edit",
        main_score="score",
        metrics=tuple(
            [MetricSpec(f"{p}{m}", "higher", f"{d} ({s} setting)")
             for p, s in (("", "single"), ("batch_", "batch"))
             for m, d in (("efficacy", "new answer on the renders shown to the editor"),
                          ("generalization", "new answer on fresh renders of the entity"),
                          ("specificity", "neighbouring facts keep their answer"),
                          ("score", "harmonic mean of efficacy, generalization, specificity"),
                          ("quality", "visible-attribute answer accuracy after the edit"))]
            + [MetricSpec("quality_before", "none", "visible-attribute answer accuracy before any edit",
                          normalise=False)]),
    )

    def __init__(self, config: EditingConfig | None = None) -> None:
        self.config = config or EditingConfig()

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        if not model.planted:
            return f"task 'editing' needs planted knowledge (a zoo model); {model.name!r} declares none"
        return None

    def run(self, model: Model, method: Method, seed: int, quick: bool = False) -> CellResult:
        assert isinstance(model, GenerativeModel)
        cfg = self.config
        k = cfg.quick_requests if quick else cfg.n_requests
        cases = build_cases(model.planted, k, cfg, seed)
        rel0 = model.planted[0]
        quality = _quality_probe(World(rel0.world_seed), cfg.quality_scenes // (2 if quick else 1), seed)
        bs = model.batch_size
        answers_vocab = sorted({v for r in model.planted for v in r.values})
        qa_vocab = sorted(set(quality.targets))

        def answers(p: Probe, vocab: list[str]) -> list[str]:
            return top_answers(model, p.pixels_BCHW, p.prompts, vocab, bs)

        for c in cases:  # specificity targets: what the unedited model answers
            c.neighbours.targets = answers(c.neighbours, answers_vocab)
        quality_before = float(np.mean([a == t for a, t in zip(answers(quality, qa_vocab), quality.targets)]))
        rng = np.random.default_rng([seed, 79])

        def acc(p: Probe, pred: list[str]) -> float:
            return float(np.mean([a == t for a, t in zip(pred, p.targets)]))

        def score_cases(group: list[EditCase], edited: bool) -> tuple[float, float, float, float]:
            e, g, s = [], [], []
            for c in group:
                for probe, bucket in ((c.shown, e), (c.fresh, g), (c.neighbours, s)):
                    if method.name == "random":
                        pred = [vals[int(rng.integers(len(vals)))] for vals in probe.values]
                    elif method.name == "oracle":
                        pred = list(probe.targets)
                    else:
                        pred = answers(probe, answers_vocab)
                    bucket.append(acc(probe, pred))
            if edited and method.name not in ("random", "oracle"):
                q = acc(quality, answers(quality, qa_vocab))
            else:
                q = quality_before
            return float(np.mean(e)), float(np.mean(g)), float(np.mean(s)), q

        snapshot = {n: p.detach().clone() for n, p in model.module.named_parameters()}

        def restore() -> None:
            with torch.no_grad():
                for n, p in model.module.named_parameters():
                    p.copy_(snapshot[n])

        def request(group: list[EditCase]) -> EditRequest:
            return EditRequest(torch.stack([c.shown.pixels_BCHW for c in group]), [c.shown.prompts[0] for c in group],
                               [c.old for c in group], [c.new for c in group],
                               site=(group[0].relation.site if cfg.site == "planted" and len({c.relation.site for c in group}) == 1
                                     else None), batch_size=bs)

        metrics: dict[str, float] = {"quality_before": quality_before}
        try:
            single = []
            for c in cases:
                if method.name not in ("random", "oracle"):
                    method.edit(model, request([c]))
                single.append(score_cases([c], edited=True))
                restore()
            batch: list[tuple[float, float, float, float]] = []
            if method.name not in ("random", "oracle"):
                for rel in model.planted:  # one batch per relation: each has one planted site
                    group = [c for c in cases if c.relation.relation == rel.relation]
                    if group:
                        method.edit(model, request(group))
                        batch.append(score_cases(group, edited=True))
                        restore()
            else:
                batch.append(score_cases(cases, edited=True))
        finally:
            restore()
        if any(not torch.equal(p, snapshot[n]) for n, p in model.module.named_parameters()):
            raise BenchError("the model's parameters were not restored bit-identically after editing")
        for prefix, rows in (("", single), ("batch_", batch)):
            e, g, s, q = (float(np.mean([r[i] for r in rows])) for i in range(4))
            metrics.update({f"{prefix}efficacy": e, f"{prefix}generalization": g, f"{prefix}specificity": s,
                            f"{prefix}score": harmonic_mean(e, g, s), f"{prefix}quality": q})
        hashes = [hashlib.sha256(f"{c.entity}|{c.relation.relation}|{c.old}->{c.new}".encode()).hexdigest()[:16]
                  for c in cases]
        return CellResult(metrics, example_hashes=hashes)
