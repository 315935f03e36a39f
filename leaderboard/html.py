"""Static HTML leaderboard: ``DIR/index.html`` plus the PNG figures it shows, beside it.

The page needs no network to view: CSS and JavaScript are inline (no CDN, no web
fonts), images are referenced by relative file name. A Content-Security-Policy lets
only the page's own script run (pinned by its SHA-256), so even a string that slipped
past escaping could not execute. Every string that comes from records (task, model,
method and metric names, versions) is escaped with :func:`html.escape`.

What the page holds:

- **Overview** — per task, the :func:`~leaderboard.scorer.aggregate` of its rows: one
  line per method with the normalised main score in each ``(version, model)`` cell
  (``—`` where missing) and the mean over the cells every compared method has (never
  over cells some method lacks); then the same across all tasks.
- **One section per (task, task_version, model)** — a sortable table (click a column
  header: the first click sorts best first for a metric, A→Z / ascending otherwise;
  a second click reverses; missing values stay last), with the same columns as the
  Markdown table (rank group, ``mean [CI]`` per metric, normalised main score, ``n``),
  the leader's rank stability, and a bar chart of the main metric with 95% CI
  whiskers (references in grey, rank group 1 highlighted).
- **Faithfulness vs planted truth** (when the rows hold localization results with faithfulness) —
  :mod:`leaderboard.agreement`'s table, as the Markdown leaderboard prints it under its tables:
  per model, Kendall τ-b between each faithfulness metric's ranking of the methods and each planted
  truth's, with its 95% paired bootstrap interval and verdict (sortable like the other tables).
- **Gallery** (optional) — attribution maps over scenes and a layer × position
  causal-tracing map, computed by :mod:`leaderboard.gallery`.

Deterministic: the same rows (and the same gallery figures) give the same bytes; no
timestamp is written. Figures are drawn with matplotlib's Agg canvas (no pyplot).
"""

from __future__ import annotations

import base64
import hashlib
import math
import zlib
from collections import defaultdict
from html import escape
from pathlib import Path
from typing import Sequence

from bench.errors import BenchError
from leaderboard.agreement import AgreementRow
from leaderboard.gallery import GalleryConfig, GalleryFigure, build_gallery, mpl_text, new_figure, png_bytes, slug
from leaderboard.render import (EMPTY_MESSAGE, MISSING, GroupSizes, _fmt, answers_of, cell_layout, group_sizes,
                                headline_extra, rank_label, stability_line, table_title)
from leaderboard.scorer import REFERENCE_METHODS, AggregateRow, Row, _task_spec, aggregate, rank_stability

INDEX = "index.html"
_ARROWS = {"higher": "↑", "lower": "↓"}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem auto; max-width: 78rem;
       padding: 0 1rem; color: #1d1d1f; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; } h3 { margin-top: 1.6rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .88rem; }
