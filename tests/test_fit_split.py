"""No method's fit ever sees test-split examples.

Two guards. Structurally, every task hands methods fitting data drawn from the world's
"fit" split only (scenes of another split, disjoint from the scored ones). Behaviourally,
every method that fits (``Method.fits``) is run twice on requests that share the fit
split but score different test items: what it fitted (the content hashes it records with
``bench.kit.fitting.record_fit``) must not move.
"""

from __future__ import annotations

import pytest
import torch

from bench.capabilities import HallucinationRequest, ScoredOutputs
from bench.registry import METHODS
from bench.harness.runner import load_model
from tasks.hallucination import HallucinationConfig, HallucinationTask
from tasks.localization import LocalizationTask


def _fitting(capability: str) -> list[str]:
    return [n for n in METHODS.names() if METHODS.get(n).fits and capability in METHODS.get(n).capabilities]


def test_fitting_methods_are_declared():
    # the methods that learn from data before answering say so (and are checked below)
    names = set(_fitting("localize") + _fitting("detect_hallucination") + _fitting("debias") + _fitting("edit"))
    assert {"probing", "sae", "steering", "leace", "dfr"} <= names


# zoo-vlm takes ~13 s: slow-marked, run by CI with the slow set; zoo-clip keeps the check in the default run
@pytest.mark.parametrize("model_name", [pytest.param("zoo-vlm", marks=pytest.mark.slow), "zoo-clip"])
def test_localization_fits_ignore_the_scored_examples(model_name):
    model = load_model(model_name)
    task = LocalizationTask()
    cands = task.candidates(model)
    fit_ex = task.examples(model, 16, 1_000_003, "fit")
    a_ex, b_ex = task.examples(model, 8, 0, "test"), task.examples(model, 8, 1, "test")
    assert not set(fit_ex.hashes) & (set(a_ex.hashes) | set(b_ex.hashes))
    fit = task.request(model, fit_ex, cands)
    for name in _fitting("localize"):
        method = METHODS.get(name)()
        if method.supports(model):
            continue
        fitted = []
        for ex in (a_ex, b_ex):
            req = task.request(model, ex, cands)
            req.fit = fit
            m = METHODS.get(name)()
            out = m.localize(model, req)
            assert out.shape == (8, len(cands)) and torch.isfinite(out).all()
            assert getattr(m, "fitted", None), f"{name} fits but records nothing (bench.kit.fitting.record_fit)"
            fitted.append(dict(m.fitted))
        assert fitted[0] == fitted[1], f"{name}: fitted state changed with the scored examples"


# sae's detector fits a 400-step SAE on the fit items' activations and cross-validates a probe on its
# features (~10 s of CPU a fit, twice): slow here; its detector is exercised on a tiny LLaVA in the
# default run (test_sae::test_hallucination_detector_learns_a_separable_label)
SLOW_HALLUCINATION_FITS = {"sae"}


@pytest.fixture(scope="module")
def hallucination_items():
    """zoo-vlm's items of a small hallucination task (few scenes: both kinds of item on each side, both
    labels on the fit side; the code path is the task's own): the scored items, other scored items
    (every second one, reversed: of both kinds) and the fit split."""
    model = load_model("zoo-vlm")
    task = HallucinationTask(HallucinationConfig(caption_scenes=12, pope_images=6, fit_caption_scenes=32,
                                                 fit_pope_images=12))
    test_a, fit = task._data(model, 0, True)
    items_a = test_a.items
    perm = torch.arange(1, items_a.n, 2).flip(0)
    assert len({items_a.kinds[i] for i in perm}) == 2
    items_b = ScoredOutputs(items_a.pixels_BCHW[perm], [items_a.prompts[i] for i in perm],
                            [items_a.prefixes[i] for i in perm], [items_a.spans[i] for i in perm],
                            [items_a.kinds[i] for i in perm])
    assert not set(fit.hashes) & set(test_a.hashes)
    assert 0 < int(fit.labels_B.sum()) < len(fit.labels_B)
    return model, (items_a, items_b), fit


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_HALLUCINATION_FITS else n
                                  for n in _fitting("detect_hallucination")])
def test_hallucination_fits_ignore_the_scored_items(hallucination_items, name):
    model, scored, fit = hallucination_items
    fitted = []
    for items in scored:
        m = METHODS.get(name)()
        scores = m.detect_hallucination(model, HallucinationRequest(items, fit.items, fit.labels_B.clone()))
        assert scores.shape == (items.n,) and torch.isfinite(scores).all()
        assert getattr(m, "fitted", None), f"{name} fits but records nothing"
        fitted.append(dict(m.fitted))
    assert fitted[0] == fitted[1], f"{name}: fitted state changed with the scored items"
