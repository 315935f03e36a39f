"""Example-level statistics: weighted kernels against scikit-learn, bootstrap intervals against the
binomial, paired tests and rank stability on synthetic methods whose differences are known."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from bench.records import CellKey, RunRecord
from bench.samples import (decode, encode, harmonic_mean, make_rows, waverage_precision, wauroc, wfpr_at_tpr,
                           wmean)
from bench.task import CellResult, MetricSpec, Task, TaskSpec
from leaderboard import render as render_mod
from leaderboard import scorer
from leaderboard.render import render
from leaderboard.samples import power
from leaderboard.scorer import score

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ kernels
def _data(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    s = np.round(rng.normal(size=n) + y, 1)  # rounded: many ties
    w = rng.integers(0, 4, size=(5, n)).astype(float)  # bootstrap-like multiplicities, zeros included
    return y, s, w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_auroc_and_ap_equal_sklearn_sample_weight(seed):
    y, s, W = _data(seed)
    got_auc, got_ap = wauroc(y, s, W), waverage_precision(y, s, W)
    for b in range(W.shape[0]):
        assert got_auc[b] == pytest.approx(roc_auc_score(y, s, sample_weight=W[b]), abs=1e-12)
        assert got_ap[b] == pytest.approx(average_precision_score(y, s, sample_weight=W[b]), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_fpr_at_tpr_equals_sklearn_roc_curve(seed):
    y, s, W = _data(seed)
    got = wfpr_at_tpr(y, s, W, 0.95)
    for b in range(W.shape[0]):
        fpr, tpr, _ = roc_curve(y, s, sample_weight=W[b], drop_intermediate=False)
        assert got[b] == pytest.approx(fpr[np.searchsorted(tpr, 0.95 - 1e-12)], abs=1e-12)


def test_kernels_degenerate_and_harmonic_mean():
    y = np.array([1.0, 1.0, 0.0])
    s = np.array([0.2, 0.5, 0.1])
    only_pos = np.array([[1.0, 1.0, 0.0]])  # no negative weight: AUROC undefined
    assert math.isnan(wauroc(y, s, only_pos)[0]) and math.isnan(wfpr_at_tpr(y, s, only_pos)[0])
    assert wmean(np.array([1.0, np.nan, 3.0]), np.array([[2.0, 5.0, 1.0]]))[0] == pytest.approx(5 / 3)
    assert math.isnan(wmean(np.array([1.0, 2.0]), np.zeros((1, 2)))[0])
    hm = harmonic_mean(np.array([1.0, 0.5]), np.array([1.0, 0.5]), np.array([1.0, 0.0]))
    assert hm[0] == pytest.approx(1.0) and hm[1] == 0.0


def test_rows_round_trip_through_storage_encoding():
    rows = make_rows(example=["a", "b", "c"], hash=["1", "2", "3"], kind=["x", "y", "x"],
                     v=[0.1, float("nan"), 1 / 3])
    back = decode(encode(rows))
    assert list(back["example"]) == ["a", "b", "c"] and list(back["kind"]) == ["x", "y", "x"]
    assert back["v"][0] == 0.1 and math.isnan(back["v"][1]) and back["v"][2] == 1 / 3  # exact floats


# ------------------------------------------------------------------ synthetic tasks
class ToyTask(Task):
    """Proportion of hits per example; a mean over ``kind`` strata when rows carry kinds."""

    spec = TaskSpec("toy", "1.0", frozenset({"contrastive"}), "attribute", "acc",
                    (MetricSpec("acc", "higher", "share of hits"),))

    def metrics_from_rows(self, rows, w_BN):
        return {"acc": wmean(rows["hit"], w_BN)}

    def run(self, model, method, seed, quick=False) -> CellResult:  # pragma: no cover - never run
        raise NotImplementedError


@pytest.fixture(autouse=True)
def toy_task(monkeypatch):
    monkeypatch.setattr(scorer, "_task_obj", lambda task: ToyTask() if task == "toy" else None)
    monkeypatch.setattr(scorer, "_task_spec", lambda task: ToyTask.spec if task == "toy" else None)
    monkeypatch.setattr(render_mod, "_task_spec", lambda task: ToyTask.spec if task == "toy" else None)


def toy_record(method: str, seed: int, hits: np.ndarray, ids: list[str] | None = None) -> RunRecord:
    ids = ids or [f"s{seed}-e{i}" for i in range(len(hits))]
    rows = make_rows(example=ids, hash=ids, hit=hits)
    rec = RunRecord(CellKey("toy", "1.0", method, "cfg", "m", seed, "full"), "ok", main_score="acc")
    rec.metrics = ToyTask().metrics_of(rows)
    rec.rows = rows
    return rec


def wilson(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.mark.parametrize("p,n,seeds", [(0.3, 200, 1), (0.625, 64, 2), (0.1, 400, 1)])
def test_bootstrap_interval_of_a_proportion_matches_wilson(p, n, seeds):
    """A proportion over n examples (split over seeds that draw their own examples): the interval's
    width is within 15% of the Wilson interval's at the same n (never a point with one seed)."""
    per = n // seeds
    k = round(p * per)
    recs = [toy_record("a", s, np.r_[np.ones(k), np.zeros(per - k)]) for s in range(seeds)]
    (row,) = score(recs, n_boot=4000)
    lo, hi = wilson(row.mean, n)
    assert row.interval == "examples" and row.n_examples == n
    assert abs((row.ci_high - row.ci_low) / (hi - lo) - 1) < 0.15


