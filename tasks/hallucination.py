"""Object-hallucination detection on a generative VLM's own outputs.

Two kinds of items, both labelled from the scene graph:

- ``caption``: the model captions held-out scenes ("describe the image", greedy);
  every object mention ("red circle") in its caption is an item, hallucinated when
  no such object is in the scene (the CHAIR setting, Rohrbach et al., 2018). Half
  the scenes hold exactly one partner of a pair that co-occurs in the model's
  training world (:data:`bench.kit.world.hallucination.COOCCURRENCE_PAIRS`), where
  hallucinations concentrate; half are drawn at random.
- ``pope``: yes/no probes "is there a <object>?" with present objects and as many
  absent ones chosen at random, among the most frequent objects, or among those
  co-occurring most with the present ones (POPE, Li et al., 2023); the model's
  answer is an item, hallucinated when it is wrong.

A method scores every item (higher = more likely hallucinated), seeing the image,
the prompt and the model's output up to and including the item; a labelled fit
split (disjoint scenes) is available to methods that learn a detector.

Metrics (positive class = hallucinated), each the mean over the kinds (caption, POPE) whose
items hold both classes:

- ``auroc`` ↑ (main): area under the ROC curve (ties count one half).
- ``auprc`` ↑: average precision (the step-wise area under the precision–recall curve, no
  interpolation); chance is the positive rate.
- ``fpr_at_95tpr`` ↓: false-positive rate at the first threshold, scanning every distinct
  score from the highest down, whose recall reaches 95%.
- ``caption_auroc``, ``pope_auroc`` ↑: per kind (absent when a kind's items hold one class only;
  an error when no kind holds both).

Context (the model's own behaviour, identical across methods, not normalised):
``chair_i`` (hallucinated mentions / mentions; 0 without a mention), ``chair_s`` (captions
with a hallucinated mention / all captions, those without any mention included),
``pope_accuracy``, ``pope_f1`` (positive = "yes"; precision and recall 0 when nothing is
predicted or present), ``pope_yes_ratio`` (pooled over the three negative settings),
``positive_rate`` (hallucinated items / items, both kinds).

Rows (v1.3: metrics from rows, see :mod:`bench.samples`): one row per scored item, with its
``kind`` (``caption`` or ``pope``), ``label`` (1 = hallucinated) and the method's ``score``;
POPE rows also carry ``says_yes`` and ``present`` (the answer says yes, the probed object is
in the image; 0/1) for the POPE figures; and one row of kind ``caption_scene`` per captioned
scene, with ``any_hallucinated`` (0/1) for CHAIR-s, which counts captions without a mention
too (the detection metrics ignore these rows; a column that does not apply holds NaN). The
resampling unit (``example``) is the image an item comes from: the mentions of one caption and
its ``caption_scene`` row form one unit (the mentions of one caption are correlated: one
confused caption names several absent objects), and the POPE answers on one image form one
unit (an image gets up to six probes in each of the three negative settings). Units are per
kind (``caption:<split>/<index>`` and ``pope:<split>/<index>`` for the world's scenes,
``caption:<sha256>`` and ``pope:<sha256>`` for a data file's image files), so a scene both
captioned and probed is two units;
the column ``source`` (``caption`` for caption and caption-scene rows, ``pope``) is the
stratum (:attr:`HallucinationTask.strata`): a resample keeps each kind's number of units, as
the metrics average over kinds. (``kind`` cannot be the stratum: a caption's unit holds both
``caption`` and ``caption_scene`` rows.) In a resample where a kind's items lose one class,
that kind's AUROC is NaN and the means run over the other kind.

Before v1.3, FPR@95%TPR was read off scikit-learn's ``roc_curve`` with its default
``drop_intermediate=True``, which prunes collinear ROC points: where tied scores make a run of
equal diagonal steps (say every score shared by one hallucinated and one correct item), the
pruned curve jumps past the first threshold reaching 95% recall and reports a higher FPR
(1.0 instead of 0.95 in that example). Every distinct score is now a threshold. The figures
move only with such ties: on zoo-vlm (quick, seeds 0 and 1: random, oracle, entropy, probing,
logit_lens; the full profile's random) and on the real-data test files, every v1.2 figure
is reproduced to within 2e-16.

Real data (``--data pope=coco_pope_adversarial.json`` and/or ``--data captions=caps.jsonl``;
fields in :func:`bench.kit.realdata.load_pope` and :func:`bench.kit.realdata.load_captions`):

- ``pope`` (POPE, Li et al., 2023): the model answers each probe question of the file
  (greedy, ``max_new_tokens=2`` as for the world's probes) and each answer is an item of kind
  ``pope``. An answer says yes unless the words of its first sentence include "no" or "not"
  (POPE's own answer parsing); it is a hallucination when it says yes and the label is no (a
  "no" to a present object is a miss, not a hallucination: labelled 0).
- ``captions`` (CHAIR, Rohrbach et al., 2018): the model captions each image of the file
  ("describe the image", greedy, ``max_new_tokens``); the file's ``objects`` are the ground
  truth and their union over the file is the object vocabulary (CHAIR's object list); every
  whole-word, case-insensitive occurrence of a vocabulary entry in the model's caption (the
  longest first) is an item of kind ``caption``, hallucinated when the image's ``objects``
  (over all its rows) do not list it. The file's own ``caption`` column is not used: the
  items are the model's own outputs.

The fit split is the rows of the images whose content hash (sha256 of ``data_split_seed`` and
the image file's sha256) falls in the first ``data_fit_fraction`` (0.3) of the hash range; the
scored items come from the other images: the two never share an image, and the split depends
neither on the seed nor on the file's order. The quick profile scores the first
``quick_fraction`` of the scored rows of each file (file order). Images are resized
(bilinearly) to the model's input size. Metrics of a kind without a file are absent (with
only a POPE file, ``auroc`` is ``pope_auroc`` and there is no ``chair_*``). The items are the
same for every seed; seeds vary what methods and the ``random`` reference draw.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from bench.capabilities import HallucinationRequest, ScoredOutputs
from bench.errors import BenchError
from bench.method import Method
from bench.model import GenerativeModel, Model
from bench.kit.realdata import CaptionRecord, PopeProbe, stack_images
from bench.samples import Rows, make_rows, waverage_precision, wauroc, wfpr_at_tpr, wmean
from bench.kit.shared import ProcessMemo
from bench.task import CellResult, LoadedData, MetricSpec, Task, TaskSpec, example_hash, input_size
from bench.kit.world import World, WorldConfig
from bench.kit.world.core import Scene
from bench.kit.world.hallucination import COOCCURRENCE_PAIRS, object_mentions, pope_probes

CAPTION_PROMPT = "describe the image"
KINDS: tuple[str, ...] = ("caption", "pope")
# the stratum of each row kind: a caption's scene row goes with its mentions
SOURCE: dict[str, str] = {"caption": "caption", "caption_scene": "caption", "pope": "pope"}


@dataclass(frozen=True)
class HallucinationConfig:
    world_seed: int = 0
    # hallucinations are rare (CHAIR-i 0.03-0.06 on zoo-vlm): at 64 captions and 30 probe images, the
    # quick profile held ~5 hallucinated mentions and random's AUROC spread 0.53 ± 0.11 over seeds (4.2
    # widths from the oracle); at 128 and 60, ± 0.05 (9.2 widths)
    caption_scenes: int = 256
    pope_images: int = 120
    # the fit split is not scaled down in the quick profile: hallucinations are rare (a few per
    # hundred mentions), and a learned detector needs positives to learn from
    fit_caption_scenes: int = 256
    fit_pope_images: int = 80
    quick_fraction: float = 0.5  # the quick profile scales the test counts by this
    max_new_tokens: int = 24
    # real data (pope): the share of images whose probes form the fit split, and the hash's seed
    data_fit_fraction: float = 0.3
    data_split_seed: int = 0


@dataclass
class LabelledOutputs:
    """The model's own outputs on one split cut into labelled items, and what their rows need.

    Per item (a caption mention or a POPE answer): its label, hash and resampling unit, and for
    POPE answers whether the answer says yes and whether the probed object is present (0/1;
    NaN on mentions). Per captioned scene: ``(unit, hash, 1 if any of its mentions is
    hallucinated)``, for CHAIR-s, which counts the captions without a mention too.
    """

    items: ScoredOutputs
    labels_B: torch.Tensor  # 1 = hallucinated
    hashes: list[str]
    units: list[str]
    says_yes: list[float]
    present: list[float]
    captions: list[tuple[str, str, int]] = field(default_factory=list)

    def rows(self, scores_B: torch.Tensor) -> Rows:
        """The items' rows (in item order, with ``scores_B``), then one ``caption_scene`` row per caption."""
        n, c = len(self.hashes), len(self.captions)
        nan_c = [float("nan")] * c
        kinds = list(self.items.kinds) + ["caption_scene"] * c
        return make_rows(
            example=self.units + [u for u, _, _ in self.captions],
            hash=self.hashes + [h for _, h, _ in self.captions],
            kind=kinds, source=[SOURCE[k] for k in kinds],
            label=[float(x) for x in self.labels_B.tolist()] + nan_c,
            score=scores_B.detach().double().tolist() + nan_c,
            says_yes=self.says_yes + nan_c, present=self.present + nan_c,
            any_hallucinated=[float("nan")] * n + [float(b) for _, _, b in self.captions])


