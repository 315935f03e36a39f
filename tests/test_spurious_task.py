"""The spurious task: metrics by hand, references (validity), LEACE on zoo-clip-spurious."""

import numpy as np
import pytest
import torch

from bench.registry import METHODS, MODELS, TASKS
from methods.leace import leace_fit
from tasks.spurious import GROUPS, spurious_metrics, spurious_rows


def test_metrics_hand_computed():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    group = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    pred = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1])  # group accs 1, .5, 1, .5
    base = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1])  # group accs 1, 0, 1, 1
    rows = spurious_rows(pred, base, labels, group, 3, [f"h{i}" for i in range(8)])
    m = TASKS.get("spurious")().metrics_of(rows)
    assert m["worst_group_accuracy"] == 0.5 and m["average_accuracy"] == 0.75
    assert m["worst_group_gain"] == 0.5 and m["components_touched"] == 3.0
    assert m["unmodified_worst_group_accuracy"] == 0.0
    assert m[f"group_{GROUPS[1][0]}_{GROUPS[1][1]}"] == 0.5
    # a resample: the second weighting drops group 1's miss and group 3's hit (each group keeps its size)
    w = np.array([[1.0] * 8, [1, 1, 2, 0, 1, 1, 2, 0]])
    v = spurious_metrics(rows, w)
    assert v["worst_group_accuracy"].tolist() == [0.5, 0.0] and v["worst_group_gain"].tolist() == [0.5, 0.0]
    assert v["average_accuracy"].tolist() == [0.75, 0.75]


def test_leace_erases_linear_information():
    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, 2, (400,), generator=g)
    x = torch.randn(400, 6, generator=g) + 3.0 * z[:, None].float() * torch.tensor([1.0, -2, 0, 0, 0.5, 0])
    mu, M, rank = leace_fit(x, torch.nn.functional.one_hot(z, 2).float())
    erased = x - (x - mu) @ M.T
    assert rank == 1
    # after erasure the class-conditional means coincide: no linear classifier beats a constant
    assert torch.allclose(erased[z == 0].mean(0), erased[z == 1].mean(0), atol=1e-4)
    # and it is a projection: erasing twice changes nothing
    assert torch.allclose(erased - (erased - mu) @ M.T, erased, atol=1e-4)


@pytest.fixture(scope="module")
def spurious_model():
    return MODELS.get("zoo-clip-spurious")("zoo-clip-spurious")


def _run(model, method, seed=0):
    task = TASKS.get("spurious")()
    return task.run(model, METHODS.get(method)(), seed=seed, quick=True).metrics


def test_references_bracket_the_model(spurious_model):
    rnd, orc = _run(spurious_model, "random"), _run(spurious_model, "oracle")
    assert orc["worst_group_accuracy"] == 1.0 and orc["average_accuracy"] == 1.0
    # an uninformed one-direction intervention leaves the bias in place
    assert abs(rnd["worst_group_gain"]) < 0.1
    assert rnd["unmodified_worst_group_accuracy"] < 0.7 * rnd["average_accuracy"]


def test_leace_lifts_the_worst_group(spurious_model):
    m = _run(spurious_model, "leace")
    assert m["components_touched"] == 1.0
    assert m["worst_group_gain"] > 0.2 and m["worst_group_accuracy"] > m["unmodified_worst_group_accuracy"]