th, td { border: 1px solid #d0d0d7; padding: .25rem .5rem; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f7; cursor: pointer; user-select: none; }
th:hover { background: #e4e4ee; }
th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: .7em; }
th[aria-sort="descending"]::after { content: " \\25BC"; font-size: .7em; }
tr.ref td { color: #666; font-style: italic; }
tr.g1 td:first-child { font-weight: 600; }
.ci { color: #777; font-size: .85em; }
.note { color: #555; font-size: .9rem; }
.cell { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
figure { margin: .5rem 0; } figcaption { color: #555; font-size: .85rem; max-width: 60rem; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
nav ul { columns: 2; font-size: .9rem; }
.error { color: #a00; }
"""

# Plain inline JS: a click on a header sorts the body rows by the cells' data-sort values.
JS = """
(function () {
  function cmp(a, b, num) {
    if (a === b) return 0;
    if (a === "") return 1;
    if (b === "") return -1;
    if (num) return parseFloat(a) - parseFloat(b);
    return a < b ? -1 : 1;
  }
  function sortBy(table, col, th) {
    var current = th.getAttribute("aria-sort");
    var dir = current ? (current === "ascending" ? "descending" : "ascending")
                      : (th.getAttribute("data-first") || "ascending");
    var heads = table.tHead.rows[0].cells;
    for (var i = 0; i < heads.length; i++) heads[i].removeAttribute("aria-sort");
    th.setAttribute("aria-sort", dir);
    var num = th.getAttribute("data-type") === "num";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r, s) {
      var a = r.cells[col].getAttribute("data-sort"), b = s.cells[col].getAttribute("data-sort");
      if (a === "" || b === "") return cmp(a, b, num);  /* missing last, whichever direction */
      var c = cmp(a, b, num);
      return dir === "ascending" ? c : -c;
    });
    for (var k = 0; k < rows.length; k++) body.appendChild(rows[k]);
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortBy(table, col, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, col, th); }
      });
    });
  });
})();
"""

DEFINITIONS = (
    "Means are over seeds; the brackets are 95% bootstrap intervals that resample the examples (and "
    "seeds, where every seed scores the same examples), recomputing the metric on each resample; "
    "† marks an interval over seeds only (a record without per-example rows). <b>rank</b>: the "
    "statistical rank group on the main metric — the leader and every method whose paired bootstrap "
    "test against it (same examples, Holm-corrected, alpha 0.05) does not separate them share group 1, "
    "then the rule repeats on the rest; <b>1=</b> marks a group with several members (a tie). "
    "The references <i>random</i> (chance) and <i>oracle</i> (ground truth) are not ranked. "
    "<b>norm.</b>: (m − random) / (oracle − random), 0 = chance, 1 = oracle, only where the oracle is a "
    "ceiling by construction. <b>Rank stability</b>: the share of the paired replicates in which the "
    "leader stays first. <b>Power</b>: the smallest difference the table can detect (alpha 0.05, power "
    "0.8). The overview averages normalised main scores only over the cells that every compared method "
    "has; a missing cell shows —.")


# ------------------------------------------------------------------- helpers
def _num(x: float | None) -> str:
    """A data-sort value: full precision, or empty for missing (sorted last)."""
    if x is None or not math.isfinite(x):
        return ""
    return repr(round(float(x), 12) + 0.0)


def _cell_id(task: str, version: str, model: str) -> str:
    """An HTML id / file stem for a cell: readable slug plus a checksum of the exact key."""
    crc = zlib.crc32("\x1f".join((task, version, model)).encode("utf-8"))
    return f"{slug(task)}-v{slug(version)}-{slug(model)}-{crc:08x}"


def _th(label: str, kind: str, first: str = "ascending", title: str = "") -> str:
    tip = f' title="{escape(title)}"' if title else ""
    return f'<th data-type="{kind}" data-first="{first}"{tip}>{escape(label)}</th>'


def _td(text_html: str, sort: str) -> str:
    return f'<td data-sort="{escape(sort)}">{text_html}</td>'


def _first_for(direction: str) -> str:
    return "descending" if direction == "higher" else "ascending"


# -------------------------------------------------------------------- charts
def bar_chart(rows: Sequence[Row], methods: Sequence[str], sizes: GroupSizes) -> bytes:
    """Horizontal bars of one cell's main metric per method (table order, top first), 95% CI whiskers."""
    by_method = {r.method: r for r in rows}
    shown = [m for m in methods if m in by_method]
    first = by_method[shown[0]]
    fig = new_figure(6.4, 0.38 * len(shown) + 1.3)
    ax = fig.subplots()
    ys = list(range(len(shown)))[::-1]
    for y, m in zip(ys, shown):
        r = by_method[m]
        colour = "#b0b0b8" if m in REFERENCE_METHODS else ("#3b6fd8" if r.rank_group == 1 else "#8fb0ec")
        lo, hi = max(0.0, r.mean - r.ci_low), max(0.0, r.ci_high - r.mean)
        ax.barh(y, r.mean, color=colour, height=0.7)
        ax.errorbar(r.mean, y, xerr=[[lo], [hi]], fmt="none", ecolor="#222", capsize=3, linewidth=1)
    labels = []
    for m in shown:
        tag = rank_label(by_method[m], sizes)
        labels.append(mpl_text(m if tag == MISSING else f"{m}  ({tag})"))
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    arrow = {"higher": " (higher is better)", "lower": " (lower is better)"}.get(first.direction, "")
    ax.set_xlabel(mpl_text(f"{first.metric}{arrow}, mean and 95% CI"), fontsize=8)
    ax.set_title(mpl_text(f"{first.task} v{first.task_version} — {first.model}"), fontsize=9)
    ax.axvline(0.0, color="#444", linewidth=0.6)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", color="#e4e4e4", linewidth=0.6)
    ax.set_axisbelow(True)
    return png_bytes(fig)


