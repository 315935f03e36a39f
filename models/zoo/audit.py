"""``bench zoo audit NAME``: the planted facts re-measured on world streams nothing else uses.

For every planted relation of a zoo model, through the same model contract the tasks use
(sites, :meth:`~bench.model.Model.trace`, :func:`bench.kit.readout.value_logits`):

- **Storage** (where the fact was *written*). Recall of the relation on the planted entities
  as shipped, with the designated site's parameters reverted to their phase-1 values (the
  only parameters phase 2 trained, so this removes exactly the plant), and with every
  designated site reverted (the phase-1 model).
- **Mediation** (what the answer *depends on*). The interchange test (Geiger et al., 2021,
  "Causal abstractions of neural networks"; the distinction is Hase et al., 2023, "Does
  localization inform editing?"): a render of planted entity B and, at the same place on the
  same background, one of entity A whose value differs; every candidate site's output from
  A's run replaces its output in B's run (all positions), and the flip rate is how often the
  answer becomes A's value. Candidates: every site of the designated site's kind in its tower.
- **Unplanted entities** (collateral damage): recall of the relation on the world's entities
  that were not planted, as shipped and on the phase-1 model. Planting may erase what phase 1
  taught them: then they are declared here, never used as controls.
- **Ablations** (validity): per candidate site, zero-ablation and mean-ablation (the mean per
  position of the site's output over a batch of renders of *every* world entity asked the
  same question; three disjoint batches, so the mean's variation shows), with the relations'
  recall and a control behaviour under the same ablation.

Every recall is the accuracy of the argmax over the relation's own values (chance
``1 / len(values)``), with a Wilson 95% interval. The control is a visible attribute read the
same way: generative, "what colour is the glyph?" among the colours; contrastive, the zero-shot
shape of single ordinary objects ("a {shape}"); diffusion, the shape of "a {colour} {shape}"
renders among the shapes (the diffusion classifier of :func:`bench.kit.readout.value_logits`).

Streams: every render is drawn from ``numpy.random.default_rng([AUDIT_STREAM, world seed,
purpose, index])``. Training draws ``[world seed, split, index]`` and ``[world seed, 31, split,
index]``; tasks draw ``[run seed, tag, index]`` with run seeds below 2·10⁶; no stream starts with
:data:`AUDIT_STREAM`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from bench.errors import BenchError
from bench.model import ContrastiveModel, DiffusionModel, GenerativeModel, Model, PlantedRelation
from bench.kit.readout import DiffusionSubject, diffusion_subject, pixels_of, value_logits
from bench.kit.world import World, WorldConfig
from bench.kit.world.core import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, ObjectSpec, stable_hash
from bench.kit.world.facts import drawings, glyph_scene

AUDIT_STREAM = 20_261_207
MEAN_BATCHES = 3


@dataclass(frozen=True)
class Rate:
    """``k`` of ``n``, with its Wilson 95% interval."""

    k: int
    n: int

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def interval(self, z: float = 1.959963984540054) -> tuple[float, float]:
        if not self.n:
            return (float("nan"), float("nan"))
        p, n = self.rate, self.n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return (max(0.0, centre - half), min(1.0, centre + half))

    def json(self) -> dict[str, Any]:
        lo, hi = self.interval()
        return {"rate": round(self.rate, 6), "lo": round(lo, 6), "hi": round(hi, 6), "k": self.k, "n": self.n}


def _rate(hit_N: torch.Tensor) -> Rate:
    return Rate(int(hit_N.sum()), int(hit_N.numel()))


@dataclass
class RelationAudit:
    relation: str
    storage: str
    values: tuple[str, ...]
    candidates: list[str]
    recall: dict[str, Rate]  # shipped / revert_storage / phase1, on the planted entities
    mediation: dict[str, Rate]  # candidate site → interchange flip rate
    already_source: Rate  # unpatched runs that already answer the source's value (the flip rate's floor)
    unplanted: dict[str, Rate]  # shipped / phase1 on the unplanted entities (empty when there are none)
    unplanted_entities: list[str] = field(default_factory=list)

    @property
    def chance(self) -> float:
        return 1.0 / len(self.values)

    @property
    def strongest_mediator(self) -> str:
        return max(self.candidates, key=lambda s: (self.mediation[s].rate, -self.candidates.index(s)))


@dataclass
class AblationAudit:
    site: str
    intervention: str  # "zero" or "mean"
    recall: dict[str, list[Rate]]  # relation → one rate (zero) or one per mean batch
    control: list[Rate]


@dataclass
class AuditReport:
    model: str
    n: int
    relations: list[RelationAudit]
    ablations: list[AblationAudit]
    control: Rate  # the control behaviour unablated
    control_name: str

    def json(self) -> dict[str, Any]:
        """What the sidecar records under ``audit``."""
        return {
            "stream": AUDIT_STREAM, "n": self.n, "torch": torch.__version__, "control": self.control_name,
            "control_unablated": self.control.json(),
            "relations": {r.relation: {
                "storage": r.storage, "values": list(r.values), "chance": r.chance, "candidates": r.candidates,
                "strongest_mediator": r.strongest_mediator,
                "recall": {k: v.json() for k, v in r.recall.items()},
                "mediation": {s: r.mediation[s].json() for s in r.candidates},
                "already_source": r.already_source.json(),
                "unplanted": {k: v.json() for k, v in r.unplanted.items()},
                "unplanted_entities": r.unplanted_entities,
            } for r in self.relations},
            "ablations": [{"site": a.site, "intervention": a.intervention,
                           "recall": {rel: [x.json() for x in v] for rel, v in a.recall.items()},
                           "control": [x.json() for x in a.control]} for a in self.ablations],
        }


# ------------------------------------------------------------------ subjects
def _rng(world_seed: int, purpose: str, i: int) -> np.random.Generator:
    return np.random.default_rng([AUDIT_STREAM, world_seed, stable_hash(purpose), i])


@dataclass
class _Pairs:
    target: Any  # subject for entity B
    source: Any  # the same subject with entity A
    target_value_N: torch.Tensor
    source_value_N: torch.Tensor


def _world(rel: PlantedRelation) -> World:
    return World(rel.world_seed, WorldConfig(n_entities=rel.n_entities))


def _subject(model: Model, rel: PlantedRelation, names: Sequence[str], purpose: str,
             partners: Sequence[str] | None = None, draws: int = 2) -> tuple[Any, Any]:
    """Renders of ``names`` (and of ``partners`` at the same place and background, or, for
    diffusion, the same renders prompted with the partner's name)."""
    world = _world(rel)
    if isinstance(model, DiffusionModel):
        sub = diffusion_subject(model, rel, world, names, _rng(rel.world_seed, purpose, 0), "test", draws)
        if partners is None:
            return sub, None
        other = DiffusionSubject([rel.question.format(entity=n) for n in partners], sub.x0_VNCHW, sub.noise_RNCHW,
                                 sub.t_RN)
        return sub, other
    imgs, alt = [], []
    for i, name in enumerate(names):
        s = glyph_scene(world, name, _rng(rel.world_seed, purpose, i), "test")
        imgs.append(s.image_HWC)
        if partners is not None:
            c = glyph_scene(world, partners[i], _rng(rel.world_seed, purpose + "/partner", i), "test",
                            position=s.objects[0].position, background=s.background)
            alt.append(c.image_HWC)
    return pixels_of(imgs), (pixels_of(alt) if partners is not None else None)


def _values(rel: PlantedRelation, names: Sequence[str]) -> torch.Tensor:
    world = _world(rel)
    return torch.tensor([rel.values.index(world.entity(n).facts[rel.relation]) for n in names])


def _draw_entities(rel: PlantedRelation, pool: Sequence[str], n: int, purpose: str) -> list[str]:
    rng = _rng(rel.world_seed, purpose + "/names", 0)
    return [pool[int(i)] for i in rng.integers(len(pool), size=n)]


def _pairs(model: Model, rel: PlantedRelation, n: int) -> _Pairs:
    world = _world(rel)
    targets = _draw_entities(rel, rel.entities, n, f"interchange/{rel.relation}")
    rng = _rng(rel.world_seed, f"interchange/{rel.relation}/partners", 0)
    sources = []
    for t in targets:
        v = world.entity(t).facts[rel.relation]
        others = [e for e in rel.entities if world.entity(e).facts[rel.relation] != v]
        sources.append(others[int(rng.integers(len(others)))])
    tgt, src = _subject(model, rel, targets, f"interchange/{rel.relation}", sources)
    return _Pairs(tgt, src, _values(rel, targets), _values(rel, sources))


def _chunks(subject: Any, size: int) -> Iterator[Any]:
    """Row chunks of ``subject`` (pixels or a diffusion subject), ``size`` rows at a time."""
    n = subject.x0_VNCHW.shape[1] if isinstance(subject, DiffusionSubject) else len(subject)
    for a in range(0, n, size):
        if isinstance(subject, DiffusionSubject):
            yield DiffusionSubject(subject.prompts[a:a + size], subject.x0_VNCHW[:, a:a + size],
                                   subject.noise_RNCHW[:, a:a + size], subject.t_RN[:, a:a + size])
        else:
            yield subject[a:a + size]


# ------------------------------------------------------------------ interventions
@contextlib.contextmanager
def reverted(model: Model, sites: Sequence[str]) -> Iterator[None]:
    """The parameters of ``sites``' modules set to :attr:`Model.reference_weights` (phase 1) inside the block."""
    params = dict(model.module.named_parameters())
    names = [k for k in model.reference_weights
             if any(k.startswith(model.site_specs[s].module + ".") for s in sites)]
    if sites and not names:
        raise BenchError(f"{model.name}: no phase-1 parameters for {list(sites)}")
    saved = {k: params[k].detach().clone() for k in names}
    try:
        with torch.no_grad():
            for k in names:
                params[k].copy_(model.reference_weights[k])
        yield
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                params[k].copy_(v)


def _answers(model: Model, rel: PlantedRelation, subject: Any, write: dict[str, Any] | None = None) -> torch.Tensor:
    logits_of = value_logits(model, rel)

    out = []
    for part in _chunks(subject, model.batch_size):
        with torch.no_grad(), model.trace(write=write or {}):
            out.append(logits_of(part).argmax(-1))
    return torch.cat(out)


def _read(model: Model, rel: PlantedRelation, site: str, subject: Any) -> list[torch.Tensor]:
    """``site``'s output on each chunk of ``subject`` (the chunks :func:`_answers` runs)."""
    logits_of = value_logits(model, rel)
    out: list[torch.Tensor] = []
    for part in _chunks(subject, model.batch_size):
        with torch.no_grad(), model.trace(read=[site], stop_after_reads=True) as t:
            logits_of(part)  # cut short once the site has fired (a text site: the UNet never runs)
        out.append(t[site])
    return out


def _swap_in(chunks: list[torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A write that replaces successive forward passes' values with ``chunks`` in order."""
    it = iter(chunks)

    def fn(value: torch.Tensor) -> torch.Tensor:
        src = next(it)
        if src.shape != value.shape:
            raise BenchError(f"interchange: source shape {tuple(src.shape)} ≠ target {tuple(value.shape)}")
        return src.to(value.dtype)
    return fn


def _constant(mean: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(value: torch.Tensor) -> torch.Tensor:
        return mean.to(value.dtype).expand_as(value).clone()
    return fn


def _zero(value: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(value)


# ------------------------------------------------------------------ control
@dataclass
class _Behaviour:
    """Something read with :func:`_answers`: a relation (or a visible attribute posed as one),
    its subject and truth, and the subjects mean-ablation takes its means from."""

    rel: PlantedRelation
    subject: Any
    truth_N: torch.Tensor
    mean_subjects: list[Any]

    def rate(self, model: Model, write: dict[str, Any] | None = None) -> Rate:
        return _rate(_answers(model, self.rel, self.subject, write) == self.truth_N)

    def means(self, model: Model, site: str) -> list[torch.Tensor]:
        """Per mean batch, ``site``'s output averaged over the batch (per position): ``[1, ...]``."""
        return [torch.cat(_read(model, self.rel, site, sub)).mean(0, keepdim=True) for sub in self.mean_subjects]


def _fact_behaviour(model: Model, rel: PlantedRelation, n: int, world: World, means: bool = True) -> _Behaviour:
    names = _draw_entities(rel, rel.entities, n, f"recall/{rel.relation}")
    sub, _ = _subject(model, rel, names, f"recall/{rel.relation}")
    # the mean's source: renders of every world entity asked the same question, three disjoint batches
    pool = [e.name for e in world.entities]
    mean_subjects = [_subject(model, rel, _draw_entities(rel, pool, min(n, 64), f"mean/{rel.relation}/{b}"),
                              f"mean/{rel.relation}/{b}")[0] for b in range(MEAN_BATCHES)] if means else []
    return _Behaviour(rel, sub, _values(rel, names), mean_subjects)


def _control(model: Model, world: World, n: int) -> tuple[str, _Behaviour]:
    """The family's visible-attribute control (module docstring): its description and behaviour;
    its mean-ablation takes means over its own inputs (three more batches)."""
    colours = list(COLOURS)
    if isinstance(model, DiffusionModel):
        pseudo = PlantedRelation("shape", "", (), world.seed, world.config.n_entities, "{entity}", SHAPES,
                                 tuple((s, s) for s in SHAPES))

        def diffusion_batch(tag: str, m: int) -> tuple[DiffusionSubject, torch.Tensor]:
            rng = _rng(world.seed, tag, 0)
            cols = [colours[int(i)] for i in rng.integers(len(colours), size=m)]
            truth = torch.tensor([int(i) for i in rng.integers(len(SHAPES), size=m)])
            imgs: list[list[np.ndarray]] = [[] for _ in SHAPES]
            for i, c in enumerate(cols):
                for v, image in enumerate(drawings(world, _rng(world.seed, tag + "/draw", i), c, list(SHAPES), "test")):
                    imgs[v].append(image)
            with torch.no_grad():
                x0 = torch.stack([model.to_sample(pixels_of(v)) for v in imgs])
            g = torch.Generator().manual_seed(int(rng.integers(2**31)))
            noise = torch.randn((2, *x0.shape[1:]), generator=g)
            lo, hi = (int(f * (model.num_train_timesteps - 1)) for f in (0.2, 0.6))
            return (DiffusionSubject([f"a {c} {SHAPES[int(s)]}" for c, s in zip(cols, truth)], x0, noise,
                                     torch.randint(lo, hi + 1, (2, m), generator=g)), truth)

        sub, truth = diffusion_batch("control", n)
        means = [diffusion_batch(f"control/mean/{b}", min(n, 64))[0] for b in range(MEAN_BATCHES)]
        name = 'the shape of "a {colour} {shape}" (diffusion classifier among the 4 shapes; chance 0.250)'
        return name, _Behaviour(pseudo, sub, truth, means)
    if isinstance(model, ContrastiveModel):
        # CLIP's zero-shot shape of ordinary (non-glyph) objects: "a {shape}" among the shapes
        shape_rel = PlantedRelation("shape", "", (), world.seed, world.config.n_entities, "a {value}", SHAPES)

        def objects(tag: str, m: int) -> tuple[torch.Tensor, torch.Tensor]:
            imgs, truth = [], []
            for i in range(m):
                r = _rng(world.seed, tag, i)
                shape = SHAPES[int(r.integers(len(SHAPES)))]
                spec = ObjectSpec(shape, colours[int(r.integers(len(colours)))], list(SIZES)[int(r.integers(len(SIZES)))],
                                  POSITIONS[int(r.integers(len(POSITIONS)))])
                imgs.append(world.render(BACKGROUNDS[int(r.integers(len(BACKGROUNDS)))], [spec], r,
                                         split="test").image_HWC)
                truth.append(SHAPES.index(shape))
            return pixels_of(imgs), torch.tensor(truth)

        pix, truth = objects("control", n)
        means = [objects(f"control/mean/{b}", min(n, 64))[0] for b in range(MEAN_BATCHES)]
        return ('zero-shot shape of single ordinary objects, "a {shape}" among the 4 shapes (chance 0.250)',
                _Behaviour(shape_rel, pix, truth, means))
    if not isinstance(model, GenerativeModel):
        raise BenchError(f"no audit control for a {model.family} model")
    pseudo = PlantedRelation("colour", "", (), world.seed, world.config.n_entities, "what colour is the glyph?",
                             tuple(colours))

    def glyphs(tag: str, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = _rng(world.seed, tag, 0)
        names = [world.entities[int(i)].name for i in rng.integers(len(world.entities), size=m)]
        pix = pixels_of([glyph_scene(world, e, _rng(world.seed, tag + "/render", i), "test").image_HWC
                         for i, e in enumerate(names)])
        return pix, torch.tensor([colours.index(world.entity(e).colour) for e in names])

    pix, truth = glyphs("control", n)
    means = [glyphs(f"control/mean/{b}", min(n, 64))[0] for b in range(MEAN_BATCHES)]
    return (f'"what colour is the glyph?" among the {len(colours)} colours (chance {1 / len(colours):.3f})',
            _Behaviour(pseudo, pix, truth, means))


# ------------------------------------------------------------------ the audit
def candidates(model: Model) -> list[str]:
    """Every site of the designated site's kind in its tower (what the localization task ranks)."""
    site = model.site(model.planted[0].site)
    return model.layer_sites(site.tower, site.kind)


def audit(model: Model, n: int = 128, progress: Callable[[str], None] | None = None) -> AuditReport:
    """Storage, mediation, unplanted entities and ablations of every planted relation (module docstring)."""
    if not model.planted:
        raise BenchError(f"{model.name!r} has no planted facts to audit")
    say = progress or (lambda s: None)
    cands = candidates(model)
    planted_sites = [r.site for r in model.planted]
    world = _world(model.planted[0])
    facts = {rel.relation: _fact_behaviour(model, rel, n, world) for rel in model.planted}
    rels: list[RelationAudit] = []
    for rel in model.planted:
        say(f"{rel.relation}: recall and the revert test")
        recall = _revert_test(model, rel, facts[rel.relation], planted_sites)
        unplanted = _unplanted(model, rel, n, world, planted_sites)
        say(f"{rel.relation}: interchange at {len(cands)} sites")
        pairs = _pairs(model, rel, n)
        already = _rate(_answers(model, rel, pairs.target) == pairs.source_value_N)
        mediation = {}
        for site in cands:
            got = _answers(model, rel, pairs.target, {site: _swap_in(_read(model, rel, site, pairs.source))})
            mediation[site] = _rate(got == pairs.source_value_N)
        rels.append(RelationAudit(rel.relation, rel.site, rel.values, cands, recall, mediation, already, unplanted,
                                  sorted(_unplanted_pool(rel, world))))
    control_name, control = _control(model, world, n)
    base_control = control.rate(model)
    ablations = []
    for site in cands:
        say(f"ablations at {site}")
        zero = AblationAudit(site, "zero", {r: [b.rate(model, {site: _zero})] for r, b in facts.items()},
                             [control.rate(model, {site: _zero})])
        mean = AblationAudit(site, "mean", {r: [b.rate(model, {site: _constant(m)}) for m in b.means(model, site)]
                                            for r, b in facts.items()},
                             [control.rate(model, {site: _constant(m)}) for m in control.means(model, site)])
        ablations += [zero, mean]
    return AuditReport(model.name, n, rels, ablations, base_control, control_name)


# ------------------------------------------------------------------ the card's section
CARD_START, CARD_END = "<!-- bench zoo audit: start -->", "<!-- bench zoo audit: end -->"


def _fmt(r: dict[str, Any]) -> str:
    return f"{r['rate']:.3f} [{r['lo']:.2f}, {r['hi']:.2f}]"


def _spread(rs: list[dict[str, Any]]) -> str:
    vals = [r["rate"] for r in rs]
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{float(np.mean(vals)):.3f} ({min(vals):.3f}–{max(vals):.3f})"


def markdown(name: str, audit_json: dict[str, Any]) -> str:
    """The card's audit section (between :data:`CARD_START` and :data:`CARD_END`) from the sidecar's ``audit``."""
    a = audit_json
    rels = a["relations"]
    lines = [CARD_START, "## Audit: storage, mediation, collateral damage (`bench zoo audit`)", "",
             f"Re-measured with `bench zoo audit {name}` ({a['n']} renders per figure, torch {a['torch']}) on world "
             f"streams that no training or task uses (every render from `numpy.random.default_rng([{a['stream']}, "
             "world seed, purpose, index])`). Recall is the argmax over the relation's own values (chance "
             + ", ".join(f"{r}: {v['chance']:.3f}" for r, v in rels.items())
             + "); every figure carries its Wilson 95% interval.", "",
             "### Storage (the revert test) and collateral damage", "",
             "| relation | storage site | shipped | storage site reverted to phase 1 | phase-1 model | "
             "unplanted entities, shipped | unplanted entities, phase 1 |", "|---|---|---|---|---|---|---|"]
    for rel, v in rels.items():
        up = v["unplanted"]
        lines.append(f"| {rel} | `{v['storage']}` | {_fmt(v['recall']['shipped'])} | "
                     f"{_fmt(v['recall']['revert_storage'])} | {_fmt(v['recall']['phase1'])} | "
                     + (f"{_fmt(up['shipped'])} | {_fmt(up['phase1'])} |" if up else "– | – |"))
    erased = {rel: v for rel, v in rels.items() if v["unplanted"]}
    lines.append("")
    if erased:
        n_up = len(next(iter(erased.values()))["unplanted_entities"])
        lines.append(
            f"**Unplanted entities.** The world has {n_up} entities besides the planted ones. Phase 1 taught them "
            "their facts; the columns above say how much of that survives planting. Where the shipped figure is "
            "near chance, planting erased those facts: they are **not** intact controls, and no task uses them "
            "(tasks draw every fact, counterfactual and neighbour from the planted entities). Their names are in the "
            "sidecar (`audit.relations.<relation>.unplanted_entities`).")
    else:
        lines.append("**Unplanted entities.** None: every entity of the world is planted.")
    lines += ["", "### Mediation (the interchange test)", "",
              "Per candidate site (every site of the storage site's kind in its tower), the share of runs on "
              "planted entity B whose answer becomes entity A's (another planted entity with another value, drawn "
              "at the same place on the same background) when the site's output from A's run replaces B's at "
              "every position. *Floor*: unpatched runs that already give A's value. The localization task scores "
              "methods against this profile (`mediation_tau`, `mediation_top1`) beside the storage site.", ""]
    cands = next(iter(rels.values()))["candidates"]
    lines += ["| relation | " + " | ".join(f"`{c}`" for c in cands) + " | floor | strongest mediator |",
              "|---|" + "---|" * (len(cands) + 2)]
    for rel, v in rels.items():
        cells = [(("**" + _fmt(v["mediation"][c]) + "**") if c == v["storage"] else _fmt(v["mediation"][c]))
                 for c in cands]
        lines.append(f"| {rel} | " + " | ".join(cells) + f" | {v['already_source']['rate']:.3f} | "
                     f"`{v['strongest_mediator']}` |")
    lines += ["", "Bold: the storage site. Where the strongest mediator is not the storage site, a method that "
              "ranks it first is right about mediation and wrong about storage.", "",
              "### Ablations", "",
              "Per candidate site: zero-ablation, and mean-ablation with the site's mean output per position over "
              "64 renders of every world entity asked the same question (the control: over 64 of its own inputs), "
              f"for three disjoint batches: mean (min–max over the batches). Control: {a['control']}; unablated "
              f"{a['control_unablated']['rate']:.3f}.", "",
              "| site | ablation | " + " | ".join(rels) + " | control |", "|---|---|" + "---|" * (len(rels) + 1)]
    for ab in a["ablations"]:
        lines.append(f"| `{ab['site']}` | {ab['intervention']} | "
                     + " | ".join(_spread(ab["recall"][r]) for r in rels) + f" | {_spread(ab['control'])} |")
    lines += ["", "Reading: the revert test is the storage criterion (it removes exactly what phase 2 wrote). "
              "Ablations remove what a site computes for every input, so an early site's ablation can break the "
              "control too: that says the site is needed, not that the fact is stored there.", CARD_END]
    return "\n".join(lines) + "\n"


def with_section(card: str, section: str) -> str:
    """``card`` with its audit section replaced (or appended)."""
    if CARD_START in card and CARD_END in card:
        head, rest = card.split(CARD_START, 1)
        tail = rest.split(CARD_END, 1)[1].lstrip("\n")
        return head + section + ("\n" + tail if tail else "")
    return card.rstrip("\n") + "\n\n" + section


def storage_only(model: Model, n: int) -> dict[str, dict[str, dict[str, Rate]]]:
    """The cheap part of :func:`audit` (what ``bench zoo verify`` re-measures): per relation, the
    recall figures (shipped, storage reverted, phase 1) and the unplanted entities' figures."""
    planted_sites = [r.site for r in model.planted]
    world = _world(model.planted[0])
    out: dict[str, dict[str, dict[str, Rate]]] = {}
    for rel in model.planted:
        recall = _revert_test(model, rel, _fact_behaviour(model, rel, n, world, means=False), planted_sites)
        out[rel.relation] = {"recall": recall, "unplanted": _unplanted(model, rel, n, world, planted_sites)}
    return out


def _revert_test(model: Model, rel: PlantedRelation, fact: _Behaviour, planted_sites: list[str]) -> dict[str, Rate]:
    """Recall shipped, with the storage site back at phase 1, and as the phase-1 model."""
    recall = {"shipped": fact.rate(model)}
    with reverted(model, [rel.site]):
        recall["revert_storage"] = fact.rate(model)
    with reverted(model, planted_sites):
        recall["phase1"] = fact.rate(model)
    return recall


def _unplanted_pool(rel: PlantedRelation, world: World) -> list[str]:
    return [e.name for e in world.entities if e.name not in set(rel.entities)]


def _unplanted(model: Model, rel: PlantedRelation, n: int, world: World, planted_sites: list[str]) -> dict[str, Rate]:
    pool = _unplanted_pool(rel, world)
    if not pool:
        return {}
    others = _draw_entities(rel, pool, n, f"unplanted/{rel.relation}")
    osub, _ = _subject(model, rel, others, f"unplanted/{rel.relation}")
    other = _Behaviour(rel, osub, _values(rel, others), [])
    found = {"shipped": other.rate(model)}
    with reverted(model, planted_sites):
        found["phase1"] = other.rate(model)
    return found
