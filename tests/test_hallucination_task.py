"""The hallucination task's metrics on hand-computed rows."""

import math

import numpy as np
import pytest
import torch

from bench.capabilities import ScoredOutputs
from bench.errors import BenchError
from bench.samples import make_rows
from tasks.hallucination import HallucinationTask, LabelledOutputs, SOURCE

NAN = float("nan")


def item_rows(labels, scores, kinds, says_yes=None, present=None):
    """Rows of detection items only (one unit per item; no caption-scene rows)."""
    n = len(labels)
    return make_rows(example=[f"{k}:{i}" for i, k in enumerate(kinds)], hash=[f"h{i}" for i in range(n)],
                     kind=kinds, source=[SOURCE[k] for k in kinds], label=[float(x) for x in labels],
                     score=[float(x) for x in scores], says_yes=says_yes or [NAN] * n, present=present or [NAN] * n,
                     any_hallucinated=[NAN] * n)


def metrics(labels, scores, kinds, **kw):
    return HallucinationTask().metrics_of(item_rows(labels, scores, kinds, **kw))


def test_fpr_at_95tpr_hand_computed():
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    # all four positives are recalled only once the threshold drops to 0.3: two negatives lie above it
    assert metrics(labels, [0.9, 0.8, 0.7, 0.3, 0.6, 0.5, 0.2, 0.1], ["pope"] * 8)["fpr_at_95tpr"] == 0.5
    assert metrics(labels, [4, 3, 2, 1, 0, -1, -2, -3.0], ["pope"] * 8)["fpr_at_95tpr"] == 0.0


def test_fpr_at_95tpr_scans_every_distinct_score():
    # 20 tied pairs (one hallucinated, one not): 19 pairs reach 95% recall with 19 of 20 negatives above the
    # threshold; v1.2's pruned roc_curve (drop_intermediate=True) skipped that point and said 1.0
    labels = [1, 0] * 20
    scores = np.repeat(np.arange(20, 0, -1), 2).astype(float)
    m = metrics(labels, scores, ["pope"] * 40)
    assert m["fpr_at_95tpr"] == 0.95 and m["auroc"] == 0.5


def test_detection_metrics_average_over_kinds():
    labels = [1, 0, 1, 0, 1, 0]
    kinds = ["caption", "caption", "pope", "pope", "pope", "pope"]
    scores = [0.9, 0.1, 0.2, 0.8, 0.9, 0.1]  # caption perfect; pope: 3 of 4 pairs ordered
    m = metrics(labels, scores, kinds)
    assert m["caption_auroc"] == 1.0 and m["pope_auroc"] == 0.75
    assert math.isclose(m["auroc"], 0.875)
    assert 0.0 <= m["auprc"] <= 1.0 and 0.0 <= m["fpr_at_95tpr"] <= 1.0


def test_a_kind_without_hallucinations_is_left_out_and_none_at_all_is_an_error():
    m = metrics([1, 0, 0, 0], [1.0, 0, 0.5, 0.2], ["caption", "caption", "pope", "pope"])
    assert "pope_auroc" not in m and m["auroc"] == 1.0
    with pytest.raises(BenchError):
        metrics([0, 0], [0.1, 0.2], ["pope", "pope"])
    with pytest.raises(BenchError):
        metrics([1, 0], [NAN, 0.2], ["pope", "pope"])


def test_a_resample_that_loses_a_class_drops_that_kind_from_the_means():
    rows = item_rows([1, 0, 1, 0], [0.9, 0.1, 0.2, 0.8], ["caption", "caption", "pope", "pope"])
    w = np.array([[1, 1, 1, 1], [1, 1, 0, 2.0]])  # the second weighting leaves pope without a positive
    m = HallucinationTask().metrics_from_rows(rows, w)
    assert m["pope_auroc"][0] == 0.0 and np.isnan(m["pope_auroc"][1])
    assert m["auroc"].tolist() == [0.5, 1.0] and m["caption_auroc"].tolist() == [1.0, 1.0]


def test_context_from_rows_counts_captions_without_mentions():
    """CHAIR-i over mentions, CHAIR-s over every caption (one of three has no mention), POPE's figures
    (positive = yes) and the positive rate over every item, built through LabelledOutputs."""
    kinds = ["caption", "caption", "caption", "pope", "pope", "pope", "pope"]
    labels = [1, 0, 0, 1, 0, 0, 1]
    says_yes = [NAN] * 3 + [1.0, 1.0, 0.0, 0.0]
    present = [NAN] * 3 + [0.0, 1.0, 0.0, 1.0]  # one false yes, one true yes, one true no, one miss
    items = ScoredOutputs(torch.zeros(7, 3, 2, 2), [""] * 7, [""] * 7, ["x"] * 7, kinds)
    out = LabelledOutputs(items, torch.tensor(labels), [f"h{i}" for i in range(7)],
                          ["caption:a", "caption:a", "caption:b", "pope:p", "pope:p", "pope:q", "pope:q"],
                          says_yes, present, [("caption:a", "ca", 1), ("caption:b", "cb", 0), ("caption:c", "cc", 0)])
    rows = out.rows(torch.arange(7.0))
    assert rows["kind"].tolist()[-3:] == ["caption_scene"] * 3 and rows["example"].tolist()[-1] == "caption:c"
    m = HallucinationTask().metrics_of(rows)
    assert m["chair_i"] == 1 / 3 and m["chair_s"] == 1 / 3
    assert m["pope_accuracy"] == 0.5 and m["pope_yes_ratio"] == 0.5
    assert m["pope_f1"] == 0.5  # precision 1/2, recall 1/2
    assert m["positive_rate"] == 3 / 7