# --------------------------------------------------------------------- parts
def _aggregate_table(agg: list[AggregateRow], label_of: dict[tuple[str, str, str], str]) -> str:
    cells = list(agg[0].cells) if agg else []
    n_common = max((a.n_common for a in agg), default=0)
    left_out = [a.method for a in agg if a.mean is None]
    head = [_th("method", "text")] + [_th(label_of[c], "num", "descending") for c in cells]
    head.append(_th(f"mean over {n_common} shared cell{'' if n_common == 1 else 's'}", "num", "descending",
                    "mean normalised main score over the cells every averaged method has"))
    head.append(_th("cells", "num", "descending", "cells this method has (a normalised main score)"))
    body = []
    for a in agg:
        tds = [_td(escape(a.method), a.method)]
        tds += [_td(escape(_fmt(a.cells[c])), _num(a.cells[c])) for c in cells]
        tds.append(_td(escape(_fmt(a.mean)), _num(a.mean)))
        tds.append(_td(str(a.n_cells), str(a.n_cells)))
        body.append(f"<tr>{''.join(tds)}</tr>")
    if not n_common:
        note = '<p class="note">No cell is shared by two methods here, so no mean is computed: compare per cell.</p>'
    elif left_out:
        note = (f'<p class="note">Means run over the {n_common} cell{"" if n_common == 1 else "s"} shared by the most '
                f'methods; {escape(", ".join(left_out))} lack{"s" if len(left_out) == 1 else ""} one of them and '
                "get no mean (compare per cell).</p>")
    else:
        note = ""
    return (f'<table class="sortable overview"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>{note}')


def overview(rows: Sequence[Row]) -> str:
    """The overview section: per task, then across tasks, :func:`aggregate` tables."""
    tasks = sorted({r.task for r in rows})
    parts = ['<h2 id="overview">Overview: normalised main score</h2>']
    for task in tasks:
        agg = aggregate([r for r in rows if r.task == task])
        if not agg:
            continue
        labels = {c: f"{c[2]} (v{c[1]})" for c in agg[0].cells}
        parts.append(f"<h3>{escape(task)}</h3>" + _aggregate_table(agg, labels))
    if len(tasks) > 1:
        agg = aggregate(rows)
        if agg:
            labels = {c: f"{c[0]} v{c[1]} / {c[2]}" for c in agg[0].cells}
            parts.append("<h3>All tasks</h3>" + _aggregate_table(agg, labels))
    if len(parts) == 1:
        parts.append('<p class="note">No normalisable main score (no method besides the references).</p>')
    return "\n".join(parts)


def cell_table(task: str, version: str, model: str, group: Sequence[Row], sizes: GroupSizes) -> tuple[str, list[str]]:
    """One (task, version, model)'s sortable table, and its method order (references first, best next)."""
    by_method, direction, main, metrics, methods = cell_layout(task, list(group))
    spec = _task_spec(task)
    tips = {m.name: m.description for m in spec.metrics} if spec is not None else {}

    extra = headline_extra(list(group))
    answers = answers_of(by_method)
    head = [_th("method", "text")]
    if answers:
        head.append(_th("answers", "text", "ascending", "the question the method's scores answer"))
    head.append(_th("rank", "num", "ascending", "statistical rank group on the main metric"))
    for m in extra:
        head.append(_th(f"rank ({m})", "num", "ascending", f"statistical rank group on {m} (a second ground truth)"))
    for m in metrics:
        arrow = _ARROWS.get(direction[m])
        label = f"{m} {arrow}" if arrow else m
        head.append(_th(label, "num", _first_for(direction[m]), tips.get(m, "")))
    if main is not None:
        head.append(_th(f"norm. {main}", "num", "descending", "(m − random) / (oracle − random)"))
    head.append(_th("seeds", "num", "descending", "seeds"))
    head.append(_th("examples", "num", "descending", "examples resampled (all seeds)"))

    body = []
    for method in methods:
        cells = by_method[method]
        n = max(r.n for r in cells.values())
        main_row = cells.get(main) if main else None
        classes = ["ref"] if method in REFERENCE_METHODS else []
        if main_row is not None and main_row.rank_group is not None:
            classes.append(f"g{main_row.rank_group}")
        tds = [_td(escape(method), method)]
        if answers:
            tds.append(_td(escape(answers.get(method) or MISSING), answers.get(method, "")))
        for row in (main_row, *(cells.get(m) for m in extra)):
            tds.append(_td(escape(rank_label(row, sizes)),
                           "" if row is None or row.rank_group is None else str(row.rank_group)))
        for m in metrics:
            r = cells.get(m)
            if r is None:
                tds.append(_td(MISSING, ""))
                continue
            ci = f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"
            text = f'{escape(_fmt(r.mean))} <span class="ci">{escape(ci)}</span>'
            if r.interval == "seeds":
                text += ' <span class="ci" title="interval over seeds only">†</span>'
            if r.n != n:
                text += f' <span class="ci">(n={r.n})</span>'
            tds.append(_td(text, _num(r.mean)))
        if main is not None:
            r = cells.get(main)
            value = r.normalised if r is not None else None
            tds.append(_td(escape(_fmt(value)), _num(value)))
        tds.append(_td(str(n), str(n)))
        n_ex = max(r.n_examples for r in cells.values())
        tds.append(_td(str(n_ex) if n_ex else MISSING, str(n_ex)))
        cls = f' class="{" ".join(classes)}"' if classes else ""
        body.append(f'<tr data-method="{escape(method)}"{cls}>{"".join(tds)}</tr>')
    table = (f'<table class="sortable cell-table"><thead><tr>{"".join(head)}</tr></thead>'
             f'<tbody>{"".join(body)}</tbody></table>')
    return table, methods


