"""Faithfulness curves of the localization task (no planted truth) on hand-computed cases, and on
the zoo: the planted site kept alone recovers more of the behaviour than a random site."""

import math

import numpy as np
import pytest
import torch

from bench.samples import make_rows, ones
from tasks.localization import (LocalizationConfig, faithfulness_metrics, faithfulness_rows, keep_metric,
                                ladder_counts)

W = torch.tensor([3.0, 1.0, 0.0, 0.0])  # each site's contribution to the behaviour in the clean run
SITES = ["s0", "s1", "s2", "s3"]


def additive_evaluate(weights_S: torch.Tensor, n: int):
    """A behaviour that is the sum of its sites' activations: clean site j carries ``weights_S[j]``,
    the counterfactual 0 (the :class:`LocalizeRequest` evaluate protocol, copy-major rows)."""

    def evaluate(which, read=(), write=None, copies=1, keep_grad=False):
        acts = {s: (weights_S[j] if which == "clean" else torch.tensor(0.0)).repeat(n * copies, 1)
                for j, s in enumerate(SITES)}
        for s, fn in (write or {}).items():
            acts[s] = fn(acts[s])
        return sum(a[:, 0] for a in acts.values()), {s: acts[s] for s in read}

    return evaluate


def metrics_of(cols: dict[str, list[float]], n: int) -> dict[str, float]:
    rows = make_rows(example=[str(i) for i in range(n)], hash=[str(i) for i in range(n)], **cols)
    return {k: float(v[0]) for k, v in faithfulness_metrics(rows, ones(rows)).items()}


def test_ladder_gives_every_count_on_four_sites():
    assert ladder_counts(4) == [0, 1, 2, 3, 4]
    assert ladder_counts(32)[:4] == [0, 2, 4, 7] and ladder_counts(32)[-1] == 32


def test_keep_metric_patches_exactly_the_unkept_sites():
    ev = additive_evaluate(W, 2)
    sources = {s: torch.zeros(2, 1) for s in SITES}
    keep = torch.tensor([[[True, False, False, False], [False, True, True, True]]])  # one copy, two examples
    assert keep_metric(ev, SITES, sources, keep).tolist() == [[3.0, 1.0]]


@pytest.mark.parametrize("exhaustive", [True, False])
def test_perfect_order_areas_hand_computed(exhaustive):
    # keep the top-c of [3, 1, 0, 0]: recovered share 0, .75, 1, 1, 1 at x = 0, .25, .5, .75, 1
    # -> area .25 * (.375 + .875 + 1 + 1) = .8125; removing them loses the same share.
    # A random order recovers c/4 in expectation -> area .5.
    n = 3
    cfg = LocalizationConfig() if exhaustive else LocalizationConfig(oracle_subsets=1, random_orders=64)
    scores = W.expand(n, -1).clone() + torch.tensor([0.0, 0.0, 0.2, 0.1])  # a strict order, best first
    m = metrics_of(faithfulness_rows(scores, additive_evaluate(W, n), SITES, 0, cfg), n)
    assert math.isclose(m["faith_suff"], 0.8125) and math.isclose(m["faith_nec"], 0.8125)
    assert math.isclose(m["faith_cmd"], 1 - 0.8125)
    assert math.isclose(m["faith_suff_oracle"], 0.8125) and math.isclose(m["faith_nec_oracle"], 0.8125)
    tol = 1e-12 if exhaustive else 0.05  # exact expectation vs 64 seeded orders
    assert abs(m["faith_suff_random"] - 0.5) <= tol and abs(m["faith_nec_random"] - 0.5) <= tol


def test_worst_order_and_ties_at_expectation():
    n = 2
    cfg = LocalizationConfig()
    worst = -W.expand(n, -1).clone() + torch.tensor([0.0, 0.0, 0.1, 0.2])  # the two empty sites first
    m = metrics_of(faithfulness_rows(worst, additive_evaluate(W, n), SITES, 0, cfg), n)
    # recovered 0, 0, 0, .25, 1 -> area .25 * (0 + 0 + .125 + .625) = .1875
    assert math.isclose(m["faith_suff"], 0.1875)
    flat = torch.zeros(n, 4)  # every site tied: the expectation over orders is the random bound
    m = metrics_of(faithfulness_rows(flat, additive_evaluate(W, n), SITES, 0, cfg), n)
    assert math.isclose(m["faith_suff"], m["faith_suff_random"]) and math.isclose(m["faith_suff"], 0.5)


