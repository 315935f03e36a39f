"""`bench evaluate --check-determinism`: a sample of cells re-run in a fresh process and store
must give bit-identical figures; a difference fails, naming the cell and the metric."""

from __future__ import annotations

import math

import pytest

from bench.app.cli import main
from bench.harness.runner import Cell, cell_key
from bench.harness.store import Store
from leaderboard.regress import sample_cells

CELL = ["--task", "localization", "--model", "zoo-clip", "--method", "decomposition", "--no-references",
        "--seed", "0", "--quick", "--jobs", "1", "--no-table", "--no-progress"]
LABEL = "localization/zoo-clip/decomposition/seed=0"


def test_sample_is_deterministic_and_bounded():
    cells = [Cell(t, m, "zoo-clip", s, True) for t in ("attribution", "localization") for m in ("saliency", "sae",
                                                                                               "probing") for s in (0, 1)]
    a = sample_cells(cells, 3)
    assert len(a) == 3 and a == sample_cells(list(reversed(cells)), 3)
    assert sample_cells(cells, 100) == sample_cells(cells, len(cells)) and len(sample_cells(cells, 0)) == 0


@pytest.mark.slow  # two re-runs in fresh interpreters (~25 s of CPU, most of it importing transformers); in the
# default run a cell re-run in-process gives bit-identical figures (test_reproduce: expected == obtained,
# test_attribution_task::test_same_cell_twice_gives_identical_figures), and CI's `bench regress` re-runs
# the baseline's cells in a fresh process
def test_check_determinism_passes_then_names_a_tampered_figure(tmp_path, capsys):
    store_path = tmp_path / "s.sqlite"
    assert main(["evaluate", *CELL, "--store", str(store_path), "--check-determinism"]) == 0
    err = capsys.readouterr().err
    assert "every figure bit-identical" in err

    # One ulp off in the stored record: the fresh re-run must notice it.
    store = Store(store_path)
    (rec,) = list(store.records())
    assert cell_key(Cell("localization", "decomposition", "zoo-clip", 0, True)).id == rec.key.id
    rec.metrics["mrr"] = math.nextafter(rec.metrics["mrr"], 2.0)
    store.put(rec, force=True)
    store.close()
    assert main(["evaluate", *CELL, "--store", str(store_path), "--check-determinism"]) == 1
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("not deterministic:")]
    assert len(lines) == 1 and f"{LABEL} metric mrr" in lines[0], lines
