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

Two ground truths (v1.2; Hase, Bansal, Kim & Ghandeharioun, 2023, draw the distinction):

- **Storage**: the planted site, where the fact was *written* (the only weights phase 2
  trained; reverting them to phase 1 puts the fact at chance, ``bench zoo audit``).
- **Mediation**: the fact's mediation profile (:attr:`PlantedRelation.mediation`, measured by
  ``bench zoo audit`` on world streams no task uses): per candidate site, how often swapping its
  output from a render of another planted entity makes the answer that entity's (interchange
  intervention, Geiger et al., 2021). A fact can depend on sites other than where it was
  written: on zoo-vlm, "home" is written in ``lm.blocks.1.mlp`` yet ``lm.blocks.3.mlp``, which
  reads it, flips it as often or more.

Every localization method here measures some effect of activations on the answer (patching,
gradients, direct effects, decodability); none reads weights. The storage columns ask how well
that recovers where a fact was written; the mediation columns whether it recovers what the
answer depends on. Each method's docstring says which question it answers.

Metrics, per example then averaged (ties count as the expected value over random
tie-breaking):

- ``top1`` ↑ (main): the planted (storage) site has the highest score.
- ``mrr`` ↑: reciprocal rank of the planted site.
- ``auroc`` ↑: share of the other candidates scored below the planted site
  (the AUROC of planted vs other sites of the same kind).
- ``mediation_tau`` ↑: Kendall's τ-b (Kendall, 1945; scipy's default variant) between the
  example's site scores and its relation's mediation profile; 0 when every score ties
  (τ-b is undefined there; 0 is its expectation under random tie-breaking). Not normalised:
  the oracle knows the storage site, not the profile.
