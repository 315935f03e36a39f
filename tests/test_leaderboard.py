"""Leaderboard scoring and rendering on hand-built records (no model runs)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from bench.errors import BenchError
from bench.records import CellKey, RunRecord
from bench.harness.store import Store
from bench.task import MetricSpec, TaskSpec
from leaderboard import render as render_mod
from leaderboard import scorer
from leaderboard.render import EMPTY_MESSAGE, render
from leaderboard.scorer import AggregateRow, Row, aggregate, bootstrap_ci, rank_groups, rank_stability, score

TASK = "toy"  # not registered; the autouse fixture gives it a spec (acc and err normalised)


def rec(method: str, seed: int, metrics: dict[str, float], *, task: str = TASK, version: str = "1.0",
        model: str = "m", status: str = "ok", main: str = "acc", profile: str = "full",
        cfg: str = "cfg0") -> RunRecord:
    key = CellKey(task=task, task_version=version, method=method, method_config_hash=cfg, model=model,
                  seed=seed, profile=profile)
    return RunRecord(key=key, status=status, metrics=dict(metrics), main_score=main,
                     error="boom" if status == "failed" else None)


def make_store(tmp_path, records: list[RunRecord]) -> Store:
    store = Store(tmp_path / "s.sqlite")
    for r in records:
        store.put(r)
    return store


def find(rows: list[Row], **kw) -> Row:
    hits = [r for r in rows if all(getattr(r, k) == v for k, v in kw.items())]
    assert len(hits) == 1, (kw, hits)
    return hits[0]


@pytest.fixture(autouse=True)
def fake_spec(monkeypatch):
    """Register a spec for TASK without touching the global registry."""
    spec = TaskSpec(name=TASK, version="1.0", families=frozenset({"contrastive"}), capability="attribute",
                    main_score="acc",
                    metrics=(MetricSpec("acc", "higher", "accuracy"),
                             MetricSpec("err", "lower", "error"),
                             MetricSpec("sanity", "lower", "sanity check", normalise=False)))
    # every task name of these tests (toy, t1, t2, ...) reads this spec
    monkeypatch.setattr(scorer, "_task_spec", lambda task: spec)
    monkeypatch.setattr(render_mod, "_task_spec", lambda task: spec)
    return spec


# ------------------------------------------------------------------- scoring
def test_mean_and_bootstrap_ci_golden(tmp_path):
    store = make_store(tmp_path, [rec("saliency", s, {"acc": v}) for s, v in enumerate([0.2, 0.4, 0.6])])
    rows = score(store.records())
    r = find(rows, method="saliency", metric="acc")
    assert r.n == 3
    assert r.mean == pytest.approx(0.4, abs=1e-12)
    # Resample means of 3 values take 10 distinct values; all-0.2 (or all-0.6) has
    # probability 1/27 ≈ 3.7% > 2.5%, so the 95% percentile interval is exactly [0.2, 0.6].
    assert 0.2 <= r.ci_low <= r.ci_high <= 0.6
    assert r.ci_low == pytest.approx(0.2, abs=1e-12)
    assert r.ci_high == pytest.approx(0.6, abs=1e-12)
    again = find(score(store.records()), method="saliency", metric="acc")
    assert (again.ci_low, again.ci_high, again.mean) == (r.ci_low, r.ci_high, r.mean)


def test_bootstrap_ci_matches_normal_approximation():
    # 5 seeds 0.1..0.5: mean 0.3, bootstrap s.e. = sqrt(pop. var / n) = sqrt(0.02 / 5) ≈ 0.0632,
    # so the 95% interval is about 0.3 ± 1.96 · 0.0632 = [0.176, 0.424].
    vals = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    lo, hi = bootstrap_ci(vals, 2000, np.random.default_rng(0))
    assert lo == pytest.approx(0.176, abs=0.03)
    assert hi == pytest.approx(0.424, abs=0.03)
    assert bootstrap_ci(np.array([0.7]), 2000, np.random.default_rng(0)) == (0.7, 0.7)
    same = np.array([0.1, 0.1, 0.1])
    assert bootstrap_ci(same, 2000, np.random.default_rng(0)) == (float(np.mean(same)),) * 2


def test_single_seed_ci_is_the_mean():
    r = find(score([rec("saliency", 0, {"acc": 0.3})]), metric="acc")
    assert (r.mean, r.ci_low, r.ci_high, r.n) == (0.3, 0.3, 0.3, 1)


def test_normalised_score_hand_computed(tmp_path):
    store = make_store(tmp_path, [rec("random", 0, {"acc": 0.25}), rec("oracle", 0, {"acc": 1.0}),
                                  rec("saliency", 0, {"acc": 0.625})])
    rows = score(store.records())
    assert find(rows, method="saliency").normalised == pytest.approx(0.5)
    assert find(rows, method="random").normalised == pytest.approx(0.0)
    assert find(rows, method="oracle").normalised == pytest.approx(1.0)
    assert all(r.is_main for r in rows)


def test_normalised_none_cases(fake_spec):
    records = [rec("random", 0, {"acc": 0.5, "sanity": 1.0, "err": 0.4}),
               rec("oracle", 0, {"acc": 0.5, "sanity": 1.0, "err": 0.0}),
               rec("saliency", 0, {"acc": 0.7, "sanity": 0.2, "err": 0.1})]
    rows = score(records)
    assert find(rows, method="saliency", metric="acc").normalised is None  # |oracle - random| < 1e-9
    assert find(rows, method="saliency", metric="sanity").normalised is None  # normalise=False
    assert find(rows, method="saliency", metric="err").normalised == pytest.approx(0.75)  # lower is better
    assert find(rows, method="saliency", metric="err").direction == "lower"
    # No references at all on another model.
    assert score([rec("saliency", 0, {"acc": 0.7}, model="other")])[0].normalised is None


def test_task_versions_never_mixed(tmp_path):
    store = make_store(tmp_path, [rec("saliency", 0, {"acc": 0.2}, version="1.0"),
                                  rec("saliency", 1, {"acc": 0.4}, version="1.0"),
                                  rec("saliency", 0, {"acc": 0.9}, version="2.0"),
                                  rec("random", 0, {"acc": 0.0}, version="2.0"),
                                  rec("oracle", 0, {"acc": 1.0}, version="2.0"),
                                  rec("random", 0, {"acc": 0.1}, version="1.0"),
                                  rec("oracle", 0, {"acc": 0.5}, version="1.0")])
    rows = score(store.records())
    v1 = find(rows, method="saliency", task_version="1.0")
    v2 = find(rows, method="saliency", task_version="2.0")
    assert (v1.n, v1.mean) == (2, pytest.approx(0.3))
    assert (v2.n, v2.mean) == (1, pytest.approx(0.9))
    assert v1.normalised == pytest.approx((0.3 - 0.1) / (0.5 - 0.1))  # v1.0 references only
    assert v2.normalised == pytest.approx(0.9)
    md = render(rows, "md")
    assert "### toy v1.0 — m" in md and "### toy v2.0 — m" in md


def test_failed_records_ignored(tmp_path):
    store = make_store(tmp_path, [rec("saliency", 0, {"acc": 0.2}), rec("saliency", 1, {"acc": 0.4}),
                                  rec("saliency", 2, {}, status="failed")])
    for records in (store.records(), store.records(status=None)):
        r = find(score(records), method="saliency")
        assert (r.n, r.mean) == (2, pytest.approx(0.3))


def test_nan_values_reduce_n_and_missing_metric_not_filled():
    records = [rec("saliency", 0, {"acc": 0.2, "extra": 1.0}), rec("saliency", 1, {"acc": float("nan")}),
               rec("saliency", 2, {"acc": 0.4}), rec("gradcam", 0, {"acc": 0.5})]
    rows = score(records)
    acc = find(rows, method="saliency", metric="acc")
    assert (acc.n, acc.mean) == (2, pytest.approx(0.3))
    assert find(rows, method="saliency", metric="extra").n == 1
    assert not [r for r in rows if r.method == "gradcam" and r.metric == "extra"]
    assert not [r for r in score([rec("x", 0, {"acc": float("nan")})])]  # all NaN: no row


def test_mixed_profiles_rejected():
    with pytest.raises(BenchError, match="profile"):
        score([rec("saliency", 0, {"acc": 0.2}, profile="quick"), rec("saliency", 0, {"acc": 0.4})])


def test_deterministic_and_order_independent(tmp_path):
    records = [rec(m, s, {"acc": (s * 7 + len(m)) % 10 / 10, "err": s / 10})
               for m in ("random", "oracle", "saliency", "gradcam") for s in range(4)]
    a = score(records)
    b = score(list(reversed(records)))
    assert a == b
    store = make_store(tmp_path, records)
    for fmt in ("md", "csv", "latex", "json"):
        assert render(score(store.records()), fmt) == render(score(store.records()), fmt)


# ------------------------------------------------------------------ rendering
def test_missing_metric_renders_dash(fake_spec):
    rows = score([rec("random", 0, {"acc": 0.25, "err": 0.5}), rec("oracle", 0, {"acc": 1.0, "err": 0.0}),
                  rec("saliency", 0, {"acc": 0.625})])
    md = render(rows, "md")
    line = next(l for l in md.splitlines() if l.startswith("| saliency"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    header = next(l for l in md.splitlines() if l.startswith("| method"))
    names = [c.strip() for c in header.strip("|").split("|")]
    assert names == ["method", "rank", "acc ↑", "err ↓", "norm. acc", "seeds", "examples"]
    assert cells[names.index("rank")] == "1"
    assert cells[names.index("err ↓")] == "—"
    assert cells[names.index("norm. acc")] == "0.500"
    assert cells[names.index("acc ↑")] == "0.625 [0.625, 0.625]†"  # a record without rows: seeds only
    assert "† interval over seeds only" in md
    latex = render(rows, "latex")
    assert r"\begin{tabular}" in latex and r"$\downarrow$" in latex and "—" in latex


def test_method_order_references_first_then_best(fake_spec):
    rows = score([rec("oracle", 0, {"acc": 1.0}), rec("random", 0, {"acc": 0.0}),
                  rec("aaa", 0, {"acc": 0.3}), rec("zzz", 0, {"acc": 0.9}), rec("mmm", 0, {"acc": 0.6})])
    md = render(rows, "md")
    order = [l.strip("|").split("|")[0].strip() for l in md.splitlines() if l.startswith("| ")][1:]
    assert order == ["random", "oracle", "zzz", "mmm", "aaa"]


def test_method_configurations_are_separate_rows():
    rows = score([rec("saliency", 0, {"acc": 0.2}, cfg="aaaaaa111"), rec("saliency", 0, {"acc": 0.4}, cfg="bbbbbb222"),
                  rec("gradcam", 0, {"acc": 0.5})])
    assert sorted({r.method for r in rows}) == ["gradcam", "saliency@aaaaaa", "saliency@bbbbbb"]


def test_json_and_csv_columns(tmp_path):
    store = make_store(tmp_path, [rec("saliency", s, {"acc": v}) for s, v in enumerate([0.2, 0.4, 0.6])])
    rows = score(store.records())
    data = json.loads(render(rows, "json"))
    keys = ["task", "task_version", "model", "method", "metric", "mean", "ci_low", "ci_high", "n",
            "direction", "normalised", "is_main", "rank_group", "rank_stability", "n_examples", "interval",
            "p_value", "runner_up", "margin", "margin_low", "margin_high", "mde", "headline", "answers"]
    assert [list(d) for d in data] == [keys]
    assert data[0]["mean"] == 0.4 and data[0]["normalised"] is None and data[0]["is_main"] is True
    assert data[0]["rank_group"] == 1 and data[0]["rank_stability"] is None  # one method: nothing to rank against
    table = list(csv.DictReader(io.StringIO(render(rows, "csv"))))
    assert list(table[0]) == keys and table[0]["n"] == "3" and table[0]["rank_group"] == "1"


def test_empty_and_unknown_format():
    assert render([], "md") == EMPTY_MESSAGE
    assert json.loads(render([], "json")) == []
    with pytest.raises(BenchError, match="unknown leaderboard format"):
        render([], "html")


# ------------------------------------------------------- ranks, ties, stability
def md_column(md: str, title: str, column: str) -> dict[str, str]:
    """``{method: cell}`` of ``column`` in the Markdown table under ``### title``."""
    block = md.split(f"### {title}")[1].split("###")[0]
    lines = [l for l in block.splitlines() if l.startswith("| ")]
    names = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = cells[names.index(column)]
    return out


