"""Knowledge editing: rewrite a planted fact and nothing else.

Each request asks a zoo model to change a planted fact of an entity (its home: north →
west), showing the entity by a few renders of its glyph (ROME-style rewrites, Meng et
al., 2022; CounterFact's metrics). A generative model is asked "what is the home of the
glyph?"; a contrastive model's rewrite is a concept remapping: the glyph's image should
now match "the home of the glyph is west" (the relation's template filled with each
value; cf. Santurkar et al., 2021, "Editing a Classifier by Rewriting Its Prediction
Rules"). A diffusion model's rewrite changes what "a <entity>" draws (the shape its
home names, zoo-diffusion's planted relation): the editor is shown renders of the new
drawing, and samples are read by the model's judge (zoo-oracle). Two settings: ``single`` (one request at a time, the model restored in
between) and ``batch`` (all requests of a relation at once, as MEMIT, Meng et al.,
2023). Editors are asked to edit at the relation's planted site (``site="planted"``) or
wherever they choose (``site="method"``).

Metrics (an answer is the model's preferred value among the relation's values, read by
:func:`bench.kit.readout.value_logits`):

- ``efficacy`` ↑: the new answer, on the renders shown to the editor.
- ``generalization`` ↑: the new answer, on fresh renders of the entity (other positions
  and backgrounds).
- ``specificity`` ↑: neighbouring facts keep the answer the model gave before the edit:
  other planted entities on the same relation, and the edited entity's other relations.
- ``score`` ↑ (main): harmonic mean of the three (the aggregate of Meng et al., 2022).
- ``quality`` ↑: retained task quality on held-out scenes after the edit (generative:
  one-word visible-attribute answer accuracy; contrastive: image → caption retrieval
  accuracy within a batch of held-out scenes; diffusion: the judge reads the prompted
  colour and shape in samples of "a <colour> <shape>"); ``quality_before``: the unedited
  model.
- ``batch_*``: the same for the batch setting (means over cases).

For diffusion, efficacy is read on samples of "a <entity>", generalization on samples of
"a <entity> at the <position>" (a paraphrase the edit never saw) and specificity on
samples of other planted entities. Diffusion models also get **concept edits** (the
settings of TIME and UCE): replacement ("a <colour> circle" should draw a square) and
erasure (it should draw no circle; the editor is shown the same layouts without the
object), each shown in three colours. ``concept_efficacy``: samples of the edited
prompts draw the new shape / not the erased one; ``concept_generalization``: the same
for the concept in the three other colours at named places; ``concept_specificity``:
prompts of the other shapes draw what they drew before; ``concept_score``: their
harmonic mean (random: uniform shapes; oracle: a perfect edit).

References: ``random`` answers every scored question with a uniformly random value of its
relation (chance); ``oracle`` answers as a perfect editor would (the ceiling of efficacy,
generalization, specificity and their scores; its ``quality`` is ``quality_before``, no
ceiling, so the two quality figures are shown raw).

Per-example rows (v1.3). The resampling unit is the **edit request** (a case, id: 16 hex digits
of ``entity|relation|old->new``): everything measured about a rewrite follows from that one
request, and its probes are its own. A case has one row per setting (``setting`` = ``single``,
``batch``), holding its shares of correct answers on the three probes (``efficacy``,
``generalization``, ``specificity``), ``quality_after``, the quality measured after the edit
that row reflects (its own edit; in the batch setting its relation's batch edit, so the cases of
a group carry the same value; random and oracle: ``quality_before``), and ``quality_before`` (a
constant column). A diffusion concept edit is a unit of its own, with one ``concept`` row
(``quality_after`` NaN). Every metric is computed from the rows by
:meth:`EditingTask.metrics_from_rows`: per setting, the weighted mean of each share and of
``quality_after`` (the metrics ``quality``, ``batch_quality``), and the harmonic mean of the
three mean shares. Stratum: ``kind`` (``fact`` for rewrites, ``concept`` for concept edits): a
resample keeps both parts' counts; the metrics are means over cases, not over relations, so the
relation is no stratum (the cases of a batch share one edit; the bootstrap treats them as
exchangeable, and ``batch_quality``, one measurement per batch edit, gets only the spread between
the batches as its interval). Up to v1.2 the batch
figures were the mean over relations of per-relation means; they are now the mean over cases,
the same figure whenever every relation has as many cases as the others (on the shipped zoo
models in both profiles: cases cycle over the relations and ``k`` is a multiple of their
number).

Real data (``--data KIND=PATH``; the zoo's path and figures are unchanged, so the version stays 1.3): ``facts`` (VLKEB / MMEdit-shaped) and ``counterfact`` files on
generative models, one rewrite at a time, scored with the token-level definitions of EasyEdit / VLKEB
(:meth:`EditingTask.run_data`: reliability → ``efficacy``, generality → ``generalization``, locality →
``specificity``, and ``portability``); ``concept_edit`` files (TIME / UCE prompt sets) on diffusion
models with a judge, scored as the world's concept edits (:func:`concept_cases_from_file`).

The model's parameters are snapshotted before any edit and restored after every
setting; the cell fails if they are not bit-identical afterwards.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from bench.capabilities import EditRequest, Intervention
from bench.kit.editing import ParameterSnapshot, applied_edit
from bench.method import Method
from bench.errors import BenchError
from bench.model import ContrastiveModel, DiffusionModel, GenerativeModel, Model, PlantedRelation, judge_identity
from bench.kit.readout import answer_token_counts, pixels_of, sequence_objective, value_logits
from bench import samples
from bench.samples import Rows, make_rows, wmean
from bench.kit.shared import ProcessMemo
from bench.records import LoadedData
from bench.task import CellResult, MetricSpec, Task, TaskSpec, input_size
from bench.kit.world import COLOURS, POSITIONS, SHAPES, World, WorldConfig
from bench.kit.world.facts import drawings, glyph_scene

QA_KINDS = ("colour", "shape", "size", "count", "exists")


@dataclass(frozen=True)
class EditingConfig:
    n_requests: int = 8
    quick_requests: int = 4
    quick_diffusion_requests: int = 2  # each diffusion edit is read through sampling and the judge
    renders: int = 4  # renders of the entity shown to the editor
    fresh_renders: int = 8  # unseen renders for generalization
    neighbours: int = 16  # other planted entities scored for specificity
    quality_scenes: int = 32
    site: str = "planted"  # "planted" | "method"
    # diffusion scores samples (DDIM 25 steps, guided: ~0.1 s each on a core), so it reads fewer
    diffusion_neighbours: int = 8
    diffusion_quality: int = 16  # "a <colour> <shape>" prompts (half in the quick profile)
    concept_edits: int = 4  # diffusion concept replacement / erasure edits (2 in the quick profile)
    # real data (--data facts=PATH / counterfact=PATH): rewrites read (all rows; the first this many quick)
    quick_data_requests: int = 8


@dataclass
class Probe:
    """Facts scored as one block: the relation asked per row, the answer counted as success, and
    the entity as each family sees it: glyph images (generative, contrastive), or prompts
    sampled from seed ``seed`` and read by the model's judge (diffusion)."""

    relations: list[PlantedRelation]
    targets: list[str]
    pixels_BCHW: torch.Tensor | None = None
    prompts: list[str] = field(default_factory=list)
    seed: int = 0


