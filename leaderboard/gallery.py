"""Heatmap gallery for the HTML leaderboard: attribution maps and a causal-tracing map.

The maps are computed fresh, not read from the records (records hold metrics, not
maps): registered methods run through the registry (``bench.harness.runner.make_method``,
``make_task``, ``load_model``) with their default configurations on a few test
examples of one zoo model, seed ``GalleryConfig.seed``. They illustrate what the
leaderboard's numbers measure; they are not themselves scored.

- **Attribution** (task ``attribution``): one row per scene, columns: the scene with
  the target's ground-truth mask outlined, then each method's map (positive
  attribution, upsampled to pixels, scaled to its own maximum) over the scene in
  grey. Methods are the non-reference methods the leaderboard ranks on the chosen
  model, best first by main score (at most ``max_methods``; configuration variants
  ``name@hash`` are skipped, their configuration is not in the rows).
- **Causal tracing** (task ``localization``): per planted relation, a site × position
  map of the share of the clean-vs-corrupt effect that restoring one site's clean
  activation at one position brings back, ``(m(patched) − m(corrupt)) / (m(clean) −
  m(corrupt))`` averaged over that relation's examples
  (:func:`methods.causal_tracing.position_sweep`). Image tokens are restored one
  patch row at a time (to keep the map cheap), every other token on its own. Sites
  are the task's candidates; the planted one is marked.

The model is the first of the preferred names that the rows hold for the task, else
the first zoo model (by name) of a family the figure supports; Hugging Face models
(``hf:``) are never loaded for the gallery. Everything is seeded, so the same rows
give the same PNG bytes on the same machine and library versions.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence, cast

import numpy as np

from bench.errors import BenchError
from leaderboard.scorer import REFERENCE_METHODS, Row

if TYPE_CHECKING:
    from methods.causal_tracing import CausalTracing
    from tasks.localization import FactExamples, LocalizationTask

# PNG metadata that would change between runs or installs is dropped, so the bytes are reproducible.
PNG_METADATA = {"Software": None}


@dataclass(frozen=True)
class GalleryConfig:
    n_examples: int = 3  # attribution scenes
    max_methods: int = 4
    attribution_models: tuple[str, ...] = ("zoo-clip",)
    tracing_models: tuple[str, ...] = ("zoo-vlm",)
    tracing_examples_per_relation: int = 1
    seed: int = 0


@dataclass
class GalleryFigure:
    """One gallery image (``png``) or, when it could not be made, the reason (``error``)."""

    key: str  # file-name-safe identifier
    title: str
    caption: str
    png: bytes | None = None
    error: str | None = None
    methods: list[str] = field(default_factory=list)


def mpl_text(text: str) -> str:
    """``text`` safe for a matplotlib label: ``$`` would start mathtext."""
    return text.replace("$", r"\$")


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (letters, digits, ``-`` and ``_`` only)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def new_figure(width: float, height: float) -> Any:
    """A matplotlib figure on the Agg canvas (constrained layout), without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata=PNG_METADATA)
    return buf.getvalue()


def _family(name: str) -> str | None:
    from bench.registry import MODELS

    if MODELS.source_of(name) is not None or name not in MODELS:
        return None
    return MODELS.entry(name).meta.get("family")


def pick_model(rows: Sequence[Row], task: str, preferred: Sequence[str], families: Sequence[str]) -> str | None:
    """The model the figure for ``task`` is drawn on (see the module docstring), or None."""
    have = sorted({r.model for r in rows if r.task == task})
    for name in preferred:
        if name in have and _family(name) in families:
            return name
    for name in have:
        if _family(name) in families:
            return name
    return None


def ranked_methods(rows: Sequence[Row], task: str, model: str, limit: int) -> list[str]:
    """Registered non-reference methods on ``(task, model)``, best main score first."""
    from bench.registry import METHODS

    main = [r for r in rows if r.task == task and r.model == model and r.is_main
            and r.method not in REFERENCE_METHODS and "@" not in r.method and r.method in METHODS]
    best: dict[str, Row] = {}
    # one row per method: the highest task version (by string) the method has on this model
    for r in sorted(main, key=lambda r: r.task_version, reverse=True):
        best.setdefault(r.method, r)
    sign = {"higher": -1.0, "lower": 1.0}
    order = sorted(best.values(), key=lambda r: (sign.get(r.direction, 0.0) * r.mean, r.method))
    return [r.method for r in order][:limit]