def test_rank_groups_golden_direct():
    """Paired replicates built by hand: a and b differ by a constant 0 (identical: a tie), c trails a
    by 0.1 on every replicate (separated), d and e are identical and trail c (group 2 together)."""
    base = np.linspace(0.4, 0.9, 2000)
    reps = {"a": base, "b": base.copy(), "c": base - 0.1, "d": base - 0.3, "e": base - 0.3}
    means = {m: float(v.mean()) for m, v in reps.items()}
    groups, pvals = rank_groups(reps, means, "higher")
    assert groups == {"a": 1, "b": 1, "c": 2, "d": 3, "e": 3}
    assert pvals["b"] == 1.0 and pvals["e"] == 1.0
    # Holm over the four comparisons with a: c, d, e have the smallest raw p, 2/2001, times 4
    assert pvals["c"] == pytest.approx(4 * 2 / 2001)
    lower, _ = rank_groups(reps, means, "lower")
    assert lower == {"d": 1, "e": 1, "c": 2, "a": 3, "b": 3}
    with pytest.raises(BenchError, match="direction"):
        rank_groups(reps, means, "none")


def test_rank_groups_from_scores_and_ties_marked_in_md():
    # gradcam CI [0.7, 0.7]; occlusion [0.5, 0.5]; saliency exactly [0.2, 0.6] (see the CI golden test above)
    records = [rec("random", s, {"acc": 0.1}) for s in range(3)] + [rec("oracle", s, {"acc": 1.0}) for s in range(3)]
    records += [rec("gradcam", s, {"acc": 0.7}) for s in range(3)]
    records += [rec("occlusion", s, {"acc": 0.5}) for s in range(3)]
    records += [rec("saliency", s, {"acc": v}) for s, v in enumerate([0.2, 0.4, 0.6])]
    rows = score(records)
    groups = {r.method: r.rank_group for r in rows}
    assert groups == {"random": None, "oracle": None, "gradcam": 1, "occlusion": 2, "saliency": 2}
    ranks = md_column(render(rows, "md"), "toy v1.0 — m", "rank")
    assert ranks == {"random": "—", "oracle": "—", "gradcam": "1", "occlusion": "2=", "saliency": "2="}
    assert {d["method"]: d["rank_group"] for d in json.loads(render(rows, "json"))} == groups
    assert {d["method"]: d["rank_group"] for d in csv.DictReader(io.StringIO(render(rows, "csv")))} == \
        {m: "" if g is None else str(g) for m, g in groups.items()}
    # single seeds: points never overlap unless equal
    pts = score([rec("a", 0, {"acc": 0.5}), rec("b", 0, {"acc": 0.5}), rec("c", 0, {"acc": 0.3})])
    assert {r.method: r.rank_group for r in pts} == {"a": 1, "b": 1, "c": 2}


