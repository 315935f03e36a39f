"""``bench perf``: the harness's own speed, as ratios against baselines measured in the same run.

Every figure is a ratio of two timings taken in one process, interleaved (baseline, candidate,
candidate, baseline, …: ``repeats`` rounds in alternating order, so a slow drift of the machine
cancels), each timing long enough (``min_s``) to dwarf the timer; the reported ratio is the
median over rounds of the per-round ratio, with the 25th–75th percentile range as its spread. A
noisy machine moves the timings, not (much) the ratios. Past ``max_s`` (20 s) a measurement
stops adding rounds once it has three, so a slow machine gets fewer rounds rather than a longer
run (each row records its ``rounds``). Torch runs on ``threads`` threads (1 by default, as every
cell does: :func:`bench.harness.runner.run_cell`).

Sizes (full / ``--quick``): 5 / 3 rounds (the trace measurements: three times the rounds, each
twice as long); batch sizes :data:`BATCH_SIZES` / :data:`QUICK_BATCH_SIZES`; the sweep on 4 /
2 examples over every sweepable site / the first 16 (diffusion: half the examples); scoring on 4 /
1 examples (diffusion: a quarter). ``--quick`` measures zoo-clip and one cell
(``attribution/zoo-clip/random``) in about half a minute.

**Units.** Each model's forward work is split into *units*, the modules whose calls are counted as
rows (the model's top modules, hooked by :class:`RowCounter`): ``image`` / ``text`` (a CLIP's
towers), ``lm`` (a LLaVA's full forward over image and prompt) and ``decode`` (one generation step
with the key/value cache), ``unet`` / ``text`` / ``vae_encode`` / ``vae_decode`` (diffusion). A
*row* is one batch row through a unit. Each unit has a *plain forward*: the family operation with
no trace (``encode_image``, ``encode_text``, ``forward_tokens``, ``noise_pred`` on pre-encoded
prompts, ``encode_prompts``, ``to_sample``, ``to_pixels``) on ``b`` rows.

Measurements (per model; the names are :data:`MEASUREMENTS`):

- ``throughput`` — rows/s of each unit's plain forward at batch sizes :data:`BATCH_SIZES`; the
  *best batch size* is the one with the highest median throughput, and ``cost per row`` is the
  inverse of that throughput. Forward+backward (gradient to the unit's float input, or to its
  parameters for a token-input unit) is timed at the best batch size; its excess over the
  forward is the backward cost per row. ``decode``: a ``generate`` call at the best ``lm`` batch
  size, less its prefill rows at the ``lm`` cost, per decode row.
- ``trace: empty`` — ``with model.trace(): f()`` against ``f()``, where ``f`` is the forward that
  reaches every site (``similarity`` of images and captions, ``forward_tokens``, ``noise_pred`` on
  prompt strings), at batch 1 (where a fixed cost weighs most). Ratio = time / plain time; goal ≤ 1.05.
- ``trace: read every site`` — the same forward reading every site of the model. Ratio = time /
  plain time; the goal is on the fixed cost per read site, (traced − plain) / sites: < 50 µs.
- ``sweep vs plain batched forward`` — :meth:`bench.capabilities.LocalizeRequest.patch_sweep`
  (what ``activation_patching`` and ``causal_tracing`` call; 8 sites per pass) over every writable
  site of the patched stream (each site whose activation has one row per example in the
  localization task's ``evaluate``: a CLIP's image tower, a LLaVA's towers, a diffusion text
  encoder) on ``n`` examples, against the same ``evaluate`` passes with no trace at all (same
  rows, same pass sizes). Ratio = sweep rows/s ÷ plain rows/s; goal ≥ 0.8.
- ``sweep vs per-site loop`` — the same sweep against a Python loop of single forward passes,
  one site and one example per pass (what the design forbids), timed on one example.
  Ratio = sweep rows/s ÷ loop rows/s; goal ≥ 10.
- ``scoring: score_all`` — the deletion/insertion scoring of the attribution task
  (:meth:`tasks.attribution.AttributionTask.score` on random maps), the time spent inside
  :meth:`bench.capabilities.AttributionRequest.score_all`, against the plain forward of the same
  rows at the unit's best batch size (a diffusion row is 4 prompts × 2 draws denoiser rows, on
  pre-encoded prompts). Ratio = throughput ÷ plain throughput; goal ≥ 0.8.
- ``scoring: AttributionTask.score`` — the whole scoring call (perturbed images, ROAD's
  imputation, curves) against the same plain forward. Ratio and goal as above.
- ``efficiency`` (per cell) — a real cell (:func:`bench.harness.runner.run_cell`, quick profile, seed 0)
  with its rows counted per unit: its *roofline* is Σ over units of forward rows × forward cost
  per row + backward rows × backward cost per row (+ decode rows × decode cost), the least time
  the forward/backward work it does could take at the best batch sizes; efficiency = roofline ÷
  the cell's ``run_s``, each cost the least of the ladder's and the same re-timed just before and
  after the cell (:func:`measure_cell`: load only slows a timing). What the roofline leaves out
  (world rendering, imputation, metrics, probes and SAEs fitted outside the model, the diffusion
  judge) is exactly what an efficiency below 1 points at. A pass cut short by
  ``stop_after_reads`` counts as a full row (an upper bound of its work), and a backward through
  it is not counted; a backward row is costed as a
  full-depth backward (to the unit's input), so a cell whose backward stops early (localization's
  and editing's one-layer fine-tunes) can read above 1, as noise can. Cells run with the on-disk
  caches off (``MMI_BENCH_CACHE=off``: the work itself, not what an earlier run left), in plan
  order in one process, so work the cells of a (task, model) share in memory (diffusion samples,
  generated captions, localization's edits) lands on the first of them. The work list: the five
  lowest efficiencies among cells at least 1 s over their roofline.

Default cells (:data:`DEFAULT_METHODS`): per compatible (task, model), the ``random`` reference and
one representative method per task, except where that method's cell takes over a minute
(:data:`SLOW_DEFAULTS`: diffusion attribution and editing keep only ``random``): 22 cells on the
zoo, about 10 minutes with the measurements on a 2-core machine. With ``--hf`` the tiny
checkpoints add theirs (less :data:`TINY_SKIP`, which random weights cannot run). ``--cells all``
runs every compatible cell (long: the quick grid is about half an hour), ``--cells none`` none,
``--cells TASK/MODEL/METHOD`` one (repeatable).
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Mapping, Sequence, cast

from bench.errors import BenchError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from bench.capabilities import LocalizeRequest
    from bench.model import Model, TokenLayout

ZOO_MODELS: tuple[str, ...] = ("zoo-clip", "zoo-clip-spurious", "zoo-vlm", "zoo-diffusion")
BATCH_SIZES: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256)
QUICK_BATCH_SIZES: tuple[int, ...] = (1, 8, 32)
MEASUREMENTS: tuple[str, ...] = (
    "trace: empty", "trace: read every site", "sweep vs plain batched forward", "sweep vs per-site loop",
    "scoring: score_all", "scoring: AttributionTask.score")
GOALS: dict[str, str] = {
    "trace: empty": "≤ 1.05×",
    "trace: read every site": "< 50 µs/site",
    "sweep vs plain batched forward": "≥ 0.8×",
    "sweep vs per-site loop": "≥ 10×",
    "scoring: score_all": "≥ 0.8×",
    "scoring: AttributionTask.score": "≥ 0.8×",
}
# one representative method per task for the default cells (beside the ``random`` reference)
DEFAULT_METHODS: dict[str, tuple[str, ...]] = {
    "attribution": ("saliency",), "localization": ("activation_patching",), "hallucination": ("entropy",),
    "editing": ("steering",), "spurious": ("leace",)}
# (task, family) pairs whose method cells take over a minute each in the quick profile (diffusion
# attribution scores every perturbed image through the denoiser; diffusion editing samples): the
# default runs only their ``random`` cell
SLOW_DEFAULTS: frozenset[tuple[str, str]] = frozenset({("attribution", "diffusion"), ("editing", "diffusion")})
# (task, family) pairs the tiny random hf: checkpoints cannot run (see run_perf)
TINY_SKIP: frozenset[tuple[str, str]] = frozenset({("attribution", "diffusion"), ("hallucination", "generative")})
SITES_PER_PASS = 8  # activation_patching's and causal_tracing's default
WORK_LIST = 5
WORK_LIST_MIN_EXCESS_S = 1.0


# ------------------------------------------------------------------ records
@dataclass
class Settings:
    """How a run was made (what the ratios depend on besides the code)."""

    models: list[str]
    threads: int
    repeats: int
    quick: bool
    min_s: float
    max_s: float
    batch_sizes: list[int]
    sweep_examples: int
    sweep_sites: int | None
    scoring_examples: int
    cells: list[str]
    torch: str = ""
    started: str = ""


@dataclass
class Measurement:
    """One ratio: ``candidate`` against ``baseline`` (each a median time or throughput in ``unit``)."""

    model: str
    measurement: str
    baseline: str  # what the baseline is
    baseline_value: float
    candidate: str
    candidate_value: float
    unit: str  # "ms" or "rows/s"
    ratio: float  # median over rounds of the per-round ratio
    ratio_lo: float  # 25th percentile
    ratio_hi: float  # 75th percentile
    goal: str
    met: bool | None
    value: float | None = None  # the figure the goal is on when it is not the ratio (µs per site)
    rounds: int = 0  # interleaved rounds the ratio is the median of
    note: str = ""

    def row(self) -> list[str]:
        fig = f"{self.ratio:.2f}× ({self.ratio_lo:.2f}–{self.ratio_hi:.2f}, {self.rounds} r)"
        if self.value is not None:
            fig += f"; {self.value:.1f} µs/site"
        met = "—" if self.met is None else ("met" if self.met else "**missed**")
        return [self.model, self.measurement, f"{self.baseline}: {_fmt(self.baseline_value)} {self.unit}",
                f"{self.candidate}: {_fmt(self.candidate_value)} {self.unit}", fig, self.goal, met]


@dataclass
class UnitCost:
    """A unit's plain forward: throughput per batch size (median rows/s and its spread), the best
    batch size, and the costs per row there (seconds)."""

    unit: str
    throughput: dict[int, float]
    spread: dict[int, tuple[float, float]]
    best_batch: int
    forward_s: float
    backward_s: float | None = None


@dataclass
class CellEfficiency:
    """One cell's time against its roofline (see the module docstring)."""

    task: str
    model: str
    method: str
    status: str
    run_s: float
    forward_rows: dict[str, int] = field(default_factory=dict)
    backward_rows: dict[str, int] = field(default_factory=dict)
    partial_rows: dict[str, int] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)  # forward seconds per row the roofline used
    roofline_s: float = float("nan")
    efficiency: float = float("nan")
    error: str = ""

    @property
    def label(self) -> str:
        return f"{self.task}/{self.model}/{self.method}"

    @property
    def excess_s(self) -> float:
        """Seconds beyond the roofline (NaN for a failed cell)."""
        return self.run_s - self.roofline_s