# ---------------------------------------------------------------- attribution
def attribution_figure(rows: Sequence[Row], cfg: GalleryConfig) -> GalleryFigure | None:
    """Attribution maps of the leaderboard's methods over a few scenes (None: no attribution rows)."""
    model_name = pick_model(rows, "attribution", cfg.attribution_models, ("contrastive", "generative"))
    if model_name is None:
        return None
    import torch

    from bench.harness.runner import load_model, make_method, make_task
    from tasks.attribution import AttributionTask, upsample_to

    methods = ranked_methods(rows, "attribution", model_name, cfg.max_methods)
    fig_ = GalleryFigure(key=f"attribution-{slug(model_name)}", title=f"Attribution maps — {model_name}",
                         caption="", methods=methods)
    model = load_model(model_name)
    task = cast(AttributionTask, make_task("attribution"))  # the figure uses the task's own API
    ex = task.examples(model, cfg.seed, cfg.n_examples)
    req = task.request(model, ex, cfg.seed)
    maps: dict[str, torch.Tensor] = {}
    skipped = []
    failed = []
    for name in methods:
        method = make_method(name)
        if "attribute" not in method.capabilities or method.supports(model):
            skipped.append(name)
            continue
        torch.manual_seed(cfg.seed)
        try:
            maps[name] = upsample_to(task.maps_for(method, model, req, ex, cfg.seed), ex.pixels_BCHW.shape[-1])
        except (BenchError, RuntimeError, ValueError) as e:  # one failing method must not sink the page
            failed.append(f"{name} ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    shown = list(maps)
    fig_.methods = shown

    n, cols = ex.pixels_BCHW.shape[0], 1 + len(shown)
    fig = new_figure(1.7 * cols + 0.2, 1.8 * n + 0.3)
    axes = fig.subplots(n, cols, squeeze=False)
    for i in range(n):
        img = ex.pixels_BCHW[i].permute(1, 2, 0).numpy()
        grey = img.mean(-1)
        ax = axes[i][0]
        ax.imshow(img, interpolation="nearest")
        ax.contour(ex.masks_BHW[i].numpy().astype(float), levels=[0.5], colors="white", linewidths=1.0)
        ax.set_title(mpl_text(ex.captions[i]), fontsize=8)
        for j, name in enumerate(shown):
            m = maps[name][i].clamp(min=0).numpy()
            top = float(m.max())
            ax = axes[i][1 + j]
            ax.imshow(grey, cmap="gray", interpolation="nearest")
            ax.imshow(m / top if top > 0 else m, cmap="inferno", alpha=0.65, vmin=0.0, vmax=1.0,
                      interpolation="nearest")
            ax.contour(ex.masks_BHW[i].numpy().astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
            if i == 0:
                ax.set_title(mpl_text(name), fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig_.png = png_bytes(fig)
    fig_.caption = (f"{n} test scenes of task attribution (seed {cfg.seed}); first column: the scene with the "
                    f"target object's mask outlined; then each method's positive attribution (default "
                    f"configuration), scaled to its maximum, over the scene in grey (mask in cyan).")
    if skipped:
        fig_.caption += f" Not shown (no attribute capability for this model): {', '.join(skipped)}."
    if failed:
        fig_.caption += f" Failed: {'; '.join(failed)}."
    if not methods:
        fig_.caption += " No non-reference method is on the leaderboard for this model."
    return fig_


# -------------------------------------------------------------- causal tracing
def position_groups(model: Any, prompts: list[str], answers: list[str],
                    length: int) -> tuple[list[list[int]], list[str]]:
    """Positions of ``model``'s traced stream, image patches grouped by row, with labels."""
    from bench.model import ContrastiveModel, GenerativeModel

    layout = model.token_layout()
    if isinstance(model, GenerativeModel):
        image = model.image_positions(prompts[:1])[0].nonzero().flatten().tolist()
        ids = model.answer_inputs(prompts[:1], answers[:1]).ids_BL[0].tolist()
        decode = getattr(model, "decode", None)
        tokens = {p: (decode([ids[p]]) if decode else f"t{p}") for p in range(min(length, len(ids)))}
    elif isinstance(model, ContrastiveModel) and layout is not None:
        image = list(range(length))[layout.image]
        tokens = {p: ("cls" if p == layout.cls else f"t{p}") for p in range(length)}
    else:
        raise BenchError(f"no position layout for the {model.family} model {model.name!r}")
    per_row = layout.grid[1] if layout is not None else 8
    groups: list[list[int]] = []
    labels: list[str] = []
    done: set[int] = set()
    for p in range(length):
        if p in done:
            continue
        if p in image:
            k = image.index(p)
            row = image[k - k % per_row: k - k % per_row + per_row]
            groups.append(row)
            labels.append(f"img row {k // per_row}")
            done.update(row)
        else:
            groups.append([p])
            labels.append(tokens.get(p, f"t{p}") or f"t{p}")
            done.add(p)
    return groups, labels


def tracing_figure(rows: Sequence[Row], cfg: GalleryConfig) -> GalleryFigure | None:
    """Layer × position causal-tracing maps, one panel per planted relation (None: no localization rows)."""
    model_name = pick_model(rows, "localization", cfg.tracing_models, ("generative", "contrastive"))
    if model_name is None:
        return None
    from bench.harness.runner import load_model, make_method, make_task

    model = load_model(model_name)
    # the task's and the method's own API (candidates, examples, request; position_sweep)
    task = cast("LocalizationTask", make_task("localization"))
    method = cast("CausalTracing", make_method("causal_tracing"))
    rels = list(model.planted)
    if not rels:
        raise BenchError(f"model {model_name!r} has no planted knowledge to trace")
    cands = task.candidates(model)
    # build_examples cycles through the relations, so n = relations × k gives k of each (FactExamples:
    # the model is generative or contrastive, never diffusion)
    ex = cast("FactExamples", task.examples(model, len(rels) * cfg.tracing_examples_per_relation, cfg.seed, "test"))
    req = task.request(model, ex, cands)
    clean, trace = req.evaluate("clean", read=cands[:1])
    corrupt, _ = req.evaluate("corrupt")
    length = int(trace[cands[0]].shape[1])
    groups, labels = position_groups(model, list(ex.prompts), list(ex.answers), length)
    effect = method.position_sweep(req, cands, groups)  # [n, sites, groups]
    gap = (clean - corrupt).double()
    share = (effect / gap[:, None, None]).numpy()
    keep = (gap.abs() > 1e-6).numpy()

    fig = new_figure(0.24 * len(groups) + 3.6, (0.35 * len(cands) + 2.2) * len(rels))
    axes = fig.subplots(len(rels), 1, squeeze=False)
    image_obj = None
    for a, rel in enumerate(rels):
        idx = [i for i, r in enumerate(ex.relations) if r == rel.relation and keep[i]]
        ax = axes[a][0]
        grid = share[idx].mean(0) if idx else np.full((len(cands), len(groups)), np.nan)
        image_obj = ax.imshow(grid, cmap="Purples", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(cands)))
        ax.set_yticklabels([mpl_text(c + ("  (planted)" if c == rel.site else "")) for c in cands], fontsize=7)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([mpl_text(x) for x in labels], rotation=90, fontsize=7)
        ax.set_title(mpl_text(f"relation {rel.relation!r}: {rel.question} ({len(idx)} example"
                              f"{'' if len(idx) == 1 else 's'})"), fontsize=8)
    if image_obj is not None:
        fig.colorbar(image_obj, ax=[ax_[0] for ax_ in axes], label="share of effect restored", extend="both",
                     shrink=0.9)
    png = png_bytes(fig)
    caption = (f"Causal tracing (Meng et al., 2022) on {model_name}: each cell restores one site's clean "
               f"activation at one position (image tokens one patch row at a time) into the corrupted run "
               f"(another entity's glyph) and shows the share of the clean-vs-corrupt logit difference that "
               f"comes back, averaged over the relation's examples (seed {cfg.seed}). The planted site is "
               f"where the fact was trained in.")
    return GalleryFigure(key=f"tracing-{slug(model_name)}", title=f"Causal tracing — {model_name}",
                         caption=caption, png=png, methods=["causal_tracing"])


def build_gallery(rows: Sequence[Row], cfg: GalleryConfig | None = None) -> list[GalleryFigure]:
    """The gallery's figures for ``rows`` (attribution, then causal tracing; absent tasks give none).

    A figure that cannot be made (a model fails to load, a method fails) is returned
    with ``error`` set and no image, so the rest of the page still renders.
    """
    cfg = cfg or GalleryConfig()
    out = []
    for make, key in ((attribution_figure, "attribution"), (tracing_figure, "tracing")):
        try:
            fig = make(rows, cfg)
        except BenchError as e:
            fig = GalleryFigure(key=key, title=f"{key} gallery", caption="", error=str(e))
        if fig is not None:
            out.append(fig)
    return out