def test_rank_groups_follow_direction(fake_spec):
    rows = score([rec("a", 0, {"acc": 0.9, "err": 0.3}), rec("b", 0, {"acc": 0.5, "err": 0.1})])
    assert find(rows, method="a", metric="acc").rank_group == 1
    assert find(rows, method="b", metric="err").rank_group == 1  # lower is better
    assert find(rows, method="a", metric="err").rank_group == 2


def test_rank_stability_golden():
    # A's seeds 0.0 and 1.0: resample means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4. B is a point.
    # vs B = 0.4: A stays first when its resample mean is 0.5 or 1 -> 3/4.
    rows = score([rec("A", 0, {"acc": 0.0}), rec("A", 1, {"acc": 1.0}), rec("B", 0, {"acc": 0.4})], n_boot=20000)
    a = find(rows, method="A")
    assert a.rank_stability == pytest.approx(0.75, abs=0.015)  # s.e. sqrt(.75 * .25 / 20000) = 0.003
    assert find(rows, method="B").rank_stability is None  # only on the leader's row
    assert (a.rank_group, find(rows, method="B").rank_group) == (1, 1)  # A's CI [0, 1] covers 0.4: a tie
    lead = rank_stability(rows)
    assert list(lead) == [(TASK, "1.0", "m")]
    assert (lead[(TASK, "1.0", "m")].method, lead[(TASK, "1.0", "m")].n_methods) == ("A", 2)
    # vs B = 0.0: A's mean-0 replicates (1/4) tie B for first and count 1/2 -> 3/4 + 1/8 = 7/8
    tie = score([rec("A", 0, {"acc": 0.0}), rec("A", 1, {"acc": 1.0}), rec("B", 0, {"acc": 0.0})], n_boot=20000)
    assert find(tie, method="A").rank_stability == pytest.approx(0.875, abs=0.012)
    # a leader whose every resample beats every other: exactly 1
    clear = score([rec("A", s, {"acc": 0.9}) for s in range(3)] + [rec("B", s, {"acc": v}) for s, v in
                                                                      enumerate([0.1, 0.2, 0.3])])
    assert find(clear, method="A").rank_stability == 1.0
    md = render(clear, "md")
    assert "first in 100.0% of bootstrap replicates (2 ranked methods)." in md
    assert "Leader A, ahead of B by 0.700 [0.600, 0.800] (paired)" in md
    # one ranked method (references do not count): nothing to be unstable against
    alone = score([rec("A", 0, {"acc": 0.5}), rec("random", 0, {"acc": 0.1}), rec("oracle", 0, {"acc": 1.0})])
    assert find(alone, method="A").rank_stability is None and rank_stability(alone) == {}
    assert "Leader" not in render(alone, "md")


