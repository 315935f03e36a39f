"""`bench inspect`: a cell's worst examples as a table, and the attribution PNG grid (real code path)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bench.app.cli import main
from bench.harness.runner import make_task
from bench.harness.store import Store

CELL = ["--task", "attribution", "--model", "zoo-clip", "--method", "saliency"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store_path(saliency_store):
    """The session's store of attribution/zoo-clip/saliency seed 0 (conftest), i.e. ``bench evaluate`` of CELL."""
    return saliency_store


def stored_rows(path):
    with Store(path) as st:
        (rec,) = list(st.records(task="attribution", model="zoo-clip", method="saliency", seed=0, profile="quick",
                                 rows=True))
    return rec


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def table_rows(stdout: str) -> list[list[str]]:
    lines = stdout.strip().splitlines()
    sep = next(i for i, line in enumerate(lines) if set(line) <= {"-", " "} and line)
    return [line.split() for line in lines[sep + 1:-1]]  # the last line is the summary


@pytest.mark.parametrize("k", [8, 25])
def test_table_lists_the_k_lowest_in_ascending_quality(store_path, capsys, k):
    assert main(["inspect", *CELL, "--profile", "quick", "-k", str(k), "--store", str(store_path)]) == 0
    out = capsys.readouterr().out
    rows = stored_rows(store_path).rows
    q = make_task("attribution").example_quality(rows)
    n = len(q)
    # the k lowest, NaN left out, ties in row order: computed here without the module's helper
    expected = sorted((i for i in range(n) if not np.isnan(q[i])), key=lambda i: (q[i], i))[:k]
    shown = table_rows(out)
    assert [r[0] for r in shown] == [str(j) for j in range(1, k + 1)]
    idx = [int(r[1].split(":")[0]) for r in shown]
    assert idx == expected
    assert [r[1] for r in shown] == [rows["example"][i] for i in idx]
    assert [r[2] for r in shown] == [rows["hash"][i] for i in idx]
    shown_q = [float(r[3]) for r in shown]
    assert shown_q == sorted(shown_q)
    assert np.allclose(shown_q, q[idx], rtol=1e-3, atol=1e-9)
    rest = np.delete(q, idx)
    assert np.nanmax(q[idx]) <= np.nanmin(rest)
    summary = out.strip().splitlines()[-1]
    worst = np.nanmin(q)
    assert f"{n} rows" in summary and f"{int((q == worst).sum())} rows at the worst value" in summary


def test_png_grid_is_written_and_reproducible(store_path, tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for out in (a, b):
        assert main(["inspect", *CELL, "--profile", "quick", "-k", "3", "--out", str(out),
                     "--store", str(store_path)]) == 0
    assert "warning" not in capsys.readouterr().err  # the recomputed maps score what the rows stored
    data = a.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert data == b.read_bytes()
    assert b"Software" not in data


def test_missing_cell_is_one_line_error(store_path, capsys):
    assert main(["inspect", *CELL, "--seed", "3", "--profile", "quick", "--store", str(store_path)]) == 2
    line = one_error_line(capsys)
    assert "no record" in line and "seed 0 (quick)" in line  # says what the store does have
    assert main(["inspect", *CELL, "--store", str(store_path)]) == 2  # the full profile was not run
    one_error_line(capsys)


def test_out_on_other_task_is_one_line_error(store_path, tmp_path, capsys):
    assert main(["inspect", "--task", "hallucination", "--model", "zoo-vlm", "--method", "saliency",
                 "--out", str(tmp_path / "x.png"), "--store", str(store_path)]) == 2
    line = one_error_line(capsys)
    assert "attribution only" in line
    assert not (tmp_path / "x.png").exists()


def test_record_without_rows_or_changed_examples(store_path, tmp_path, capsys):
    rec = stored_rows(store_path)
    with Store(store_path) as st:
        # a record stored without rows (an older store), under another seed's key
        st.put(dataclasses.replace(rec, key=dataclasses.replace(rec.key, seed=7), rows=None))
        # seed 0's rows under seed 1's key: the examples rebuilt for seed 1 do not match them
        st.put(dataclasses.replace(rec, key=dataclasses.replace(rec.key, seed=1), rows=rec.rows))
    assert main(["inspect", *CELL, "--seed", "7", "--profile", "quick", "--store", str(store_path)]) == 2
    line = one_error_line(capsys)
    assert "without per-example rows" in line and "--force" in line
    assert main(["inspect", *CELL, "--seed", "1", "--profile", "quick", "--out", str(tmp_path / "g.png"),
                 "--store", str(store_path)]) == 2
    line = one_error_line(capsys)
    assert "differ" in line and "--force" in line
    assert not (tmp_path / "g.png").exists()