Once = Callable[[object, Callable[[], Any]], Any]
_UNEDITED = ProcessMemo(size=64)


def _unedited_memo(model: Model, seed: int, quick: bool, cfg: "EditingConfig", version: str = "") -> Once:
    """``once(name, fn)``: what the unedited model does (its answers, its quality) is the same for
    every method of a cell's (model, seed): computed once per process. The key carries the judge
    reading a diffusion model's samples and the task ``version`` (which names any data file read)."""
    key = (model.name, model.weights_hash, judge_identity(model), version, seed, quick, cfg)
    return lambda name, fn: _UNEDITED.get((*key, name), fn)


def _read_concepts(model: DiffusionModel, prompts: list[str], seed: int, labels: tuple[str, ...]) -> list[str]:
    """The concept each sample of ``prompts`` shows: among ``labels`` ("" for none of them) when the
    concepts come from a file and the judge reads an open vocabulary (``--judge``,
    :class:`bench.kit.judge.ContrastiveJudge`), else the shape the judge reads."""
    if labels:
        if model.judge is None:
            raise BenchError(f"task 'editing' needs a judge to read {model.name!r}'s images")
        return list(model.judge.read_concepts(model.generate(prompts, seed=seed), labels))  # type: ignore[attr-defined]
    return _judged(model, prompts, seed)["shape"]


def _judged(model: DiffusionModel, prompts: list[str], seed: int) -> dict[str, list[str]]:
    if model.judge is None:
        raise BenchError(f"task 'editing' needs a judge to read {model.name!r}'s images")
    return model.judge(model.generate(prompts, seed=seed))


@torch.no_grad()
def fact_answers(model: Model, probe: Probe, batch_size: int) -> list[str]:
    """The model's answer per row, among its relation's values (diffusion: the value whose shape
    the judge reads in the generated image; "" when it draws none of them)."""
    if isinstance(model, DiffusionModel):
        shapes = _judged(model, probe.prompts, probe.seed)["shape"]
        return [{sh: v for v, sh in r.renders}.get(sh, "") for r, sh in zip(probe.relations, shapes)]
    assert probe.pixels_BCHW is not None
    out = [""] * len(probe.targets)
    for rel in {r.relation: r for r in probe.relations}.values():
        rows = [i for i, r in enumerate(probe.relations) if r.relation == rel.relation]
        read = value_logits(model, rel)
        for j in range(0, len(rows), batch_size):
            chunk = rows[j : j + batch_size]
            for i, v in zip(chunk, read(probe.pixels_BCHW[chunk]).argmax(-1).tolist()):
                out[i] = rel.values[v]
    return out


@dataclass
class QualityProbe:
    """Held-out work the model should keep doing: one-word questions on scenes (generative),
    scenes and their canonical captions (contrastive), or "a <colour> <shape>" prompts whose
    samples the judge reads (diffusion)."""

    pixels_BCHW: torch.Tensor | None
    prompts: list[str]
    targets: list[str]
    captions: list[str]
    seed: int = 0


def quality_probe(model: Model, world: World, n: int, seed: int) -> QualityProbe:
    if isinstance(model, DiffusionModel):
        rng = np.random.default_rng([seed, 107])
        pairs = [(list(COLOURS)[int(rng.integers(len(COLOURS)))], SHAPES[int(rng.integers(len(SHAPES)))])
                 for _ in range(n)]
        return QualityProbe(None, [f"a {c} {sh}" for c, sh in pairs], [f"{c} {sh}" for c, sh in pairs], [],
                            seed=1_000 + seed)
    scenes = list(world.scenes("test", n, 20_000 * seed))
    if isinstance(model, ContrastiveModel):
        return QualityProbe(pixels_of([s.image_HWC for s in scenes]), [], [], [s.captions[0] for s in scenes])
    rows = [(s.image_HWC, q.question, q.answer) for s in scenes for q in s.qa if q.kind in QA_KINDS]
    return QualityProbe(pixels_of([r[0] for r in rows]), [r[1] for r in rows], [r[2] for r in rows], [])