# ------------------------------------------------------------------ metrics
def _nanmean(vals: list[np.ndarray]) -> np.ndarray:
    """Mean ``[B]`` over the non-NaN entries of the per-kind values; NaN where every one is NaN."""
    x = np.stack(vals)
    ok = ~np.isnan(x)
    k = ok.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(k > 0, np.where(ok, x, 0.0).sum(0) / np.where(k > 0, k, 1), np.nan)


def _share(x_N: np.ndarray, sel_N: np.ndarray, w_BN: np.ndarray) -> np.ndarray:
    """Weighted share ``[B]`` of ``x`` (0/1) over the selected rows; 0 where they have no weight."""
    w = w_BN[:, sel_N]
    den = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (w @ x_N[sel_N]) / np.where(den > 0, den, 1.0), 0.0)


def detection_metrics(rows: Rows, w_BN: np.ndarray) -> dict[str, np.ndarray]:
    """AUROC, AUPRC and FPR@95%TPR ``[B]`` per kind, and their means over the kinds whose rows hold
    both classes (NaN for a kind where a weighting leaves one class without weight)."""
    kind, y, s = rows["kind"], rows["label"], rows["score"]
    if not np.isfinite(s[np.asarray((kind == "caption") | (kind == "pope"), dtype=bool)]).all():
        raise BenchError("hallucination scores contain NaN or infinity")
    out: dict[str, np.ndarray] = {}
    per: dict[str, list[np.ndarray]] = {"auroc": [], "auprc": [], "fpr_at_95tpr": []}
    for k in KINDS:
        sel = np.asarray(kind == k, dtype=bool)
        if not sel.any() or len(set(y[sel].tolist())) < 2:
            continue  # no hallucination (or nothing but) of this kind: not scoreable
        yk, sk, wk = y[sel], s[sel], w_BN[:, sel]
        out[f"{k}_auroc"] = wauroc(yk, sk, wk)
        per["auroc"].append(out[f"{k}_auroc"])
        per["auprc"].append(waverage_precision(yk, sk, wk))
        per["fpr_at_95tpr"].append(wfpr_at_tpr(yk, sk, wk, 0.95))
    if not per["auroc"]:
        raise BenchError("the model made no hallucination (or nothing else) on these items: nothing to detect")
    out.update({m: _nanmean(v) for m, v in per.items()})
    return out


