"""Per-example rows of the hallucination and spurious tasks: the stored metrics are the rows'
metrics, the oracle's rows reach every normalised metric's best value, the figures agree with
scikit-learn and pandas recomputed from the rows alone, and a bootstrap weighting gives the
figures of the rows it multiplies."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from rows_checks import check_rows

from bench.registry import METHODS, MODELS
from bench.samples import select
from bench.kit.world.hallucination import pope_metrics
from bench.kit.world.spurious import GROUPS
from tasks.hallucination import KINDS, HallucinationTask
from tasks.spurious import SpuriousTask


def _run(task, model, method: str, seed: int = 0):
    torch.manual_seed(seed)
    return task.run(model, METHODS.get(method)(), seed=seed, quick=True)


@pytest.fixture(scope="module")
def hallucination():
    """zoo-vlm's quick test items (seed 0) scored by random and oracle (the items are built once)."""
    model = MODELS.get("zoo-vlm")("zoo-vlm")
    task = HallucinationTask()
    return task, {m: _run(task, model, m) for m in ("random", "oracle")}


@pytest.fixture(scope="module")
def spurious():
    model = MODELS.get("zoo-clip-spurious")("zoo-clip-spurious")
    task = SpuriousTask()
    return task, {m: _run(task, model, m) for m in ("random", "oracle", "leace")}


def _resample_matches_duplicated_rows(task, rows, n_boot: int = 4, seed: int = 0) -> None:
    """A stratified bootstrap weighting (units drawn with replacement within each stratum, rows
    weighted by their unit's count) gives, per replicate, the metrics of the rows repeated that
    many times: metrics_from_rows is vectorised over replicates and needs nothing but the rows."""
    rng = np.random.default_rng(seed)
    units = list(dict.fromkeys(rows["example"].tolist()))
    first = {u: i for i, u in reversed(list(enumerate(rows["example"].tolist())))}
    stratum = {u: tuple(rows[c][first[u]] for c in task.strata) for u in units}
    W = np.zeros((n_boot, len(units)))
    for st in sorted(set(stratum.values()), key=repr):
        idx = np.array([i for i, u in enumerate(units) if stratum[u] == st])
        W[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=n_boot)
    where = {u: i for i, u in enumerate(units)}
    w_BN = W[:, [where[u] for u in rows["example"].tolist()]]
    vec = task.metrics_from_rows(rows, w_BN)
    for b in range(n_boot):
        reps = w_BN[b].astype(int)
        dup = select(rows, np.repeat(np.arange(len(reps)), reps))
        want = task.metrics_of(dup)
        for k, v in vec.items():
            # a per-kind figure the duplicated rows leave out (one class lost) is NaN in the replicate
            assert (math.isnan(v[b]) if k not in want else v[b] == pytest.approx(want[k], abs=1e-12)), (k, b)


# ------------------------------------------------------------------ hallucination on zoo-vlm
def test_hallucination_rows_give_the_stored_metrics_and_the_oracle_reaches_best(hallucination):
    task, res = hallucination
    for r in res.values():
        check_rows(task, r)
    rows = res["oracle"].rows
    kind = rows["kind"]
    # one caption-scene row per captioned scene (quick profile), in the unit of its mentions
    scenes = rows["example"][kind == "caption_scene"].tolist()
    assert len(scenes) == len(set(scenes)) == int(task.config.caption_scenes * task.config.quick_fraction)
    assert set(rows["example"][kind == "caption"].tolist()) <= set(scenes)
    # one unit per probed image, shared by its answers in the three negative settings
    pope_units = set(rows["example"][kind == "pope"].tolist())
    assert len(pope_units) == int(task.config.pope_images * task.config.quick_fraction)
    assert (kind == "pope").sum() > 3 * len(pope_units)
    # detection columns on items only, context columns where they apply
    items = (kind == "caption") | (kind == "pope")
    assert not np.isnan(rows["score"][items]).any() and np.isnan(rows["score"][~items]).all()
    assert not np.isnan(rows["says_yes"][kind == "pope"]).any() and np.isnan(rows["says_yes"][kind != "pope"]).all()
    # the oracle scores the labels: every normalised metric at its best value, every item ranked right
    normalised = [m for m in task.spec.metrics if m.normalise]
    assert {m.name for m in normalised} == {"auroc", "auprc", "fpr_at_95tpr", "caption_auroc", "pope_auroc"}
    for m in normalised:
        assert res["oracle"].metrics[m.name] == m.best, (m.name, res["oracle"].metrics[m.name], m.best)
    assert (task.example_quality(rows)[items] == 1.0).all()
    # the context figures are the model's: the same for every method
    for m in ("chair_i", "chair_s", "pope_accuracy", "pope_f1", "pope_yes_ratio", "positive_rate"):
        assert res["random"].metrics[m] == res["oracle"].metrics[m]


