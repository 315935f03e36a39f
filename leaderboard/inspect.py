"""A method's worst examples in one cell: ``bench inspect``.

``inspect_cell(store, task=, model=, method=, seed=, profile=, k=, out=)`` loads the cell's record
with its per-example rows (:mod:`bench.samples`), scores every row with the task's
:meth:`bench.task.Task.example_quality` (higher = the method did better; NaN rows say nothing about
the method and are left out), and prints the ``k`` rows of lowest quality, ties in row order, as a
plain-text table (rank, example, hash, quality, then the row's other columns) with one summary line.

``--method NAME@HASH`` picks a configuration variant by the first digits of its config hash (as the
leaderboard labels variants); without it, the default configuration is preferred when the store
holds several.

With ``out`` (task ``attribution`` only), a PNG grid of those examples: each example's scene with the
target's ground-truth mask outlined, and the method's map (positive part, upsampled to pixels, scaled
to its own maximum) over the scene in grey, titled with the row's stored pointing game and mass in
mask. The maps are computed afresh (records hold rows, not maps): the cell's examples are rebuilt as
the task built them for that seed and profile (checked against the rows' example hashes, and the
model's weights against the record's hash), and the method, in the record's configuration, runs on
the whole example set under ``torch.manual_seed(seed)``, as in the task. The PNG's metadata is
stripped (:data:`leaderboard.gallery.PNG_METADATA`), so the same cell gives the same bytes on the
same machine and library versions.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, cast

import numpy as np

from bench.errors import BenchError
from bench.records import RunRecord, config_hash
from bench.samples import Rows
from bench.harness.store import Store
from bench.task import Task

GRID_TASKS = ("attribution",)
EXAMPLES_PER_LINE = 4  # examples side by side in the PNG grid (two panels each)
MAX_TEXT = 32  # string columns longer than this are cut in the table


# ------------------------------------------------------------------ the record
def _describe(task: str, model: str, method: str, seed: int, profile: str) -> str:
    return f"{task}/{model}/{method} seed {seed} ({profile} profile)"


def load_cell(store: Store, task: Task, model: str, method: str, seed: int, profile: str) -> RunRecord:
    """The cell's successful record with its rows attached (see the module docstring for variants)."""
    name, _, prefix = method.partition("@")
    what = _describe(task.spec.name, model, method, seed, profile)
    recs = [r for r in store.records(task=task.spec.name, model=model, method=name, seed=seed, profile=profile,
                                     rows=True) if r.key.method_config_hash.startswith(prefix)]
    if not recs:
        failed = [r for r in store.records(task=task.spec.name, model=model, method=name, seed=seed,
                                           profile=profile, status="failed")
                  if r.key.method_config_hash.startswith(prefix)]
        if failed:
            err = (failed[0].error or "no error recorded").splitlines()[0]
            raise BenchError(f"the cell {what} failed in {str(store.path)!r} ({err}); nothing to inspect")
        other = sorted({f"seed {r.key.seed} ({r.key.profile})" for r in store.records(
            task=task.spec.name, model=model, method=name)})
        hint = f"; the store has {', '.join(other)}" if other else ""
        raise BenchError(f"no record of {what} in {str(store.path)!r}{hint}")
    if len(recs) > 1:  # several task versions or method configurations: prefer the current and default ones
        current = [r for r in recs if r.key.task_version == task.spec.version]
        recs = current or recs
        if len({r.key.method_config_hash for r in recs}) > 1:
            from bench.harness.runner import make_method

            default = config_hash(make_method(name).config_dict())
            chosen = [r for r in recs if r.key.method_config_hash == default]
            if not chosen:
                variants = ", ".join(sorted({f"{name}@{r.key.method_config_hash[:6]}" for r in recs}))
                raise BenchError(f"the store holds several configurations of {what}: pick one with "
                                 f"--method ({variants})")
            recs = chosen
        recs = sorted(recs, key=lambda r: r.created_at)  # still several (data files): the latest
    rec = recs[-1]
    if rec.rows is None:
        raise BenchError(f"the record of {what} in {str(store.path)!r} was stored without per-example rows; "
                         f"re-run the cell with --force")
    return rec