- ``mediation_top1`` ↑: the strongest mediator (the profile's highest flip rate) has the
  highest score; not normalised, as ``mediation_tau``.

Does localization inform editing? (Hase, Bansal, Kim & Ghandeharioun, 2023, "Does
Localization Inform Editing?"). Per relation, the method's top site (the highest mean
within-example rank over that relation's examples) is edited with a plain constrained
fine-tune (Zhu et al., 2020; :func:`bench.kit.editing.constrained_finetune`), and so is the
planted site, on the same fact-rewrite requests, one at a time with the model restored
bit-identically in between. Edit success is the harmonic mean of efficacy (new answer
on the renders used for the edit), generalization (on fresh renders) and specificity
(other planted entities keep their answers), as in the ``editing`` task:

- ``edit_at_top`` / ``edit_at_planted``: edit success at the method's top site and at
  the planted site (context; not normalised).
- ``edit_ratio``: their ratio. Near 1 for every method would reproduce Hase et al.'s
  finding that where a fact is localized does not predict where it is best edited.

Faithfulness, no planted truth needed (v1.3; MIB's CPR/CMD idea, Mueller et al., 2025, "MIB: A
Mechanistic Interpretability Benchmark"): keep only each example's top-k% candidate sites clean (the rest
patched from the counterfactual run) and measure the recovered share of the behaviour, or patch the top-k%
and measure the lost share, over a fixed ladder of k (:data:`FAITH_LADDER`); definitions in
:func:`faithfulness_metrics`:

- ``faith_suff`` ↑ (area under the sufficiency curve, MIB's CPR), ``faith_nec`` ↑ (area under the
  necessity curve), ``faith_cmd`` ↓ (area under ``|1 − sufficiency|``, MIB's CMD);
- bounds, the same for every method of a (model, seed): ``faith_*_random`` (a uniformly random site
  order, exact) and ``faith_*_oracle`` (the best kept / removed set per example and k: exhaustive while
  ``2^S ≤ 256`` subsets, else greedy while ``S(S + 1) ≤ 1056`` patched copies, NaN beyond).

Fact rows carry the curves' raw points (``suf@x``, ``nec@x`` and the bounds' ``suf_rand@x``, ``nec_rand@x``,
``suf_orac@x``, ``nec_orac@x`` at ``x = c/S``), so the areas (ratios of means over examples) get bootstrap
intervals like every other metric. On a real checkpoint (``--data facts=PATH``, generative models) these
are the only figures (:meth:`LocalizationTask.run_data`); ``leaderboard/agreement.py`` measures on the zoo
how well they rank methods as the two planted truths do.

References: ``random`` scores sites uniformly at random; ``oracle`` scores the planted
site 1 and the others 0 (top-1, MRR and AUROC 1 by construction; its edit figures are those
of the planted site, no ceiling).

Per-example rows (v1.2). Two kinds of rows, each its own resampling unit:

- ``kind="fact"``: one per fact example (unit: the example, id ``<index>:<hash>``; each is
  drawn on its own and scored alone), with ``top1``, ``rr`` (reciprocal rank) and ``auroc`` as
  :func:`rank_rows` computes them (ties at expectation), ``med_tau`` and ``med_top1`` against the
  mediation profile (:func:`mediation_rows`; NaN where the model carries none) and its ``relation``.
- ``kind="edit"``: one per fact rewrite of a relation (unit: the rewrite, id ``edit:<hash>`` of
  ``entity|relation|old->new``; each rewrite is edited and scored alone, the model restored in
  between), with ``edit_top`` and ``edit_planted``: that rewrite's edit success (the harmonic
  mean above) at the method's top site for the relation and at the planted site.

Columns that do not apply to a kind are NaN there. :meth:`LocalizationTask.metrics_from_rows`
computes every metric from the rows: ``top1``, ``mrr``, ``auroc``, ``mediation_tau``,
``mediation_top1`` are weighted means over the fact rows; ``edit_at_top`` / ``edit_at_planted`` the mean over relations of each relation's
weighted mean over its rewrites (the v1.0 definition, figures unchanged); ``edit_ratio`` their
ratio. Strata (:meth:`LocalizationTask.strata_of`): the fact examples form one stratum (top-1,
MRR and AUROC are means over examples), the rewrites one per relation (the edit figures average
over relations, so every resample has each relation's rewrites). The top site is chosen from all examples' scores, so the edit rows carry
that choice as fixed: intervals on the edit figures do not include the uncertainty of the
choice itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from bench.capabilities import LocalizeRequest
from bench.errors import BenchError
from bench.kit.readout import Subject, diffusion_subject, edit_loss, pixels_of, value_logits
from bench.method import Method
from bench.model import ContrastiveModel, DiffusionModel, GenerativeModel, Model, PlantedRelation, PromptEncoding
from bench.records import LoadedData
from bench.samples import Rows, make_rows, wmean
from bench.kit.shared import ProcessMemo, shared_work
from bench.task import CellResult, MetricSpec, Task, TaskSpec
from bench.kit.world import World, WorldConfig
from bench.kit.world.core import stable_hash
from bench.kit.world.facts import glyph_scene


# The fixed ladder of site fractions k (MIB's idea, Mueller et al., 2025): a curve's points are the
# distinct site counts ceil(k·S) these give, placed at their actual fraction c / S.
FAITH_LADDER: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class LocalizationConfig:
    n_examples: int = 64
    quick_examples: int = 32
    edit_requests: int = 4  # rewrites per relation for edit_at_top / edit_at_planted
    quick_edit_requests: int = 2
    edit_renders: int = 4
    edit_fresh: int = 8
    edit_neighbours: int = 12
    edit_steps: int = 40
    edit_lr: float = 5e-3
    edit_max_delta: float = 0.05
    diffusion_draws: int = 2  # (timestep, noise) draws per diffusion example
    # faithfulness curves (no planted truth): the k ladder, and the bounds' budgets
    faith_ladder: tuple[float, ...] = FAITH_LADDER
    oracle_subsets: int = 256  # exhaustive search over every kept subset while 2^S is at most this
    greedy_copies: int = 1056  # else a greedy oracle while its S(S + 1) patched copies are at most this (S <= 32)
    random_orders: int = 8  # else the random bound averages this many seeded orders
    faith_copies_per_pass: int = 8
    # what a site not kept is set to: "counterfactual" (its activation in the counterfactual run, the
    # default and the published figures) or "mean" (its mean over the cell's examples in the clean run:
    # mean ablation, :func:`ablation_sources`); "mean" adds "+mean-ablation" to the task version
    faith_ablation: str = "counterfactual"
    # real data (--data facts=PATH): the candidate sites' kind in the language model, and the share of
    # the file's rows kept for methods' fit split (chosen by a seeded hash of the row)
    data_site_kind: str = "mlp"
    data_fit_fraction: float = 0.25
    data_split_seed: int = 0


def rank_rows(scores_NS: torch.Tensor, planted_N: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per example ``[N]``: top-1, reciprocal rank and AUROC of the planted site; ties at expectation."""
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
    return {"top1": top1, "rr": rr, "auroc": auroc}


def kendall_tau_b(scores_NS: torch.Tensor, profile_S: torch.Tensor) -> torch.Tensor:
    """Per row ``[N]``: Kendall's τ-b between ``scores_NS[i]`` and ``profile_S`` (ties in either
    handled as scipy.stats.kendalltau's default); 0 where either side ties everywhere."""
    s, p = scores_NS.double(), profile_S.double()
    iu = torch.triu_indices(s.shape[1], s.shape[1], offset=1)
    ds = torch.sign(s[:, iu[0]] - s[:, iu[1]])  # [N, pairs]
    dp = torch.sign(p[iu[0]] - p[iu[1]])  # [pairs]
    num = (ds * dp).sum(1)
    den = torch.sqrt((ds != 0).sum(1).double() * float((dp != 0).sum()))
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), torch.zeros_like(num))


def mediation_rows(scores_NS: torch.Tensor, relations: Sequence[str], cands: Sequence[str],
                   planted: Sequence[PlantedRelation]) -> dict[str, torch.Tensor]:
    """Per example ``[N]``: ``med_tau`` (:func:`kendall_tau_b` against its relation's mediation
    profile over ``cands``) and ``med_top1`` (the strongest mediator scores highest, ties at
    expectation); NaN for a relation without a profile covering every candidate."""
    n = scores_NS.shape[0]
    tau, top = torch.full((n,), float("nan"), dtype=torch.float64), torch.full((n,), float("nan"), dtype=torch.float64)
    for rel in planted:
        prof = dict(rel.mediation)
        rows = torch.tensor([r == rel.relation for r in relations], dtype=torch.bool)
        if not prof or not all(c in prof for c in cands) or not bool(rows.any()):
            continue
        profile_S = torch.tensor([prof[c] for c in cands], dtype=torch.float64)
        tau[rows] = kendall_tau_b(scores_NS[rows], profile_S)
        strongest = torch.full((int(rows.sum()),), int(profile_S.argmax()))
        top[rows] = rank_rows(scores_NS[rows], strongest)["top1"]
    return {"med_tau": tau, "med_top1": top}


def rank_metrics(scores_NS: torch.Tensor, planted_N: torch.Tensor) -> dict[str, float]:
    """top-1, reciprocal rank and AUROC of the planted site per example (:func:`rank_rows`), averaged."""
    per = rank_rows(scores_NS, planted_N)
    return {"top1": float(per["top1"].mean()), "mrr": float(per["rr"].mean()), "auroc": float(per["auroc"].mean())}


@dataclass
class FactExamples:
    clean_BCHW: torch.Tensor
    corrupt_BCHW: torch.Tensor
    prompts: list[str]
    answers: list[str]
    alternatives: list[str]
    planted_site: list[str]
    hashes: list[str]
    relations: list[str]  # the relation each example asks


_pixels = pixels_of


def build_examples(planted: Sequence[PlantedRelation], n: int, seed: int, split: str = "test") -> FactExamples:
    """``n`` examples cycling over the relations: a planted entity's glyph, and the same scene with
    another planted entity whose answer differs."""
    clean, corrupt, prompts, answers, alts, sites, hashes, rels = [], [], [], [], [], [], [], []
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
        rels.append(rel.relation)
        hashes.append(hashlib.sha256(s.image_HWC.tobytes() + c.image_HWC.tobytes() + rel.question.encode())
                      .hexdigest()[:16])
    return FactExamples(_pixels(clean), _pixels(corrupt), prompts, answers, alts, sites, hashes, rels)


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


@dataclass
class Rewrite:
    """One fact rewrite: the entity as shown to the editor, fresh views of it, and neighbours."""

    relation: PlantedRelation
    new_index: int
    shown: Subject
    fresh: Subject
    neighbours: Subject
    entity: str = ""
    old: str = ""

    @property
    def hash(self) -> str:
        """The rewrite's id (16 hex digits of ``entity|relation|old->new``): its row's resampling unit."""
        new = self.relation.values[self.new_index]
        return hashlib.sha256(f"{self.entity}|{self.relation.relation}|{self.old}->{new}".encode()).hexdigest()[:16]


def build_rewrites(model: Model, rel: PlantedRelation, k: int, cfg: LocalizationConfig, seed: int) -> list[Rewrite]:
    world = World(rel.world_seed, WorldConfig(n_entities=rel.n_entities))
    rng = np.random.default_rng([seed, 83, stable_hash(rel.relation)])
    chosen = [rel.entities[int(i)] for i in rng.permutation(len(rel.entities))[:k]]
    others = [e for e in rel.entities if e not in chosen][: cfg.edit_neighbours]
    out = []
    for j, name in enumerate(chosen):
        old = world.entity(name).facts[rel.relation]
        new = [v for v in rel.values if v != old][int(rng.integers(len(rel.values) - 1))]
        r = np.random.default_rng([seed, 89, j])
        if isinstance(model, DiffusionModel):
            views = [diffusion_subject(model, rel, world, [name] * cfg.edit_renders, r, "fit", cfg.diffusion_draws),
                     diffusion_subject(model, rel, world, [name] * cfg.edit_fresh, r, "test", cfg.diffusion_draws),
                     diffusion_subject(model, rel, world, others, r, "test", cfg.diffusion_draws)]
        else:
            views = [_pixels([glyph_scene(world, e, r, split).image_HWC for e in names])
                     for names, split in (([name] * cfg.edit_renders, "fit"), ([name] * cfg.edit_fresh, "test"),
                                          (others, "test"))]
        out.append(Rewrite(rel, rel.values.index(new), *views, entity=name, old=old))
    return out


def edit_success(model: Model, site: str, rewrites: Sequence[Rewrite], cfg: LocalizationConfig) -> list[float]:
    """Per rewrite, the harmonic mean of efficacy, generalization and specificity after a
    constrained fine-tune of ``site``'s module; the model is restored after each rewrite."""
    from bench.kit.editing import ParameterSnapshot, constrained_finetune

    module = model.module.get_submodule(model.site_specs[site].module)
    snapshot = ParameterSnapshot(model.module)
    scores = []
    try:
        for rw in rewrites:
            logits_of = value_logits(model, rw.relation)
            with torch.no_grad():
                before_M = logits_of(rw.neighbours).argmax(-1)
            constrained_finetune(model.module, module, edit_loss(model, rw.relation, rw.shown, rw.new_index),
                                 cfg.edit_steps, cfg.edit_lr, cfg.edit_max_delta)
            with torch.no_grad():
                eff = float((logits_of(rw.shown).argmax(-1) == rw.new_index).double().mean())
                gen = float((logits_of(rw.fresh).argmax(-1) == rw.new_index).double().mean())
                spec = float((logits_of(rw.neighbours).argmax(-1) == before_M).double().mean())
            scores.append(0.0 if min(eff, gen, spec) <= 0 else 3.0 / (1 / eff + 1 / gen + 1 / spec))
            snapshot.restore()
    finally:
        snapshot.restore()
    snapshot.check_restored("the localization edits")
    return scores


def top_site_per_relation(scores_NS: torch.Tensor, relations: Sequence[str], cands: Sequence[str]) -> dict[str, str]:
    """Per relation, the candidate with the highest mean within-example rank (ties: first)."""
    ranks_NS = scores_NS.double().argsort(1).argsort(1).double()
    out = {}
    for rel in dict.fromkeys(relations):
        rows = torch.tensor([r == rel for r in relations])
        out[rel] = cands[int(ranks_NS[rows].mean(0).argmax())]
    return out


@dataclass
class DiffusionFactExamples:
    """Prompts naming a planted entity (clean) or another with a different value (corrupt),
    and paired renders of the clean entity drawn with its own value's shape (``x0_good``)
    and with the corrupt entity's (``x0_bad``), at ``R`` shared (timestep, noise) draws."""

    clean_prompts: list[str]
    corrupt_prompts: list[str]
    x0_good_NCHW: torch.Tensor
    x0_bad_NCHW: torch.Tensor
    noise_RNCHW: torch.Tensor
    t_RN: torch.Tensor
    planted_site: list[str]
    hashes: list[str]
    relations: list[str]
    answers: list[str]
    alternatives: list[str]


def build_diffusion_examples(model: DiffusionModel, rel: PlantedRelation, n: int, seed: int, draws: int,
                             split: str = "test") -> DiffusionFactExamples:
    world = World(rel.world_seed, WorldConfig(n_entities=rel.n_entities))
    names, others = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, 97, i])
        name = rel.entities[int(rng.integers(len(rel.entities)))]
        value = world.entity(name).facts[rel.relation]
        alts = [e for e in rel.entities if world.entity(e).facts[rel.relation] != value]
        names.append(name)
        others.append(alts[int(rng.integers(len(alts)))])
    sub = diffusion_subject(model, rel, world, names, np.random.default_rng([seed, 101]), split, draws)
    rows = torch.arange(n)
    good_N = torch.tensor([rel.values.index(world.entity(e).facts[rel.relation]) for e in names])
    bad_N = torch.tensor([rel.values.index(world.entity(e).facts[rel.relation]) for e in others])
    good, bad = sub.x0_VNCHW[good_N, rows], sub.x0_VNCHW[bad_N, rows]
    corrupt = [rel.question.format(entity=e) for e in others]
    hashes = [hashlib.sha256(good[i].numpy().tobytes() + bad[i].numpy().tobytes() + sub.prompts[i].encode()
                             + corrupt[i].encode()).hexdigest()[:16] for i in range(n)]
    return DiffusionFactExamples(sub.prompts, corrupt, good, bad, sub.noise_RNCHW, sub.t_RN, [rel.site] * n, hashes,
                                 [rel.relation] * n, [rel.values[int(v)] for v in good_N],
                                 [rel.values[int(v)] for v in bad_N])