def test_hallucination_metrics_match_sklearn_and_pope_metrics_from_rows(hallucination):
    task, res = hallucination
    for r in res.values():
        df = pd.DataFrame(r.rows)
        per: dict[str, list[float]] = {"auroc": [], "auprc": [], "fpr_at_95tpr": []}
        for k in KINDS:
            d = df[df.kind == k]
            assert d.label.nunique() == 2  # both kinds hold hallucinations on zoo-vlm
            auroc = roc_auc_score(d.label, d.score)
            fpr, tpr, _ = roc_curve(d.label, d.score, drop_intermediate=False)
            per["auroc"].append(auroc)
            per["auprc"].append(average_precision_score(d.label, d.score))
            per["fpr_at_95tpr"].append(fpr[np.searchsorted(tpr, 0.95 - 1e-12)])
            assert r.metrics[f"{k}_auroc"] == pytest.approx(auroc, abs=1e-12)
            # a hallucinated item's quality averages to the kind's AUROC
            q = task.example_quality(r.rows)[(r.rows["kind"] == k) & (r.rows["label"] == 1)]
            assert q.mean() == pytest.approx(auroc, abs=1e-12)
        for m, v in per.items():
            assert r.metrics[m] == pytest.approx(np.mean(v), abs=1e-12), m
        # context: CHAIR over mentions and over every caption (with or without a mention), POPE's figures
        mentions, scenes, pope = df[df.kind == "caption"], df[df.kind == "caption_scene"], df[df.kind == "pope"]
        worst = mentions.groupby("example").label.max().reindex(scenes.example, fill_value=0.0)
        assert (worst.to_numpy() == scenes.any_hallucinated.to_numpy()).all()
        assert r.metrics["chair_i"] == mentions.label.mean() and r.metrics["chair_s"] == scenes.any_hallucinated.mean()
        assert 0 < r.metrics["chair_i"] and (scenes.any_hallucinated == 0).any()
        pm = pope_metrics(["yes" if v else "no" for v in pope.says_yes], ["yes" if v else "no" for v in pope.present])
        assert r.metrics["pope_accuracy"] == pm["accuracy"] and r.metrics["pope_f1"] == pm["f1"]
        assert r.metrics["pope_yes_ratio"] == pm["yes_ratio"]
        assert r.metrics["positive_rate"] == df[df.kind.isin(KINDS)].label.mean()


def test_hallucination_resamples_are_the_metrics_of_the_resampled_rows(hallucination):
    task, res = hallucination
    _resample_matches_duplicated_rows(task, res["random"].rows)


# ------------------------------------------------------------------ spurious on zoo-clip-spurious
def test_spurious_rows_give_the_stored_metrics_and_the_oracle_reaches_best(spurious):
    task, res = spurious
    for r in res.values():
        check_rows(task, r)
        assert len(r.rows["example"]) == len(GROUPS) * task.config.quick_test_per_group
        assert {k for k in r.metrics if k.startswith("group_")} == {f"group_{c}_{b}" for c, b in GROUPS}
    orc = res["oracle"]
    assert (orc.rows["correct"] == 1).all() and (task.example_quality(orc.rows) == 1).all()
    normalised = [m for m in task.spec.metrics if m.normalise]
    assert {m.name for m in normalised} == {"worst_group_accuracy", "average_accuracy"}
    for m in normalised:
        assert orc.metrics[m.name] == m.best, (m.name, orc.metrics[m.name], m.best)
    # the gain's ceiling depends on the model (1 - its unmodified worst group): not normalised
    assert orc.metrics["worst_group_gain"] == 1.0 - orc.metrics["unmodified_worst_group_accuracy"]
    assert not task.spec.metric("components_touched").normalise and orc.metrics["components_touched"] == 0.0
    assert res["leace"].metrics["components_touched"] == 1.0


def test_spurious_group_accuracies_match_pandas_groupby(spurious):
    task, res = spurious
    for r in res.values():
        df = pd.DataFrame(r.rows)
        acc, base = df.groupby("group").correct.mean(), df.groupby("group").base_correct.mean()
        assert r.metrics["worst_group_accuracy"] == acc.min()
        assert r.metrics["average_accuracy"] == pytest.approx(acc.mean(), abs=1e-15)
        assert r.metrics["unmodified_worst_group_accuracy"] == base.min()
        assert r.metrics["worst_group_gain"] == acc.min() - base.min()
        assert all(r.metrics[f"group_{g}"] == a for g, a in acc.items())


def test_spurious_resamples_are_the_metrics_of_the_resampled_rows(spurious):
    task, res = spurious
    for m in ("random", "leace"):
        _resample_matches_duplicated_rows(task, res[m].rows)