def worst_rows(quality: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` rows of lowest quality (NaN left out; ties in row order)."""
    q = np.asarray(quality, dtype=np.float64)
    ranked = np.flatnonzero(~np.isnan(q))
    return ranked[np.argsort(q[ranked], kind="stable")][:k]


def _cell(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[: MAX_TEXT - 1] + "…"
    return value


def table_text(rows: Rows, quality: np.ndarray, picked: np.ndarray) -> str:
    """The plain-text table of the picked rows: rank, example, hash, quality, then the other columns."""
    from tabulate import tabulate

    others = [c for c in rows if c not in ("example", "hash", "quality")]
    headers = ["rank", "example", "hash", "quality", *others]
    body = [[rank, rows["example"][i], rows["hash"][i], float(quality[i]),
             *(_cell(rows[c][i]) for c in others)] for rank, i in enumerate(picked, 1)]
    # text columns stay text (a hex hash such as "12e4..." would otherwise be read as a number)
    text = [j for j, c in enumerate(headers) if c in ("example", "hash") or (c in rows and rows[c].dtype == object)]
    return tabulate(body, headers=headers, floatfmt=".4g", disable_numparse=text)


def summary_line(task: Task, rec: RunRecord, quality: np.ndarray, picked: np.ndarray) -> str:
    k = rec.key
    n = len(quality)
    ok = ~np.isnan(quality)
    head = (f"{k.task} v{k.task_version} / {k.model} / {k.method} (config {k.method_config_hash[:6]}) seed {k.seed} "
            f"({k.profile} profile): {n} rows")
    if not ok.all():
        head += f", {int(ok.sum())} ranked ({int((~ok).sum())} say nothing about the method)"
    source = (task.spec.main_score if type(task).example_quality is Task.example_quality
              else "the task's example quality")
    worst = float(quality[picked[0]])
    at_worst = int((quality[ok] == worst).sum())
    return (f"{head}; the {len(picked)} lowest by quality ({source}, higher = better); {at_worst} "
            f"row{'s' if at_worst != 1 else ''} at the worst value {worst:.4g}"
            + (" (ties shown in row order)" if at_worst > len(picked) else ""))


# ------------------------------------------------------------------ attribution grid
def _row_index(example: str) -> int:
    head = str(example).split(":", 1)[0]
    if not head.isdigit():
        raise BenchError(f"row example {example!r} does not start with its index (\"0003:hash\")")
    return int(head)


def attribution_grid(rec: RunRecord, picked: np.ndarray, quality: np.ndarray) -> bytes:
    """PNG bytes of the picked rows' scenes and the method's maps (see the module docstring)."""
    import torch

    from bench.model import DiffusionModel
    from bench.harness.runner import DTYPES, load_model, make_method, make_task
    from leaderboard.gallery import mpl_text, new_figure, png_bytes
    from tasks.attribution import AttributionTask, mass_in_mask, pointing_game, upsample_to

    key, rows = rec.key, rec.rows
    assert rows is not None
    what = _describe(key.task, key.model, key.method, key.seed, key.profile)
    data = [(d["kind"], d["path"]) for d in rec.provenance.get("data", [])]
    task = cast(AttributionTask, make_task(key.task, data))  # GRID_TASKS: attribution only
    if task.spec.version != key.task_version:
        raise BenchError(f"the record of {what} was made by task version {key.task_version}, this code builds "
                         f"{task.spec.version}: re-run the cell with --force to inspect it")
    model = load_model(key.model)
    if rec.model_hash and model.weights_hash != rec.model_hash:
        raise BenchError(f"the weights of {key.model!r} changed since the record of {what} was made: re-run the "
                         f"cell with --force to inspect it")
    method = make_method(key.method)
    if config_hash(method.config_dict()) != key.method_config_hash:
        method = make_method(key.method, tuple(rec.method_config.items()))
        if config_hash(method.config_dict()) != key.method_config_hash:
            raise BenchError(f"cannot rebuild the configuration of {what} ({key.method_config_hash[:6]}) from "
                             f"its record")
    cfg = task.config
    quick = key.profile == "quick"
    n = cfg.n_examples if not quick else (
        cfg.quick_diffusion_examples if isinstance(model, DiffusionModel) else cfg.quick_examples)

    default_batch = model.batch_size
    model.batch_size = rec.batch_size or default_batch  # as the cell ran (the model object is shared)
    try:
        torch.manual_seed(key.seed)
        with torch.autocast("cpu", dtype=DTYPES.get(rec.dtype, torch.float32), enabled=rec.dtype != "float32"):
            ex = task.examples(model, key.seed, n)
            stored = [str(h) for h in rows["hash"]]
            idx = [_row_index(e) for e in rows["example"]]
            if len(ex.hashes) != len(stored) or any(ex.hashes[i] != h for i, h in zip(idx, stored)):
                raise BenchError(f"the examples rebuilt for {what} differ from the record's (the code or the "
                                 f"weights changed since): re-run the cell with --force to inspect it")
            req = task.request(model, ex, key.seed)
            torch.manual_seed(key.seed)
            maps = task.maps_for(method, model, req, ex, key.seed)
    finally:
        model.batch_size = default_batch
    size = ex.pixels_BCHW.shape[-1]
    px = upsample_to(maps, size)
    sel = [idx[int(r)] for r in picked]
    # the maps are recomputed: say so when they no longer score what the record stored
    pg = pointing_game(px[sel], ex.masks_BHW[sel]).double().numpy()
    mm = mass_in_mask(px[sel], ex.masks_BHW[sel]).double().numpy()
    drift = max(float(np.nanmax(np.abs(pg - rows["pointing_game"][picked]))),
                float(np.nanmax(np.abs(mm - rows["mass_in_mask"][picked]))))
    if drift > 1e-4:
        print(f"warning: the recomputed maps of {what} score up to {drift:.3g} away from the stored rows "
              f"(the titles show the stored values)", file=sys.stderr)

    per_line = min(EXAMPLES_PER_LINE, len(sel))
    lines = math.ceil(len(sel) / per_line)
    fig = new_figure(3.4 * per_line + 0.2, 2.0 * lines + 0.5)
    axes = fig.subplots(lines, 2 * per_line, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_axis_off()
    for rank, (r, i) in enumerate(zip(picked, sel), 1):
        a, b = axes[(rank - 1) // per_line][2 * ((rank - 1) % per_line)], \
            axes[(rank - 1) // per_line][2 * ((rank - 1) % per_line) + 1]
        img = ex.pixels_BCHW[i].permute(1, 2, 0).float().numpy()
        mask = ex.masks_BHW[i].numpy().astype(float)
        a.set_axis_on()
        a.imshow(img, interpolation="nearest")
        a.contour(mask, levels=[0.5], colors="white", linewidths=1.0)
        a.set_title(mpl_text(f"#{rank} {rows['example'][r][:12]}…\n{ex.captions[i]}"), fontsize=7)
        m = px[i].clamp(min=0).numpy()
        top = float(m.max())
        b.set_axis_on()
        b.imshow(img.mean(-1), cmap="gray", interpolation="nearest")
        b.imshow(m / top if top > 0 else m, cmap="inferno", alpha=0.65, vmin=0.0, vmax=1.0,
                 interpolation="nearest")
        b.contour(mask, levels=[0.5], colors="cyan", linewidths=0.6)
        b.set_title(mpl_text(f"pointing {rows['pointing_game'][r]:.3g}\nmass in mask "
                             f"{rows['mass_in_mask'][r]:.3g}"), fontsize=7)
    fig.suptitle(mpl_text(f"{key.task} v{key.task_version} / {key.model} / {key.method} seed {key.seed} "
                          f"({key.profile}): the {len(sel)} worst of {len(quality)} examples"), fontsize=9)
    return png_bytes(fig)


# ------------------------------------------------------------------ the command
def inspect_cell(store: Store, task: str, model: str, method: str, seed: int = 0, profile: str = "full",
                 k: int = 8, out: str | Path | None = None) -> int:
    """Print the cell's ``k`` worst rows (and, with ``out``, draw them); returns the exit code 0."""
    from bench.harness.runner import make_task

    if k < 1:
        raise BenchError(f"-k must be a positive number of examples, got {k}")
    t = make_task(task)  # "did you mean" for an unknown task
    if out is not None:
        if t.spec.name not in GRID_TASKS:
            raise BenchError(f"the PNG grid (--out) exists for {', '.join(GRID_TASKS)} only, not {task!r}; "
                             f"leave --out out for the table")
        if not Path(out).expanduser().resolve().parent.is_dir():
            raise BenchError(f"cannot write {str(out)!r}: its folder does not exist")
    rec = load_cell(store, t, model, method, seed, profile)
    rows = rec.rows
    assert rows is not None
    quality = np.asarray(t.example_quality(rows), dtype=np.float64)
    if quality.shape != (len(rows["example"]),):
        raise BenchError(f"task {task!r} gave {quality.shape} example qualities for {len(rows['example'])} rows")
    picked = worst_rows(quality, k)
    if not len(picked):
        raise BenchError(f"no row of {_describe(task, model, method, seed, profile)} says how the method did "
                         f"(every example quality is NaN)")
    print(table_text(rows, quality, picked))
    print(summary_line(t, rec, quality, picked))
    if out is not None:
        png = attribution_grid(rec, picked, quality)
        Path(out).expanduser().write_bytes(png)
        print(f"wrote {len(picked)} examples to {out}", file=sys.stderr)
    return 0
