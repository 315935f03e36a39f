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
- ``average_accuracy`` ↑: mean of the per-group accuracies (groups are equal-sized).
- ``worst_group_gain`` ↑: worst-group accuracy minus the unmodified model's, on the
  same test scenes.
- ``components_touched`` ↓ (not normalised): the intervention's size, as reported
  by the method (heads, neurons, directions, retrained layers).

References: ``random`` projects a random unit direction out of the image embedding
(the cost of an uninformed intervention of the smallest size); ``oracle`` answers
with the true class (the ceiling, 1.0).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from bench.capabilities import DebiasRequest, Intervention
from bench.errors import BenchError
from bench.method import Method
from bench.model import ContrastiveModel, Model
from bench.task import CellResult, MetricSpec, Task, TaskSpec
from bench.world import World
from bench.world.spurious import CLASSES, GROUPS, spurious_scene

SPURIOUS_VALUES: tuple[str, ...] = ("water", "land")


@dataclass(frozen=True)
class SpuriousConfig:
    world_seed: int = 0
    fit_per_group: int = 64
    test_per_group: int = 256
    quick_test_per_group: int = 64


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


def group_accuracies(pred_B: torch.Tensor, labels_B: torch.Tensor, group_B: torch.Tensor) -> torch.Tensor:
    """Accuracy per group, ``[n_groups]`` in :data:`GROUPS` order."""
    return torch.stack([(pred_B[group_B == g] == labels_B[group_B == g]).float().mean() for g in range(len(GROUPS))])


def spurious_metrics(pred_B: torch.Tensor, base_pred_B: torch.Tensor, labels_B: torch.Tensor,
                     group_B: torch.Tensor, components: int) -> dict[str, float]:
    acc = group_accuracies(pred_B, labels_B, group_B)
    base = group_accuracies(base_pred_B, labels_B, group_B)
    out = {"worst_group_accuracy": float(acc.min()), "average_accuracy": float(acc.mean()),
           "worst_group_gain": float(acc.min() - base.min()), "components_touched": float(components)}
    out.update({f"group_{c}_{b}": float(a) for (c, b), a in zip(GROUPS, acc.tolist())})
    return out


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
        version="1.0",
        families=frozenset({"contrastive"}),
        capability="debias",
        main_score="worst_group_accuracy",
        metrics=(
            MetricSpec("worst_group_accuracy", "higher", "lowest per-group zero-shot accuracy"),
            MetricSpec("average_accuracy", "higher", "mean per-group accuracy (balanced test split)"),
            MetricSpec("worst_group_gain", "higher", "worst-group accuracy minus the unmodified model's"),
            MetricSpec("components_touched", "lower", "size of the intervention (method-reported)", normalise=False),
            MetricSpec("unmodified_worst_group_accuracy", "none", "the model's own worst-group accuracy (context)",
                       normalise=False),
            *(MetricSpec(f"group_{c}_{b}", "none", f"accuracy on {c}s on {b}", normalise=False) for c, b in GROUPS),
        ),
    )

    def __init__(self, config: SpuriousConfig | None = None) -> None:
        self.config = config or SpuriousConfig()

    def supports(self, model: Model) -> str | None:
        reason = super().supports(model)
        if reason:
            return reason
        if model.tags.get("spurious") != "background":
            return (f"task 'spurious' needs a model with a known background shortcut (tag spurious=background); "
                    f"{model.name!r} has none")
        if "vision.proj" not in model.site_specs:
            return f"task 'spurious' needs a 'vision.proj' site; {model.name!r} has none"
        return None

    def run(self, model: Model, method: Method, seed: int, quick: bool = False) -> CellResult:
        assert isinstance(model, ContrastiveModel)
        cfg = self.config
        world = World(cfg.world_seed)
        per_group = cfg.quick_test_per_group if quick else cfg.test_per_group
        # seeds draw disjoint scenes: the fit split for fitting, the test split for scoring
        fit = _scenes(world, "fit", cfg.fit_per_group, 10_000 * seed)
        test = _scenes(world, "test", per_group, 10_000 * seed)
        prompts = [f"a {c}" for c in CLASSES]
        bs = model.batch_size
        base = predict(model, test.pixels_BCHW, prompts, None, bs)
        if method.name == "oracle":
            pred, components = test.labels_B.clone(), 0
        elif method.name == "random":
            iv = random_intervention(model, seed)
            pred, components = predict(model, test.pixels_BCHW, prompts, iv, bs), iv.components
        else:
            request = DebiasRequest(fit.pixels_BCHW, fit.labels_B, fit.spurious_B, prompts,
                                    [f"a photo on {v}" for v in SPURIOUS_VALUES], batch_size=bs)
            iv = method.debias(model, request)
            if not isinstance(iv, Intervention):
                raise BenchError(f"method {method.name!r} returned {type(iv).__name__}, not an Intervention")
            pred, components = predict(model, test.pixels_BCHW, prompts, iv, bs), iv.components
        metrics = spurious_metrics(pred, base, test.labels_B, test.group_B, components)
        metrics["unmodified_worst_group_accuracy"] = float(group_accuracies(base, test.labels_B, test.group_B).min())
        return CellResult(metrics, example_hashes=test.hashes, artifacts={})