def test_areas_are_ratios_of_means_and_resample():
    n = 4
    cols = faithfulness_rows(W.expand(n, -1).clone(), additive_evaluate(W, n), SITES, 0, LocalizationConfig())
    rows = make_rows(example=[str(i) for i in range(n)], hash=[str(i) for i in range(n)], **cols)
    w = np.array([[1, 1, 1, 1], [4, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float64)
    got = faithfulness_metrics(rows, w)["faith_suff"]
    assert np.allclose(got[:2], 0.8125) and np.isnan(got[2])


@pytest.mark.slow
def test_planted_site_alone_beats_a_random_site_on_zoo_vlm():
    from bench.registry import MODELS
    from tasks.localization import LocalizationTask

    model = MODELS.get("zoo-vlm")()
    task = LocalizationTask()
    cands = task.candidates(model)
    ex = task.examples(model, 16, 0, "test")
    planted = torch.nn.functional.one_hot(torch.tensor([cands.index(s) for s in ex.planted_site]), 4).double()
    m = metrics_of(task.faithfulness(model, ex, cands, planted, 0, quick=True), 16)
    assert m["faith_suff"] > m["faith_suff_random"] and m["faith_nec"] > m["faith_nec_random"]
    assert m["faith_suff_oracle"] >= m["faith_suff"] - 1e-9 and m["faith_nec_oracle"] >= m["faith_nec"] - 1e-9


def squares_evaluate(clean_NS: torch.Tensor):
    """A behaviour that is the sum of squares of the sites' activations; clean site j of example i
    carries ``clean_NS[i, j]`` (the counterfactual 0); copy-major rows as :class:`LocalizeRequest`'s."""
    n = clean_NS.shape[0]

    def evaluate(which, read=(), write=None, copies=1, keep_grad=False):
        base = clean_NS if which == "clean" else torch.zeros_like(clean_NS)
        acts = {s: base[:, j: j + 1].repeat(copies, 1) for j, s in enumerate(SITES[:clean_NS.shape[1]])}
        for s, fn in (write or {}).items():
            acts[s] = fn(acts[s])
        return sum(a[:, 0] ** 2 for a in acts.values()), {s: acts[s][:n] for s in read}

    return evaluate


def test_mean_ablation_sets_unkept_sites_to_their_mean_over_examples():
    """faith_ablation="mean": a site not kept takes its clean activation averaged over the examples
    (Wang et al., 2022), not the counterfactual's. Clean [2, 0] and [0, 2] (means [1, 1]), behaviour
    a0² + a1²: clean 4, all mean-ablated 2; keeping each example's own site gives 5, removing it 1, so
    both shares at x = 1/2 are 3/2 and both areas are 1/2 · ((0 + 3/2)/2 + (3/2 + 1)/2) = 1."""
    from tasks.localization import LocalizationTask, ablation_sources

    clean = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    ev = squares_evaluate(clean)
    src = ablation_sources(ev, SITES[:2], "mean")
    assert all(torch.equal(src[s], torch.ones(2, 1)) for s in SITES[:2])
    assert all(torch.equal(a, torch.zeros(2, 1)) for a in ablation_sources(ev, SITES[:2]).values())
    cfg = LocalizationConfig(faith_ablation="mean")
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    m = metrics_of(faithfulness_rows(scores, ev, SITES[:2], 0, cfg), 2)
    assert math.isclose(m["faith_suff"], 1.0) and math.isclose(m["faith_nec"], 1.0)
    # patched from the counterfactual (0) instead: keeping the own site recovers all of it (area 3/4)
    m_cf = metrics_of(faithfulness_rows(scores, ev, SITES[:2], 0, LocalizationConfig()), 2)
    assert math.isclose(m_cf["faith_suff"], 0.75)
    # off by default; on, the task's version says so (its figures are never keyed as the default's)
    default, mean = LocalizationTask(), LocalizationTask(cfg)
    assert default.config.faith_ablation == "counterfactual" and "+" not in default.spec.version
    assert mean.spec.version == f"{default.spec.version}+mean-ablation"
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="unknown faithfulness ablation 'zero'"):
        LocalizationTask(LocalizationConfig(faith_ablation="zero"))