def gallery_section(figures: Sequence[GalleryFigure], files: dict[str, str]) -> str:
    parts = ['<h2 id="gallery">Gallery</h2>']
    if not figures:
        parts.append('<p class="note">No attribution or localization results to illustrate.</p>')
    for f in figures:
        parts.append(f"<h3>{escape(f.title)}</h3>")
        if f.error or f.key not in files:
            parts.append(f'<p class="error">Not rendered: {escape(f.error or "no image")}</p>')
            continue
        parts.append(f'<figure><img src="{escape(files[f.key])}" alt="{escape(f.title)}">'
                     f"<figcaption>{escape(f.caption)}</figcaption></figure>")
    return "\n".join(parts)


AGREEMENT_ID = "agreement"


def agreement_section(rows: Sequence[AgreementRow]) -> str:
    """The faithfulness-vs-planted-truth table (:func:`leaderboard.agreement.faithfulness_agreement`),
    one row per (model, truth, faithfulness metric), as :func:`leaderboard.agreement.render_agreement`
    writes it in Markdown; empty without rows."""
    if not rows:
        return ""
    head = [_th("model", "text"), _th("truth", "text"), _th("faithfulness", "text"),
            _th("τ", "num", "descending", "Kendall τ-b between the two rankings of the non-reference methods"),
            _th("95% CI", "num", "descending", "paired percentile bootstrap over examples (sorted by its low end)"),
            _th("verdict", "text", "ascending", "agrees: interval above 0; disagrees: below 0"),
            _th("methods", "num", "descending"), _th("examples per seed × seeds", "num", "descending")]
    body = []
    for r in rows:
        tds = [_td(escape(r.model), r.model), _td(f"{escape(r.truth)} (<code>{escape(r.truth_metric)}</code>)", r.truth),
               _td(f"<code>{escape(r.faith_metric)}</code>", r.faith_metric), _td(f"{r.tau:+.2f}", _num(r.tau)),
               _td(f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]", _num(r.ci_low)), _td(escape(r.verdict), r.verdict),
               _td(str(r.n_methods), str(r.n_methods)),
               _td(f"{r.n_examples} × {r.n_seeds}", str(r.n_examples * r.n_seeds))]
        body.append(f"<tr>{''.join(tds)}</tr>")
    note = ("Kendall τ-b between the methods' ranking by each ground-truth-free faithfulness metric and by each "
            "planted truth (storage: top1; mediation: mediation_tau), per model, over the non-reference methods; "
            "95% paired bootstrap interval over examples (leaderboard/agreement.py). faith_cmd is lower-is-better, "
            "so its ranking is reversed before comparing. A disagreement is a finding about the metric, not hidden.")
    return (f'<h2 id="{AGREEMENT_ID}">Localization: does ground-truth-free faithfulness agree with the planted '
            f'truth?</h2>\n<p class="note">{escape(note)}</p>\n'
            f'<table class="sortable agreement"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


# ---------------------------------------------------------------------- page
def page(rows: Sequence[Row], charts: dict[tuple[str, str, str], str], gallery_html: str = "",
         title: str = "MMI-Bench leaderboard", agreement_html: str = "") -> str:
    """The page's HTML text. ``charts`` maps a cell to its chart's relative file name;
    ``agreement_html``: :func:`agreement_section`'s, shown after the results."""
    script_hash = base64.b64encode(hashlib.sha256(JS.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
           f"script-src 'sha256-{script_hash}'")
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f'<meta http-equiv="Content-Security-Policy" content="{escape(csp)}">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{escape(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
           f"<h1>{escape(title)}</h1>"]
    if not rows:
        out += [f'<p class="note">{escape(EMPTY_MESSAGE)}</p>', "</body>", "</html>"]
        return "\n".join(out) + "\n"

    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r.task, r.task_version, r.model)].append(r)
    methods = sorted({r.method for r in rows})
    out.append(f'<p class="note">{len(groups)} (task, version, model) cells, {len(methods)} methods '
               f"(references included), {len({r.metric for r in rows})} metrics. {DEFINITIONS}</p>")
    nav = [f'<li><a href="#{_cell_id(*k)}">{escape(table_title(*k, groups[k]))}</a></li>' for k in sorted(groups)]
    out.append('<nav><ul><li><a href="#overview">Overview</a></li>' + "".join(nav)
               + (f'<li><a href="#{AGREEMENT_ID}">Faithfulness vs planted truth</a></li>' if agreement_html else "")
               + ('<li><a href="#gallery">Gallery</a></li>' if gallery_html else "") + "</ul></nav>")
    out.append(overview(rows))

    sizes = group_sizes(list(rows))
    leaders = rank_stability(rows)
    others = rank_stability(rows, main=False)
    out.append('<h2 id="results">Results per task and model</h2>')
    for key in sorted(groups):
        task, version, model = key
        table, _ = cell_table(task, version, model, groups[key], sizes)
        out.append(f'<section id="{_cell_id(*key)}"><h3>{escape(table_title(task, version, model, groups[key]))}</h3>')
        lead = leaders.get(key)
        if lead is not None:
            out.append(f'<p class="note">{escape(stability_line(lead))}</p>')
        for m in headline_extra(list(groups[key])):
            more = others.get((task, version, model, m))
            if more is not None:
                out.append(f'<p class="note">On {escape(m)} (ranked in its own right): '
                           f'{escape(stability_line(more))}</p>')
        chart = charts.get(key)
        alt = f"bar chart of the main metric: {task} v{version} — {model}"
        img = f'<figure><img src="{escape(chart)}" alt="{escape(alt)}"></figure>' if chart else ""
        out.append(f'<div class="cell">{table}{img}</div></section>')
    if agreement_html:
        out.append(agreement_html)
    if gallery_html:
        out.append(gallery_html)
    out += [f"<script>{JS}</script>", "</body>", "</html>"]
    return "\n".join(out) + "\n"


