"""The hallucination task's metrics on hand-computed examples."""

import math

import numpy as np
import pytest
import torch

from bench.errors import BenchError
from tasks.hallucination import detection_metrics, fpr_at_tpr


def test_fpr_at_95tpr_hand_computed():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.5, 0.2, 0.1])
    # all four positives are recalled only once the threshold drops to 0.3: two negatives lie above it
    assert fpr_at_tpr(labels, scores) == 0.5
    assert fpr_at_tpr(labels, np.array([4, 3, 2, 1, 0, -1, -2, -3.0])) == 0.0


def test_detection_metrics_average_over_kinds():
    labels = torch.tensor([1, 0, 1, 0, 1, 0])
    kinds = ["caption", "caption", "pope", "pope", "pope", "pope"]
    scores = torch.tensor([0.9, 0.1, 0.2, 0.8, 0.9, 0.1])  # caption perfect; pope: 3 of 4 pairs ordered
    m = detection_metrics(labels, scores, kinds)
    assert m["caption_auroc"] == 1.0 and m["pope_auroc"] == 0.75
    assert math.isclose(m["auroc"], 0.875)
    assert 0.0 <= m["auprc"] <= 1.0 and 0.0 <= m["fpr_at_95tpr"] <= 1.0


def test_a_kind_without_hallucinations_is_left_out_and_none_at_all_is_an_error():
    m = detection_metrics(torch.tensor([1, 0, 0, 0]), torch.tensor([1.0, 0, 0.5, 0.2]),
                          ["caption", "caption", "pope", "pope"])
    assert "pope_auroc" not in m and m["auroc"] == 1.0
    with pytest.raises(BenchError):
        detection_metrics(torch.tensor([0, 0]), torch.tensor([0.1, 0.2]), ["pope", "pope"])
    with pytest.raises(BenchError):
        detection_metrics(torch.tensor([1, 0]), torch.tensor([float("nan"), 0.2]), ["pope", "pope"])
