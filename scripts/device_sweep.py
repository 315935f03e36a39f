"""The device-discipline sweep (issue 24) from the command line: one quick cell (seed 0) per (task,
method, family) of the published default plan, with the sweep's smaller task sizes, under the
device-discipline mode and without it (:func:`bench.harness.discipline.sweep_cell`); one JSON line
per cell, and a count on stderr. The slow test ``tests/test_device_discipline.py`` runs the same.

    python scripts/device_sweep.py                                  # every family
    python scripts/device_sweep.py diffusion --match editing/ --out sweep.jsonl

Exit 1 when a cell is not ``ok`` (``device``: fails under the mode only; ``differs``: other figures
under the mode; ``fails``: fails without the mode too).
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.harness import discipline, runner
from leaderboard.publish import default_plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/device_sweep.py")
    ap.add_argument("families", nargs="*", help="contrastive, generative, diffusion (default: all)")
    ap.add_argument("--out", default="-", help="append the JSON lines to this file (default: stdout)")
    ap.add_argument("--match", default="", help="only cells whose label contains this")
    a = ap.parse_args(argv)
    cells = [c for c in discipline.triples(default_plan())
             if (not a.families or runner.model_family(c.model) in a.families) and a.match in c.label]
    sink = sys.stdout if a.out == "-" else open(a.out, "a")
    bad = 0
    for c in cells:
        row = discipline.sweep_cell(c)
        bad += row["status"] != "ok"
        print(json.dumps(row), file=sink, flush=True)
    print(f"{len(cells) - bad} of {len(cells)} cells pass", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