def diffusion_evaluate(model: DiffusionModel, ex: DiffusionFactExamples) -> Callable[..., tuple[torch.Tensor, Any]]:
    """The ``evaluate`` closure for a diffusion model. The metric is how much better the prompt
    explains the render with the clean entity's shape than the render with the corrupt
    entity's: denoising error on ``x0_bad`` minus that on ``x0_good``, averaged over the
    shared (timestep, noise) draws (a diffusion-classifier margin, Li et al., 2023; the
    analogue of a logit difference). Text sites see ``n·copies`` rows; the UNet runs
    every row at every draw for both renders."""
    R, n = ex.t_RN.shape

    def evaluate(which: str, read: Sequence[str] = (), write: Mapping[str, Any] | None = None,
                 copies: int = 1, keep_grad: bool = False) -> tuple[torch.Tensor, Any]:
        if which not in ("clean", "corrupt"):
            raise BenchError(f"evaluate: which must be 'clean' or 'corrupt', not {which!r}")
        prompts = (ex.clean_prompts if which == "clean" else ex.corrupt_prompts) * copies
        M = n * copies
        rep4 = lambda t: t.repeat(copies, 1, 1, 1)  # noqa: E731
        x0 = torch.cat([rep4(x) for x in (ex.x0_good_NCHW, ex.x0_bad_NCHW) for _ in range(R)])
        noise = torch.cat([rep4(ex.noise_RNCHW[r]) for _ in range(2) for r in range(R)])
        t = torch.cat([ex.t_RN[r].repeat(copies) for _ in range(2) for r in range(R)])
        with torch.set_grad_enabled(keep_grad), model.trace(read=read, write=write, keep_grad=keep_grad) as tr:
            enc = model.encode_prompts(prompts)
            both = PromptEncoding(enc.hidden_BLD.repeat(2 * R, 1, 1), enc.mask_BL.repeat(2 * R, 1))
            err = model.denoising_error_B(x0, noise, t, both).view(2, R, M).mean(1)
        return err[1] - err[0], tr

    return evaluate


# ------------------------------------------------------------------ faithfulness (no planted truth)
FAITH_PREFIXES: tuple[str, ...] = ("suf", "nec", "suf_rand", "nec_rand", "suf_orac", "nec_orac")


def ladder_counts(S: int, ladder: Sequence[float] = FAITH_LADDER) -> list[int]:
    """The distinct numbers of sites ``ceil(k·S)`` (top-k% means at least k% of the sites) over the ladder."""
    return sorted({min(S, max(0, math.ceil(k * S - 1e-9))) for k in ladder} | {0, S})