@torch.no_grad()
def quality(model: Model, probe: QualityProbe, batch_size: int) -> float:
    """Generative: accuracy of the top first answer token among the probe's answer words.
    Contrastive: share of images whose best-matching caption (among the probe's) is their own
    (a duplicate caption text counts as a match). Diffusion: share of samples in which the
    judge reads the prompted colour and shape."""
    if isinstance(model, DiffusionModel):
        read = _judged(model, probe.prompts, probe.seed)
        return float(np.mean([f"{c} {sh}" == t for c, sh, t in zip(read["colour"], read["shape"], probe.targets)]))
    assert probe.pixels_BCHW is not None
    if isinstance(model, ContrastiveModel):
        text_TD = model.encode_text(probe.captions)
        sims = torch.cat([model.similarity_to(model.encode_image(probe.pixels_BCHW[i : i + batch_size]), text_TD)
                          for i in range(0, len(probe.captions), batch_size)])
        best = sims.argmax(-1).tolist()
        return float(np.mean([probe.captions[b] == c for b, c in zip(best, probe.captions)]))
    assert isinstance(model, GenerativeModel)
    vocab = sorted(set(probe.targets))
    return float(np.mean([a == t for a, t in zip(top_answers(model, probe.pixels_BCHW, probe.prompts, vocab,
                                                                batch_size), probe.targets)]))


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
    """The harmonic mean of scalar figures (:func:`bench.samples.harmonic_mean`, 0 where any is 0)."""
    return float(samples.harmonic_mean(*(np.array([x], dtype=np.float64) for x in xs))[0])


@dataclass
class EditCase:
    relation: PlantedRelation
    entity: str
    old: str
    new: str
    edit_pixels_RCHW: torch.Tensor  # what the editor is shown: the entity's glyph, or (diffusion) the new drawing
    shown: Probe
    fresh: Probe
    neighbours: Probe  # targets = the model's answers before the edit (filled in later)


def build_cases(model: Model, k: int, cfg: EditingConfig, seed: int) -> list[EditCase]:
    """``k`` rewrites cycling over the planted relations. Generative and contrastive models are
    scored on glyph renders: those shown to the editor (efficacy), fresh ones (generalization),
    other planted entities and the entity's other relations (specificity). A diffusion model is
    shown renders of the entity drawn with the new value's shape, and scored on samples of
    "a <entity>" (efficacy), of "a <entity> at the <position>" (generalization, a paraphrase
    the edit never saw) and of "a <other entity>" (specificity)."""
    planted = model.planted
    rel0 = planted[0]
    world = World(rel0.world_seed, WorldConfig(n_entities=rel0.n_entities))
    rng = np.random.default_rng([seed, 61])
    entities = [rel0.entities[int(i)] for i in rng.permutation(len(rel0.entities))[:k]]
    diffusion = isinstance(model, DiffusionModel)
    cases = []
    for j, name in enumerate(entities):
        rel = planted[j % len(planted)]
        old = world.entity(name).facts[rel.relation]
        new = [v for v in rel.values if v != old][int(rng.integers(len(rel.values) - 1))]
        others = [e for e in rel.entities if e not in entities][: cfg.diffusion_neighbours if diffusion else
                                                                 cfg.neighbours]
        r = np.random.default_rng([seed, 67, j])
        if diffusion:
            colour, shape = world.entity(name).colour, dict(rel.renders)[new]
            targets = [drawings(world, r, colour, [shape], "fit")[0] for _ in range(cfg.renders)]
            where = [POSITIONS[int(i)] for i in r.permutation(len(POSITIONS))[: cfg.fresh_renders]]
            q = rel.question
            base = 10_000 * (seed + 1) + 100 * j
            cases.append(EditCase(
                rel, name, old, new, pixels_of(targets),
                Probe([rel] * cfg.renders, [new] * cfg.renders, prompts=[q.format(entity=name)] * cfg.renders,
                      seed=base),
                Probe([rel] * len(where), [new] * len(where),
                      prompts=[f"{q.format(entity=name)} at the {w}" for w in where], seed=base + 1),
                Probe([rel] * len(others), [""] * len(others), prompts=[q.format(entity=e) for e in others],
                      seed=base + 2)))
            continue
        shown = [glyph_scene(world, name, r, "fit").image_HWC for _ in range(cfg.renders)]
        fresh = [glyph_scene(world, name, np.random.default_rng([seed, 71, j]), "test").image_HWC
                 for _ in range(cfg.fresh_renders)]
        nr = np.random.default_rng([seed, 73, j])
        n_img = [glyph_scene(world, e, nr, "test").image_HWC for e in others]
        n_rel = [rel] * len(others)
        for other_rel in planted:  # the same entity's other relations
            if other_rel.relation != rel.relation:
                n_img.append(glyph_scene(world, name, nr, "test").image_HWC)
                n_rel.append(other_rel)
        cases.append(EditCase(rel, name, old, new, pixels_of(shown),
                              Probe([rel] * len(shown), [new] * len(shown), pixels_of(shown)),
                              Probe([rel] * len(fresh), [new] * len(fresh), pixels_of(fresh)),
                              Probe(n_rel, [""] * len(n_rel), pixels_of(n_img))))
    return cases


