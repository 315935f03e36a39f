"""``bench perf``: the quick run end to end on one zoo model, its report's shape, and its errors."""

import json
import math
import os
import subprocess
import sys

import pytest

from bench.app.cli import main
from bench.harness.perf import MEASUREMENTS, QUICK_BATCH_SIZES, RowCounter, ratio_stats

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow  # ~25 s: a whole `bench perf --quick` in a fresh interpreter; .ci/run runs it
def test_quick_perf_on_zoo_clip(tmp_path):
    out, md = tmp_path / "perf.json", tmp_path / "perf.md"
    cp = subprocess.run([sys.executable, "-m", "bench", "perf", "--quick", "--model", "zoo-clip", "--out", str(out),
                         "--md", str(md)], capture_output=True, text=True, timeout=300, env=ENV)
    assert cp.returncode == 0, cp.stderr
    rep = json.loads(out.read_text())
    assert set(rep) >= {"settings", "measurements", "models", "cells", "work_list", "errors"}
    assert rep["errors"] == []
    assert rep["settings"]["quick"] and rep["settings"]["threads"] == 1
    got = {m["measurement"] for m in rep["measurements"] if m["model"] == "zoo-clip"}
    assert got == set(MEASUREMENTS)
    for m in rep["measurements"]:
        for k in ("ratio", "ratio_lo", "ratio_hi", "baseline_value", "candidate_value"):
            assert m[k] is not None and math.isfinite(m[k]) and m[k] > 0, (m["measurement"], k, m[k])
        assert m["ratio_lo"] <= m["ratio"] <= m["ratio_hi"]
        assert m["goal"] and isinstance(m["met"], bool)
    per_site = next(m for m in rep["measurements"] if m["measurement"] == "trace: read every site")["value"]
    assert per_site is not None and math.isfinite(per_site)
    units = rep["models"]["zoo-clip"]["units"]
    assert set(units) == {"image", "text"}
    for u in units.values():
        assert u["best_batch"] in QUICK_BATCH_SIZES
        assert all(v > 0 for v in u["throughput"].values()) and u["forward_s"] > 0
    (cell,) = rep["cells"]
    assert cell["status"] == "ok" and cell["forward_rows"]["image"] > 0
    assert 0 < cell["efficiency"] and math.isfinite(cell["efficiency"])
    assert rep["work_list"] in ([], [cell["label"]])  # listed when it spends ≥ 1 s over its roofline
    assert cell["excess_s"] == pytest.approx(cell["run_s"] - cell["roofline_s"])
    text = md.read_text()
    assert text in cp.stdout  # printed as well
    for name in MEASUREMENTS:
        assert f"| zoo-clip | {name} |" in text, name
    assert "Plain forward throughput" in text and "Cell efficiency" in text and "Work list" in text


@pytest.mark.parametrize("args, words", [
    (["--model", "zoo-clipp"], "did you mean 'zoo-clip'"),
    (["--model", "hf:/nonexistent/folder"], "does not exist"),
    (["--threads", "0"], "--threads must be a positive integer"),
    (["--repeats", "0"], "--repeats must be a positive integer"),
    (["--cells", "attribution/zoo-clip"], "--cells expects"),
    (["--cells", "nosuch/zoo-clip/random"], "unknown task 'nosuch'"),
    (["--out", "/nonexistent/dir/perf.json"], "does not exist"),
])
def test_bad_input_is_one_line(args, words, capsys):
    assert main(["perf", "--quick", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and words in err[0], err


def test_row_counter_counts_tower_rows_forward_and_backward(zoo_clip):
    import torch

    counter = RowCounter()
    x = torch.rand(3, 3, zoo_clip.image_size, zoo_clip.image_size, requires_grad=True)
    with counter.counting(zoo_clip):
        zoo_clip.encode_image(x).sum().backward()
        with torch.no_grad():
            zoo_clip.encode_text(["a red circle", "a blue square"])
        zoo_clip.randomized(0).encode_image(x[:1].detach())  # a copy made while counting is counted too
    assert counter.forward == {"image": 4, "text": 2}
    assert counter.backward == {"image": 3} and counter.partial() == {}
    assert "randomized" not in vars(zoo_clip)  # the instance is left as it was
    with torch.no_grad():
        zoo_clip.encode_image(x.detach())
    assert counter.forward["image"] == 4  # detached


def test_ratio_stats():
    assert ratio_stats([1.0, 2.0, 3.0, 4.0, 5.0]) == (3.0, 2.0, 4.0)
    assert all(math.isnan(v) for v in ratio_stats([]))
