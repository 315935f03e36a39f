"""The GPU check (issue 24): a small grid on every zoo model and on tiny ``hf:`` checkpoints, on the
GPU and on the CPU, figures compared within a tolerance, times side by side.

    python scripts/gpu_check.py                          # cuda, float32: every zoo model + tiny hf:
    python scripts/gpu_check.py --device cuda:1 --dtype bfloat16 --out gpu-check.json
    python scripts/gpu_check.py --device cuda --model zoo-clip --method saliency

Each cell runs twice in this process (the CPU first, then the device; one cell at a time, so a GPU
holds one model's cell), into two fresh stores. A figure matches when ``|gpu - cpu| <= atol + rtol *
|cpu|`` (float32: atol 1e-3, rtol 1e-2, for GPU kernels' reduction order and TF32 matmuls; reduced
dtypes: atol 2e-2, rtol 5e-2 -- the CPU side then runs under autocast at that dtype with float32
weights). Exit 1 when a cell fails on either device or a figure leaves its tolerance. On a machine
without the device it stops at once with one line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.harness import runner
from bench.harness.store import Store

DEFAULT_METHODS = ["random", "oracle", "saliency", "integrated_gradients", "activation_patching", "probing",
                   "logit_lens", "rome", "steering"]
TOLERANCE = {"float32": (1e-3, 1e-2), "bfloat16": (2e-2, 5e-2), "float16": (2e-2, 5e-2)}


@dataclass
class CellCheck:
    cell: str
    ok: bool
    cpu_s: float
    device_s: float
    worst_metric: str = ""
    worst_abs_diff: float = 0.0
    error: str = ""
    metrics: dict[str, list[float]] = field(default_factory=dict)  # name -> [cpu, device]


def compare(a: dict[str, float], b: dict[str, float], atol: float, rtol: float) -> tuple[bool, str, float]:
    worst, worst_d, ok = "", 0.0, True
    for k in sorted(set(a) | set(b)):
        if k not in a or k not in b:
            return False, k, float("inf")
        x, y = a[k], b[k]
        if x != x and y != y:  # both NaN (e.g. an undefined AUROC): the same figure
            continue
        d = abs(x - y)
        if d > worst_d or d != d:
            worst, worst_d = k, d
        if not d <= atol + rtol * abs(x):
            ok = False
    return ok, worst, worst_d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float32", choices=sorted(TOLERANCE))
    ap.add_argument("--model", action="append", help="default: every zoo model and tiny hf: CLIP, LLaVA, SD")
    ap.add_argument("--task", action="append")
    ap.add_argument("--method", action="append", help=f"default: {', '.join(DEFAULT_METHODS)} (where compatible)")
    ap.add_argument("--no-hf", action="store_true", help="leave out the tiny hf: checkpoints")
    ap.add_argument("--out", help="write the checks as JSON")
    args = ap.parse_args(argv)
    try:
        device = runner.resolve_device(args.device)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    atol, rtol = TOLERANCE[args.dtype]
    with tempfile.TemporaryDirectory(prefix="mmi-gpu-check-") as tmp:
        models = list(args.model or [n for n in runner.MODELS.builtin_names() if runner.zoo_weights_hash(n)])
        if not args.model and not args.no_hf:
            from bench.harness.perf import build_tiny_hf

            models += build_tiny_hf(Path(tmp) / "hf")
        p = runner.plan(args.task, args.method or DEFAULT_METHODS, models, [0], quick=True,
                        runtime=runner.Runtime(dtype=args.dtype))
        runner.require_cells(p)
        print(f"{len(p.cells)} cells on {len(models)} models, cpu vs {device} ({args.dtype})", file=sys.stderr)
        # (keyed by role, not by device: `--device cpu` is a CPU-against-CPU smoke run of this script)
        roles = {"cpu": "cpu", "dev": device}
        stores = {r: Store(Path(tmp) / f"{r}.sqlite") for r in roles}
        checks: list[CellCheck] = []
        for c in p.cells:
            recs = {}
            for r, d in roles.items():
                cell = replace(c, runtime=replace(c.runtime, device=d))
                t0 = time.perf_counter()
                recs[r] = runner.run_cell(cell)
                recs[r].timings["wall_s"] = round(time.perf_counter() - t0, 3)
                stores[r].put(recs[r], force=True)
            a, b = recs["cpu"], recs["dev"]
            label = c.label if not c.model.startswith("hf:") else c.label.replace(c.model, "hf:" + Path(c.model[3:]).name)
            if a.status != "ok" or b.status != "ok":
                err = a.error if a.status != "ok" else b.error
                checks.append(CellCheck(label, False, a.timings.get("wall_s", 0), b.timings.get("wall_s", 0),
                                        error=f"{'cpu' if a.status != 'ok' else device}: {err}"))
            else:
                ok, worst, d = compare(a.metrics, b.metrics, atol, rtol)
                checks.append(CellCheck(label, ok, a.timings["wall_s"], b.timings["wall_s"], worst, d,
                                        metrics={k: [a.metrics[k], b.metrics.get(k, float("nan"))] for k in a.metrics}))
            chk = checks[-1]
            print(f"{'ok  ' if chk.ok else 'FAIL'} {chk.cell}: cpu {chk.cpu_s:.1f} s, {device} {chk.device_s:.1f} s, "
                  f"max |diff| {chk.worst_abs_diff:.2e} ({chk.worst_metric}) {chk.error}", file=sys.stderr)
    rows = ["| cell | cpu s | %s s | speed-up (cpu / %s) | max abs diff (metric) | match |" % (device, device),
            "|---|---|---|---|---|---|"]
    for chk in checks:
        rows.append(f"| {chk.cell} | {chk.cpu_s:.2f} | {chk.device_s:.2f} | "
                    f"{chk.cpu_s / chk.device_s if chk.device_s else float('nan'):.2f}x | "
                    f"{chk.worst_abs_diff:.2e} ({chk.worst_metric}) | {'yes' if chk.ok else 'NO ' + chk.error[:80]} |")
    cpu_total, dev_total = sum(c.cpu_s for c in checks), sum(c.device_s for c in checks)
    rows.append(f"\n{sum(c.ok for c in checks)}/{len(checks)} cells match; total cpu {cpu_total:.1f} s, "
                f"{device} {dev_total:.1f} s ({cpu_total / max(dev_total, 1e-9):.2f}x)")
    print("\n".join(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"device": device, "dtype": args.dtype, "atol": atol, "rtol": rtol,
                                              "checks": [asdict(c) for c in checks]}, indent=1) + "\n")
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