class EditingTask(Task):
    spec = TaskSpec(
        name="editing",
        version="1.3",
        families=frozenset({"generative", "contrastive", "diffusion"}),
        capability="edit",
        main_score="score",
        metrics=tuple(
            [MetricSpec(f"{p}{m}", "higher", f"{d} ({s} setting)")
             for p, s in (("", "single"), ("batch_", "batch"))
             for m, d in (("efficacy", "new answer on the renders shown to the editor"),
                          ("generalization", "new answer on fresh renders of the entity"),
                          ("specificity", "neighbouring facts keep their answer"),
                          ("score", "harmonic mean of efficacy, generalization, specificity"))]
            # the oracle's quality is the unedited model's (quality_before), no ceiling: shown raw
            + [MetricSpec(f"{p}quality", "higher",
                          f"retained task quality on held-out scenes after the edit ({s} setting)", normalise=False)
               for p, s in (("", "single"), ("batch_", "batch"))]
            + [MetricSpec("quality_before", "none", "retained-quality measure before any edit",
                          normalise=False)]
            + [MetricSpec(f"concept_{m}", "higher", f"diffusion concept replacement/erasure: {d}")
               for m, d in (("efficacy", "the edited prompts draw the new concept / not the erased one"),
                            ("generalization", "the same in other colours and at named places"),
                            ("specificity", "prompts of other shapes draw what they drew before"),
                            ("score", "harmonic mean of the three"))]
            + [MetricSpec("portability", "higher", "real data: token accuracy on a question whose answer follows "
                          "from the edit (VLKEB)")]),
    )

    # the part a row belongs to (fact rewrites, concept edits): each part's metrics are means over its
    # own cases, so a resample keeps both counts; not the relation, which no metric is defined over
    strata = ("kind",)

    data_kinds = ("concept_edit", "counterfact", "facts")
    reads_judge = True  # diffusion samples: the model's judge, or the one --judge names
    # what the task scores against, on the zoo and on a real checkpoint (`bench list tasks`)
    ground_truth = {
        "zoo": "planted facts (new answer; neighbours keep theirs); diffusion samples read by zoo-oracle",
        "real": "facts / counterfact files on generative models (reliability, generality, locality, portability); concept_edit files on diffusion models with a judge; none on contrastive checkpoints",
    }

    def __init__(self, config: EditingConfig | None = None) -> None:
        self.config = config or EditingConfig()

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        if self.data:
            if isinstance(model, DiffusionModel):
                if "concept_edit" not in self.data:
                    return "task 'editing' reads concept_edit files on diffusion models, not facts or counterfact"
                if model.judge is None:
                    return (f"task 'editing' needs a judge (an image classifier) to score {model.name!r}'s samples: "
                            f"name a CLIP-style checkpoint with --judge hf:FOLDER")
                return None
            if not isinstance(model, GenerativeModel):
                return (f"task 'editing' reads facts and counterfact files on generative models and concept_edit "
                        f"files on diffusion models; {model.name!r} is {model.family}")
            if not {"facts", "counterfact"} & set(self.data):
                return "task 'editing' reads facts or counterfact files on generative models, not concept_edit"
            return None
        if not model.planted:
            return f"task 'editing' needs planted knowledge (a zoo model); {model.name!r} declares none"
        if isinstance(model, DiffusionModel) and model.judge is None:
            return f"task 'editing' needs a judge (an image classifier) to score {model.name!r}'s samples"
        return None

    def run_data(self, model: Model, method: Method, seed: int, quick: bool) -> CellResult:
        """Editing on data files (generative models), one rewrite at a time, the model restored in
        between; the editor chooses the site (no planted one). Per rewrite (EasyEdit / VLKEB
        definitions, teacher-forced answer tokens): ``efficacy`` = reliability (token accuracy of the new
        answer on the edit's own input), ``generalization`` = generality (the same on the rephrased question
        and on the other image, their mean), ``specificity`` = locality (share of the unrelated probes'
        answer tokens predicted as before the edit), ``portability`` (token accuracy of the answer that
        follows from the edit); NaN where the file has no such probe. The editor is asked to rewrite the
        whole answer: where the old or the new answer spans several tokens in the model's tokenizer, the
        request's read-out is :func:`bench.kit.readout.sequence_objective` (teacher-forced log-probability
        summed over the answer's tokens), else the family's first-token read-out (one token: the same
        thing). References: ``random`` is the
        unedited model (the floor: what is already there; locality 1); ``oracle`` a perfect edit (1 on
        every probe, a ceiling by construction)."""
        if isinstance(model, DiffusionModel):
            return self.run_concept_file(model, method, seed, quick)
        assert isinstance(model, GenerativeModel)
        cfg = self.config
        bs = model.batch_size
        edits = [e for kind in sorted(set(self.data) - {"concept_edit"}) for e in
                 data_edits(model, self.data[kind], cfg.quick_data_requests if quick else None)]
        snapshot = ParameterSnapshot(model.module)
        out: list[tuple[DataEdit, float, float, float, float]] = []
        try:
            for e in edits:
                before = token_predictions(model, e.locality, bs) if e.locality is not None else []
                if method.bound == "ceiling":
                    nanless = [1.0, 1.0, 1.0, 1.0]
                    vals = [v if p is not None else float("nan") for v, p in
                            zip(nanless, (e.reliability, e.generality, e.locality, e.portability))]
                    out.append((e, vals[0], vals[1], vals[2], vals[3]))
                    continue
                applied = None
                if not method.reference:
                    # an answer of several tokens is read whole (summed log-probs), not by its first token
                    multi = max(answer_token_counts(model, [e.question] * 2, [e.old, e.new])) > 1
                    request = EditRequest(e.pixels_CHW[None, None], [e.question], [e.old], [e.new], site=None,
                                          batch_size=bs, values=[(e.old, e.new)],
                                          readout=sequence_objective if multi else None)
                    applied = method.edit(model, request)
                with applied_edit(model, applied):
                    rel = token_accuracy(model, e.reliability, bs)
                    gen = token_accuracy(model, e.generality, bs)
                    loc = unchanged_share(before, token_predictions(model, e.locality, bs)) if e.locality else float("nan")
                    port = token_accuracy(model, e.portability, bs)
                out.append((e, rel, gen, loc, port))
                snapshot.restore()
        finally:
            snapshot.restore()
        snapshot.check_restored("editing")
        ids = [hashlib.sha256(f"{x.id}|{x.question}|{x.old}->{x.new}".encode()).hexdigest()[:16] for x, *_ in out]
        nan = [float("nan")] * len(out)
        rows = make_rows(example=ids, hash=ids, kind=["fact"] * len(out), relation=["data"] * len(out),
                         setting=["single"] * len(out), efficacy=[r[1] for r in out],
                         generalization=[r[2] for r in out], specificity=[r[3] for r in out],
                         portability=[r[4] for r in out], quality_after=nan, quality_before=nan)
        return self.result(rows)

    def run(self, model: Model, method: Method, seed: int, quick: bool = False) -> CellResult:
        if self.data:
            return self.run_data(model, method, seed, quick)
        cfg = self.config
        k = cfg.n_requests if not quick else (
            cfg.quick_diffusion_requests if isinstance(model, DiffusionModel) else cfg.quick_requests)
        cases = build_cases(model, k, cfg, seed)
        rel0 = model.planted[0]
        n_quality = cfg.diffusion_quality if isinstance(model, DiffusionModel) else cfg.quality_scenes
        qprobe = quality_probe(model, World(rel0.world_seed), n_quality // (2 if quick else 1), seed)
        bs = model.batch_size
        once = _unedited_memo(model, seed, quick, cfg)
        for i, c in enumerate(cases):  # specificity targets: what the unedited model answers
            c.neighbours.targets = once(("neighbours", i), lambda: fact_answers(model, c.neighbours, bs))
        quality_before = once("quality", lambda: quality(model, qprobe, bs))
        rng = np.random.default_rng([seed, 79])

        def acc(p: Probe, pred: list[str]) -> float:
            return float(np.mean([a == t for a, t in zip(pred, p.targets)]))

        def score_cases(group: list[EditCase], edited: bool,
                        applied: Intervention | None = None) -> list[tuple[float, float, float, float]]:
            with applied_edit(model, applied):
                return _score_cases(group, edited)

        def _score_cases(group: list[EditCase], edited: bool) -> list[tuple[float, float, float, float]]:
            """Per case: its share of correct answers on each probe, and the quality measured once
            after the group's edit (random and oracle: ``quality_before``)."""
            per_case = []
            for c in group:
                shares = []
                for probe in (c.shown, c.fresh, c.neighbours):
                    if method.bound == "chance":
                        pred = [r.values[int(rng.integers(len(r.values)))] for r in probe.relations]
                    elif method.bound == "ceiling":
                        pred = list(probe.targets)
                    else:
                        pred = fact_answers(model, probe, bs)
                    shares.append(acc(probe, pred))
                per_case.append(shares)
            q = quality(model, qprobe, bs) if edited and not method.reference else quality_before
            return [(e, g, s, q) for e, g, s in per_case]

        snapshot = ParameterSnapshot(model.module)
        restore = snapshot.restore

        def request(group: list[EditCase]) -> EditRequest:
            return EditRequest(torch.stack([c.edit_pixels_RCHW for c in group]),
                               [c.relation.question.format(entity=c.entity) if isinstance(model, DiffusionModel)
                                else c.relation.question for c in group],
                               [c.old for c in group], [c.new for c in group],
                               site=(group[0].relation.site if cfg.site == "planted" and len({c.relation.site for c in group}) == 1
                                     else None), batch_size=bs, values=[c.relation.values for c in group])

        # one row per (case, setting): (case, setting, (efficacy, generalization, specificity, quality after))
        scored: list[tuple[EditCase, str, tuple[float, float, float, float]]] = []
        concept: list[ConceptOutcome] = []
        try:
            for c in cases:
                applied = method.edit(model, request([c])) if not method.reference else None
                scored += [(c, "single", r) for r in score_cases([c], edited=True, applied=applied)]
                restore()
            if not method.reference:
                for rel in model.planted:  # one batch per relation: each has one planted site
                    group = [c for c in cases if c.relation.relation == rel.relation]
                    if group:
                        applied = method.edit(model, request(group))
                        scored += [(c, "batch", r) for c, r in zip(group, score_cases(group, edited=True,
                                                                                      applied=applied))]
                        restore()
            else:
                scored += [(c, "batch", r) for c, r in zip(cases, score_cases(cases, edited=True))]
            if isinstance(model, DiffusionModel):
                concept = self.concept_edits(model, method, seed, quick, restore, once)
        finally:
            restore()
        snapshot.check_restored("editing")
        ids = [case_hash(c) for c, _, _ in scored] + [o.hash for o in concept]
        rows = make_rows(
            example=ids, hash=ids,
            kind=["fact"] * len(scored) + ["concept"] * len(concept),
            relation=[c.relation.relation for c, _, _ in scored] + [""] * len(concept),
            setting=[setting for _, setting, _ in scored] + ["concept"] * len(concept),
            efficacy=[r[0] for _, _, r in scored] + [o.efficacy for o in concept],
            generalization=[r[1] for _, _, r in scored] + [o.generalization for o in concept],
            specificity=[r[2] for _, _, r in scored] + [o.specificity for o in concept],
            quality_after=[r[3] for _, _, r in scored] + [float("nan")] * len(concept),
            quality_before=[quality_before] * (len(scored) + len(concept)))
        return self.result(rows)

    def metrics_from_rows(self, rows: Rows, w_BN: np.ndarray) -> dict[str, np.ndarray]:
        """Per setting (``single``, ``batch``; ``concept`` when the rows hold concept edits): the
        weighted means over that setting's rows of efficacy, generalization, specificity and
        (not for concept edits) ``quality_after``, and ``score``, the harmonic mean of the three means;
        ``quality_before`` is the weighted mean of its constant column."""
        setting = rows["setting"]
        out: dict[str, np.ndarray] = {"quality_before": wmean(rows["quality_before"], w_BN)}
        parts = [("", "single"), ("batch_", "batch")]
        if (setting == "concept").any():
            parts.append(("concept_", "concept"))
        for prefix, name in parts:
            on = setting == name
            e, g, s = (wmean(np.where(on, rows[m], np.nan), w_BN)
                       for m in ("efficacy", "generalization", "specificity"))
            out.update({f"{prefix}efficacy": e, f"{prefix}generalization": g, f"{prefix}specificity": s,
                        f"{prefix}score": samples.harmonic_mean(e, g, s)})
            if name != "concept":
                out[f"{prefix}quality"] = wmean(np.where(on, rows["quality_after"], np.nan), w_BN)
        if "portability" in rows:  # data files (real data): where the file gives a portability probe
            out["portability"] = wmean(rows["portability"], w_BN)
        return out

    def example_quality(self, rows: Rows) -> np.ndarray:
        """Per row, the case's edit score in that row's setting: the harmonic mean of its three shares."""
        return samples.harmonic_mean(rows["efficacy"], rows["generalization"], rows["specificity"])

    def run_concept_file(self, model: DiffusionModel, method: Method, seed: int, quick: bool) -> CellResult:
        """Concept edits read from a ``concept_edit`` file (TIME / UCE prompt sets), scored by the model's
        judge (zoo-oracle on the zoo) as the world's concept edits are (:func:`concept_cases_from_file`):
        ``concept_efficacy`` on the positives shown to the editor, ``concept_generalization`` on the
        positives it was not shown, ``concept_specificity`` on the negatives."""
        snapshot = ParameterSnapshot(model.module)
        loaded = self.data["concept_edit"]
        cases = concept_cases_from_file(model, loaded, self.config, seed,
                                        self.config.quick_data_requests if quick else None)
        try:
            concept = self.concept_edits(model, method, seed, quick, snapshot.restore, cases=cases)
        finally:
            snapshot.restore()
        snapshot.check_restored("editing")
        ids = [o.hash for o in concept]
        n = len(ids)
        nan = [float("nan")] * n
        rows = make_rows(example=ids, hash=ids, kind=["concept"] * n, relation=[""] * n, setting=["concept"] * n,
                         efficacy=[o.efficacy for o in concept], generalization=[o.generalization for o in concept],
                         specificity=[o.specificity for o in concept], quality_after=nan, quality_before=nan)
        return self.result(rows)

    def concept_edits(self, model: DiffusionModel, method: Method, seed: int, quick: bool,
                      restore: Callable[[], None], once: "Once | None" = None,
                      cases: "list[ConceptCase] | None" = None) -> list["ConceptOutcome"]:
        """Concept replacement and erasure (the settings of TIME, Orgad et al., 2023, and UCE,
        Gandikota et al., 2024), one edit at a time, read by the judge: one outcome per edit."""
        if cases is None:
            cases = build_concept_cases(World(model.planted[0].world_seed), self.config, seed,
                                        2 if quick else self.config.concept_edits)
        rng = np.random.default_rng([seed, 109])
        out = []
        once = once or _unedited_memo(model, seed, quick, self.config, self.spec.version)
        for j, c in enumerate(cases):
            before = once(("concept", j), lambda: _read_concepts(model, c.others, c.seed + 2, c.labels))
            applied = None
            if not method.reference:
                applied = method.edit(model, EditRequest(c.pixels_KRCHW, c.prompts, [c.concept] * len(c.prompts),
                                                         [c.new] * len(c.prompts), site=None,
                                                         batch_size=model.batch_size,
                                                         values=[tuple(SHAPES)] * len(c.prompts)))

            # what the judge can answer: the world's shapes, or the file's concepts and "" (none of them)
            pool = (*c.labels, "") if c.labels else SHAPES

            def read(prompts: list[str], seed_: int) -> list[str]:
                if method.bound == "chance":
                    return [pool[int(rng.integers(len(pool)))] for _ in prompts]
                if method.bound == "ceiling":  # a perfect edit: the concept gone or replaced, the rest as before
                    return [c.new or next(x for x in pool if x != c.concept) for _ in prompts]
                with applied_edit(model, applied):
                    return _read_concepts(model, prompts, seed_, c.labels)

            took = (lambda x: x == c.new) if c.new else (lambda x: x != c.concept)
            e = float(np.mean([took(x) for x in read(c.shown, c.seed)]))
            g = float(np.mean([took(x) for x in read(c.fresh, c.seed + 1)])) if c.fresh else float("nan")
            after = before if method.bound == "ceiling" else read(c.others, c.seed + 2)
            s = float(np.mean([a == b for a, b in zip(after, before)]))
            out.append(ConceptOutcome(c.hash, e, g, s))
            restore()
        return out


# ------------------------------------------------------------------ real data (facts, counterfact)
@dataclass
class TokenProbe:
    """Teacher-forced probes: row ``i`` is ``image`` ``pixels_BCHW[i]``, question ``prompts[i]`` and
    the answer ``answers[i]`` whose tokens are scored."""

    pixels_BCHW: torch.Tensor
    prompts: list[str]
    answers: list[str]

    @property
    def n(self) -> int:
        return len(self.prompts)


@dataclass
class DataEdit:
    """One rewrite read from a data file: the edit (image, question, old → new answer) and its probes:
    reliability (the edit's own input, scored on ``new``), generality (rephrased question / other
    image, on ``new``), locality (unrelated facts: their predicted tokens should not change) and
    portability (a question whose answer follows from the edit)."""

    id: str
    pixels_CHW: torch.Tensor
    question: str
    old: str
    new: str
    reliability: TokenProbe
    generality: TokenProbe | None
    locality: TokenProbe | None
    portability: TokenProbe | None


def token_predictions(model: GenerativeModel, probe: TokenProbe, batch_size: int) -> list[torch.Tensor]:
    """Per row, the model's greedy token at each position of the answer under teacher forcing, and the
    answer's own tokens: ``[(pred_T, gold_T)]``."""
    out = []
    with torch.no_grad():
        for i in range(0, probe.n, batch_size):
            sl = slice(i, i + batch_size)
            enc = model.encode_spans(probe.prompts[sl], [""] * len(probe.prompts[sl]), probe.answers[sl])
            logits = model.forward_tokens(probe.pixels_BCHW[sl], enc.ids_BL, enc.mask_BL)
            pred_BL = logits.argmax(-1)
            for b in range(logits.shape[0]):
                pos = enc.span_BL[b].nonzero().squeeze(1)
                out.append(torch.stack([pred_BL[b, pos - 1].cpu(), enc.ids_BL[b, pos].cpu()]))
    return out


def token_accuracy(model: GenerativeModel, probe: TokenProbe | None, batch_size: int) -> float:
    """The mean over the probe's rows of the share of answer tokens the model predicts under teacher
    forcing (EasyEdit's and VLKEB's reliability / generality / portability); NaN without a probe."""
    if probe is None or probe.n == 0:
        return float("nan")
    return float(np.mean([float((pg[0] == pg[1]).double().mean()) for pg in token_predictions(model, probe, batch_size)]))


def unchanged_share(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """Locality: the mean over rows of the share of answer positions whose predicted token is the
    same after the edit as before (EasyEdit's and VLKEB's locality)."""
    if not before:
        return float("nan")
    return float(np.mean([float((a[0] == b[0]).double().mean()) for a, b in zip(after, before)]))


def _blank(size: int) -> torch.Tensor:
    """A mid-grey image: the input of a text-only probe (the language side of a VLM)."""
    return torch.full((3, size, size), 0.5)


def data_edits(model: Model, loaded: LoadedData, limit: int | None) -> list[DataEdit]:
    """The rewrites of a ``facts`` or ``counterfact`` file (the first ``limit`` rows when given)."""
    from bench.kit.realdata import EditRequest as CounterFact, MultimodalFact, stack_images

    size = input_size(model)
    recs = list(loaded.records[:limit] if limit else loaded.records)
    refs = list({ref.path: ref for r in recs for ref in (getattr(r, a, None) for a in
                 ("image", "image_rephrase", "locality_image")) if ref is not None}.values())
    pix = stack_images(refs, size) if refs else torch.zeros(0, 3, size, size)
    where = {ref.path: j for j, ref in enumerate(refs)}

    def img(ref: Any) -> torch.Tensor:
        return pix[where[ref.path]] if ref is not None else _blank(size)

    def probe(rows: Sequence[tuple[torch.Tensor, str | None, str | None]]) -> TokenProbe | None:
        # the loaders guarantee a question and its answer together (None never reaches here)
        return TokenProbe(torch.stack([p for p, _, _ in rows]), [str(q) for _, q, _ in rows],
                          [str(a) for _, _, a in rows]) if rows else None

    def own(rows: Sequence[tuple[torch.Tensor, str, str]]) -> TokenProbe:
        got = probe(rows)
        assert got is not None
        return got

    out = []
    for r in recs:
        if isinstance(r, MultimodalFact):
            x = img(r.image)
            gen: list[tuple[torch.Tensor, str | None, str | None]] = []
            if r.rephrase:
                gen.append((x, r.rephrase, r.counterfactual))
            if r.image_rephrase:
                gen.append((img(r.image_rephrase), r.question, r.counterfactual))
            loc: list[tuple[torch.Tensor, str | None, str | None]] = (
                [(img(r.locality_image) if r.locality_image else x, r.locality_question, r.locality_answer)]
                if r.locality_question else [])
            port: list[tuple[torch.Tensor, str | None, str | None]] = (
                [(x, r.portability_question, r.portability_answer)] if r.portability_question else [])
            out.append(DataEdit(r.id, x, r.question, r.answer, r.counterfactual, own([(x, r.question, r.counterfactual)]),
                                probe(gen), probe(loc), probe(port)))
        elif isinstance(r, CounterFact):
            x = img(r.image)
            para = [(x, p.replace("{}", r.subject), r.target_new) for p in r.paraphrases]
            # neighbourhood prompts name other subjects: their (true) completion should keep its tokens
            near = [(x, p.replace("{}", r.subject), r.target_true) for p in r.neighbourhood]
            out.append(DataEdit(r.id, x, r.text, r.target_true, r.target_new, own([(x, r.text, r.target_new)]),
                                probe(para), probe(near), None))
        else:  # pragma: no cover - data_kinds admits only these
            raise BenchError(f"task 'editing' cannot read a {type(r).__name__} record")
    return out


def case_hash(c: EditCase) -> str:
    """The edit request's id (16 hex digits of ``entity|relation|old->new``): its rows' resampling unit."""
    return hashlib.sha256(f"{c.entity}|{c.relation.relation}|{c.old}->{c.new}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ConceptOutcome:
    """One concept edit's shares: the edited prompts draw the new concept (efficacy), so do its
    other colours and places (generalization), other shapes draw what they drew (specificity)."""

    hash: str
    efficacy: float
    generalization: float
    specificity: float


@dataclass
class ConceptCase:
    """A diffusion concept edit: prompts naming ``concept`` should draw ``new`` instead
    (replacement) or no ``concept`` at all (erasure, ``new == ""``)."""

    concept: str
    new: str
    prompts: list[str]  # shown to the editor, with renders of what each should now draw
    pixels_KRCHW: torch.Tensor
    shown: list[str]  # efficacy: the edit's own prompts, sampled
    fresh: list[str]  # generalization: the concept in other colours and at named places
    others: list[str]  # specificity: prompts of the other shapes
    seed: int
    # the concepts an open-vocabulary judge reads (a file's sources and destinations); () = the world's shapes
    labels: tuple[str, ...] = ()

    @property
    def hash(self) -> str:
        """The concept edit's id (16 hex digits; ``seed`` is distinct per edit of a cell): its row's
        resampling unit."""
        return hashlib.sha256(f"concept|{self.concept}->{self.new or '(erased)'}|{self.seed}".encode()
                              ).hexdigest()[:16]


def build_concept_cases(world: World, cfg: EditingConfig, seed: int, k: int) -> list[ConceptCase]:
    """``k`` concept edits alternating replacement and erasure, each over three colours (the other
    three test generalization); erasure targets are the same layouts with the object removed."""
    rng = np.random.default_rng([seed, 113])
    out = []
    for j in range(k):
        concept = SHAPES[int(rng.integers(len(SHAPES)))]
        rest = [x for x in SHAPES if x != concept]
        new = rest[int(rng.integers(len(rest)))] if j % 2 == 0 else ""
        colours = [list(COLOURS)[int(i)] for i in rng.permutation(len(COLOURS))]
        shown_c, fresh_c = colours[:3], colours[3:]
        prompts = [f"a {c} {concept}" for c in shown_c]
        pix = torch.stack([pixels_of([drawings(world, rng, c, [new or None], "fit")[0] for _ in range(cfg.renders)])
                           for c in shown_c])
        where = [POSITIONS[int(rng.integers(len(POSITIONS)))] for _ in fresh_c]
        others = [f"a {list(COLOURS)[int(rng.integers(len(COLOURS)))]} {rest[i % len(rest)]}"
                  for i in range(cfg.diffusion_neighbours)]
        out.append(ConceptCase(concept, new, prompts, pix, prompts * 2,
                               [f"a {c} {concept} at the {w}" for c, w in zip(fresh_c, where)], others,
                               20_000 * (seed + 1) + 10 * j))
    return out


def concept_cases_from_file(model: DiffusionModel, loaded: LoadedData, cfg: EditingConfig, seed: int,
                            limit: int | None) -> list[ConceptCase]:
    """Concept edits from a ``concept_edit`` file: the first half of each row's positives (at least one)
    is shown to the editor, with ``cfg.renders`` of the model's own samples of each prompt with the source
    replaced by the destination (erasure: the source word removed), as ESD / UCE make their targets;
    the other positives test generalization (NaN when there are none), the negatives specificity. The
    judge reads shapes, so source and destination must be shape words it knows (one-line error otherwise);
    a judge the user names (``--judge``, an open vocabulary: :class:`bench.kit.judge.ContrastiveJudge`)
    reads each sample among the file's sources and destinations, or none of them."""
    recs = list(loaded.records[:limit] if limit else loaded.records)
    open_vocabulary = callable(getattr(model.judge, "read_concepts", None))
    labels = tuple(sorted({w for r in recs for w in (r.source, r.destination) if w})) if open_vocabulary else ()
    out = []
    for i, r in enumerate(recs):
        for word in (r.source, r.destination):
            if word and word not in SHAPES and not open_vocabulary:
                raise BenchError(f"{loaded.source.path}: row {i + 1} (id {r.id!r}): the judge of {model.name!r} reads "
                                 f"shapes ({', '.join(SHAPES)}); {word!r} is not one")
        if not r.negatives:
            raise BenchError(f"{loaded.source.path}: row {i + 1} (id {r.id!r}) has no negatives: specificity "
                             f"needs prompts that should not change")
        half = max(1, len(r.positives) // 2)
        shown, fresh = list(r.positives[:half]), list(r.positives[half:])
        target = [" ".join(p.replace(r.source, r.destination).split()) for p in shown]
        s = 30_000 * (seed + 1) + 10 * i
        with torch.no_grad():
            pix = model.generate([p for p in target for _ in range(cfg.renders)], seed=s + 5)
        out.append(ConceptCase(r.source, r.destination, shown, pix.view(len(shown), cfg.renders, *pix.shape[1:]),
                               shown * 2, fresh, list(r.negatives), s, labels))
    return out