def faith_column(prefix: str, c: int, S: int) -> str:
    """The row column of a curve point: ``<prefix>@<c/S with 4 decimals>``."""
    return f"{prefix}@{c / S:.4f}"


def keep_metric(evaluate: Callable[..., tuple[torch.Tensor, Any]], cands: Sequence[str],
                sources: Mapping[str, torch.Tensor], keep_CNS: torch.Tensor, copies_per_pass: int = 8) -> torch.Tensor:
    """The behaviour's metric ``[C, N]`` of the clean run with, in copy ``c`` and example ``i``, every
    candidate ``j`` where ``keep_CNS[c, i, j]`` is False overwritten by ``sources[j]`` (its activation
    in the counterfactual run): batched, ``copies_per_pass`` patched copies per forward pass."""
    from bench.sites import replace_rows

    C, N, S = keep_CNS.shape
    out = torch.empty(C, N, dtype=torch.float64)
    step = max(1, copies_per_pass)
    for g in range(0, C, step):
        block = keep_CNS[g: g + step]
        c = block.shape[0]
        writes = {}
        for j, site in enumerate(cands):
            rows = (~block[:, :, j]).reshape(-1).nonzero().squeeze(1)  # copy-major rows c·N + i
            if rows.numel():
                src = sources[site]
                writes[site] = replace_rows(rows.to(src.device), src[(rows % N).to(src.device)])
        m, _ = evaluate("clean", write=writes, copies=c)
        out[g: g + c] = m.detach().view(c, N).double().cpu()
    return out


def counterfactual_sources(evaluate: Callable[..., tuple[torch.Tensor, Any]],
                           cands: Sequence[str]) -> dict[str, torch.Tensor]:
    """Every candidate's activation in the counterfactual run (what a patched site is set to)."""
    with torch.no_grad():
        _, tr = evaluate("corrupt", read=list(cands))
    return {s: tr[s].detach() for s in cands}


FAITH_ABLATIONS = ("counterfactual", "mean")


def ablation_sources(evaluate: Callable[..., tuple[torch.Tensor, Any]], cands: Sequence[str],
                     ablation: str = "counterfactual") -> dict[str, torch.Tensor]:
    """What a site that is not kept is set to, per example (rows as :func:`counterfactual_sources`).

    ``counterfactual``: its activation in the example's counterfactual run (interchange / resample
    ablation, the default). ``mean``: **mean ablation**, its activation in the clean run averaged over
    the cell's examples, position by position (every example's row gets the same mean), as in Wang et
    al., 2022, "Interpretability in the Wild: a Circuit for Indirect Object Identification in GPT-2
    small" (§2.3: a node knocked out is set to its mean over a reference distribution) and MIB's
    mean-ablation variant (Mueller et al., 2025, "MIB", §3); the reference distribution here is the
    cell's own clean examples, so no counterfactual input is needed to ablate (the behaviour's metric
    still compares the two answers)."""
    if ablation == "counterfactual":
        return counterfactual_sources(evaluate, cands)
    if ablation != "mean":
        raise BenchError(f"unknown faithfulness ablation {ablation!r} (known: {', '.join(FAITH_ABLATIONS)})")
    with torch.no_grad():
        _, tr = evaluate("clean", read=list(cands))
    out = {}
    for s in cands:
        a = tr[s].detach()
        out[s] = a.float().mean(0, keepdim=True).to(a.dtype).expand_as(a)  # the same mean in every row
    return out


def subset_masks(S: int) -> torch.Tensor:
    """``[2^S, S]``: subset ``b`` keeps site ``j`` iff bit ``j`` of ``b`` is set."""
    b = torch.arange(2 ** S)[:, None]
    return (b >> torch.arange(S)[None, :]) & 1 == 1


