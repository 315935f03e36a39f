"""Render leaderboard rows as Markdown, CSV, LaTeX or JSON.

- ``json``: an array of objects with the keys of :class:`~leaderboard.scorer.Row`
  (floats rounded to 6 decimals, non-finite floats as ``null``), stably sorted by
  task, model, metric, method. ``rank_group`` is the statistical rank group (``null``
  for the references), ``rank_stability`` is set on each leader's main-metric row only.
- ``csv``: the same columns and order, written by pandas without an index.
- ``md`` / ``latex``: one table per ``(task, task_version, model)``. Rows are methods:
  the references ``random`` and ``oracle`` first, then the others by main score in
  its direction, best first (ties and missing main scores by name, missing last).
  Columns: the method, what its scores answer (``answers``, only in tables where a method's
  records say: e.g. localization's mediation or decodability), its ``rank`` (the main metric's
  statistical rank group, suffixed ``=`` when it shares the group with other methods, ``—`` for the
  references), ``rank (<metric>)`` for each other headline metric (a task's ``also_ranked``: a
  second ground truth, ranked in its own right), every metric as ``mean [ci_low, ci_high]`` (3 decimals) with ↑/↓ for
  its direction (main metric first, then the task spec's order, then by name), then
  ``norm. <main metric>`` (the normalised main score, only for metrics whose oracle is a
  ceiling), then ``seeds`` and ``examples`` (resampling units over all seeds). An interval
  over seeds only (a record stored without per-example rows) is marked ``†``. A cell
  whose ``n`` differs from the row's ``n`` (NaN values dropped, or a metric some
  seeds lack) is suffixed ``(n=k)``. A missing cell shows ``—``, never a number.
  Markdown puts ``### task vX — model (quick profile)`` above each table (the profile of its rows); LaTeX, where ``#`` is a
  special character, puts the same text in a ``\\paragraph{...}``. Below a table with
  at least two ranked methods, one paragraph gives the leader's margin over the runner-up
  with its paired interval, its rank stability (share of bootstrap replicates in which it
  stays first), and the table's minimum detectable difference (alpha 0.05, power 0.8); one more
  paragraph, naming its metric, for each other headline metric.
- ``html``: see :mod:`leaderboard.html` (a folder, not text: :func:`leaderboard.html.write_html`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

from tabulate import tabulate

from bench.errors import BenchError
from leaderboard.scorer import (REFERENCE_METHODS, LeaderStability, Row, _task_spec, examples_needed,
                                rank_stability)

FORMATS = ("md", "csv", "latex", "json")
COLUMNS = ("task", "task_version", "model", "method", "metric", "mean", "ci_low", "ci_high", "n",
           "direction", "normalised", "is_main", "rank_group", "rank_stability", "n_examples", "interval",
           "p_value", "runner_up", "margin", "margin_low", "margin_high", "mde", "headline", "answers")
EMPTY_MESSAGE = "no results in the store match the filters"
MISSING = "—"
SEEDS_ONLY = "†"
_ARROWS = {"higher": "↑", "lower": "↓"}
_LATEX_ARROWS = {"↑": r"$\uparrow$", "↓": r"$\downarrow$"}
_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def render(rows: list[Row], fmt: str) -> str:
    """``rows`` as text in ``fmt`` (md | csv | latex | json); a message when there are none.

    The text has no trailing newline (the caller prints it or writes it with one).
    """
    if fmt not in FORMATS:
        raise BenchError(f"unknown leaderboard format {fmt!r} (known: {', '.join(FORMATS)})")
    if not rows:
        # machine formats stay parseable when nothing matched
        return {"json": "[]", "csv": ",".join(COLUMNS)}.get(fmt, EMPTY_MESSAGE)
    if fmt == "json":
        return json.dumps(_records(rows), indent=2, ensure_ascii=False, allow_nan=False)
    if fmt == "csv":
        import pandas as pd  # only here: importing it costs most of a second

        frame = pd.DataFrame(_records(rows), columns=list(COLUMNS))
        frame["rank_group"] = frame["rank_group"].astype("Int64")  # not 1.0 / NaN: an integer or empty
        return frame.to_csv(index=False, lineterminator="\n").rstrip("\n")
    return _tables(rows, latex=(fmt == "latex"))


# ------------------------------------------------------------------ flat formats
def _num(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), 6) + 0.0  # + 0.0 turns -0.0 into 0.0


def _records(rows: list[Row]) -> list[dict[str, Any]]:
    ordered = sorted(rows, key=lambda r: (r.task, r.model, r.metric, r.method))  # sorted() is stable
    out = []
    for r in ordered:
        out.append({"task": r.task, "task_version": r.task_version, "model": r.model, "method": r.method,
                    "metric": r.metric, "mean": _num(r.mean), "ci_low": _num(r.ci_low),
                    "ci_high": _num(r.ci_high), "n": int(r.n), "direction": r.direction,
                    "normalised": _num(r.normalised), "is_main": bool(r.is_main),
                    "rank_group": r.rank_group, "rank_stability": _num(r.rank_stability),
                    "n_examples": int(r.n_examples), "interval": r.interval, "p_value": _num(r.p_value),
                    "runner_up": r.runner_up, "margin": _num(r.margin), "margin_low": _num(r.margin_low),
                    "margin_high": _num(r.margin_high), "mde": _num(r.mde), "headline": bool(r.headline),
                    "answers": r.answers})
    return out


# ---------------------------------------------------------------------- tables
def _fmt(x: float | None) -> str:
    if x is None or math.isnan(x):
        return MISSING
    text = f"{x:.3f}"
    return "0.000" if text == "-0.000" else text


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(c, c) for c in text)


def _metric_order(task: str, metrics: set[str], main: str | None) -> list[str]:
    spec = _task_spec(task)
    spec_order = [m.name for m in spec.metrics] if spec is not None else []
    rank = {name: i for i, name in enumerate(spec_order)}
    return sorted(metrics, key=lambda m: (m != main, rank.get(m, len(rank)), m))


def _method_order(by_method: dict[str, dict[str, Row]], main: str | None) -> list[str]:
    refs = [m for m in REFERENCE_METHODS if m in by_method]
    others = [m for m in by_method if m not in REFERENCE_METHODS]

    def key(method: str) -> tuple[int, float, str]:
        row = by_method[method].get(main) if main else None
        if row is None or math.isnan(row.mean):
            return (1, 0.0, method)
        if row.direction == "higher":
            return (0, -row.mean, method)
        if row.direction == "lower":
            return (0, row.mean, method)
        return (0, 0.0, method)  # direction "none": by name

    return refs + sorted(others, key=key)


def table_title(task: str, version: str, model: str, group: list[Row]) -> str:
    """``task vX — model (quick profile)``: a table's heading, naming the profile of its rows."""
    profile = next((r.profile for r in group if r.profile), "")
    return f"{task} v{version} — {model}" + (f" ({profile} profile)" if profile else "")


