"""No method's fit ever sees test-split examples.

Two guards. Structurally, every task hands methods fitting data drawn from the world's
"fit" split only (scenes of another split, disjoint from the scored ones). Behaviourally,
every method that fits (``Method.fits``) is run twice on requests that share the fit
split but score different test items: what it fitted (the content hashes it records with
``bench.fitting.record_fit``) must not move.
"""

from __future__ import annotations

import pytest
import torch

from bench.capabilities import HallucinationRequest, ScoredOutputs
from bench.registry import METHODS
from bench.runner import load_model
from tasks.hallucination import HallucinationConfig, HallucinationTask
from tasks.localization import LocalizationTask


def _fitting(capability: str) -> list[str]:
    return [n for n in METHODS.names() if METHODS.get(n).fits and capability in METHODS.get(n).capabilities]


def test_fitting_methods_are_declared():
    # the methods that learn from data before answering say so (and are checked below)
    names = set(_fitting("localize") + _fitting("detect_hallucination") + _fitting("debias") + _fitting("edit"))
    assert {"probing", "sae", "steering", "leace", "dfr"} <= names


@pytest.mark.parametrize("model_name", ["zoo-vlm", "zoo-clip"])
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
            assert getattr(m, "fitted", None), f"{name} fits but records nothing (bench.fitting.record_fit)"
            fitted.append(dict(m.fitted))
        assert fitted[0] == fitted[1], f"{name}: fitted state changed with the scored examples"


def test_hallucination_fits_ignore_the_scored_items():
    model = load_model("zoo-vlm")
    # a small task (few scenes) keeps the test fast; the code path is the task's own
    task = HallucinationTask(HallucinationConfig(caption_scenes=24, pope_images=12, fit_caption_scenes=64,
                                                 fit_pope_images=24))
    test_a, fit = task._data(model, 0, True)
    items_b = test_a.items
    perm = torch.arange(1, items_b.n, 2).flip(0)  # other items (every second one, reversed), of both kinds
    assert len({items_b.kinds[i] for i in perm}) == 2
    items_b = ScoredOutputs(items_b.pixels_BCHW[perm], [items_b.prompts[i] for i in perm],
                            [items_b.prefixes[i] for i in perm], [items_b.spans[i] for i in perm],
                            [items_b.kinds[i] for i in perm])
    assert not set(fit.hashes) & set(test_a.hashes)
    for name in _fitting("detect_hallucination"):
        fitted = []
        for items in (test_a.items, items_b):
            m = METHODS.get(name)()
            scores = m.detect_hallucination(model, HallucinationRequest(items, fit.items, fit.labels_B.clone()))
            assert scores.shape == (items.n,) and torch.isfinite(scores).all()
            assert getattr(m, "fitted", None), f"{name} fits but records nothing"
            fitted.append(dict(m.fitted))
        assert fitted[0] == fitted[1], f"{name}: fitted state changed with the scored items"