def test_crossed_seeds_of_a_deterministic_method_still_get_example_width():
    """Data files give every seed the same examples: a deterministic method's interval is still the
    examples' width, not a point (the old seed bootstrap gave [m, m])."""
    hits = np.r_[np.ones(30), np.zeros(70)]
    ids = [f"e{i}" for i in range(100)]
    (row,) = score([toy_record("a", s, hits, ids) for s in range(3)], n_boot=4000)
    lo, hi = wilson(0.3, 100)
    assert row.n_examples == 100 and abs((row.ci_high - row.ci_low) / (hi - lo) - 1) < 0.15


def test_zero_width_only_when_every_value_is_equal():
    (row,) = score([toy_record("a", 0, np.ones(50))])
    assert row.ci_low == row.ci_high == 1.0


def _paired(n: int, gap: int, seed: int = 0) -> list[RunRecord]:
    """Methods on the same n examples: B is A with ``gap`` of A's hits turned into misses."""
    rng = np.random.default_rng(seed)
    a = (rng.random(n) < 0.5).astype(float)
    b = a.copy()
    b[np.flatnonzero(a)[:gap]] = 0.0
    ids = [f"e{i}" for i in range(n)]
    return [toy_record("A", 0, a, ids), toy_record("B", 0, b, ids), toy_record("A2", 0, a.copy(), ids)]


def test_paired_test_separates_a_known_difference_and_not_identical_methods():
    # B trails A on 24 of 400 examples and never leads: a difference of 0.06, which the
    # unpaired intervals (each about +-0.05) would call a tie; the paired test separates it
    rows = {r.method: r for r in score(_paired(400, 24), n_boot=4000)}
    assert rows["A"].ci_low < rows["B"].ci_high  # the unpaired intervals overlap ...
    assert rows["A"].rank_group == rows["A2"].rank_group == 1  # ... identical methods tie ...
    assert rows["B"].rank_group == 2  # ... and the paired test separates B
    assert rows["A2"].p_value == 1.0 and rows["B"].p_value < 0.05
    lead = rows["A"]  # A and A2 tie on the mean: A leads by name
    assert lead.runner_up == "A2" and lead.margin == 0.0 and lead.margin_low == lead.margin_high == 0.0


def test_rank_stability_of_identical_methods_is_one_half():
    recs = [r for r in _paired(200, 10) if r.key.method in ("A", "A2")]
    (a,) = [r for r in score(recs) if r.rank_stability is not None]
    assert a.rank_stability == pytest.approx(0.5)


