"""The grid's order: the cheapest (task, model) table first, then the rest longest first; and
``on_table`` announces each table when its last cell lands (what `bench evaluate` prints while
the grid goes on)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.harness import runner
from bench.harness.runner import Cell, order_cells, plan, run_grid
from bench.harness.store import Store


def _cells() -> list[Cell]:
    return [Cell(t, m, mo, s, quick=True) for t, mo in (("attribution", "zoo-diffusion"), ("editing", "zoo-clip"),
                                                       ("attribution", "zoo-clip"))
            for m in ("saliency", "occlusion", "random") for s in (0, 1)]


def test_order_uses_stored_times_cheapest_table_first_then_longest_first() -> None:
    cells = _cells()
    secs = {("attribution", "occlusion", "zoo-clip", "quick"): 9.0, ("attribution", "saliency", "zoo-clip", "quick"): 3.0,
            ("attribution", "random", "zoo-clip", "quick"): 4.0, ("editing", "occlusion", "zoo-clip", "quick"): 1.0,
            ("editing", "saliency", "zoo-clip", "quick"): 2.0, ("editing", "random", "zoo-clip", "quick"): 0.5,
            ("attribution", "occlusion", "zoo-diffusion", "quick"): 240.0,
            ("attribution", "saliency", "zoo-diffusion", "quick"): 65.0,
            ("attribution", "random", "zoo-diffusion", "quick"): 55.0}
    out = order_cells(cells, secs)
    assert sorted(out, key=cells.index) == cells  # a permutation
    groups = [(c.task, c.model) for c in out]
    # the cheapest table (editing on zoo-clip, 7 s in all) first, its cells cheapest first
    assert groups[:6] == [("editing", "zoo-clip")] * 6
    assert [c.method for c in out[:6]] == ["random", "random", "occlusion", "occlusion", "saliency", "saliency"]
    # then the costliest table, longest cell first; a table's cells stay together
    assert groups[6:12] == [("attribution", "zoo-diffusion")] * 6
    assert [c.method for c in out[6:8]] == ["occlusion", "occlusion"]
    assert groups[12:] == [("attribution", "zoo-clip")] * 6
    assert order_cells(cells, secs) == out  # deterministic


def test_order_without_times_uses_family_estimates() -> None:
    out = order_cells(_cells(), {})
    # editing and attribution on zoo-clip tie on the family estimate: the plan's order breaks it
    assert {(c.task, c.model) for c in out[:6]} == {("editing", "zoo-clip")}
    assert {(c.task, c.model) for c in out[6:12]} == {("attribution", "zoo-diffusion")}
    assert out[6].method != "random"  # a reference costs a third of a method


def test_on_table_announces_each_table_when_its_last_cell_lands(tmp_path) -> None:
    p = plan(["editing", "spurious"], ["random", "oracle"], ["zoo-clip", "zoo-clip-spurious"], [0], quick=True)
    tables = {(c.task, c.model) for c in p.cells}
    assert len(tables) == 2
    seen: list[tuple[str, str]] = []
    done: list[str] = []
    store = Store(tmp_path / "s.sqlite")

    def announce(t: str, m: str) -> None:  # at the moment it is called, every cell of the table is stored
        assert all(store.has_ok(runner.cell_key(c)) for c in p.cells if (c.task, c.model) == (t, m))
        seen.append((t, m))

    res = run_grid(p.cells, store, progress=False, on_table=announce,
                   on_record=lambda r: done.append(f"{r.key.task}/{r.key.model}"))
    assert len(res.ran) == len(p.cells)
    assert sorted(seen) == sorted(tables)  # each table once
    # the first table announced is complete before any cell of the other one ran (cheapest first)
    first = f"{seen[0][0]}/{seen[0][1]}"
    n_first = sum(1 for c in p.cells if (c.task, c.model) == seen[0])
    assert done[:n_first] == [first] * n_first
    # a grid already stored runs nothing and announces nothing
    again: list[tuple[str, str]] = []
    run_grid(p.cells, store, progress=False, on_table=lambda t, m: again.append((t, m)))
    assert again == []