def context_metrics(rows: Rows, w_BN: np.ndarray) -> dict[str, np.ndarray]:
    """The model's own figures ``[B]`` (see the module docstring): CHAIR where there are captions,
    POPE's where there are probes, the positive rate over every item."""
    kind = rows["kind"]
    out: dict[str, np.ndarray] = {}
    scenes = np.asarray(kind == "caption_scene", dtype=bool)
    if scenes.any():
        out["chair_i"] = _share(rows["label"], np.asarray(kind == "caption", dtype=bool), w_BN)
        out["chair_s"] = _share(rows["any_hallucinated"], scenes, w_BN)
    pope = np.asarray(kind == "pope", dtype=bool)
    if pope.any():  # as bench.kit.world.hallucination.pope_metrics, positive = "yes"
        pred, gold, w = rows["says_yes"][pope], rows["present"][pope], w_BN[:, pope]
        n, tp, n_pred, n_gold = w.sum(1), w @ (pred * gold), w @ pred, w @ gold
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(n_pred > 0, tp / np.where(n_pred > 0, n_pred, 1.0), 0.0)
            recall = np.where(n_gold > 0, tp / np.where(n_gold > 0, n_gold, 1.0), 0.0)
            out["pope_accuracy"] = (w @ (pred == gold).astype(np.float64)) / n
            out["pope_f1"] = 2 * precision * recall / np.maximum(1e-12, precision + recall)
            out["pope_yes_ratio"] = n_pred / n
    items = np.asarray((kind == "caption") | (kind == "pope"), dtype=bool)
    out["positive_rate"] = wmean(np.where(items, rows["label"], np.nan), w_BN)
    return out