def test_no_contradiction_between_ties_and_stability():
    """The issue's case: one method ahead on every seed of the same scenes. Paired, it is separated,
    and the leader's stability agrees with that."""
    rng = np.random.default_rng(3)
    recs = []
    for s in range(3):
        ids = [f"s{s}-e{i}" for i in range(32)]
        a = (rng.random(32) < 0.3).astype(float)
        better = a.copy()
        better[np.flatnonzero(a == 0)[:5]] = 1.0  # 5 more hits on the same scenes, every seed
        recs += [toy_record("saliency", s, a, ids), toy_record("input_x_gradient", s, better, ids)]
    rows = {r.method: r for r in score(recs, n_boot=4000)}
    lead = rows["input_x_gradient"]
    assert lead.rank_group == 1 and rows["saliency"].rank_group == 2
    assert lead.rank_stability == 1.0 and lead.margin_low > 0


def test_power_line_and_examples_needed():
    rows = score(_paired(400, 24), n_boot=2000)
    lead = next(r for r in rows if r.rank_stability is not None)
    assert lead.mde is not None and 0 < lead.mde < 0.2
    md = render(rows, "md")
    assert f"smaller than {lead.mde:.3f} goes undetected (alpha 0.05, power 0.8)" in md
    rep = power(rows, "toy", "m", target=lead.mde / 2)
    # SE scales as 1/sqrt(n): half the difference takes four times the examples
    assert abs(rep.examples_needed - 1600) <= 1


# ------------------------------------------------------------------ normalisation
def test_normalised_only_where_the_oracle_is_a_ceiling():
    """Every metric declared normalisable has a best value; the published leaderboard's oracle reaches
    it on every such metric, and no published normalised score passes 1 by more than rounding."""
    from bench.registry import TASKS

    for name in TASKS.names():
        for m in TASKS.get(name).spec.metrics:
            if m.normalise:
                assert m.best is not None and m.direction != "none", (name, m.name)
    published = json.loads((ROOT / "leaderboard" / "default.json").read_text())
    specs = {name: TASKS.get(name).spec for name in TASKS.names()}
    checked = 0
    for r in published:
        spec = specs[r["task"]]
        if r["task_version"] != spec.version:
            continue
        m = spec.metric(r["metric"])
        if r["method"] == "oracle" and m.normalise:
            assert r["mean"] == pytest.approx(m.best, abs=1e-9), (r["task"], r["model"], r["metric"])
            checked += 1
        if r["normalised"] is not None:
            assert m.normalise and r["normalised"] <= 1 + 1e-6, (r["task"], r["model"], r["method"], r["metric"])
    assert checked > 0


# ------------------------------------------------------------------ exported samples
def test_metrics_recomputed_from_exported_csv_with_pandas_alone(tmp_path, capsys, monkeypatch):
    """`bench samples` exports a cell's rows; pandas alone recomputes the stored figures from the CSV."""
    import io

    import pandas as pd

    from bench.app.cli import main
    from bench.harness.store import Store

    monkeypatch.undo()  # the real registry's tasks, not the toy one
    store = tmp_path / "s.sqlite"
    assert main(["evaluate", "--task", "spurious", "--model", "zoo-clip-spurious", "--method", "random",
                 "--no-references", "--seed", "0", "--seed", "1", "--quick", "--jobs", "1", "--no-progress",
                 "--no-table", "--store", str(store)]) == 0
    capsys.readouterr()
    assert main(["samples", "--task", "spurious", "--model", "zoo-clip-spurious", "--store", str(store)]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    recs = {r.key.seed: r for r in Store(store).records()}
    stored = list(Store(store).records(rows=True))
    assert sorted(df.seed.unique()) == [0, 1] and len(df) == sum(len(r.rows["example"]) for r in stored)
    for seed, part in df.groupby("seed"):
        groups = part.groupby("group").correct.mean()
        base = part.groupby("group").base_correct.mean()
        m = recs[int(seed)].metrics
        assert groups.min() == pytest.approx(m["worst_group_accuracy"], abs=1e-12)
        assert groups.mean() == pytest.approx(m["average_accuracy"], abs=1e-12)
        assert groups.min() - base.min() == pytest.approx(m["worst_group_gain"], abs=1e-12)