GroupSizes = dict[tuple[str, str, str, str, int], int]


def rank_label(row: Row | None, sizes: GroupSizes) -> str:
    """``"2"``, ``"2="`` when the group has several members (a tie), ``—`` when unranked.

    ``sizes`` is :func:`group_sizes` of all the rows.
    """
    if row is None or row.rank_group is None:
        return MISSING
    shared = sizes.get((row.task, row.task_version, row.model, row.metric, row.rank_group), 0) > 1
    return f"{row.rank_group}=" if shared else str(row.rank_group)


def group_sizes(rows: list[Row]) -> GroupSizes:
    """Members per ``(task, task_version, model, metric, rank_group)``."""
    sizes: dict[tuple[str, str, str, str, int], int] = defaultdict(int)
    for r in rows:
        if r.rank_group is not None:
            sizes[(r.task, r.task_version, r.model, r.metric, r.rank_group)] += 1
    return dict(sizes)


def stability_line(lead: "LeaderStability") -> str:
    """The sentences under a table: the leader's margin over the runner-up with its paired
    interval, its rank stability, and the table's minimum detectable difference."""
    text = f"Leader {lead.method}"
    if lead.runner_up is not None and lead.margin is not None:
        text += (f", ahead of {lead.runner_up} by {_fmt(lead.margin)} [{_fmt(lead.margin_low)}, "
                 f"{_fmt(lead.margin_high)}] (paired)")
    text += (f": first in {100 * lead.stability:.1f}% of bootstrap replicates "
             f"({lead.n_methods} ranked methods).")
    if lead.mde is not None:
        ex = f"{lead.n_examples} examples over {lead.seeds} seed{'s' if lead.seeds != 1 else ''}"
        text += (f" Power: with {ex}, a difference in {lead.metric} smaller than {_fmt(lead.mde)} "
                 "goes undetected (alpha 0.05, power 0.8).")
        if lead.mde > 0.05 and lead.n_examples:
            text += (f" Detecting 0.05 would take about {examples_needed(lead.mde, lead.n_examples, 0.05)} "
                     "examples (`bench power`).")
    return text