# ------------------------------------------------------------------ items
def _pixels(scenes: list[Scene]) -> torch.Tensor:
    return torch.from_numpy(np.stack([s.image_HWC for s in scenes])).permute(0, 3, 1, 2).float() / 255.0


def _partner_scenes(world: World, split: str, n: int, start: int) -> list[Scene]:
    """Scenes holding exactly one partner of a co-occurring pair, balanced over the ordered pairs."""
    want = {(a, b): 0 for pair in COOCCURRENCE_PAIRS for a, b in (pair, pair[::-1])}
    per = max(1, -(-n // len(want)))
    out: list[Scene] = []
    i = start
    while len(out) < n and i < start + 200_000:
        s = world.scene(split, i)
        i += 1
        kinds = {(o.colour, o.shape) for o in s.objects}
        for (a, b), c in want.items():
            if c < per and a in kinds and b not in kinds:
                out.append(s)
                want[(a, b)] += 1
                break
    return out


def build_items(model: GenerativeModel, world: World, train_world: World, split: str, n_caption: int,
                n_pope: int, start: int, max_new_tokens: int, batch_size: int) -> LabelledOutputs:
    """Run the model on held-out scenes and cut its outputs into labelled items."""
    scenes = list(world.scenes(split, n_caption - n_caption // 2, start))
    scenes += _partner_scenes(world, split, n_caption // 2, 500_000 + start)
    pix = _pixels(scenes)
    captions: list[str] = []
    for i in range(0, len(scenes), batch_size):
        captions += model.generate(pix[i : i + batch_size], [CAPTION_PROMPT] * len(scenes[i : i + batch_size]),
                                   max_new_tokens)
    rows: list[tuple[int, str, str, str, str, int]] = []  # (scene index, prompt, prefix, span, kind, label)
    all_scenes: list[Scene] = list(scenes)
    yes: list[float] = []  # POPE: the answer says yes, the object is present (NaN on mentions)
    gold_yes: list[float] = []
    caption_rows: list[tuple[str, str, int]] = []  # (unit, hash, any mention hallucinated)
    for si, (s, cap) in enumerate(zip(scenes, captions)):
        present = {(o.colour, o.shape) for o in s.objects}
        any_bad = False
        for offset, phrase, key in object_mentions(cap):
            bad = key not in present
            rows.append((si, CAPTION_PROMPT, cap[:offset].strip(), phrase, "caption", int(bad)))
            yes.append(float("nan"))
            gold_yes.append(float("nan"))
            any_bad |= bad
        # the whole caption as a prefix with an empty span: no mention's hash (spans are never empty)
        caption_rows.append((f"caption:{s.split}/{s.index}",
                             hashlib.sha256(f"{s.split}/{s.index}|{CAPTION_PROMPT}|{cap}|".encode()).hexdigest()[:16],
                             int(any_bad)))
    probes = pope_probes(world, train_world, n_images=n_pope, split=split, start=start)
    flat = [(s, q, a) for items in probes.values() for s, q, a in items]
    pope_pix = _pixels([s for s, _, _ in flat])
    answers: list[str] = []
    for i in range(0, len(flat), batch_size):
        answers += model.generate(pope_pix[i : i + batch_size], [q for _, q, _ in flat[i : i + batch_size]], 2)
    for (s, q, gold), ans in zip(flat, answers):
        all_scenes.append(s)
        span = ans.strip() or "no"
        rows.append((len(all_scenes) - 1, q, "", span, "pope", int(span != gold)))
        yes.append(float(span == "yes"))  # as pope_metrics parses the world's answers
        gold_yes.append(float(gold == "yes"))
    pixels = torch.cat([pix, pope_pix])[torch.tensor([r[0] for r in rows], dtype=torch.long)]
    items = ScoredOutputs(pixels, [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
                          [r[4] for r in rows])
    hashes = [hashlib.sha256(f"{all_scenes[r[0]].split}/{all_scenes[r[0]].index}|{r[1]}|{r[2]}|{r[3]}".encode())
              .hexdigest()[:16] for r in rows]
    # the resampling unit: the captioned scene, or the probed image
    units = [f"{r[4]}:{all_scenes[r[0]].split}/{all_scenes[r[0]].index}" for r in rows]
    return LabelledOutputs(items, torch.tensor([r[5] for r in rows]), hashes, units, yes, gold_yes, caption_rows)


# ------------------------------------------------------------------ real data
def says_yes(answer: str) -> bool:
    """POPE's answer parsing (Li et al., 2023): yes unless the first sentence has the word "no" or "not"."""
    first = re.split(r"[.!?\n]", answer.strip(), maxsplit=1)[0]
    words = set(re.findall(r"[a-z']+", first.lower()))
    return bool(first.strip()) and not words & {"no", "not"}


def fit_side(image_digest: str, fraction: float, seed: int) -> bool:
    """Whether an image's records belong to the fit split: its seeded content hash, as a number in
    [0, 1), falls below ``fraction``."""
    h = hashlib.sha256(f"{seed}|{image_digest}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64 < fraction


def split_by_image(loaded: LoadedData, fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """``(fit, test)`` records of a pope or captions file, in file order (see the module docstring)."""
    fit: list[Any] = []
    test: list[Any] = []
    for r in loaded.records:
        (fit if fit_side(loaded.file_digest(r.image.path), fraction, seed) else test).append(r)
    return fit, test


def _image_batch(model: GenerativeModel, records: Sequence[Any]) -> torch.Tensor:
    """The records' images at the model's input size, one row per record (each file decoded once)."""
    refs = list({r.image.path: r.image for r in records}.values())
    where = {ref.path: i for i, ref in enumerate(refs)}
    return stack_images(refs, input_size(model))[torch.tensor([where[r.image.path] for r in records],
                                                               dtype=torch.long)]


def build_pope_items(model: GenerativeModel, loaded: LoadedData, probes: list[PopeProbe],
                     batch_size: int) -> LabelledOutputs:
    """Run the model on a file's probes and label its answers (hallucinated = says yes, label no)."""
    pixels = _image_batch(model, probes)
    questions = [r.question for r in probes]
    answers: list[str] = []
    for i in range(0, len(probes), batch_size):
        answers += model.generate(pixels[i : i + batch_size], questions[i : i + batch_size], 2)
    spans = [a.strip() or "no" for a in answers]
    yes = [says_yes(a) for a in spans]
    labels = [int(y and not r.is_yes) for y, r in zip(yes, probes)]
    items = ScoredOutputs(pixels, questions, [""] * len(probes), spans, ["pope"] * len(probes))
    hashes = [example_hash(loaded.file_digest(r.image.path), r.question, span) for r, span in zip(probes, spans)]
    units = [f"pope:{loaded.file_digest(r.image.path)}" for r in probes]  # the probed image
    return LabelledOutputs(items, torch.tensor(labels, dtype=torch.long), hashes, units,
                           [float(y) for y in yes], [float(r.label == "yes") for r in probes])


def mention_pattern(objects: Iterable[str]) -> re.Pattern[str]:
    """Whole-word, case-insensitive matches of any of ``objects``, the longest first ("red
    circle" before "circle")."""
    words = sorted({o.lower() for o in objects}, key=lambda w: (-len(w), w))
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def build_caption_items(model: GenerativeModel, loaded: LoadedData, records: list[CaptionRecord],
                        batch_size: int, max_new_tokens: int) -> LabelledOutputs:
    """Caption each image of ``records`` once and label every mention of a known object
    (hallucinated = not among the image's objects)."""
    present: dict[Path, set[str]] = {}
    for r in records:  # several rows of one image: the union of their objects
        present.setdefault(r.image.path, set()).update(o.lower() for o in r.objects)
    firsts = list({r.image.path: r for r in records}.values())
    pixels = _image_batch(model, firsts)
    captions: list[str] = []
    for i in range(0, len(firsts), batch_size):
        captions += model.generate(pixels[i : i + batch_size], [CAPTION_PROMPT] * len(firsts[i : i + batch_size]),
                                   max_new_tokens)
    pattern = mention_pattern(o for r in loaded.records for o in r.objects)
    rows: list[tuple[int, str, str, int]] = []  # (image row, prefix, span, label)
    caption_rows: list[tuple[str, str, int]] = []  # (unit, hash, any mention hallucinated)
    for k, (r, cap) in enumerate(zip(firsts, captions)):
        any_bad = False
        for m in pattern.finditer(cap):
            bad = m.group(1).lower() not in present[r.image.path]
            rows.append((k, cap[: m.start()].strip(), m.group(0), int(bad)))
            any_bad |= bad
        digest = loaded.file_digest(r.image.path)
        caption_rows.append((f"caption:{digest}", example_hash(digest, CAPTION_PROMPT, cap, ""), int(any_bad)))
    idx = torch.tensor([k for k, *_ in rows], dtype=torch.long)
    items = ScoredOutputs(pixels[idx], [CAPTION_PROMPT] * len(rows), [p for _, p, _, _ in rows],
                          [s for _, _, s, _ in rows], ["caption"] * len(rows))
    labels = [b for *_, b in rows]
    hashes = [example_hash(loaded.file_digest(firsts[k].image.path), CAPTION_PROMPT, p, s) for k, p, s, _ in rows]
    units = [caption_rows[k][0] for k, *_ in rows]
    nan = [float("nan")] * len(rows)
    return LabelledOutputs(items, torch.tensor(labels, dtype=torch.long), hashes, units, nan, list(nan), caption_rows)


def concat_outputs(parts: Sequence[LabelledOutputs]) -> LabelledOutputs:
    """One set of items from several kinds, in order."""
    items = ScoredOutputs(torch.cat([p.items.pixels_BCHW for p in parts]),
                          [x for p in parts for x in p.items.prompts], [x for p in parts for x in p.items.prefixes],
                          [x for p in parts for x in p.items.spans], [x for p in parts for x in p.items.kinds])
    return LabelledOutputs(items, torch.cat([p.labels_B for p in parts]), [h for p in parts for h in p.hashes],
                           [u for p in parts for u in p.units], [x for p in parts for x in p.says_yes],
                           [x for p in parts for x in p.present], [c for p in parts for c in p.captions])


_OUTPUTS = ProcessMemo(size=2)  # one cell's test and fit splits


class HallucinationTask(Task):
    spec = TaskSpec(
        name="hallucination",
        version="1.3",
        families=frozenset({"generative"}),
        capability="detect_hallucination",
        main_score="auroc",
        metrics=(
            MetricSpec("auroc", "higher", "ROC AUC of hallucination scores, mean over caption and POPE items"),
            MetricSpec("auprc", "higher", "average precision (positive = hallucinated), mean over kinds"),
            MetricSpec("fpr_at_95tpr", "lower", "false-positive rate at 95% true-positive rate, mean over kinds"),
            MetricSpec("caption_auroc", "higher", "ROC AUC on caption object mentions"),
            MetricSpec("pope_auroc", "higher", "ROC AUC on POPE yes/no answers"),
            *(MetricSpec(m, "none", d, normalise=False) for m, d in (
                ("chair_i", "model: hallucinated mentions / mentions (CHAIR-i)"),
                ("chair_s", "model: captions with a hallucination (CHAIR-s)"),
                ("pope_accuracy", "model: POPE accuracy"), ("pope_f1", "model: POPE F1"),
                ("pope_yes_ratio", "model: POPE yes-ratio"), ("positive_rate", "share of hallucinated items")))),
    )

    data_kinds = ("captions", "pope")
    # what the task scores against, on the zoo and on a real checkpoint (`bench list tasks`)
    ground_truth = {
        "zoo": "the scene graph (objects present)",
        "real": "POPE / CHAIR-style files (--data pope=PATH, captions=PATH)",
    }
    strata = ("source",)

    def __init__(self, config: HallucinationConfig | None = None) -> None:
        self.config = config or HallucinationConfig()

    def check_data(self) -> None:
        cfg = self.config
        for loaded in self.data.values():
            fit, test = split_by_image(loaded, cfg.data_fit_fraction, cfg.data_split_seed)
            if not fit or not test:
                images = len({r.image.path for r in loaded.records})
                raise BenchError(f"{loaded.source.path}: task 'hallucination' splits the rows by image into a fit "
                                 f"share of {cfg.data_fit_fraction:g} and a scored rest; the {images} images leave "
                                 f"the {'fit' if not fit else 'scored'} side empty (more images are needed)")
        if "captions" in self.data and not any(r.objects for r in self.data["captions"].records):
            raise BenchError(f"{self.data['captions'].source.path}: no row lists an object, so no caption "
                             "mention can be found")

    def _data(self, model: GenerativeModel, seed: int, quick: bool) -> tuple[LabelledOutputs, LabelledOutputs]:
        return self._split(model, seed, quick, "test"), self._split(model, seed, quick, "fit")

    def _split(self, model: GenerativeModel, seed: int, quick: bool, split: str) -> LabelledOutputs:
        """The model's own labelled outputs on one split, built once per process (the same for every
        method); the fit split only when a method asks for it."""
        cfg = self.config
        if self.data:
            return self._data_split(model, quick, split)

        def build() -> LabelledOutputs:
            world = World(cfg.world_seed)
            train_world = World(cfg.world_seed, WorldConfig(cooccurrence=COOCCURRENCE_PAIRS))
            f = cfg.quick_fraction if quick else 1.0
            if split == "test":
                n_cap, n_pope = max(2, int(cfg.caption_scenes * f)), max(1, int(cfg.pope_images * f))
            else:
                n_cap, n_pope = cfg.fit_caption_scenes, cfg.fit_pope_images
            return build_items(model, world, train_world, split, n_cap, n_pope, 10_000 * seed,
                               cfg.max_new_tokens, model.batch_size)

        return _OUTPUTS.get((model.name, model.weights_hash, seed, quick, cfg, split), build)

    def _data_split(self, model: GenerativeModel, quick: bool, split: str) -> LabelledOutputs:
        """The model's labelled outputs on one side of the data files (the same for every seed):
        caption mentions first, then probe answers."""
        cfg = self.config

        def side(loaded: LoadedData) -> list[Any]:
            fit, test = split_by_image(loaded, cfg.data_fit_fraction, cfg.data_split_seed)
            if split == "fit":
                return fit
            return test[: max(1, int(len(test) * cfg.quick_fraction))] if quick else test

        def build() -> LabelledOutputs:
            parts = []
            if "captions" in self.data:
                parts.append(build_caption_items(model, self.data["captions"], side(self.data["captions"]),
                                                 model.batch_size, cfg.max_new_tokens))
            if "pope" in self.data:
                parts.append(build_pope_items(model, self.data["pope"], side(self.data["pope"]), model.batch_size))
            return concat_outputs(parts)

        return _OUTPUTS.get((model.name, model.weights_hash, quick, cfg, split, self.spec.version), build)

    def run(self, model: Model, method: Method, seed: int, quick: bool = False) -> CellResult:
        assert isinstance(model, GenerativeModel)
        test = self._split(model, seed, quick, "test")
        labels = test.labels_B
        if method.bound == "ceiling":
            scores = labels.double()
        elif method.bound == "chance":
            scores = torch.rand(len(labels), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        else:
            fit = self._split(model, seed, quick, "fit")
            request = HallucinationRequest(test.items, fit.items, fit.labels_B.clone(), batch_size=model.batch_size)
            scores = method.detect_hallucination(model, request)
            if not isinstance(scores, torch.Tensor) or scores.shape != labels.shape:
                raise BenchError(f"method {method.name!r} must return one score per item, shape {tuple(labels.shape)}")
        return self.result(test.rows(scores))

    def metrics_from_rows(self, rows: Rows, w_BN: np.ndarray) -> dict[str, np.ndarray]:
        """The detection metrics over the ``caption`` and ``pope`` rows, and the context figures
        (CHAIR-s over the ``caption_scene`` rows); see the module docstring."""
        return {**detection_metrics(rows, w_BN), **context_metrics(rows, w_BN)}

    def example_quality(self, rows: Rows) -> np.ndarray:
        """Per item, the share of the other class's items of its kind that its score ranks right
        (ties count one half): for a hallucinated item, the correct ones scored lower; for a
        correct item, the hallucinated ones scored higher. Its mean over either class is the
        kind's AUROC. NaN on caption-scene rows and where the item's kind holds one class."""
        kind, y, s = rows["kind"], rows["label"], rows["score"]
        out = np.full(len(y), np.nan)
        for k in KINDS:
            sel = np.asarray(kind == k, dtype=bool)
            pos, neg = sel & (y == 1), sel & (y == 0)
            if not pos.any() or not neg.any():
                continue
            sp, sn = np.sort(s[pos]), np.sort(s[neg])
            below = np.searchsorted(sn, s[pos], "left")
            out[pos] = (below + 0.5 * (np.searchsorted(sn, s[pos], "right") - below)) / len(sn)
            above = len(sp) - np.searchsorted(sp, s[neg], "right")
            out[neg] = (above + 0.5 * (len(sp) - np.searchsorted(sp, s[neg], "left") - above)) / len(sp)
        return out
