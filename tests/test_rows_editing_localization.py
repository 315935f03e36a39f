"""Per-example rows of the editing and localization tasks: the stored metrics are the rows' metrics,
the oracle's rows reach every normalised metric's best value, and the weighted metric functions
give hand-computed figures under non-unit (bootstrap-style) weights."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rows_checks import check_rows

from bench.registry import METHODS
from bench.samples import make_rows
from tasks.editing import EditingTask
from tasks.localization import LocalizationTask, rank_rows

TASKS = {"editing": EditingTask, "localization": LocalizationTask}


def _run(task_name: str, method: str, model, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    task = TASKS[task_name]()
    return task, task.run(model, METHODS.get(method)(), seed=seed, quick=True)


def _oracle_reaches_best(task, result) -> None:
    normalised = [m for m in task.spec.metrics if m.normalise and m.name in result.metrics]
    assert normalised
    for m in normalised:
        assert result.metrics[m.name] == m.best, (m.name, result.metrics[m.name], m.best)


# ------------------------------------------------------------------ editing on zoo-clip
def test_editing_rows_give_the_stored_metrics_and_the_oracle_reaches_best(zoo_clip):
    for method in ("random", "oracle"):
        task, res = _run("editing", method, zoo_clip)
        check_rows(task, res)
        rows = res.rows
        # one row per (case, setting): every case has a single and a batch row, no concept rows
        assert sorted(set(rows["setting"].tolist())) == ["batch", "single"]
        cases = rows["example"][rows["setting"] == "single"].tolist()
        assert len(cases) == task.config.quick_requests
        assert sorted(rows["example"][rows["setting"] == "batch"].tolist()) == sorted(cases)
        assert (rows["quality_before"] == res.metrics["quality_before"]).all()
    # the last one is the oracle: every case's shares are 1 on every probe, in both settings
    for col in ("efficacy", "generalization", "specificity"):
        assert (rows[col] == 1.0).all()
    assert (task.example_quality(rows) == 1.0).all()
    _oracle_reaches_best(task, res)
    assert not task.spec.metric("quality").normalise and not task.spec.metric("batch_quality").normalise


def test_editing_rows_of_a_real_editor(zoo_clip):
    task, res = _run("editing", "rome", zoo_clip)
    check_rows(task, res)
    rows = res.rows
    batch = rows["setting"] == "batch"
    # the batch quality is measured once per relation's batch edit: constant within each relation
    for rel in set(rows["relation"].tolist()):
        assert len(set(rows["quality_after"][batch & (rows["relation"] == rel)].tolist())) == 1


def test_editing_metrics_from_rows_by_hand():
    task = EditingTask()
    rows = make_rows(
        example=["a", "b", "c", "a", "b", "c", "d", "e"], hash=["a", "b", "c", "a", "b", "c", "d", "e"],
        kind=["fact"] * 6 + ["concept"] * 2, relation=["home", "season", "home"] * 2 + ["", ""],
        setting=["single"] * 3 + ["batch"] * 3 + ["concept"] * 2,
        efficacy=[1, 0, 1, 0, 1, 1, 1, 0], generalization=[0.5, 1, 1, 1, 1, 0, 0.5, 0.5],
        specificity=[1, 0.5, 0.25, 0.5, 0.5, 1, 1, 1],
        quality_after=[0.9, 0.7, 0.8, 0.6, 0.6, 0.5, np.nan, np.nan], quality_before=[0.9] * 8)
    # a unit's rows share its weight: a drawn twice, b never, c once; concept d three times, e once
    w = np.array([[2, 0, 1, 2, 0, 1, 3, 1], [1, 1, 1, 1, 1, 1, 1, 1]], dtype=float)
    m = {k: v.tolist() for k, v in task.metrics_from_rows(rows, w).items()}
    assert all(len(v) == 2 for v in m.values())
    hm = lambda *x: len(x) / sum(1 / v for v in x)  # noqa: E731
    want = {
        "efficacy": (3 / 3, 2 / 3), "generalization": (2 / 3, 2.5 / 3), "specificity": (2.25 / 3, 1.75 / 3),
        "quality": (2.6 / 3, 2.4 / 3),
        "batch_efficacy": (1 / 3, 2 / 3), "batch_generalization": (2 / 3, 2 / 3), "batch_specificity": (2 / 3, 2 / 3),
        "batch_quality": (1.7 / 3, 1.7 / 3),
        "concept_efficacy": (3 / 4, 1 / 2), "concept_generalization": (1 / 2, 1 / 2),
        "concept_specificity": (1.0, 1.0), "quality_before": (0.9, 0.9)}
    for p in ("", "batch_", "concept_"):
        want[f"{p}score"] = tuple(hm(*(want[f"{p}{k}"][b] for k in ("efficacy", "generalization", "specificity")))
                                  for b in range(2))
    assert m.keys() == want.keys()
    for k, (w0, w1) in want.items():
        assert math.isclose(m[k][0], w0, abs_tol=1e-12) and math.isclose(m[k][1], w1, abs_tol=1e-12), k
    assert math.isclose(m["score"][0], 3 / (1 + 1.5 + 4 / 3)) and math.isclose(m["batch_score"][0], 0.5)
    # a zero share makes the score 0; without concept rows there are no concept metrics
    fact = {k: v[:6] for k, v in rows.items()}
    fact["efficacy"] = np.zeros(6)
    out = task.metrics_from_rows(fact, np.ones((1, 6)))
    assert out["score"][0] == 0.0 and out["batch_score"][0] == 0.0 and "concept_score" not in out


# ------------------------------------------------------------------ localization on zoo-clip
def test_localization_rows_give_the_stored_metrics_and_the_oracle_reaches_best(zoo_clip):
    for method in ("random", "oracle"):
        task, res = _run("localization", method, zoo_clip)
        check_rows(task, res)
        rows = res.rows
        fact, edit = rows["kind"] == "fact", rows["kind"] == "edit"
        assert fact.sum() == task.config.quick_examples
        assert edit.sum() == task.config.quick_edit_requests * len(zoo_clip.planted)
        assert np.isnan(rows["top1"][edit]).all() and np.isnan(rows["edit_top"][fact]).all()
        assert not np.isnan(rows["edit_top"][edit]).any() and not np.isnan(rows["top1"][fact]).any()
    # the oracle is one-hot on the planted site: every fact row is a hit, and its top site is the planted one
    assert (rows["top1"][fact] == 1).all() and (rows["rr"][fact] == 1).all() and (rows["auroc"][fact] == 1).all()
    assert (rows["edit_top"][edit] == rows["edit_planted"][edit]).all()
    q = task.example_quality(rows)
    assert (q[fact] == 1).all() and np.isnan(q[edit]).all()
    _oracle_reaches_best(task, res)
    faith = {"faith_suff", "faith_nec", "faith_cmd", "faith_suff_random", "faith_nec_random", "faith_suff_oracle",
             "faith_nec_oracle"}  # v1.3: the faithfulness areas and their bounds (no ceiling by construction)
    assert {m.name for m in task.spec.metrics if not m.normalise} == {"edit_at_top", "edit_at_planted", "edit_ratio",
                                                                      "mediation_tau", "mediation_top1", *faith}
    assert not np.isnan(rows["suf@0.2500"][fact]).any() and np.isnan(rows["suf@0.2500"][edit]).all()
    # zoo-clip is audited: every fact row is scored against its relation's mediation profile too
    assert all(len(r.mediation) == 4 for r in zoo_clip.planted)
    assert not np.isnan(rows["med_tau"][fact]).any() and np.isnan(rows["med_tau"][edit]).all()


def test_localization_rows_of_a_real_method(zoo_clip):
    task, res = _run("localization", "causal_tracing", zoo_clip)
    check_rows(task, res)


def test_localization_metrics_from_rows_by_hand():
    task = LocalizationTask()
    nan = np.nan
    rows = make_rows(
        example=["0:x", "1:y", "2:z", "e1", "e2", "e3", "e4"], hash=["x", "y", "z", "e1", "e2", "e3", "e4"],
        kind=["fact"] * 3 + ["edit"] * 4, relation=["home", "season", "home", "home", "home", "season", "season"],
        top1=[1, 0, 0.5, nan, nan, nan, nan], rr=[1, 0.5, 0.75, nan, nan, nan, nan],
        auroc=[1, 2 / 3, 5 / 6, nan, nan, nan, nan],
        edit_top=[nan, nan, nan, 0.6, 0.2, 0.9, 0.6], edit_planted=[nan, nan, nan, 0.8, 0.4, 0.5, 0.5])
    w = np.array([[2, 0, 1, 1, 3, 0, 2], [1, 1, 1, 1, 1, 1, 1]], dtype=float)
    m = {k: v.tolist() for k, v in task.metrics_from_rows(rows, w).items()}
    # edit figures: per relation, the weighted mean over its rewrites, then the mean over relations
    # (home: (0.6 + 3·0.2)/4 = 0.3, season: 2·0.6/2 = 0.6; pooled over rewrites it would be 0.4)
    want = {"top1": (2.5 / 3, 1.5 / 3), "mrr": (2.75 / 3, 2.25 / 3), "auroc": ((2 + 5 / 6) / 3, 2.5 / 3),
            "edit_at_top": (0.45, (0.4 + 0.75) / 2), "edit_at_planted": (0.5, (0.6 + 0.5) / 2)}
    want["edit_ratio"] = tuple(want["edit_at_top"][b] / want["edit_at_planted"][b] for b in range(2))
    # rows of v1.1 carry no mediation columns: those metrics are NaN, the others unchanged
    assert np.isnan(m.pop("mediation_tau")).all() and np.isnan(m.pop("mediation_top1")).all()
    # nor faithfulness curves (v1.3): those areas are NaN too
    for k in [k for k in m if k.startswith("faith_")]:
        assert np.isnan(m.pop(k)).all(), k
    assert m.keys() == want.keys()
    for k, (w0, w1) in want.items():
        assert math.isclose(m[k][0], w0, abs_tol=1e-12) and math.isclose(m[k][1], w1, abs_tol=1e-12), k
    zero = dict(rows, edit_planted=np.where(rows["kind"] == "edit", 0.0, nan))
    assert np.isnan(task.metrics_from_rows(zero, w)["edit_ratio"]).all()


def test_rank_rows_keep_the_tie_handling():
    import torch

    scores = torch.tensor([[0.1, 0.9, 0.3, 0.2], [0.5, 0.1, 0.4, 0.3], [0.2, 0.2, 0.0, 0.0]])
    per = rank_rows(scores, torch.tensor([1, 2, 0]))
    assert per["top1"].tolist() == [1.0, 0.0, 0.5]
    assert per["rr"].tolist() == pytest.approx([1.0, 0.5, 0.75])
    assert per["auroc"].tolist() == pytest.approx([1.0, 2 / 3, 2.5 / 3])
