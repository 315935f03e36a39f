"""Scale on paper: what each task's quick profile would cost on real-sized models.

A cell's work is rows through the model's units (``bench perf``'s units: a CLIP's ``image`` and
``text`` towers, a LLaVA's ``lm`` forward over image and prompt and its ``decode`` steps), forward
and backward. How many rows a cell passes depends on the task's profile and the method (examples,
curve steps, integration steps, sweeps), not on the model's size, so the rows counted in a real
quick-profile cell on the zoo model of the same family (``bench perf``'s cell table,
:class:`bench.harness.perf.CellEfficiency`) are the rows the same cell passes on a larger model. Its
predicted time on a device that sustains ``R`` FLOP/s is the roofline

    T = Σ_units (forward rows + 2 · backward rows) · F_unit / R

with ``F_unit`` the FLOPs of one row through the unit at the large model's shapes, counted by
``torch.utils.flop_counter.FlopCounterMode`` on the Hugging Face classes built from a config on
the ``meta`` device (shapes only: nothing is allocated, no weights are needed). A backward pass
costs about twice its forward (Kaplan et al., 2020, "Scaling Laws for Neural Language Models",
§2.1). The roofline leaves out what is not model work (rendering, imputation, metrics, fitting
probes), so it is a lower bound of the time at that rate: :func:`check_clip` runs a real cell on
a random-initialised CLIP of the large size on this CPU and compares.

Shapes (:data:`SHAPES`): ``clip-vit-b32`` (``CLIPConfig()``'s defaults are ViT-B/32 at 224 px with
a 12-layer text tower), ``llava-7b`` (a CLIP ViT-L/14 at 336 px, 576 image tokens, into a
Llama-2-7B-shaped language model, a 24-token prompt).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from bench.errors import BenchError

PROMPT_TOKENS = 24  # a question or caption, as the tasks ask them
BACKWARD_FACTOR = 2.0  # backward FLOPs per forward FLOP


@dataclass(frozen=True)
class Shape:
    """A real-sized model, as FLOPs per row of each unit (forward) and its zoo counterpart."""

    name: str
    family: str
    zoo_model: str  # the zoo model whose counted rows stand for this family's cells
    params: float
    flops: Mapping[str, float]  # unit -> forward FLOPs per row
    note: str = ""


def _flops(fn: Any) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def clip_shape(config: Any = None) -> Shape:
    """FLOPs per row of a CLIP's image and text towers (default: ViT-B/32 at 224 px)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    cfg = config or CLIPConfig()
    # the ignores below: transformers 5 types a config's fields as the inputs they accept (a sub-config
    # as a dict or None, image_size as a pair or None); CLIPConfig holds config objects and ints
    with torch.device("meta"):
        model = CLIPModel(cfg)
        size = cfg.vision_config.image_size  # type: ignore[union-attr]
        px = torch.zeros(1, 3, size, size)  # type: ignore[arg-type]
        ids = torch.zeros(1, min(PROMPT_TOKENS, cfg.text_config.max_position_embeddings), dtype=torch.long)  # type: ignore[union-attr]
    f = {"image": _flops(lambda: model.get_image_features(pixel_values=px)),
         "text": _flops(lambda: model.get_text_features(input_ids=ids))}
    params = float(sum(p.numel() for p in model.parameters()))
    return Shape("clip-vit-b32", "contrastive", "zoo-clip", params, f,
                 f"ViT-B/{cfg.vision_config.patch_size} at {size} px; text {ids.shape[1]} tokens")  # type: ignore[union-attr]


