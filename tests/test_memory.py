"""A run record's ``peak_memory_mb`` is its own cell's peak, not the process's so far (issue 21).

Two real cells (spurious / zoo-clip / leace, quick) run in one process: the first through a
method call that also allocates (and frees) a large tensor, the second as is. With the
process's peak (``ru_maxrss``) the second would inherit the first's; with the per-cell reset of
``VmHWM`` it records its own, far lower one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HUNGRY_MB = 768

linux_proc = pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/proc/self/clear_refs").exists(),
                                reason="needs Linux /proc/self/clear_refs")


@linux_proc
def test_each_cell_records_its_own_peak(monkeypatch):
    from bench.harness.runner import Cell, run_cell
    from methods.leace import Leace

    cell = Cell("spurious", "leace", "zoo-clip", 0, quick=True)
    real = Leace.debias

    def hungry(self, model, request):  # type: ignore[no-untyped-def]
        block = torch.ones(HUNGRY_MB * 2**20 // 4)  # resident: every page written
        del block
        return real(self, model, request)

    monkeypatch.setattr(Leace, "debias", hungry)
    big = run_cell(cell)
    monkeypatch.setattr(Leace, "debias", real)
    small = run_cell(cell)
    assert big.status == small.status == "ok", (big.error, small.error)
    assert big.peak_memory_mb > HUNGRY_MB
    assert small.peak_memory_mb < big.peak_memory_mb - HUNGRY_MB / 2, (big.peak_memory_mb, small.peak_memory_mb)
    assert "peak_memory" not in small.provenance  # measured per cell: no caveat
    assert big.metrics == small.metrics  # the allocation changed nothing else


def test_peak_falls_back_to_the_process_peak_with_a_note(monkeypatch):
    import resource

    import bench.harness.runner as runner

    monkeypatch.setattr(runner, "_reset_peak_memory", lambda: False)  # as where /proc is unavailable
    rec = runner.run_cell(runner.Cell("spurious", "leace", "zoo-clip", 0, quick=True))
    assert rec.status == "ok", rec.error
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
    assert 0 < rec.peak_memory_mb <= rss + 0.1
    assert "ru_maxrss" in rec.provenance["peak_memory"]