def test_rank_stability_lower_is_better_and_deterministic(fake_spec):
    records = [rec("A", 0, {"err": 0.0}, main="err"), rec("A", 1, {"err": 1.0}, main="err"),
               rec("B", 0, {"err": 0.6}, main="err")]
    rows = score(records, n_boot=20000)
    a = find(rows, method="A", metric="err")
    assert a.is_main and a.rank_stability == pytest.approx(0.75, abs=0.015)  # A first when its mean is 0 or 0.5
    again = find(score(list(reversed(records)), n_boot=20000), method="A", metric="err")
    assert again.rank_stability == a.rank_stability  # bit-identical, whatever the record order
    assert find(score(records, n_boot=20000, seed=1), method="A", metric="err").rank_stability != a.rank_stability


def cell_records(task: str, model: str, scores: dict[str, float]) -> list[RunRecord]:
    """One seed per method with references at 0 and 1, so normalised = raw score."""
    out = [rec("random", 0, {"acc": 0.0}, task=task, model=model),
           rec("oracle", 0, {"acc": 1.0}, task=task, model=model)]
    return out + [rec(m, 0, {"acc": v}, task=task, model=model) for m, v in scores.items()]


def test_aggregate_averages_only_common_cells():
    records = (cell_records("t1", "m1", {"A": 0.2, "B": 0.6}) + cell_records("t1", "m2", {"A": 0.9})
               + cell_records("t2", "m1", {"A": 0.4, "B": 0.8})
               # a cell without references: A and B have rows there, but no normalised score
               + [rec("A", 0, {"acc": 0.5}, task="t3"), rec("B", 0, {"acc": 0.5}, task="t3")])
    agg = aggregate(score(records))
    assert [a.method for a in agg] == ["B", "A"]
    b, a = agg
    common = [("t1", "1.0", "m1"), ("t2", "1.0", "m1")]
    assert (a.n_common, b.n_common) == (2, 2)
    assert a.mean == pytest.approx((0.2 + 0.4) / 2)  # not (0.2 + 0.9 + 0.4) / 3: B lacks (t1, m2)
    assert b.mean == pytest.approx((0.6 + 0.8) / 2)
    assert list(a.cells) == sorted(common + [("t1", "1.0", "m2"), ("t3", "1.0", "m")])
    assert a.cells[("t1", "1.0", "m2")] == pytest.approx(0.9) and b.cells[("t1", "1.0", "m2")] is None
    assert a.cells[("t3", "1.0", "m")] is None and b.cells[("t3", "1.0", "m")] is None
    assert (a.n_cells, b.n_cells) == (3, 2)
    # compared set chosen by the caller: A alone averages over all three of its cells
    (only_a,) = aggregate(score(records), methods=["A"])
    assert only_a.mean == pytest.approx((0.2 + 0.9 + 0.4) / 3) and only_a.n_common == 3
    assert isinstance(only_a, AggregateRow)