def write_html(rows: Sequence[Row], out_dir: str | Path, gallery: bool = True,
               gallery_config: GalleryConfig | None = None, agreement: Sequence[AgreementRow] = ()) -> Path:
    """Write ``out_dir/index.html`` and its PNGs (created as needed); returns the page's path.
    ``agreement``: the faithfulness-vs-planted-truth rows (:func:`leaderboard.agreement.
    faithfulness_agreement` of the records ``rows`` were scored from), shown in their own section."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BenchError(f"cannot write the HTML leaderboard into {str(out)!r}: it is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"cannot create folder {str(out)!r}: {e.strerror or e}") from None
    rows = list(rows)

    def save(name: str, data: bytes) -> str:
        try:
            (out / name).write_bytes(data)
        except OSError as e:
            raise BenchError(f"cannot write {str(out / name)!r}: {e.strerror or e}") from None
        return name

    sizes = group_sizes(rows)
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r.task, r.task_version, r.model)].append(r)
    charts: dict[tuple[str, str, str], str] = {}
    for key in sorted(groups):
        main_rows = [r for r in groups[key] if r.is_main]
        if not main_rows:
            continue
        _, methods = cell_table(*key, groups[key], sizes)
        charts[key] = save(f"chart-{_cell_id(*key)}.png", bar_chart(main_rows, methods, sizes))

    gallery_html = ""
    if gallery and rows:
        figures = build_gallery(rows, gallery_config)
        files = {f.key: save(f"gallery-{slug(f.key)}.png", f.png) for f in figures if f.png is not None}
        gallery_html = gallery_section(figures, files)
    index = out / INDEX
    save(INDEX, page(rows, charts, gallery_html, agreement_html=agreement_section(agreement)).encode("utf-8"))
    return index