@dataclass
class PerfReport:
    settings: Settings
    measurements: list[Measurement] = field(default_factory=list)
    units: dict[str, list[UnitCost]] = field(default_factory=dict)  # model -> its units
    families: dict[str, str] = field(default_factory=dict)
    cells: list[CellEfficiency] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def work_list(self, k: int = WORK_LIST) -> list[CellEfficiency]:
        """The ``k`` lowest efficiencies among the cells that spend at least
        :data:`WORK_LIST_MIN_EXCESS_S` beyond their roofline (below that a ratio is noise)."""
        done = [c for c in self.cells if math.isfinite(c.efficiency) and c.excess_s >= WORK_LIST_MIN_EXCESS_S]
        return sorted(done, key=lambda c: c.efficiency)[:k]

    def to_json(self) -> dict[str, Any]:
        def clean(x: Any) -> Any:
            if isinstance(x, float):
                return x if math.isfinite(x) else None
            if isinstance(x, dict):
                return {str(k): clean(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [clean(v) for v in x]
            return x

        return clean({
            "settings": asdict(self.settings),
            "measurements": [asdict(m) for m in self.measurements],
            "models": {name: {"family": self.families.get(name, ""),
                              "units": {u.unit: asdict(u) for u in units},
                              "best_batch": {u.unit: u.best_batch for u in units}}
                       for name, units in self.units.items()},
            "cells": [asdict(c) | {"label": c.label, "excess_s": c.excess_s} for c in self.cells],
            "work_list": [c.label for c in self.work_list()],
            "errors": list(self.errors),
        })

    def to_markdown(self) -> str:
        s = self.settings
        out = [f"# bench perf ({'quick' if s.quick else 'full'}; {s.threads} thread(s); ratio: median over "
               f"interleaved rounds (r), 25th–75th percentile in brackets; torch {s.torch})", ""]
        out += _table(["model", "measurement", "baseline", "candidate", "ratio (IQR)", "goal", "met"],
                      [m.row() for m in self.measurements])
        sizes = s.batch_sizes
        out += ["", "## Plain forward throughput (rows/s) by batch size", ""]
        rows = []
        for name, units in self.units.items():
            for u in units:
                if u.throughput:
                    rows.append([name, u.unit, *[_fmt(u.throughput.get(b, float("nan"))) for b in sizes],
                                 str(u.best_batch), f"{u.forward_s * 1e3:.3f}",
                                 "—" if u.backward_s is None else f"{u.backward_s * 1e3:.3f}"])
                else:
                    rows.append([name, u.unit, *["—"] * len(sizes), str(u.best_batch),
                                 f"{u.forward_s * 1e3:.3f}", "—"])
        out += _table(["model", "unit", *map(str, sizes), "best", "fwd ms/row", "bwd ms/row"], rows)
        if self.cells:
            out += ["", "## Cell efficiency (roofline ÷ run_s)", ""]
            crow = []
            for c in self.cells:
                rows_txt = ", ".join(f"{u} {n}" + (f"+{c.backward_rows[u]}b" if c.backward_rows.get(u) else "")
                                     for u, n in c.forward_rows.items() if n)
                crow.append([c.task, c.model, c.method, c.status, f"{c.run_s:.2f}", rows_txt or "—",
                             _fmt(c.roofline_s, 3), _fmt(c.excess_s, 3),
                             "—" if not math.isfinite(c.efficiency) else f"{c.efficiency:.3f}"])
            out += _table(["task", "model", "method", "status", "run_s", "rows (fwd+bwd)", "roofline s", "excess s",
                           "efficiency"], crow)
            work = "; ".join(f"{c.label} {c.efficiency:.3f} ({c.excess_s:.1f} s over)" for c in self.work_list())
            out += ["", f"Work list (lowest efficiency, ≥ {WORK_LIST_MIN_EXCESS_S:g} s over the roofline): "
                    f"{work or '—'}"]
        if self.errors:
            out += ["", "Errors:", *[f"- {e}" for e in self.errors]]
        return "\n".join(out) + "\n"


def _fmt(v: float, digits: int = 4) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    return f"{v:.{max(0, digits - 1 - mag)}f}" if mag < digits else f"{v:.0f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


# ------------------------------------------------------------------ timing
def _time_calls(fn: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


@contextmanager
def _quiet_gc() -> Iterator[None]:
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def interleaved(fns: Mapping[str, Callable[[], Any]], repeats: int, min_s: float,
                max_s: float | None = None) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` rounds, in alternating order per round (ABBA).

    Each function is called once to warm up and once to calibrate, then as many times per round
    as make a round last about ``min_s`` (at least once). Past ``max_s`` seconds no new round
    starts once three are done (a slow machine gets fewer rounds, not a longer run)."""
    return _interleaved(fns, repeats, min_s, max_s)[0]


def _interleaved(fns: Mapping[str, Callable[[], Any]], repeats: int, min_s: float, max_s: float | None = None
                 ) -> tuple[dict[str, list[float]], dict[str, int]]:
    """:func:`interleaved`, and the calls per round of each function."""
    keys = list(fns)
    start = time.perf_counter()
    with _quiet_gc():
        inner = {}
        for k in keys:
            fns[k]()
            t = _time_calls(fns[k], 1)
            inner[k] = max(1, min(10_000, math.ceil(min_s / max(t, 1e-7))))
        out: dict[str, list[float]] = {k: [] for k in keys}
        for r in range(repeats):
            if max_s is not None and r >= 3 and time.perf_counter() - start > max_s:
                break
            for k in (keys if r % 2 == 0 else keys[::-1]):
                out[k].append(_time_calls(fns[k], inner[k]))
    return out, inner


def ratio_stats(values: Sequence[float]) -> tuple[float, float, float]:
    """Median and 25th/75th percentiles (linear interpolation) of per-round ratios."""
    v = sorted(values)
    if not v:
        return float("nan"), float("nan"), float("nan")

    def q(p: float) -> float:
        x = p * (len(v) - 1)
        lo = math.floor(x)
        hi = min(lo + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (x - lo)

    return statistics.median(v), q(0.25), q(0.75)


def _ratio(base_s: Sequence[float], cand_s: Sequence[float], faster_is_higher: bool, rows_base: float = 1.0,
           rows_cand: float = 1.0) -> tuple[float, float, float]:
    """Per-round ratios: throughput ratio (``faster_is_higher``) or time ratio, with rows per call."""
    if faster_is_higher:
        per = [(rows_cand / c) / (rows_base / b) for b, c in zip(base_s, cand_s)]
    else:
        per = [c / b for b, c in zip(base_s, cand_s)]
    return ratio_stats(per)


# ------------------------------------------------------------------ units
@dataclass
class Unit:
    """A counted module of a model and its plain forward on ``b`` rows.

    ``plain(b)`` builds a no-argument closure running the plain forward on ``b`` rows (inputs made
    once, outside the timing); ``grad(b)`` one running forward and backward (None: not timed)."""

    name: str
    module: "nn.Module | None"
    plain: Callable[[int], Callable[[], Any]] | None
    grad: Callable[[int], Callable[[], Any]] | None = None


def _rand(shape: Sequence[int], seed: int = 0, normal: bool = False) -> "torch.Tensor":
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=g) if normal else torch.rand(tuple(shape), generator=g)


CAPTIONS = ("a red circle", "a blue square", "a green triangle", "a yellow cross")


def _grad_wrt(fn: Callable[[Any], "torch.Tensor"], x: "torch.Tensor | None", params: Sequence[Any] = ()
              ) -> Callable[[], Any]:
    import torch

    def run() -> Any:
        with torch.enable_grad():
            if x is not None:
                leaf = x.detach().requires_grad_(True)
                return torch.autograd.grad(fn(leaf).float().sum(), [leaf])
            # frozen weights (an EMA copy) are made trainable for the call: their gradient is the work
            frozen = [p for p in params if not p.requires_grad]
            for p in frozen:
                p.requires_grad_(True)
            try:
                return torch.autograd.grad(fn(None).float().sum(), list(params), allow_unused=True)
            finally:
                for p in frozen:
                    p.requires_grad_(False)
    return run


def model_units(model: "Model") -> list[Unit]:
    """The counted units of a built-in wrapper (see the module docstring)."""
    import torch

    from bench.model import ContrastiveModel, DiffusionModel, GenerativeModel

    no_grad = torch.no_grad

    def nograd(f: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with no_grad():
                return f()
        return run

    if isinstance(model, ContrastiveModel) and hasattr(model, "clip"):
        clip, size = model.clip, model.image_size

        def image(b: int) -> Callable[[], Any]:
            x = _rand((b, 3, size, size))
            return nograd(lambda: model.encode_image(x))

        def image_grad(b: int) -> Callable[[], Any]:
            return _grad_wrt(lambda x: model.encode_image(x), _rand((b, 3, size, size)))

        def text(b: int) -> Callable[[], Any]:
            caps = [CAPTIONS[i % len(CAPTIONS)] for i in range(b)]
            return nograd(lambda: model.encode_text(caps))

        def text_grad(b: int) -> Callable[[], Any]:
            caps = [CAPTIONS[i % len(CAPTIONS)] for i in range(b)]
            return _grad_wrt(lambda _: model.encode_text(caps), None, list(clip.text_model.parameters()))

        return [Unit("image", clip.vision_model, image, image_grad), Unit("text", clip.text_model, text, text_grad)]
    if isinstance(model, GenerativeModel) and hasattr(model, "llava"):
        # a generative model has image tokens: its layout is never None
        size = cast("TokenLayout", model.token_layout()).grid[0] * cast("TokenLayout", model.token_layout()).patch_size

        def lm_inputs(b: int) -> tuple[Any, Any, Any]:
            inp = model.answer_inputs(["what colour is the circle?"] * b, ["red"] * b)
            return _rand((b, 3, size, size)), inp.ids_BL, inp.mask_BL

        def lm(b: int) -> Callable[[], Any]:
            x, ids, mask = lm_inputs(b)
            return nograd(lambda: model.forward_tokens(x, ids, mask))

        def lm_grad(b: int) -> Callable[[], Any]:
            x, ids, mask = lm_inputs(b)
            return _grad_wrt(lambda p: model.forward_tokens(p, ids, mask)[:, -1], x)

        return [Unit("lm", model.llava, lm, lm_grad), Unit("decode", None, None)]
    if isinstance(model, DiffusionModel) and hasattr(model, "unet"):
        from bench.model import PromptEncoding

        enc_all: dict[int, PromptEncoding] = {}

        def enc(b: int) -> PromptEncoding:
            if b not in enc_all:
                with no_grad():
                    enc_all[b] = model.encode_prompts([CAPTIONS[i % len(CAPTIONS)] for i in range(b)])
            return enc_all[b]

        t_mid = model.num_train_timesteps // 3

        def unet(b: int) -> Callable[[], Any]:
            x, e = _rand((b, *model.sample_shape), normal=True), enc(b)
            return nograd(lambda: model.noise_pred(x, t_mid, e))

        def unet_grad(b: int) -> Callable[[], Any]:
            e = enc(b)
            return _grad_wrt(lambda x: model.noise_pred(x, t_mid, e), _rand((b, *model.sample_shape), normal=True))

        def text(b: int) -> Callable[[], Any]:
            prompts = [CAPTIONS[i % len(CAPTIONS)] for i in range(b)]
            return nograd(lambda: model.encode_prompts(prompts))

        def text_grad(b: int) -> Callable[[], Any]:
            prompts = [CAPTIONS[i % len(CAPTIONS)] for i in range(b)]
            return _grad_wrt(lambda _: model.encode_prompts(prompts).hidden_BLD, None,
                             list(cast(Any, model).text_encoder.parameters()))

        # text_encoder: the built-in wrappers' module (like unet, not part of the DiffusionModel contract)
        units = [Unit("unet", model.unet, unet, unet_grad),
                 Unit("text", cast(Any, model).text_encoder, text, text_grad)]
        vae = getattr(model, "vae", None)
        if vae is not None:
            size = model.image_size

            def vae_enc(b: int) -> Callable[[], Any]:
                x = _rand((b, 3, size, size))
                return nograd(lambda: model.to_sample(x))

            def vae_enc_grad(b: int) -> Callable[[], Any]:
                return _grad_wrt(model.to_sample, _rand((b, 3, size, size)))

            def vae_dec(b: int) -> Callable[[], Any]:
                x = _rand((b, *model.sample_shape), normal=True)
                return nograd(lambda: model.to_pixels(x))

            def vae_dec_grad(b: int) -> Callable[[], Any]:
                return _grad_wrt(model.to_pixels, _rand((b, *model.sample_shape), normal=True))

            units += [Unit("vae_encode", vae.encoder, vae_enc, vae_enc_grad),
                      Unit("vae_decode", vae.decoder, vae_dec, vae_dec_grad)]
        return units
    raise BenchError(f"bench perf measures the built-in wrappers (CLIP/SigLIP, LLaVA, diffusers UNet); "
                     f"{model.name!r} is a {type(model).__name__}")


def site_forward(model: "Model", b: int) -> Callable[[], Any]:
    """The plain forward that reaches every site of the model, on ``b`` rows (trace overhead)."""
    import torch

    from bench.model import ContrastiveModel, DiffusionModel, GenerativeModel

    if isinstance(model, ContrastiveModel):
        x, caps = _rand((b, 3, model.image_size, model.image_size)), [CAPTIONS[i % 4] for i in range(b)]
        f: Callable[[], Any] = lambda: model.similarity(x, caps)  # noqa: E731
    elif isinstance(model, GenerativeModel):
        lay = cast("TokenLayout", model.token_layout())  # a generative model's: never None
        x = _rand((b, 3, lay.grid[0] * lay.patch_size, lay.grid[1] * lay.patch_size))
        inp = model.answer_inputs(["what colour is the circle?"] * b, ["red"] * b)
        f = lambda: model.forward_tokens(x, inp.ids_BL, inp.mask_BL)  # noqa: E731
    elif isinstance(model, DiffusionModel):
        x, prompts = _rand((b, *model.sample_shape), normal=True), [CAPTIONS[i % 4] for i in range(b)]
        t = model.num_train_timesteps // 3
        f = lambda: model.noise_pred(x, t, prompts)  # noqa: E731
    else:
        raise BenchError(f"bench perf has no forward for a {model.family} model")

    def run() -> Any:
        with torch.no_grad():
            return f()
    return run


# ------------------------------------------------------------------ row counting
def _first_tensor(args: Sequence[Any], kwargs: Mapping[str, Any]) -> "torch.Tensor | None":
    import torch

    for key in ("input_ids", "pixel_values", "sample", "x"):
        v = kwargs.get(key)
        if isinstance(v, torch.Tensor):
            return v
    for v in [*args, *kwargs.values()]:
        if isinstance(v, torch.Tensor):
            return v
    return None


def _output_tensor(out: Any) -> "torch.Tensor | None":
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((o for o in out if isinstance(o, torch.Tensor)), None)
    for name in ("logits", "last_hidden_state", "sample", "latent_dist"):
        v = getattr(out, name, None)
        if isinstance(v, torch.Tensor):
            return v
    return None


class RowCounter:
    """Counts rows through a model's units while attached: forward rows (a pre-hook: every pass
    that starts), rows of passes that finished (a forward hook), and backward rows (a gradient
    hook on the unit's output). A LLaVA pass over one new token is a ``decode`` row. Copies made
    by ``model.randomized`` while attached are counted too (the attribution sanity check)."""

    def __init__(self) -> None:
        self.forward: dict[str, int] = {}
        self.finished: dict[str, int] = {}
        self.backward: dict[str, int] = {}
        self._handles: list[Any] = []

    def _add(self, table: dict[str, int], unit: str, n: int) -> None:
        table[unit] = table.get(unit, 0) + n

    def _hook(self, unit: str, module: "nn.Module", decode: bool) -> None:
        def pre(mod: Any, args: tuple, kwargs: dict) -> None:
            x = _first_tensor(args, kwargs)
            if x is None:
                return
            name = "decode" if decode and x.dim() >= 2 and x.shape[1] == 1 else unit
            self._add(self.forward, name, int(x.shape[0]))

        def post(mod: Any, args: tuple, kwargs: dict, out: Any) -> None:
            x = _first_tensor(args, kwargs)
            if x is None:
                return
            name = "decode" if decode and x.dim() >= 2 and x.shape[1] == 1 else unit
            rows = int(x.shape[0])
            self._add(self.finished, name, rows)
            y = _output_tensor(out)
            if y is not None and y.requires_grad:
                y.register_hook(lambda g, name=name, rows=rows: self._add(self.backward, name, rows))

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(post, with_kwargs=True))

    def attach(self, model: "Model") -> None:
        from bench.model import GenerativeModel

        for u in model_units(model):
            if u.module is not None:
                self._hook(u.name, u.module, decode=isinstance(model, GenerativeModel))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def partial(self) -> dict[str, int]:
        return {u: n - self.finished.get(u, 0) for u, n in self.forward.items() if n - self.finished.get(u, 0)}

    @contextmanager
    def counting(self, model: "Model") -> Iterator["RowCounter"]:
        self.attach(model)
        original = model.randomized

        def randomized(seed: int) -> "Model":
            copy = original(seed)
            self.attach(copy)
            return copy

        model.randomized = randomized  # type: ignore[method-assign]
        try:
            yield self
        finally:
            del model.randomized  # the instance attribute: the class's method again
            self.detach()


# ------------------------------------------------------------------ measurements
class _NoTrace:
    """What ``model.trace`` returns in the plain baselines: a context that does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> Literal[False]:
        return False


@contextmanager
def untraced(model: "Model") -> Iterator[None]:
    """``model.trace`` replaced by a no-op context (the plain baseline of the same closures)."""
    model.trace = _NoTrace  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        del model.trace


def _measure(model: str, name: str, base_label: str, cand_label: str, base: Callable[[], Any],
             cand: Callable[[], Any], cfg: "Config", throughput: bool, rows_base: float = 1.0,
             rows_cand: float = 1.0, note: str = "", repeats: int | None = None, min_s: float | None = None
             ) -> tuple[Measurement, dict[str, list[float]]]:
    t = interleaved({"base": base, "cand": cand}, repeats or cfg.repeats, min_s or cfg.min_s, cfg.max_s)
    r, lo, hi = _ratio(t["base"], t["cand"], throughput, rows_base, rows_cand)
    bm, cm = statistics.median(t["base"]), statistics.median(t["cand"])
    if throughput:
        bv, cv, unit = rows_base / bm, rows_cand / cm, "rows/s"
    else:
        bv, cv, unit = bm * 1e3, cm * 1e3, "ms"
    return Measurement(model, name, base_label, bv, cand_label, cv, unit, r, lo, hi, GOALS[name], None,
                       rounds=len(t["base"]), note=note), t


@dataclass(frozen=True)
class Config:
    """The sizes of one run (``--quick`` shrinks them)."""

    repeats: int = 5
    min_s: float = 0.05
    max_s: float = 20.0  # no new round past this (once three are done)
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    sweep_examples: int = 4
    sweep_sites: int | None = None  # at most this many sites in the sweep (None: all)
    scoring_examples: int = 4
    threads: int = 1
    quick: bool = False


def measure_units(model: "Model", cfg: Config) -> list[UnitCost]:
    """Throughput ladder of every unit, best batch sizes and costs per row (module docstring)."""
    from bench.model import GenerativeModel

    out: list[UnitCost] = []
    units = model_units(model)
    for u in units:
        if u.plain is None:
            continue
        fns = {str(b): u.plain(b) for b in cfg.batch_sizes}
        t = interleaved(fns, cfg.repeats, cfg.min_s, cfg.max_s)
        tp = {b: statistics.median([b / s for s in t[str(b)]]) for b in cfg.batch_sizes}
        spread = {b: ratio_stats([b / s for s in t[str(b)]])[1:] for b in cfg.batch_sizes}
        best = max(tp, key=lambda b: tp[b])
        cost = UnitCost(u.name, tp, spread, best, 1.0 / tp[best])
        if u.grad is not None:
            try:
                tg = interleaved({"fb": u.grad(best)}, cfg.repeats, cfg.min_s, cfg.max_s)
                cost.backward_s = max(0.0, statistics.median(tg["fb"]) / best - cost.forward_s)
            except RuntimeError:  # nothing to differentiate: the roofline takes twice the forward
                cost.backward_s = None
        out.append(cost)
    if isinstance(model, GenerativeModel):
        out.append(_decode_cost(model, out[0], cfg))
    return out


def _decode_cost(model: Any, lm: UnitCost, cfg: Config) -> UnitCost:
    """Seconds per decode row: a ``generate`` call at the ``lm`` best batch size, less its prefill."""
    import torch

    b = lm.best_batch
    lay = model.token_layout()
    x = _rand((b, 3, lay.grid[0] * lay.patch_size, lay.grid[1] * lay.patch_size))
    prompts = ["describe the image."] * b
    counter = RowCounter()
    with counter.counting(model), torch.no_grad():
        model.generate(x, prompts, max_new_tokens=8)
    prefill, decode = counter.forward.get("lm", 0), counter.forward.get("decode", 0)
    t = interleaved({"gen": lambda: model.generate(x, prompts, max_new_tokens=8)}, cfg.repeats, cfg.min_s, cfg.max_s)
    per = (statistics.median(t["gen"]) - prefill * lm.forward_s) / max(1, decode)
    return UnitCost("decode", {}, {}, b, max(per, 0.0))


def measure_trace(model: "Model", cfg: Config) -> list[Measurement]:
    """``trace: empty`` and ``trace: read every site`` (module docstring)."""
    names = [s.name for s in model.sites()]
    f = site_forward(model, 1)

    def empty() -> Any:
        with model.trace():
            return f()

    def read_all() -> Any:
        with model.trace(read=names):
            return f()

    # cheap and small effects: three times the rounds, each twice as long
    more: dict[str, Any] = dict(repeats=3 * cfg.repeats, min_s=2 * cfg.min_s)
    m1, _ = _measure(model.name, "trace: empty", "plain forward (batch 1)", "empty trace", f, empty, cfg, False,
                     **more)
    m1.met = m1.ratio <= 1.05
    m2, t = _measure(model.name, "trace: read every site", "plain forward (batch 1)", f"reading {len(names)} sites",
                     f, read_all, cfg, False, **more)
    per_site = [(c - b) / len(names) * 1e6 for b, c in zip(t["base"], t["cand"])]
    m2.value = statistics.median(per_site)
    m2.met = m2.value < 50
    q = ratio_stats(per_site)
    m2.note = f"per-site cost IQR {q[1]:.1f}–{q[2]:.1f} µs over {len(names)} sites"
    return [m1, m2]


@contextmanager
def _planted(model: "Model") -> Iterator[None]:
    """Give a model without planted facts a stand-in relation for the duration (the sweep's inputs
    only need a question and values; its figures are timings)."""
    if model.planted:
        yield
        return
    from bench.model import PlantedRelation
    from bench.kit.world import World
    from bench.kit.world.core import RELATIONS

    names = tuple(e.name for e in World(0).entities[:32])
    tower, question, renders = {
        "contrastive": ("vision", "the home of the glyph is {value}", ()),
        "generative": ("lm", "what is the home of the glyph?", ()),
        "diffusion": ("text", "a {entity}", (("north", "circle"), ("south", "square"), ("east", "triangle"),
                                             ("west", "cross"))),
    }[model.family]
    site = model.layer_site_at(tower, "mlp", 0)
    model.planted = [PlantedRelation("home", site, names, 0, 32, question, RELATIONS["home"], renders)]
    try:
        yield
    finally:
        model.planted = []


def sweep_request(model: "Model", n: int, sites: Sequence[str] | None = None) -> tuple["LocalizeRequest", list[str]]:
    """The localization task's request on ``n`` examples over the sweepable sites (writable, one row
    per example in ``evaluate``), or over ``sites``."""
    import torch

    from bench.harness.runner import make_task

    task: Any = make_task("localization")  # through the registry (the harness imports no task module)
    ex = task.examples(model, n, 0, "test")
    if sites is None:
        req = task.request(model, ex, [])
        with torch.no_grad():
            _, tr = req.evaluate("corrupt", read=[s.name for s in model.sites()])
        sites = [s for s, v in tr.values.items() if v and len(v) == 1 and v[0].shape[0] == n
                 and not model.site_specs[s].read_only]
    return task.request(model, ex, list(sites)), list(sites)


def measure_sweep(model: "Model", cfg: Config) -> list[Measurement]:
    """``sweep vs plain batched forward`` and ``sweep vs per-site loop`` (module docstring)."""
    import torch

    from bench.sites import replace_rows

    # a diffusion row runs the denoiser 2 renders × 2 draws times: half the examples
    n = max(1, cfg.sweep_examples // 2) if model.family == "diffusion" else cfg.sweep_examples
    with _planted(model):
        req, sites = sweep_request(model, n)
        if cfg.sweep_sites is not None and len(sites) > cfg.sweep_sites:
            req, sites = sweep_request(model, n, sites[: cfg.sweep_sites])
        with torch.no_grad():
            _, corrupt = req.evaluate("corrupt", read=sites)
        sources = {s: corrupt[s] for s in sites}
        groups = [sites[g : g + SITES_PER_PASS] for g in range(0, len(sites), SITES_PER_PASS)]

        def sweep() -> Any:
            with torch.no_grad():
                return req.patch_sweep("clean", sources, SITES_PER_PASS)

        def plain() -> Any:
            with torch.no_grad(), untraced(model):
                return [req.evaluate("clean", copies=len(g)) for g in groups]

        rows = float(n * len(sites))
        m1, _ = _measure(model.name, "sweep vs plain batched forward", f"plain evaluate ({len(groups)} passes)",
                         f"patch_sweep ({len(sites)} sites × {n} examples)", plain, sweep, cfg, True, rows, rows)
        m1.met = m1.ratio >= 0.8
        req1, _ = sweep_request(model, 1, sites)
        with torch.no_grad():
            _, c1 = req1.evaluate("corrupt", read=sites)
        one = torch.arange(1)
        writes = [{s: replace_rows(one, c1[s])} for s in sites]

        def loop() -> Any:
            with torch.no_grad():
                return [req1.evaluate("clean", write=w) for w in writes]

        m2, _ = _measure(model.name, "sweep vs per-site loop", f"loop of {len(sites)} single-row passes",
                         "patch_sweep", loop, sweep, cfg, True, float(len(sites)), rows)
        m2.met = m2.ratio >= 10
    return [m1, m2]


def _scoring_examples(task: Any, model: "Model", n: int) -> Any:
    """Attribution examples: the task's own for image-input models; world scenes of one object for
    a diffusion model (scoring reads images, masks and captions: no sampling needed)."""
    import importlib

    import numpy as np
    import torch

    from bench.model import DiffusionModel
    from bench.kit.world import SHAPES, World, WorldConfig

    if not isinstance(model, DiffusionModel):
        return task.examples(model, 0, n)
    world = World(0, WorldConfig(image_size=model.image_size, min_objects=1, max_objects=1))
    scenes = [world.scene("test", i) for i in range(n)]
    caps = [f"a {s.objects[0].colour} {s.objects[0].shape}" for s in scenes]
    pix = torch.from_numpy(np.stack([s.image_HWC for s in scenes])).permute(0, 3, 1, 2).float() / 255.0
    masks = torch.from_numpy(np.stack([s.masks_NHW[0] for s in scenes]))
    examples_cls = importlib.import_module(type(task).__module__).AttributionExamples  # the task's own record
    return examples_cls(pix, masks, caps, torch.tensor([SHAPES.index(s.objects[0].shape) for s in scenes]),
                        list(SHAPES), [hashlib.sha256(s.image_HWC.tobytes()).hexdigest()[:16] for s in scenes])


def measure_scoring(model: "Model", cfg: Config, units: Sequence[UnitCost]) -> list[Measurement]:
    """Deletion/insertion scoring against the plain forward of the same rows at the best batch size."""
    import torch

    from bench.capabilities import AttributionRequest
    from bench.model import DiffusionModel
    from bench.harness.runner import make_task
    from bench.kit.world import SHAPES

    task: Any = make_task("attribution")
    # a diffusion image is 8 denoiser rows: a quarter of the examples
    n = max(1, cfg.scoring_examples // 4) if isinstance(model, DiffusionModel) else cfg.scoring_examples
    ex = _scoring_examples(task, model, n)
    grid = (task.config.diffusion_grid if isinstance(model, DiffusionModel)
            else cast("TokenLayout", model.token_layout()).grid)  # contrastive or generative: image tokens
    maps = _rand((ex.pixels_BCHW.shape[0], *grid), seed=1)
    inside: list[tuple[float, int]] = []
    original = AttributionRequest.score_all

    def timed(self: AttributionRequest, pixels_NCHW: torch.Tensor, example_idx_N: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = original(self, pixels_NCHW, example_idx_N)
        inside.append((time.perf_counter() - t0, int(pixels_NCHW.shape[0])))
        return out

    AttributionRequest.score_all = timed  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            task.score(model, ex, maps, grid, 0)
        n_images = inside[-1][1]
        per_image = len(SHAPES) * task.config.diffusion_draws if isinstance(model, DiffusionModel) else 1
        unit = units[0]
        rows = n_images * per_image
        b = unit.best_batch
        main = model_units(model)[0]
        assert main.plain is not None
        chunks = [main.plain(b) for _ in range(rows // b)] + ([main.plain(rows % b)] if rows % b else [])

        def plain() -> Any:
            return [c() for c in chunks]

        def score() -> Any:
            with torch.no_grad():
                return task.score(model, ex, maps, grid, 0)

        inside.clear()
        t, inner = _interleaved({"base": plain, "cand": score}, cfg.repeats, cfg.min_s, cfg.max_s)
    finally:
        AttributionRequest.score_all = original  # type: ignore[method-assign]
    # one score_all call per score call: a warm-up, a calibration, then ``inner`` calls per round
    per_call, k = [s for s, _ in inside], inner["cand"]
    rounds = [statistics.fmean(per_call[2 + r * k: 2 + (r + 1) * k]) for r in range(len(t["cand"]))]
    label = f"plain {unit.unit} forward, batch {b} ({rows} rows)"
    unit_rows = f"{n_images} images" + (f" × {per_image} denoiser rows" if per_image > 1 else "")
    out = []
    for name, cand_s in (("scoring: score_all", rounds), ("scoring: AttributionTask.score", t["cand"])):
        r, lo, hi = _ratio(t["base"], cand_s, True, rows, rows)
        m = Measurement(model.name, name, label, rows / statistics.median(t["base"]),
                        f"{'score_all' if name.endswith('score_all') else 'score'} ({unit_rows})",
                        rows / statistics.median(cand_s), "rows/s", r, lo, hi, GOALS[name], r >= 0.8,
                        rounds=len(cand_s))
        out.append(m)
    return out


# ------------------------------------------------------------------ cells
def select_cells(models: Sequence[str], spec: Sequence[str]) -> list[Any]:
    """The cells ``--cells`` names, quick profile, seed 0: ``default`` (per compatible task and
    model in ``models``: ``random``, and :data:`DEFAULT_METHODS` except on :data:`SLOW_DEFAULTS`),
    ``all`` (every compatible cell on ``models``), ``none``, or ``TASK/MODEL/METHOD`` (any model)."""
    from bench.harness.runner import Cell, plan

    out: list[Any] = []
    for item in spec:
        if item == "none":
            continue
        if item in ("default", "all"):
            if not models:
                continue
            methods = None if item == "all" else sorted({"random", *[m for ms in DEFAULT_METHODS.values() for m in ms]})
            p = plan(None, methods, list(models), [0], quick=True)
            from bench.harness.runner import model_family

            out += [c for c in p.cells if item == "all" or c.method == "random"
                    or (c.method in DEFAULT_METHODS.get(c.task, ())
                        and (c.task, model_family(c.model)) not in SLOW_DEFAULTS)]
            continue
        task, _, rest = item.partition("/")
        model, _, method = rest.rpartition("/")  # an hf: folder may hold slashes
        if not (task and model and method):
            raise BenchError(f"--cells expects default, all, none or TASK/MODEL/METHOD, got {item!r}")
        model = check_models([model])[0]
        p = plan([task], [method], [model], [0], quick=True)
        if not p.cells:
            reason = p.skipped[0][1] if p.skipped else "not compatible"
            raise BenchError(f"--cells {item}: {reason}")
        out += p.cells
    return list(dict.fromkeys(Cell(c.task, c.method, c.model, 0, True) for c in out))


def roofline(counter: RowCounter, costs: Sequence[UnitCost]) -> float:
    """Seconds the counted rows take at the units' best batch sizes (a backward row whose unit has
    no measured backward cost counts twice its forward, the usual FLOP ratio)."""
    by = {c.unit: c for c in costs}
    total = 0.0
    for u, n in counter.forward.items():
        if u in by:
            total += n * by[u].forward_s
    for u, n in counter.backward.items():
        if u in by:
            total += n * (cast(float, by[u].backward_s) if by[u].backward_s is not None else 2 * by[u].forward_s)
    return total


def _time_for(fn: Callable[[], Any], min_s: float) -> float:
    """Seconds per call of a warm ``fn``, over about ``min_s`` seconds (at least one call)."""
    with _quiet_gc():
        first = _time_calls(fn, 1)
        n = math.ceil(min_s / max(first, 1e-7))
        return first if n <= 1 else _time_calls(fn, min(n, 10_000))


def costs_now(model: "Model", costs: Sequence[UnitCost], units: Sequence[str], grads: Sequence[str] = (),
              min_s: float = 0.2) -> dict[str, tuple[float, float | None]]:
    """The forward (and, for ``grads``, backward) seconds per row of ``units`` at their best batch
    sizes, timed now (``decode`` by a ``generate`` call): the roofline's costs, taken next to
    the cell so that a machine whose load changed since the ladder does not skew its efficiency."""
    made = {u.name: u for u in model_units(model)}
    by = {c.unit: c for c in costs}
    out: dict[str, tuple[float, float | None]] = {}
    for name in units:
        c, u = by.get(name), made.get(name)
        if c is None or u is None or u.plain is None:
            continue
        f = _time_for(u.plain(c.best_batch), min_s) / c.best_batch
        back = None
        if name in grads and u.grad is not None:
            try:
                back = max(0.0, _time_for(u.grad(c.best_batch), min_s) / c.best_batch - f)
            except RuntimeError:
                back = None
        out[name] = (f, back)
    if "decode" in units and "lm" in by:
        lm_now = UnitCost("lm", {}, {}, by["lm"].best_batch, out.get("lm", (by["lm"].forward_s, None))[0])
        out["decode"] = (_decode_cost(model, lm_now, Config(repeats=1, min_s=min_s)).forward_s, None)
    return out


def measure_cell(cell: Any, costs: Sequence[UnitCost], threads: int) -> CellEfficiency:
    """Run ``cell`` (:func:`bench.harness.runner.run_cell`) with its model's rows counted; its efficiency.

    The roofline's cost per row is the least of the ladder's best-batch cost and the same re-timed
    just before and just after the cell (:func:`costs_now`; the backward after it only): load on
    the machine only ever slows a timing, so the least is the closest to the work's own cost, and
    the roofline stays a lower bound."""
    from bench.harness.runner import load_model, run_cell

    model = load_model(cell.model)
    counter = RowCounter()
    plain_units = [c.unit for c in costs if c.unit != "decode"]
    before = costs_now(model, costs, plain_units)
    old = os.environ.get("MMI_BENCH_CACHE")
    os.environ["MMI_BENCH_CACHE"] = "off"  # the work itself, not what an earlier run left on disk
    try:
        with counter.counting(model):
            rec = run_cell(cell, threads=threads)
    finally:
        if old is None:
            del os.environ["MMI_BENCH_CACHE"]
        else:
            os.environ["MMI_BENCH_CACHE"] = old
    run_s = float(rec.timings.get("run_s", float("nan")))
    out = CellEfficiency(cell.task, _short(cell.model), cell.method, rec.status, run_s, dict(counter.forward),
                         dict(counter.backward), counter.partial(), error=(rec.error or "")[:200])
    if rec.status == "ok":
        used = [u for u, n in counter.forward.items() if n]
        after = costs_now(model, costs, used, [u for u, n in counter.backward.items() if n])
        fresh = []
        for c in costs:
            f_b, f_a = before.get(c.unit, (None, None))[0], after.get(c.unit, (None, None))[0]
            f = min(x for x in (c.forward_s, f_b, f_a) if x is not None)
            back = min((x for x in (c.backward_s, after.get(c.unit, (None, None))[1]) if x is not None), default=None)
            fresh.append(UnitCost(c.unit, {}, {}, c.best_batch, f, back))
            out.costs[c.unit] = f
        out.roofline_s = roofline(counter, fresh)
        out.efficiency = out.roofline_s / run_s if run_s > 0 else float("nan")
    return out


# ------------------------------------------------------------------ tiny hf checkpoints
def build_tiny_hf(root: Path) -> list[str]:
    """Tiny randomly initialised CLIP, LLaVA and Stable Diffusion checkpoints saved under ``root``
    (:mod:`models.tiny_hf`, as the tests build them), with a ``mmi_bench.json`` each; their ``hf:`` names."""
    from transformers.utils import logging as hf_logging

    from models.tiny_hf import save_tiny_clip, save_tiny_llava, save_tiny_sd, write_sidecar

    hf_logging.disable_progress_bar()  # "Writing model shards" bars
    folders = [write_sidecar(save_tiny_clip(root / "tiny-clip"), "contrastive"),
               write_sidecar(save_tiny_llava(root / "tiny-llava"), "generative"),
               write_sidecar(save_tiny_sd(root / "tiny-sd"), "diffusion")]
    return [f"hf:{p.resolve()}" for p in folders]


def _short(name: str) -> str:
    """``hf:/tmp/x/tiny-clip`` → ``hf:tiny-clip`` (the temp folder says nothing)."""
    return f"hf:{Path(name[3:]).name}" if name.startswith("hf:") else name


# ------------------------------------------------------------------ the run
def check_models(models: Sequence[str]) -> list[str]:
    """Registered names or ``hf:`` folders (canonical), each checked: one-line errors."""
    from bench.harness.identity import canonical_model
    from bench.registry import MODELS

    out = []
    for m in models:
        if m.startswith("hf:"):
            path = Path(m[3:]).expanduser()
            if not path.is_dir():
                raise BenchError(f"model {m!r}: folder {str(path)!r} does not exist")
            out.append(canonical_model(m))
        else:
            MODELS.entry(m)  # unknown: "did you mean"
            out.append(m)
    return list(dict.fromkeys(out))


def run_perf(models: Sequence[str] | None = None, *, quick: bool = False, hf: bool = False, threads: int = 1,
             repeats: int | None = None, cells: Sequence[str] | None = None,
             log: Callable[[str], None] | None = None) -> PerfReport:
    """Measure every model (default: the zoo; ``hf``: plus tiny ``hf:`` checkpoints built in a temp
    folder) and the cells ``cells`` names; see the module docstring for what each figure is."""
    import torch

    if threads < 1:
        raise BenchError(f"--threads must be a positive integer, got {threads}")
    if repeats is not None and repeats < 1:
        raise BenchError(f"--repeats must be a positive integer, got {repeats}")
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    names = check_models(models or ([ZOO_MODELS[0]] if quick else list(ZOO_MODELS)))
    cfg = Config(repeats=repeats or (3 if quick else 5), min_s=0.01 if quick else 0.05,
                 max_s=5.0 if quick else 20.0, batch_sizes=QUICK_BATCH_SIZES if quick else BATCH_SIZES,
                 sweep_examples=2 if quick else 4,
                 sweep_sites=16 if quick else None, scoring_examples=1 if quick else 4, threads=threads, quick=quick)
    # the quick run's one cell: the cheapest reference on the first model
    spec = list(cells) if cells else ([f"attribution/{names[0]}/random"] if quick else ["default"])
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    tmp = tempfile.TemporaryDirectory(prefix="bench-perf-") if hf else None
    try:
        cell_list = select_cells(names, spec)  # bad names fail here, before anything is measured
        if tmp is not None:
            say("building tiny hf: checkpoints (CLIP, LLaVA, Stable Diffusion)")
            built = build_tiny_hf(Path(tmp.name))
            names += built
            if not cells or "default" in spec or "all" in spec:
                from bench.harness.runner import model_family

                # random weights: no sample shows its prompt (attribution on diffusion), no caption
                # holds a hallucination: those cells stop at the task's own check
                wide = [x for x in spec if x in ("default", "all")] or ["default"]
                cell_list += [c for c in select_cells(built, wide) if (c.task, model_family(c.model)) not in TINY_SKIP]
        names += [c.model for c in cell_list if c.model not in names]  # a named cell's model is measured too
        settings = Settings(models=[_short(n) for n in names], threads=threads, repeats=cfg.repeats, quick=quick,
                            min_s=cfg.min_s, max_s=cfg.max_s, batch_sizes=list(cfg.batch_sizes),
                            sweep_examples=cfg.sweep_examples,
                            sweep_sites=cfg.sweep_sites, scoring_examples=cfg.scoring_examples,
                            cells=[f"{c.task}/{_short(c.model)}/{c.method}" for c in cell_list],
                            torch=torch.__version__, started=time.strftime("%Y-%m-%d %H:%M:%S"))
        report = PerfReport(settings)
        from bench.harness.runner import load_model

        costs: dict[str, list[UnitCost]] = {}
        for name in names:
            short = _short(name)
            t0 = time.perf_counter()
            model = load_model(name)
            report.families[short] = model.family
            first = len(report.measurements)
            steps: list[tuple[str, Callable[[], Any]]] = [
                ("throughput", lambda: costs.__setitem__(name, measure_units(model, cfg))),
                ("trace", lambda: report.measurements.extend(measure_trace(model, cfg))),
                ("sweep", lambda: report.measurements.extend(measure_sweep(model, cfg))),
                ("scoring", lambda: report.measurements.extend(measure_scoring(model, cfg, costs[name]))),
            ]
            for label, step in steps:
                say(f"{short}: {label}")
                try:
                    step()
                except Exception as e:  # one model's failure must not lose the others' figures
                    report.errors.append(f"{short}: {label}: {type(e).__name__}: {e}")
                    say(f"{short}: {label} failed: {type(e).__name__}: {e}")
            report.units[short] = costs.get(name, [])
            for m in report.measurements[first:]:
                m.model = short
            say(f"{short}: {time.perf_counter() - t0:.1f} s")
        for c in cell_list:
            say(f"cell {c.task}/{_short(c.model)}/{c.method}")
            if c.model not in costs:
                report.errors.append(f"{c.task}/{_short(c.model)}/{c.method}: no costs measured for its model")
                continue
            # a failed cell is listed with its error (the tiny hf: models' random weights fail some
            # tasks' own checks); only a failed measurement is an error of the run
            report.cells.append(measure_cell(c, costs[c.model], threads))
        return report
    finally:
        torch.set_num_threads(old_threads)
        if tmp is not None:
            tmp.cleanup()


def write_report(report: PerfReport, out: Path | None, md: Path | None) -> str:
    """Write the JSON and Markdown files asked for; return the Markdown."""
    text = report.to_markdown()
    if out is not None:
        out.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    if md is not None:
        md.write_text(text)
    return text