def llava_shape() -> Shape:
    """FLOPs per row of a LLaVA-1.5-7B-shaped model: ``lm`` is the vision tower, projector and
    language model over the image tokens and the prompt, with the logits of every position (as
    the wrapper's forward computes them); ``decode`` one generated token after them (the increment
    of one more position: the language model and its attention over the cache)."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vc = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                          image_size=336, patch_size=14, projection_dim=768)
    tc = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32064)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=32000)
    # the ignores: transformers 5 types image_size as any size input (a pair, None); an int here
    n_img = (vc.image_size // vc.patch_size) ** 2  # type: ignore[operator]
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(cfg)
        px = torch.zeros(1, 3, vc.image_size, vc.image_size)  # type: ignore[arg-type]

        def lm_over(n: int) -> float:
            emb = torch.zeros(1, n, tc.hidden_size)
            # no attention mask: with one, transformers checks its values (impossible on meta)
            return _flops(lambda: model.lm_head(model.model.language_model(inputs_embeds=emb).last_hidden_state))

        vision = _flops(lambda: model.model.get_image_features(
            pixel_values=px, vision_feature_layer=-2, vision_feature_select_strategy="default"))
        L = n_img + PROMPT_TOKENS
        lm = vision + lm_over(L)
        # one more position, its logits only: the LM's work grows by that position's
        decode = lm_over(L + 1) - lm_over(L)
    params = float(sum(p.numel() for p in model.parameters()))
    return Shape("llava-7b", "generative", "zoo-vlm", params, {"lm": lm, "decode": decode},
                 f"CLIP ViT-L/14 at 336 px ({n_img} image tokens) + Llama-2-7B shapes, {PROMPT_TOKENS}-token prompt")


SHAPES = {"clip-vit-b32": clip_shape, "llava-7b": llava_shape}


@dataclass
class Prediction:
    shape: str
    task: str
    method: str
    forward_rows: dict[str, int]
    backward_rows: dict[str, int]
    tflop: float  # the cell's model work at the shape
    seconds: dict[str, float] = field(default_factory=dict)  # device label -> predicted seconds
    zoo_run_s: float = float("nan")


def predict(shape: Shape, cells: Sequence[Mapping[str, Any]], rates: Mapping[str, float]) -> list[Prediction]:
    """Predictions for the cells (``bench perf`` JSON cell entries) counted on ``shape.zoo_model``,
    at each device's sustained rate (label -> FLOP/s). A unit the shape does not model (there is
    none for the zoo families today) is a clear error rather than a silent zero."""
    out = []
    for c in cells:
        if c.get("model") != shape.zoo_model or c.get("status") != "ok":
            continue
        fwd, bwd = dict(c.get("forward_rows") or {}), dict(c.get("backward_rows") or {})
        missing = sorted(u for u in set(fwd) | set(bwd) if (fwd.get(u) or bwd.get(u)) and u not in shape.flops)
        if missing:
            raise BenchError(f"{shape.name} has no FLOP count for unit(s) {', '.join(missing)} of "
                             f"{c.get('task')}/{c.get('method')}")
        flop = sum((fwd.get(u, 0) + BACKWARD_FACTOR * bwd.get(u, 0)) * f for u, f in shape.flops.items())
        out.append(Prediction(shape.name, str(c["task"]), str(c["method"]), fwd, bwd, flop / 1e12,
                              {dev: flop / r for dev, r in rates.items()}, float(c.get("run_s") or math.nan)))
    return out


def cpu_rate(threads: int = 1, batch: int = 8, repeats: int = 3) -> float:
    """FLOP/s this CPU sustains on a ViT-B/32 image tower (random weights, batch ``batch``): the
    rate at which the CLIP-size prediction is made, measured, not assumed."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig()).eval()
    px = torch.rand(batch, 3, 224, 224)
    flop = batch * clip_shape().flops["image"]
    best = math.inf
    with torch.inference_mode():
        model.get_image_features(pixel_values=px)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.get_image_features(pixel_values=px)
            best = min(best, time.perf_counter() - t0)
    return flop / best


def save_clip_checkpoint(folder: Path) -> Path:
    """A random-initialised ViT-B/32-sized CLIP (``CLIPConfig()``'s towers), saved with the tiny
    models' word-level tokenizer (:mod:`models.tiny_hf`), for ``--model hf:FOLDER``."""
    import torch
    from transformers import CLIPConfig, CLIPModel
    from transformers.utils import logging as hf_logging

    from models.tiny_hf import save_tokenizer, write_normalisation

    hf_logging.disable_progress_bar()
    folder.mkdir(parents=True, exist_ok=True)
    save_tokenizer(folder)  # pad 0, [BOS] 2, [EOS] 3
    torch.manual_seed(0)
    cfg = CLIPConfig()
    # transformers 5 types text_config as its input too (a dict or None); CLIPConfig() holds the object
    cfg.text_config.pad_token_id, cfg.text_config.bos_token_id, cfg.text_config.eos_token_id = 0, 2, 3  # type: ignore[union-attr]
    CLIPModel(cfg).save_pretrained(folder)
    write_normalisation(folder)
    return folder


