"""Spurious-correlation removal on a Waterbirds-style contrastive model.

Setting: zoo-clip-spurious classifies single-object scenes zero-shot as "a circle"
or "a square"; it was trained where circles sit on water and squares on land in
95% of scenes, so it leans on the background (Sagawa et al., 2020, "Distributionally
Robust Neural Networks for Group Shifts"). A method sees a group-labelled fit split
and returns an :class:`~bench.capabilities.Intervention` (sites to ablate,
directions to project out, or a retrained last layer); the task applies it and
measures zero-shot accuracy on a group-balanced test split, one group per
(class, background).

Metrics:

- ``worst_group_accuracy`` ↑ (main; Sagawa et al., 2020): the lowest per-group accuracy.
- ``average_accuracy`` ↑: mean of the per-group accuracies (each group counts once, whatever
  its size; the world's groups are equal-sized).
- ``worst_group_gain`` ↑: worst-group accuracy minus the unmodified model's, on the
  same test scenes (the oracle's, 1 minus the unmodified worst-group accuracy, is the
  largest possible gain).
- ``components_touched`` ↓ (not normalised): the intervention's size, as reported
  by the method (heads, neurons, directions, retrained layers).
- Context (not normalised): ``unmodified_worst_group_accuracy``, the model's own, and
  ``group_<class>_<background>``, the accuracy on each group after the intervention.

Rows (v1.1: metrics from rows, see :mod:`bench.samples`): one row per test image, with its
``group`` (``<class>_<background>``, as in the ``group_*`` metric names), ``correct`` (1 when
the intervened model classifies it right), ``base_correct`` (the same for the unmodified model)
and ``components`` (the intervention's size, the same on every row). The resampling unit is
the image: the test images are drawn independently (one scene, or one file row, each). The
stratum is ``group`` (:attr:`SpuriousTask.strata`): a resample keeps each group's size, so
every group has an accuracy in every resample. Every figure is computed in double precision
from the rows (before v1.1, the group accuracies were float32 means: figures moved by less
than 1e-7, where a group's size is not a power of two).

References: ``random`` projects a random unit direction out of the image embedding
(the cost of an uninformed intervention of the smallest size); ``oracle`` answers
with the true class (the ceiling, 1.0).

Real data (``--data waterbirds=metadata.csv``, Waterbirds-style groups, Sagawa et al.,
2020; fields in :func:`bench.kit.realdata.load_waterbirds`): the fit split is the rows of
split ``train`` and ``val``, the test split the rows of split ``test`` (the quick
profile keeps the first ``quick_test_per_group`` test rows of each group, in file
order). The classes are the file's distinct labels (sorted), classified zero-shot with
the prompts ``class_prompt`` ("a photo of a {label}"); the spurious attribute is the
place (described to methods as ``place_prompt``, "a photo on {place}"); the groups are
the (label, place) pairs present in the test split, reported as ``group_<label>_<place>``
(names lower-cased, other characters than letters and digits turned into ``_``).
Waterbirds' own numeric codes are named as in its metadata (label 0 landbird, 1
waterbird; place 0 land, 1 water) when every label and place is 0 or 1. Images are
resized (bilinearly) to the model's input size. The model needs no ``spurious`` tag:
the data carries the shortcut. The examples are the same for every seed; seeds vary
what methods and the ``random`` reference draw.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import torch

from bench.capabilities import DebiasRequest, Intervention
from bench.errors import BenchError
from bench.method import Method
from bench.model import ContrastiveModel, Model
from bench.kit.realdata import GroupRecord, stack_images
from bench.samples import Rows, make_rows, wmean, wmin_group_mean
from bench.task import CellResult, LoadedData, MetricSpec, Task, TaskSpec, example_hash
from bench.kit.world import World
from bench.kit.world.spurious import CLASSES, GROUPS, spurious_scene

SPURIOUS_VALUES: tuple[str, ...] = ("water", "land")


@dataclass(frozen=True)
class SpuriousConfig:
    world_seed: int = 0
    fit_per_group: int = 64
    test_per_group: int = 256
    quick_test_per_group: int = 64
    # real data: the zero-shot class prompts and the descriptions of the spurious attribute's values
    class_prompt: str = "a photo of a {label}"
    place_prompt: str = "a photo on {place}"


@dataclass
class GroupSet:
    pixels_BCHW: torch.Tensor
    labels_B: torch.Tensor  # class index
    spurious_B: torch.Tensor  # background index
    group_B: torch.Tensor  # index into GROUPS
    hashes: list[str]


def _scenes(world: World, split: str, per_group: int, offset: int) -> GroupSet:
    pix, lab, sp, grp, hashes = [], [], [], [], []
    for gi, g in enumerate(GROUPS):
        for i in range(per_group):
            s = spurious_scene(world, split, 1_000_000 * gi + offset + i, None, group=g)
            pix.append(s.image_HWC)
            lab.append(CLASSES.index(g[0]))
            sp.append(SPURIOUS_VALUES.index(g[1]))
            grp.append(gi)
            hashes.append(hashlib.sha256(s.image_HWC.tobytes()).hexdigest()[:16])
    pixels = torch.from_numpy(np.stack(pix)).permute(0, 3, 1, 2).float() / 255.0
    return GroupSet(pixels, torch.tensor(lab), torch.tensor(sp), torch.tensor(grp), hashes)


def group_accuracies(pred_B: torch.Tensor, labels_B: torch.Tensor, group_B: torch.Tensor,
                     n_groups: int = len(GROUPS)) -> torch.Tensor:
    """Accuracy per group, ``[n_groups]`` in :data:`GROUPS` order (or the data's group order), as
    float32 means (for methods and their tests; the task's metrics come from its rows)."""
    return torch.stack([(pred_B[group_B == g] == labels_B[group_B == g]).float().mean() for g in range(n_groups)])


def spurious_rows(pred_B: torch.Tensor, base_pred_B: torch.Tensor, labels_B: torch.Tensor, group_B: torch.Tensor,
                  components: int, hashes: list[str], groups: tuple[tuple[str, str], ...] = GROUPS) -> Rows:
    """One row per test image (see the module docstring); the unit is the image (its position and hash)."""
    names = [f"{_word(c)}_{_word(b)}" for c, b in groups]
    return make_rows(example=[f"{i:05d}:{h}" for i, h in enumerate(hashes)], hash=hashes,
                     group=[names[g] for g in group_B.tolist()],
                     correct=(pred_B == labels_B).double(), base_correct=(base_pred_B == labels_B).double(),
                     components=[float(components)] * len(hashes))


def spurious_metrics(rows: Rows, w_BN: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric ``[B]`` from the rows: per-group weighted accuracies, their minimum and mean."""
    acc, names = wmin_group_mean(rows["correct"], rows["group"], w_BN)
    base, _ = wmin_group_mean(rows["base_correct"], rows["group"], w_BN)
    worst, base_worst = acc.min(1), base.min(1)
    out = {"worst_group_accuracy": worst, "average_accuracy": acc.mean(1), "worst_group_gain": worst - base_worst,
           "components_touched": wmean(rows["components"], w_BN), "unmodified_worst_group_accuracy": base_worst}
    out.update({f"group_{g}": acc[:, i] for i, g in enumerate(names)})
    return out


def _word(name: str) -> str:
    """A label or place as a metric-name word: lower case, runs of other characters than
    letters and digits as ``_`` (the world's names are unchanged)."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "_"


# ------------------------------------------------------------------ real data
# Waterbirds' metadata.csv codes (Sagawa et al., 2020): y 0/1, place 0/1
WATERBIRDS_LABELS: dict[str, str] = {"0": "landbird", "1": "waterbird"}
WATERBIRDS_PLACES: dict[str, str] = {"0": "land", "1": "water"}


@dataclass(frozen=True)
class DataGroups:
    """A Waterbirds-style file cut into the task's splits: class and place names (sorted), the
    groups of the test split in (class, place) order, and the fit and test records."""

    classes: tuple[str, ...]
    places: tuple[str, ...]
    groups: tuple[tuple[str, str], ...]
    fit: tuple[GroupRecord, ...]
    test: tuple[GroupRecord, ...]
    named: bool  # Waterbirds' numeric codes were named

    def label(self, r: GroupRecord) -> str:
        return WATERBIRDS_LABELS[r.label] if self.named else r.label

    def place(self, r: GroupRecord) -> str:
        assert r.place is not None
        return WATERBIRDS_PLACES[r.place] if self.named else r.place


def data_groups(loaded: LoadedData) -> DataGroups:
    """Split a loaded ``waterbirds`` file (see the module docstring); one-line errors when it
    cannot make the task (no place, one class, an empty split)."""
    recs: list[GroupRecord] = list(loaded.records)
    path = loaded.source.path
    if any(r.place is None for r in recs):
        raise BenchError(f"{path}: task 'spurious' needs the spurious attribute of every row "
                         "(a 'place' column), not only a group")
    named = {r.label for r in recs} <= set(WATERBIRDS_LABELS) and {r.place for r in recs} <= set(WATERBIRDS_PLACES)
    names = DataGroups((), (), (), (), (), named)  # for its label/place naming only
    lab, plc = names.label, names.place
    classes = tuple(sorted({lab(r) for r in recs}))
    places = tuple(sorted({plc(r) for r in recs}))
    if len(classes) < 2:
        raise BenchError(f"{path}: task 'spurious' needs at least two classes, the file has {len(classes)}")
    fit = tuple(r for r in recs if r.split in ("train", "val"))
    test = tuple(r for r in recs if r.split == "test")
    if not fit or not test:
        missing = "train/val (the fit split)" if not fit else "test (the scored split)"
        raise BenchError(f"{path}: task 'spurious' needs rows of split {missing}; the file has none")
    present = {(lab(r), plc(r)) for r in test}
    groups = tuple(g for g in ((c, p) for c in classes for p in places) if g in present)
    return DataGroups(classes, places, groups, fit, test, named)


def _data_set(loaded: LoadedData, dg: DataGroups, records: list[GroupRecord], size: int) -> GroupSet:
    """Decode ``records`` at ``size`` px with their class, place and group indices."""
    pixels = stack_images([r.image for r in records], size)
    labels = [dg.classes.index(dg.label(r)) for r in records]
    places = [dg.places.index(dg.place(r)) for r in records]
    gidx = {g: i for i, g in enumerate(dg.groups)}
    groups = [gidx.get((dg.label(r), dg.place(r)), -1) for r in records]  # -1: fit rows of a group not tested
    hashes = [example_hash(loaded.file_digest(r.image.path), r.label, r.place or "") for r in records]
    return GroupSet(pixels, torch.tensor(labels), torch.tensor(places), torch.tensor(groups), hashes)


@torch.no_grad()
def predict(model: ContrastiveModel, pixels_BCHW: torch.Tensor, prompts: list[str],
            intervention: Intervention | None, batch_size: int) -> torch.Tensor:
    """Zero-shot class indices (or the intervention's head) with the intervention's edits applied."""
    writes = intervention.writes if intervention is not None else {}
    with model.trace(write=writes):
        text_TD = model.encode_text(prompts)
        img = torch.cat([model.encode_image(pixels_BCHW[i : i + batch_size])
                         for i in range(0, pixels_BCHW.shape[0], batch_size)])
    if intervention is not None and intervention.head is not None:
        return intervention.head(img).argmax(-1)
    return model.similarity_to(img, text_TD).argmax(-1)


def random_intervention(model: ContrastiveModel, seed: int) -> Intervention:
    """Project one random unit direction out of the image embedding (``vision.proj``)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dim = model.encode_text(["a circle"]).shape[-1]
    u = torch.randn(dim, generator=g)
    u = u / u.norm()

    def project_out(x: torch.Tensor) -> torch.Tensor:
        return x - (x @ u)[..., None] * u

    return Intervention({"vision.proj": project_out}, components=1, description="random direction")


class SpuriousTask(Task):
    spec = TaskSpec(
        name="spurious",
        version="1.1",
        families=frozenset({"contrastive"}),
        capability="debias",
        main_score="worst_group_accuracy",
        metrics=(
            MetricSpec("worst_group_accuracy", "higher", "lowest per-group zero-shot accuracy"),
            MetricSpec("average_accuracy", "higher", "mean per-group accuracy (balanced test split)"),
            # the oracle's gain (1 - the unmodified worst group) depends on the model: no fixed ceiling, and
            # normalised it would equal worst_group_accuracy's normalised score (the same offset): shown raw
            MetricSpec("worst_group_gain", "higher", "worst-group accuracy minus the unmodified model's",
                       normalise=False),
            MetricSpec("components_touched", "lower", "size of the intervention (method-reported)", normalise=False),
            MetricSpec("unmodified_worst_group_accuracy", "none", "the model's own worst-group accuracy (context)",
                       normalise=False),
            *(MetricSpec(f"group_{c}_{b}", "none", f"accuracy on {c}s on {b}", normalise=False) for c, b in GROUPS),
            MetricSpec("group_*", "none", "accuracy on one (label, place) group of a data file", normalise=False),
        ),
    )
    data_kinds = ("waterbirds",)
    # what the task scores against, on the zoo and on a real checkpoint (`bench list tasks`)
    ground_truth = {
        "zoo": "zoo-clip-spurious's group labels (class x background)",
        "real": "Waterbirds-style groups (--data waterbirds=PATH)",
    }
    strata = ("group",)

    def __init__(self, config: SpuriousConfig | None = None) -> None:
        self.config = config or SpuriousConfig()

    def check_data(self) -> None:
        data_groups(self.data["waterbirds"])

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        if not self.data and model.tags.get("spurious") != "background":  # data carries its own shortcut
            return (f"task 'spurious' needs a model with a known background shortcut (tag spurious=background); "
                    f"{model.name!r} has none")
        if "vision.proj" not in model.site_specs:
            return f"task 'spurious' needs a 'vision.proj' site; {model.name!r} has none"
        return None

    def _data_splits(self, model: ContrastiveModel, quick: bool
                     ) -> tuple[GroupSet, GroupSet, list[str], list[str], tuple[tuple[str, str], ...]]:
        """Fit and test sets, class prompts, place prompts and groups from the waterbirds file."""
        cfg, loaded = self.config, self.data["waterbirds"]
        dg = data_groups(loaded)
        test = list(dg.test)
        if quick:  # the first rows of each group, in file order
            seen: dict[tuple[str, str], int] = {}
            keep = []
            for r in test:
                g = (dg.label(r), dg.place(r))
                seen[g] = seen.get(g, 0) + 1
                if seen[g] <= cfg.quick_test_per_group:
                    keep.append(r)
            test = keep
        fit_set = _data_set(loaded, dg, list(dg.fit), model.image_size)
        test_set = _data_set(loaded, dg, test, model.image_size)
        return (fit_set, test_set, [cfg.class_prompt.format(label=c) for c in dg.classes],
                [cfg.place_prompt.format(place=p) for p in dg.places], dg.groups)

    def run(self, model: Model, method: Method, seed: int, quick: bool = False) -> CellResult:
        assert isinstance(model, ContrastiveModel)
        cfg = self.config
        if self.data:
            fit, test, prompts, place_prompts, groups = self._data_splits(model, quick)
        else:
            world = World(cfg.world_seed)
            per_group = cfg.quick_test_per_group if quick else cfg.test_per_group
            # seeds draw disjoint scenes: the fit split for fitting, the test split for scoring
            fit = _scenes(world, "fit", cfg.fit_per_group, 10_000 * seed)
            test = _scenes(world, "test", per_group, 10_000 * seed)
            prompts = [f"a {c}" for c in CLASSES]
            place_prompts, groups = [f"a photo on {v}" for v in SPURIOUS_VALUES], GROUPS
        bs = model.batch_size
        base = predict(model, test.pixels_BCHW, prompts, None, bs)
        if method.bound == "ceiling":
            pred, components = test.labels_B.clone(), 0
        elif method.bound == "chance":
            iv = random_intervention(model, seed)
            pred, components = predict(model, test.pixels_BCHW, prompts, iv, bs), iv.components
        else:
            request = DebiasRequest(fit.pixels_BCHW, fit.labels_B, fit.spurious_B, prompts, place_prompts,
                                    batch_size=bs)
            iv = method.debias(model, request)
            if not isinstance(iv, Intervention):
                raise BenchError(f"method {method.name!r} returned {type(iv).__name__}, not an Intervention")
            pred, components = predict(model, test.pixels_BCHW, prompts, iv, bs), iv.components
        return self.result(spurious_rows(pred, base, test.labels_B, test.group_B, components, test.hashes, groups))

    def metrics_from_rows(self, rows: Rows, w_BN: np.ndarray) -> dict[str, np.ndarray]:
        return spurious_metrics(rows, w_BN)

    def example_quality(self, rows: Rows) -> np.ndarray:
        """Per test image, whether the intervened model classifies it right (1) or not (0)."""
        return np.asarray(rows["correct"], dtype=np.float64)