def top_sets_from_table(scores_NS: torch.Tensor, table_NB: torch.Tensor, counts: Sequence[int]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """From the metric of every kept subset (``table_NB``, :func:`subset_masks` order), per count ``c``
    and example ``[P, N]``: the metric keeping only the top-``c`` sites and the metric with the top-``c``
    removed, each the expectation over a uniformly random order of tied scores (as the rank metrics)."""
    N, S = scores_NS.shape
    M_BS = subset_masks(S)
    size_B = M_BS.sum(1)
    full = 2 ** S - 1
    comp_B = full - torch.arange(2 ** S)  # the complement subset's index
    keep = torch.empty(len(counts), N, dtype=torch.float64)
    drop = torch.empty(len(counts), N, dtype=torch.float64)
    s = scores_NS.double()
    for i in range(N):
        order = torch.sort(s[i], descending=True).values
        for p, c in enumerate(counts):
            if c == 0:
                ok = size_B == 0
            elif c == S:
                ok = size_B == S
            else:
                t = order[c - 1]
                above, tied = s[i] > t, s[i] == t
                ok = ((M_BS | ~above).all(1) & (~M_BS | above | tied).all(1) & (size_B == c))
            keep[p, i] = table_NB[i, ok].mean()
            drop[p, i] = table_NB[i, comp_B[ok]].mean()
    return keep, drop


def bounds_from_table(table_NB: torch.Tensor, S: int, counts: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per count ``[P, N]``: the random bound (the mean over every subset of that size: the exact
    expectation of a uniformly random order) and the oracle (the best subset of that size per example:
    the highest metric kept, the lowest left after removing ``c``), for sufficiency and necessity."""
    size_B = subset_masks(S).sum(1)
    out = {k: torch.empty(len(counts), table_NB.shape[0], dtype=torch.float64) for k in FAITH_PREFIXES[2:]}
    for p, c in enumerate(counts):
        kept, left = table_NB[:, size_B == c], table_NB[:, size_B == S - c]
        out["suf_rand"][p], out["nec_rand"][p] = kept.mean(1), left.mean(1)
        out["suf_orac"][p], out["nec_orac"][p] = kept.max(1).values, left.min(1).values
    return out


def top_masks(order_NS: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """``[P, N, S]``: keep the first ``c`` sites of each example's order (site indices, best first)."""
    N, S = order_NS.shape
    rank_NS = order_NS.argsort(1)  # position of each site in the order
    return torch.stack([rank_NS < c for c in counts])


def greedy_chains(evaluate: Callable[..., tuple[torch.Tensor, Any]], cands: Sequence[str],
                  sources: Mapping[str, torch.Tensor], N: int, copies_per_pass: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy oracle per example ``[S + 1, N]`` by count: forward selection of kept sites (add the site
    whose keeping gives the highest metric) and backward removal (remove the site whose patching gives
    the lowest). ``S(S + 1) / 2`` patched copies per chain."""
    S = len(cands)
    out = []
    for sufficiency in (True, False):
        keep_NS = torch.full((N, S), not sufficiency)
        vals = [keep_metric(evaluate, cands, sources, keep_NS[None], copies_per_pass)[0]]
        for _ in range(S):
            free_NS = ~keep_NS if sufficiency else keep_NS
            idx_NF = torch.stack([free_NS[i].nonzero().squeeze(1) for i in range(N)])  # same count per example
            F = idx_NF.shape[1]
            masks = keep_NS[None].repeat(F, 1, 1)
            rows = torch.arange(N)
            for f in range(F):
                masks[f, rows, idx_NF[:, f]] = sufficiency
            m_FN = keep_metric(evaluate, cands, sources, masks, copies_per_pass)
            best_N = m_FN.argmax(0) if sufficiency else m_FN.argmin(0)
            keep_NS = masks[best_N, rows]
            vals.append(m_FN[best_N, rows])
        chain = torch.stack(vals)  # [S + 1, N] by number of sites kept (sufficiency) or removed (necessity)
        out.append(chain)
    return out[0], out[1]


def faithfulness_rows(scores_NS: torch.Tensor, evaluate: Callable[..., tuple[torch.Tensor, Any]],
                      cands: Sequence[str], seed: int, cfg: "LocalizationConfig",
                      bounds: Callable[[Callable[[], dict[str, torch.Tensor]]], dict[str, torch.Tensor]] | None = None,
                      ) -> dict[str, list[float]]:
    """The per-example curve columns (:func:`faith_column`) for the method's scores and the bounds.

    With ``2^S ≤ cfg.oracle_subsets`` every kept subset is evaluated once (``table``), and the method's
    curves, the random bound (exact) and the oracle (exhaustive) are read off it. Beyond, the method's
    curves are evaluated directly (seeded tie-break), the random bound averages ``cfg.random_orders``
    seeded orders, and the oracle is greedy (:func:`greedy_chains`) while ``S(S + 1) ≤
    cfg.greedy_copies``, NaN beyond. ``bounds`` memoises the method-independent part (a cell cache)."""
    N, S = scores_NS.shape
    counts = ladder_counts(S, cfg.faith_ladder)
    per_pass = cfg.faith_copies_per_pass
    memo = bounds or (lambda build: build())
    exhaustive = 2 ** S <= cfg.oracle_subsets

    def build() -> dict[str, torch.Tensor]:
        sources = ablation_sources(evaluate, cands, cfg.faith_ablation)
        if exhaustive:
            M_BS = subset_masks(S)
            table = keep_metric(evaluate, cands, sources, M_BS[:, None, :].expand(-1, N, -1), per_pass)
            return {"table": table.T.contiguous()}
        g = torch.Generator().manual_seed(seed * 7919 + 17)
        R = cfg.random_orders
        orders = torch.stack([torch.stack([torch.randperm(S, generator=g) for _ in range(N)]) for _ in range(R)])
        masks = torch.cat([top_masks(orders[r], counts) for r in range(R)])  # [R·P, N, S]
        suf = keep_metric(evaluate, cands, sources, masks, per_pass).view(R, len(counts), N).mean(0)
        nec = keep_metric(evaluate, cands, sources, ~masks, per_pass).view(R, len(counts), N).mean(0)
        out = {"suf_rand": suf, "nec_rand": nec}
        if S * (S + 1) <= cfg.greedy_copies:
            gs, gn = greedy_chains(evaluate, cands, sources, N, per_pass)
            out["suf_orac"], out["nec_orac"] = gs[counts], gn[counts]
        else:
            out["suf_orac"] = out["nec_orac"] = torch.full((len(counts), N), float("nan"), dtype=torch.float64)
        return out

    got = memo(build)
    if exhaustive:
        table = got["table"].double()
        keep, drop = top_sets_from_table(scores_NS, table, counts)
        curves = {"suf": keep, "nec": drop, **bounds_from_table(table, S, counts)}
    else:
        sources = ablation_sources(evaluate, cands, cfg.faith_ablation)
        g = torch.Generator().manual_seed(seed * 7919 + 29)
        jitter = torch.rand(N, S, generator=g, dtype=torch.float64)  # seeded tie-break
        key = scores_NS.double()
        order = torch.from_numpy(np.lexsort((jitter.numpy(), -key.numpy())))  # best first, ties by jitter
        masks = top_masks(order, counts)
        curves = {"suf": keep_metric(evaluate, cands, sources, masks, per_pass),
                  "nec": keep_metric(evaluate, cands, sources, ~masks, per_pass),
                  **{k: got[k].double() for k in FAITH_PREFIXES[2:]}}
    return {faith_column(pre, c, S): curves[pre][p].tolist() for pre in FAITH_PREFIXES for p, c in enumerate(counts)}


def faithfulness_metrics(rows: Rows, w_BN: np.ndarray) -> dict[str, np.ndarray]:
    """The faithfulness areas ``[B]`` from the curve columns (NaN when the rows carry none).

    With ``m̄(·)`` the weighted mean over examples of the behaviour's metric (the logit difference
    between the clean and the counterfactual answer, or its family's analogue), ``m̄_clean`` nothing
    patched and ``m̄_∅`` every candidate patched from the counterfactual, at each ladder point ``x = c/S``:

    - sufficiency ``f_s(x) = (m̄(keep top-c) − m̄_∅) / (m̄_clean − m̄_∅)``: the share of the behaviour
      the top-c sites recover on their own (the rest patched);
    - necessity ``f_n(x) = (m̄_clean − m̄(remove top-c)) / (m̄_clean − m̄_∅)``: the share lost when they
      are patched.

    ``faith_suff`` is the area under ``f_s`` over ``x ∈ [0, 1]`` (trapezoid rule): MIB's CPR (Mueller et
    al., 2025, "MIB: A Mechanistic Interpretability Benchmark", §3: integrated circuit performance
    ratio); ``faith_cmd`` the area under ``|1 − f_s|`` (MIB's CMD, lower = better); ``faith_nec`` the area
    under ``f_n``. The ``_random`` / ``_oracle`` variants are the same areas of the bound columns. Ratios
    of means, not means of per-example ratios: an example whose behaviour barely changes cannot blow up
    the figure; NaN where ``m̄_clean ≤ m̄_∅`` (no behaviour to recover)."""
    cols = sorted(c for c in rows if c.startswith("suf@"))
    nan = np.full(len(w_BN), np.nan)
    names = ("faith_suff", "faith_nec", "faith_cmd", "faith_suff_random", "faith_nec_random",
             "faith_suff_oracle", "faith_nec_oracle")
    if not cols:
        return {k: nan for k in names}
    xs = np.array([float(c.split("@")[1]) for c in cols])
    order = np.argsort(xs)
    xs = xs[order]
    tags = [cols[i].split("@")[1] for i in order]
    curve = {p: np.stack([wmean(rows[f"{p}@{t}"], w_BN) for t in tags], axis=1) for p in FAITH_PREFIXES}  # [B, P]
    full, empty = curve["suf"][:, -1:], curve["suf"][:, :1]
    den = full - empty
    ok = den > 0
    safe = np.where(ok, den, 1.0)

    def area(y_BP: np.ndarray) -> np.ndarray:
        a = ((y_BP[:, 1:] + y_BP[:, :-1]) / 2 * np.diff(xs)[None]).sum(1)
        return np.where(ok[:, 0], a, np.nan)

    fs = lambda p: (curve[p] - empty) / safe  # noqa: E731
    fn = lambda p: (full - curve[p]) / safe  # noqa: E731
    return {"faith_suff": area(fs("suf")), "faith_nec": area(fn("nec")), "faith_cmd": area(np.abs(1 - fs("suf"))),
            "faith_suff_random": area(fs("suf_rand")), "faith_nec_random": area(fn("nec_rand")),
            "faith_suff_oracle": area(fs("suf_orac")), "faith_nec_oracle": area(fn("nec_orac"))}


_EDIT_MEMO = ProcessMemo(size=256)
_FAITH_MEMO = ProcessMemo(size=16)


class LocalizationTask(Task):
    spec = TaskSpec(
        name="localization",
        version="1.3",
        families=frozenset({"contrastive", "generative", "diffusion"}),
        capability="localize",
        main_score="top1",
        also_ranked=("mediation_tau",),
        metrics=(
            MetricSpec("top1", "higher", "the planted site scores highest (per example)"),
            MetricSpec("mrr", "higher", "reciprocal rank of the planted site"),
            MetricSpec("auroc", "higher", "share of other same-kind sites scored below the planted one"),
            MetricSpec("mediation_tau", "higher",
                       "Kendall tau-b of the site scores with the measured mediation profile (interchange)",
                       normalise=False),
            MetricSpec("mediation_top1", "higher", "the strongest mediator (interchange) scores highest",
                       normalise=False),
            MetricSpec("edit_at_top", "higher", "edit success (constrained fine-tune) at the method's top site",
                       normalise=False),
            MetricSpec("edit_at_planted", "higher", "edit success at the planted site", normalise=False),
            MetricSpec("edit_ratio", "higher", "edit_at_top / edit_at_planted (Hase et al., 2023)",
                       normalise=False),
            MetricSpec("faith_suff", "higher", "area under the sufficiency curve: share of the behaviour the "
                       "top-k% sites recover alone, the rest patched from the counterfactual (MIB's CPR)",
                       normalise=False),
            MetricSpec("faith_nec", "higher", "area under the necessity curve: share of the behaviour lost "
                       "when the top-k% sites are patched from the counterfactual", normalise=False),
            MetricSpec("faith_cmd", "lower", "area under |1 - sufficiency| (MIB's CMD)", normalise=False),
            MetricSpec("faith_suff_random", "none", "faith_suff of a uniformly random site order (bound)",
                       normalise=False),
            MetricSpec("faith_nec_random", "none", "faith_nec of a uniformly random site order (bound)",
                       normalise=False),
            MetricSpec("faith_suff_oracle", "none", "faith_suff of the best kept set per example and k "
                       "(exhaustive up to 256 subsets, else greedy)", normalise=False),
            MetricSpec("faith_nec_oracle", "none", "faith_nec of the best removed set per example and k "
                       "(exhaustive up to 256 subsets, else greedy)", normalise=False),
        ),
    )

    # fact examples vs rewrites (a resample keeps both parts); rewrites also by relation, since the
    # edit figures are means over relations (every resample must hold each relation's rewrites)
    strata = ("kind", "relation")

    def strata_of(self, rows: Rows) -> list[tuple[Any, ...]]:
        """``("fact",)`` for a fact example (top-1, MRR and AUROC are means over examples, not over
        relations), ``("edit", relation)`` for a rewrite."""
        return [("edit", r) if k == "edit" else ("fact",) for k, r in zip(rows["kind"].tolist(),
                                                                          rows["relation"].tolist())]

    data_kinds = ("facts",)
    # what the task scores against, on the zoo and on a real checkpoint (`bench list tasks`)
    ground_truth = {
        "zoo": "planted storage site + measured mediation profile (and faithfulness)",
        "real": "none: faithfulness curves on a facts file (generative models; contrastive ones when each question is a caption template with {value})",
    }

    def __init__(self, config: LocalizationConfig | None = None) -> None:
        self.config = config or LocalizationConfig()
        if self.config.faith_ablation not in FAITH_ABLATIONS:
            raise BenchError(f"unknown faithfulness ablation {self.config.faith_ablation!r} "
                             f"(known: {', '.join(FAITH_ABLATIONS)})")
        if self.config.faith_ablation != "counterfactual":  # other figures: never keyed as the default's
            self.spec = self._ablation_spec(type(self).spec)  # type: ignore[misc]  # an instance spec

    def _ablation_spec(self, spec: TaskSpec) -> TaskSpec:
        return dataclasses.replace(spec, version=f"{spec.version}+mean-ablation")

    def with_data(self, data: Mapping[str, LoadedData]) -> Task:
        new = super().with_data(data)  # (versioned from the class's spec: the ablation's suffix again)
        if new is not self and self.config.faith_ablation != "counterfactual":
            new.spec = self._ablation_spec(new.spec)  # type: ignore[misc]
        return new

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        if self.data:
            if isinstance(model, ContrastiveModel):  # the behaviour: the image against two filled captions
                recs = self.data["facts"].records
                bad = next((i for i, r in enumerate(recs) if "{value}" not in r.question), None)
                if bad is not None:
                    return (f"task 'localization' reads a facts file on a contrastive model when every question is a "
                            f"caption template with a {{value}} slot (e.g. 'the home of the glyph is {{value}}'); "
                            f"row {bad + 1} of {self.data['facts'].source.path} is not")
                return None
            if not isinstance(model, GenerativeModel):
                return (f"task 'localization' reads facts files on generative and contrastive models; "
                        f"{model.name!r} is {model.family}")
            return None
        if not model.planted:
            return (f"task 'localization' needs planted knowledge (a zoo model) or a facts file "
                    f"(--data facts=PATH); {model.name!r} declares none")
        return None

    def check_data(self) -> None:
        from bench.kit.realdata import counterfactual_inputs

        loaded = self.data["facts"]
        counterfactual_inputs(loaded.records, loaded.source.path)
        fit, test = self.data_split()
        if not fit or not test:
            raise BenchError(f"{loaded.source.path}: task 'localization' splits the rows into a fit share of "
                             f"{self.config.data_fit_fraction:g} and a scored rest; the {len(loaded.records)} rows "
                             f"leave the {'fit' if not fit else 'scored'} side empty (more rows are needed)")

    def data_split(self) -> tuple[list[int], list[int]]:
        """``(fit, test)`` row indices of the facts file: a row is on the fit side when the seeded hash of
        its id, question and answer falls below ``data_fit_fraction`` (the same for every seed)."""
        cfg = self.config
        fit: list[int] = []
        test: list[int] = []
        for i, r in enumerate(self.data["facts"].records):
            h = hashlib.sha256(f"{cfg.data_split_seed}|{r.id}|{r.question}|{r.answer}".encode()).digest()
            (fit if int.from_bytes(h[:8], "big") / 2.0 ** 64 < cfg.data_fit_fraction else test).append(i)
        return fit, test

    def data_examples(self, model: Model, rows: Sequence[int]) -> FactExamples:
        """Fact examples from the facts file's rows: the row's image and question (clean) against its
        counterfactual input (:func:`bench.kit.realdata.counterfactual_inputs`)."""
        from bench.kit.realdata import counterfactual_inputs, stack_images
        from bench.task import input_size

        loaded = self.data["facts"]
        recs = [loaded.records[i] for i in rows]
        cf = counterfactual_inputs(loaded.records, loaded.source.path)
        refs = list({ref.path: ref for i in rows for ref in (loaded.records[i].image, cf[i])}.values())
        where = {ref.path: j for j, ref in enumerate(refs)}
        pix = stack_images(refs, input_size(model))
        clean = pix[torch.tensor([where[r.image.path] for r in recs], dtype=torch.long)]
        corrupt = pix[torch.tensor([where[cf[i].path] for i in rows], dtype=torch.long)]
        hashes = [hashlib.sha256("|".join((loaded.file_digest(r.image.path), loaded.file_digest(cf[i].path),
                                           r.question, r.answer, r.counterfactual)).encode()).hexdigest()[:16]
                  for i, r in zip(rows, recs)]
        return FactExamples(clean, corrupt, [r.question for r in recs], [r.answer for r in recs],
                            [r.counterfactual for r in recs], [""] * len(recs), hashes, ["data"] * len(recs))

    def run_data(self, model: Model, method: Method, seed: int, quick: bool) -> CellResult:
        """Localization on a facts file: no planted truth, so the faithfulness curves only (the rank and
        mediation columns are NaN). ``oracle`` scores each site by its single-site sufficiency (the metric
        with only it kept clean); ``random`` uniformly at random."""
        cfg = self.config
        fit_rows, test_rows = self.data_split()
        if quick:
            test_rows = test_rows[: cfg.quick_examples]
        cands = self.candidates(model)
        ex = self.data_examples(model, test_rows)
        n, S = len(test_rows), len(cands)
        same = ((model.answer_inputs(ex.prompts, ex.answers).answer_B
                 == model.answer_inputs(ex.prompts, ex.alternatives).answer_B).nonzero().squeeze(1).tolist()
                if isinstance(model, GenerativeModel) else [])  # (contrastive: two captions, never the same)
        if same:  # the behaviour is the first answer token's logit difference: 0 by construction there
            rows_named = ", ".join(str(test_rows[i] + 1) for i in same[:5])
            raise BenchError(f"{self.data['facts'].source.path}: in row(s) {rows_named}, answer and counterfactual "
                             f"begin with the same token for {model.name!r}'s tokenizer; localization compares "
                             f"their first tokens, so make them differ there")
        request = self.request(model, ex, cands)
        if method.bound == "ceiling":
            sources = ablation_sources(request.evaluate, cands, cfg.faith_ablation)
            single = torch.eye(S, dtype=torch.bool)[:, None, :].expand(-1, n, -1)
            scores = keep_metric(request.evaluate, cands, sources, single, cfg.faith_copies_per_pass).T
        elif method.bound == "chance":
            scores = torch.rand(n, S, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        else:
            request.fit = self.request(model, self.data_examples(model, fit_rows), cands)
            scores = method.localize(model, request)
            if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (n, S):
                raise BenchError(f"method {method.name!r} must return scores of shape {(n, S)}")
            if not torch.isfinite(scores).all():
                raise BenchError(f"method {method.name!r} returned NaN or infinite scores")
        faith = self.faithfulness(model, ex, cands, scores, seed, quick)
        nan = [float("nan")] * n
        rows = make_rows(example=[f"{i:04d}:{h}" for i, h in zip(test_rows, ex.hashes)], hash=list(ex.hashes),
                         kind=["fact"] * n, relation=list(ex.relations), top1=nan, rr=nan, auroc=nan, med_tau=nan,
                         med_top1=nan, edit_top=nan, edit_planted=nan, **faith)
        return self.result(rows)

    def candidates(self, model: Model) -> list[str]:
        if self.data or not model.planted:
            # a contrastive model's captions are encoded once, outside the patched run: its image tower's sites
            towers = ("vision",) if isinstance(model, ContrastiveModel) else ("lm", "text")
            tower = next((t for t in towers if model.layer_sites(t, self.config.data_site_kind)), None)
            if tower is None:
                raise BenchError(f"model {model.name!r} has no per-layer {self.config.data_site_kind!r} sites in its "
                                 f"{'image tower' if isinstance(model, ContrastiveModel) else 'language model'}")
            return model.layer_sites(tower, self.config.data_site_kind)
        site = model.site(model.planted[0].site)
        cands = model.layer_sites(site.tower, site.kind)
        missing = [r.site for r in model.planted if r.site not in cands]
        if missing:
            raise BenchError(f"planted sites {missing} are not of kind {site.kind!r} in tower {site.tower!r}")
        return cands

    def run(self, model: Model, method: Method, seed: int, quick: bool = False) -> CellResult:
        if self.data:
            return self.run_data(model, method, seed, quick)
        n = self.config.quick_examples if quick else self.config.n_examples
        cands = self.candidates(model)
        ex = self.examples(model, n, seed, "test")
        planted_N = torch.tensor([cands.index(s) for s in ex.planted_site])
        if method.bound == "ceiling":
            scores = torch.nn.functional.one_hot(planted_N, len(cands)).double()
        elif method.bound == "chance":
            scores = torch.rand(n, len(cands), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        else:
            request = self.request(model, ex, cands)
            # the fit split: other renders (split "fit") drawn from another stream of the seed
            request.fit = self.request(model, self.examples(model, n, 1_000_003 + seed, "fit"), cands)
            scores = method.localize(model, request)
            if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (n, len(cands)):
                raise BenchError(f"method {method.name!r} must return scores of shape {(n, len(cands))}")
            if not torch.isfinite(scores).all():
                raise BenchError(f"method {method.name!r} returned NaN or infinite scores")
        ranks = rank_rows(scores, planted_N)
        med = mediation_rows(scores, ex.relations, cands, model.planted)
        faith = self.faithfulness(model, ex, cands, scores, seed, quick)
        edits = self.informs_editing(model, scores, ex.relations, cands, seed, quick)
        n_e = len(edits)
        nan = [float("nan")]
        rows = make_rows(
            example=[f"{i:04d}:{h}" for i, h in enumerate(ex.hashes)] + [f"edit:{h}" for _, h, _, _ in edits],
            hash=list(ex.hashes) + [h for _, h, _, _ in edits],
            kind=["fact"] * n + ["edit"] * n_e,
            relation=list(ex.relations) + [r for r, _, _, _ in edits],
            top1=ranks["top1"].tolist() + nan * n_e, rr=ranks["rr"].tolist() + nan * n_e,
            auroc=ranks["auroc"].tolist() + nan * n_e,
            med_tau=med["med_tau"].tolist() + nan * n_e, med_top1=med["med_top1"].tolist() + nan * n_e,
            edit_top=nan * n + [t for _, _, t, _ in edits], edit_planted=nan * n + [p for _, _, _, p in edits],
            **{col: vals + nan * n_e for col, vals in faith.items()})
        return self.result(rows)

    def faithfulness(self, model: Model, ex: "FactExamples | DiffusionFactExamples", cands: list[str],
                     scores_NS: torch.Tensor, seed: int, quick: bool) -> dict[str, list[float]]:
        """The faithfulness curve columns of the method's scores (:func:`faithfulness_rows`); the
        method-independent part (every subset's metric, or the bounds) computed once per grid."""
        evaluate = self.request(model, ex, cands).evaluate
        n = len(scores_NS)
        key = (self.spec.version, seed, n, quick, tuple(cands), self.config)

        def bounds(build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
            return _FAITH_MEMO.get((model.name, model.weights_hash, key),
                                   lambda: shared_work(self, model, "localization-faithfulness", key, build))

        return faithfulness_rows(scores_NS.detach().cpu(), evaluate, cands, seed, self.config, bounds)

    def examples(self, model: Model, n: int, seed: int, split: str) -> "FactExamples | DiffusionFactExamples":
        if isinstance(model, DiffusionModel):
            if len(model.planted) != 1:
                raise BenchError("task 'localization' expects one planted relation in a diffusion model")
            return build_diffusion_examples(model, model.planted[0], n, seed, self.config.diffusion_draws, split)
        return build_examples(model.planted, n, seed, split)

    @staticmethod
    def request(model: Model, ex: "FactExamples | DiffusionFactExamples", cands: list[str]) -> LocalizeRequest:
        """The request a method answers: the patching closure, plus the behaviour spelled out."""
        values = {r.relation: r.values for r in model.planted}
        if isinstance(ex, FactExamples) and any(r not in values for r in ex.relations):  # a facts file's rows
            values = {}
            vals: list[tuple[str, ...]] = [(a, b) for a, b in zip(ex.answers, ex.alternatives)]
        else:
            vals = [values[r] for r in ex.relations]
        positions: torch.Tensor | None = None
        if isinstance(ex, DiffusionFactExamples):
            evaluate = diffusion_evaluate(model, ex)  # type: ignore[arg-type]
            prompts = list(ex.clean_prompts)
        elif isinstance(model, GenerativeModel):
            evaluate = generative_evaluate(model, ex)
            positions = model.answer_inputs(ex.prompts, ex.answers).pos_B
            prompts = list(ex.prompts)
        elif isinstance(model, ContrastiveModel):
            # a facts file's rows: each caption template filled with every answer its rows name
            templates = ({r.question: r.values for r in model.planted} if values else
                         {q: tuple(sorted({v for q2, pair in zip(ex.prompts, vals) if q2 == q for v in pair}))
                          for q in sorted(set(ex.prompts))})
            evaluate = contrastive_evaluate(model, ex, templates)
            layout = model.token_layout()
            positions = torch.full((len(ex.answers),), layout.cls if layout and layout.cls is not None else 0)
            prompts = list(ex.prompts)
        else:
            raise BenchError(f"task 'localization' has no {model.family} setting yet")
        return LocalizeRequest(len(ex.answers), list(cands), evaluate, batch_size=model.batch_size, prompts=prompts,
                               answers=list(ex.answers), alternatives=list(ex.alternatives),
                               values=vals, positions_N=positions)

    def informs_editing(self, model: Model, scores_NS: torch.Tensor, relations: list[str], cands: list[str],
                        seed: int, quick: bool) -> list[tuple[str, str, float, float]]:
        """Per rewrite of every relation: (relation, rewrite hash, edit success at the method's top
        site for that relation, edit success at the planted site)."""
        cfg = self.config
        k = cfg.quick_edit_requests if quick else cfg.edit_requests
        top = top_site_per_relation(scores_NS, relations, cands)
        out = []
        for rel in model.planted:
            def success(site: str) -> list[tuple[str, float]]:
                def measure() -> dict[str, torch.Tensor]:
                    rewrites = build_rewrites(model, rel, k, cfg, seed)
                    hashes = "\n".join(rw.hash for rw in rewrites).encode()
                    return {"success": torch.tensor(edit_success(model, site, rewrites, cfg), dtype=torch.float64),
                            "hashes": torch.tensor(list(hashes), dtype=torch.uint8)}

                def shared() -> list[tuple[str, float]]:
                    got = shared_work(self, model, "localization-edits", (rel, site, seed, k, cfg), measure)
                    hashes = bytes(got["hashes"].tolist()).decode().split("\n")
                    return list(zip(hashes, got["success"].tolist()))

                # the same edit is asked by every method whose top site it is (and by both references):
                # computed once per grid, on disk, and kept in the process
                return _EDIT_MEMO.get((model.name, model.weights_hash, rel, site, seed, k, cfg), shared)

            at_planted, at_top = success(rel.site), success(top[rel.relation])
            if [h for h, _ in at_top] != [h for h, _ in at_planted]:  # build_rewrites is deterministic
                raise BenchError(f"the rewrites of {rel.relation!r} differ between the top and the planted site")
            out += [(rel.relation, h, t, p) for (h, t), (_, p) in zip(at_top, at_planted)]
        return out

    def example_quality(self, rows: Rows) -> np.ndarray:
        """Per fact row, the planted site's reciprocal rank (finer than top-1); NaN on rewrite rows."""
        return np.asarray(rows["rr"], dtype=np.float64)

    def metrics_from_rows(self, rows: Rows, w_BN: np.ndarray) -> dict[str, np.ndarray]:
        """``top1``, ``mrr``, ``auroc``, ``mediation_tau``, ``mediation_top1``: weighted means over the fact rows. ``edit_at_top`` /
        ``edit_at_planted``: per relation, the weighted mean success over its rewrite rows, then
        the mean over relations; ``edit_ratio``: their ratio (NaN where ``edit_at_planted`` is 0)."""
        out = {"top1": wmean(rows["top1"], w_BN), "mrr": wmean(rows["rr"], w_BN), "auroc": wmean(rows["auroc"], w_BN)}
        # rows of an older version (v1.1) carry no mediation columns
        for name, col in (("mediation_tau", "med_tau"), ("mediation_top1", "med_top1")):
            out[name] = wmean(rows[col], w_BN) if col in rows else np.full(len(w_BN), np.nan)
        edit = rows["kind"] == "edit"
        rels = sorted(set(rows["relation"][edit].tolist()))
        for name, col in (("edit_at_top", "edit_top"), ("edit_at_planted", "edit_planted")):
            per_rel = [wmean(np.where(edit & (rows["relation"] == r), rows[col], np.nan), w_BN) for r in rels]
            out[name] = np.mean(np.stack(per_rel, axis=1), axis=1) if rels else np.full(len(w_BN), np.nan)
        t, p = out["edit_at_top"], out["edit_at_planted"]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["edit_ratio"] = np.where(p > 0, t / np.where(p > 0, p, 1.0), np.nan)
        out.update(faithfulness_metrics(rows, w_BN))
        return out