def test_aggregate_averages_the_largest_gap_free_block():
    """One method that only runs on another model must not empty everyone's mean: the block
    {c1, c2, c3} x {A, B, C} (9 entries) beats {c1..c4} x {A, B} (8); D gets no mean."""
    records = []
    for m, who in (("c1", "ABC"), ("c2", "ABC"), ("c3", "ABC"), ("c4", "ABD")):
        records += cell_records("t", m, {x: 0.1 * (i + 1) for i, x in enumerate("ABCD") if x in who})
    agg = {a.method: a for a in aggregate(score(records))}
    assert {m: a.n_common for m, a in agg.items()} == {"A": 3, "B": 3, "C": 3, "D": 0}
    assert agg["D"].mean is None and agg["D"].cells[("t", "1.0", "c4")] == pytest.approx(0.4)
    assert agg["C"].mean == pytest.approx(0.3) and agg["A"].mean == pytest.approx(0.1)


def test_aggregate_without_common_cells_gives_no_mean():
    records = cell_records("t1", "m1", {"A": 0.2}) + cell_records("t2", "m1", {"B": 0.6})
    agg = aggregate(score(records))
    assert [(a.method, a.mean, a.n_common, a.n_cells) for a in agg] == [("A", None, 0, 1), ("B", None, 0, 1)]
    assert aggregate([]) == []