def cell_layout(task: str, group: list[Row]) -> tuple[dict[str, dict[str, Row]], dict[str, str], str | None,
                                                     list[str], list[str]]:
    """One (task, version, model)'s rows as a table: ``(method → metric → row, metric → direction,
    main metric, metric order, method order)`` (the orders the module docstring defines)."""
    by_method: dict[str, dict[str, Row]] = defaultdict(dict)
    direction: dict[str, str] = {}
    main: str | None = None
    for r in group:
        by_method[r.method][r.metric] = r
        direction.setdefault(r.metric, r.direction)
        if r.is_main:
            main = r.metric
    return by_method, direction, main, _metric_order(task, set(direction), main), _method_order(by_method, main)


def headline_extra(group: list[Row]) -> list[str]:
    """The headline metrics of one table other than the main one (ranked in their own right)."""
    return sorted({r.metric for r in group if r.headline and not r.is_main})


def answers_of(by_method: dict[str, dict[str, Row]]) -> dict[str, str]:
    """Per method, the question its scores answer (empty when no method of the table says)."""
    out = {m: next((r.answers for r in cells.values() if r.answers), "") for m, cells in by_method.items()}
    return out if any(out.values()) else {}


def _tables(rows: list[Row], latex: bool) -> str:
    r: Row | None  # a row of ``rows`` first, then a method's row of a metric (``None``: not measured)
    sizes = group_sizes(rows)
    leaders = rank_stability(rows)
    others = rank_stability(rows, main=False)
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r.task, r.task_version, r.model)].append(r)

    blocks = []
    for (task, version, model) in sorted(groups):
        group = groups[(task, version, model)]
        by_method, direction, main, metrics, methods = cell_layout(task, group)
        extra = headline_extra(group)
        answers = answers_of(by_method)

        headers = ["method", *(["answers"] if answers else []), "rank", *(f"rank ({m})" for m in extra)]
        for m in metrics:
            arrow = _ARROWS.get(direction[m])
            headers.append(f"{m} {arrow}" if arrow else m)
        if main is not None:
            headers.append(f"norm. {main}")
        headers += ["seeds", "examples"]

        body = []
        seeds_only = False
        for method in methods:
            cells = by_method[method]
            n = max(r.n for r in cells.values())
            line = [method, *([answers.get(method) or MISSING] if answers else []),
                    rank_label(cells.get(main) if main else None, sizes),
                    *(rank_label(cells.get(m), sizes) for m in extra)]
            for m in metrics:
                r = cells.get(m)
                if r is None:
                    line.append(MISSING)
                    continue
                text = f"{_fmt(r.mean)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"
                if r.interval == "seeds":
                    text += SEEDS_ONLY
                    seeds_only = True
                line.append(text if r.n == n else f"{text} (n={r.n})")
            if main is not None:
                r = cells.get(main)
                line.append(_fmt(r.normalised) if r is not None else MISSING)
            n_ex = max(r.n_examples for r in cells.values())
            line += [str(n), str(n_ex) if n_ex else MISSING]
            body.append(line)

        title = table_title(task, version, model, group)
        lead = leaders.get((task, version, model))
        note = stability_line(lead) if lead else ""
        for m in extra:
            more = others.get((task, version, model, m))
            if more:
                note += ("\n\n" if note else "") + f"On {m} (ranked in its own right): " + stability_line(more)
        if seeds_only:
            note += (f"\n\n{SEEDS_ONLY} interval over seeds only: stored without per-example rows "
                     "(an older store); re-run with --force for example-level intervals.")
        if latex:
            table = tabulate(body, headers=headers, tablefmt="latex_booktabs", disable_numparse=True)
            for arrow, cmd in _LATEX_ARROWS.items():
                table = table.replace(arrow, cmd)
            note = f"\n\n{_latex_escape(note)}" if note else ""  # escapes the "%"
            blocks.append(f"\\paragraph{{{_latex_escape(title)}}}\n\n{table}{note}")
        else:
            table = tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
            note = f"\n\n{note}" if note else ""
            blocks.append(f"### {title}\n\n{table}{note}")
    return "\n\n".join(blocks)