def check_clip(folder: Path, cells: Sequence[Mapping[str, Any]], rate: float, task: str = "attribution",
               method: str = "saliency", threads: int = 1) -> dict[str, Any]:
    """The prediction against a real run: ``task``/``method`` (quick profile, seed 0) on the
    ViT-B/32-sized checkpoint in ``folder`` on this CPU, its rows counted as it runs. Reports the
    prediction from the zoo's rows and from the run's own rows (so a difference in rows and a
    difference in rate are told apart), both at ``rate``."""
    from bench.harness.perf import RowCounter
    from bench.harness.runner import Cell, load_model, run_cell

    shape = clip_shape()
    zoo = [c for c in cells if c.get("model") == shape.zoo_model and c.get("task") == task
           and c.get("method") == method and c.get("status") == "ok"]
    if not zoo:
        raise BenchError(f"the perf JSON has no ok {task}/{shape.zoo_model}/{method} cell to predict from")
    name = f"hf:{folder}"
    model = load_model(name)
    counter = RowCounter()
    with counter.counting(model):
        rec = run_cell(Cell(task, method, name, 0, quick=True), threads=threads)
    if rec.status != "ok":
        raise BenchError(f"the check cell failed: {rec.error}")
    own = {"model": shape.zoo_model, "status": "ok", "task": task, "method": method,
           "forward_rows": dict(counter.forward), "backward_rows": dict(counter.backward)}
    from_zoo = predict(shape, zoo[:1], {"cpu": rate})[0]
    from_run = predict(shape, [own], {"cpu": rate})[0]
    return {"cell": f"{task}/{method}", "predicted_s": from_zoo.seconds["cpu"],
            "predicted_own_rows_s": from_run.seconds["cpu"], "run_s": float(rec.timings["run_s"]),
            "zoo_rows": {"forward": from_zoo.forward_rows, "backward": from_zoo.backward_rows},
            "run_rows": {"forward": from_run.forward_rows, "backward": from_run.backward_rows},
            "rate_flops": rate, "threads": threads}


def to_markdown(preds: Sequence[Prediction], rates: Mapping[str, float], shapes: Sequence[Shape],
                check: Mapping[str, Any] | None = None) -> str:
    devs = list(rates)
    out = ["| shape | params | unit | GFLOP / row (forward) |", "|---|---|---|---|"]
    for s in shapes:
        for u, f in s.flops.items():
            out.append(f"| {s.name} | {s.params / 1e9:.2f} B | {u} | {f / 1e9:,.1f} |")
    out += ["", "Rates: " + "; ".join(f"{d} {r / 1e12:.3g} TFLOP/s" for d, r in rates.items()), ""]
    out.append("| shape | task | method | rows (fwd + bwd) | TFLOP | " + " | ".join(f"{d}" for d in devs)
               + " | zoo run_s |")
    out.append("|---|---|---|---|---|" + "---|" * len(devs) + "---|")
    for p in preds:
        rows = ", ".join(f"{u} {n}" + (f"+{p.backward_rows[u]}b" if p.backward_rows.get(u) else "")
                         for u, n in p.forward_rows.items() if n)
        out.append(f"| {p.shape} | {p.task} | {p.method} | {rows} | {p.tflop:,.1f} | "
                   + " | ".join(_dur(p.seconds[d]) for d in devs) + f" | {p.zoo_run_s:.1f} s |")
    totals: dict[tuple[str, str], dict[str, float]] = {}
    for p in preds:
        t = totals.setdefault((p.shape, p.task), {d: 0.0 for d in devs} | {"cells": 0})
        t["cells"] += 1
        for d in devs:
            t[d] += p.seconds[d]
    out += ["", "Each task's quick profile, one seed (every counted method and both references):", "",
            "| shape | task | cells | " + " | ".join(devs) + " |", "|---|---|---|" + "---|" * len(devs)]
    for (shape, task), t in totals.items():
        out.append(f"| {shape} | {task} | {int(t['cells'])} | " + " | ".join(_dur(t[d]) for d in devs) + " |")
    if check:
        out += ["", f"Check on this CPU ({check['threads']} thread): {check['cell']} (quick profile) on a "
                f"random-initialised ViT-B/32 CLIP: predicted {_dur(check['predicted_s'])} from the zoo's rows "
                f"({_dur(check['predicted_own_rows_s'])} from the run's own rows) at the measured "
                f"{check['rate_flops'] / 1e9:.0f} GFLOP/s; measured {_dur(check['run_s'])} "
                f"(measured / predicted {check['run_s'] / check['predicted_s']:.2f})."]
    return "\n".join(out)


def _dur(s: float) -> str:
    if not math.isfinite(s):
        return "—"
    if s < 1:
        return f"{s * 1e3:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def load_cells(perf_json: Path) -> list[dict[str, Any]]:
    try:
        doc = json.loads(Path(perf_json).read_text())
    except (OSError, ValueError) as e:
        raise BenchError(f"cannot read {perf_json}: {e}") from None
    cells = doc.get("cells") if isinstance(doc, dict) else None
    if not isinstance(cells, list):
        raise BenchError(f"{perf_json} is not a `bench perf --out` JSON (no 'cells' list)")
    return cells


def report_dict(preds: Sequence[Prediction], rates: Mapping[str, float], shapes: Sequence[Shape],
                check: Mapping[str, Any] | None) -> dict[str, Any]:
    return {"rates_flops": dict(rates), "shapes": [asdict(s) | {"flops": dict(s.flops)} for s in shapes],
            "predictions": [asdict(p) for p in preds], "check": dict(check) if check else None}
