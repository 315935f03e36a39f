"""Fast tests of probing, logit lens, attention lens and contextual lens (tiny LLaVA, toy requests, zoo-vlm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.capabilities import HallucinationRequest, LocalizeRequest, ScoredOutputs
from bench.errors import BenchError
from methods.attention_lens import AttentionLens
from methods.contextual_lens import ContextualLens, image_similarity
from methods.entropy import OutputEntropy
from methods.logit_lens import LogitLens
from methods.probing import Probing, ProbingConfig, cv_quality

DETECTORS = [Probing, LogitLens, AttentionLens, ContextualLens]


@pytest.fixture(scope="module")
def llava(make_tiny_llava):
    return make_tiny_llava()


def _outputs(n: int, spans: list[str], seed: int) -> ScoredOutputs:
    g = torch.Generator().manual_seed(seed)
    pix = torch.rand(n, 3, 32, 32, generator=g)
    kinds = ["caption" if i % 3 else "pope" for i in range(n)]
    prompts = ["describe the image" if k == "caption" else "is there a red circle?" for k in kinds]
    prefixes = ["a" if k == "caption" else "" for k in kinds]
    return ScoredOutputs(pix, prompts, prefixes, [spans[i % len(spans)] if k == "caption" else ("yes" if i % 2 else "no")
                                                  for i, k in enumerate(kinds)], kinds)


@pytest.fixture(scope="module")
def hall_request() -> HallucinationRequest:
    spans = ["red circle", "blue square"]
    fit = _outputs(24, spans, 1)
    # label: the "blue square" mentions and the "yes" answers are the hallucinations (a span-identity rule
    # a probe on span states must recover)
    labels = torch.tensor([int(s in ("blue square", "yes")) for s in fit.spans])
    return HallucinationRequest(_outputs(12, spans, 2), fit, labels, batch_size=5)


def _hooks(model) -> int:
    """Hooks on the module tree (transformers adds its own output-recording hooks on a first forward)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.module.modules())


# ------------------------------------------------------------ probing helpers
def test_cv_quality_separates_decodable_from_noise():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 8)
    noise = rng.normal(size=(32, 16))
    signal = noise.copy()
    signal[np.arange(32), y] += 6.0  # the answer is one-hot in four coordinates
    cfg = ProbingConfig()
    good, bad = cv_quality(signal, y, 4, cfg), cv_quality(noise, y, 4, cfg)
    assert good > -0.5 > np.log(0.25) - 0.5 > bad - 1.0  # near-certain vs around chance (log 1/4)
    assert cv_quality(signal, y, 4, ProbingConfig(metric="accuracy")) >= 0.9
    assert 0.0 <= cv_quality(noise, y, 4, ProbingConfig(metric="accuracy")) <= 0.5
    assert cv_quality(signal, y, 4, cfg) == good  # deterministic folds


def _toy_localize_request(n: int, seed: int, fit: LocalizeRequest | None = None) -> LocalizeRequest:
    """Sites ``a`` (answer one-hot + noise) and ``b`` (noise), returned by a plain evaluate closure."""
    g = torch.Generator().manual_seed(seed)
    values = ("north", "south", "east", "west")
    ans = torch.arange(n) % 4
    acts = {"b": torch.randn(n, 5, 8, generator=g), "a": torch.randn(n, 5, 8, generator=g)}
    acts["a"][torch.arange(n), 2, ans] += 5.0  # only at the readout position

    def evaluate(which, read=(), write=None, copies=1, keep_grad=False):
        return torch.zeros(n), {s: acts[s] for s in read}

    return LocalizeRequest(n, ["b", "a"], evaluate, answers=[values[int(a)] for a in ans],
                           alternatives=[values[(int(a) + 1) % 4] for a in ans], values=[values] * n,
                           prompts=["q"] * n, positions_N=torch.full((n,), 2), fit=fit)


def test_probing_localize_prefers_the_decodable_site_and_fits_on_the_fit_split_only():
    fit = _toy_localize_request(32, 0)
    method = Probing()
    scores = method.localize(None, _toy_localize_request(8, 1, fit))
    assert scores.shape == (8, 2) and (scores[:, 1] > scores[:, 0]).all()
    assert torch.equal(scores, scores[:1].expand(8, 2))  # one row per relation, repeated
    fitted = dict(method.fitted)
    other = Probing()
    again = other.localize(None, _toy_localize_request(12, 7, fit))  # other scored examples, same fit split
    assert other.fitted == fitted and torch.equal(again[0], scores[0])
    with pytest.raises(BenchError, match="fit split"):
        Probing().localize(None, _toy_localize_request(8, 1))


def test_bad_configs_raise_bench_errors(llava, hall_request):
    with pytest.raises(BenchError, match="metric"):
        Probing(metric="f1").localize(None, _toy_localize_request(8, 1, _toy_localize_request(8, 0)))
    with pytest.raises(BenchError, match="pool"):
        Probing(pool="max").detect_hallucination(llava, hall_request)
    with pytest.raises(BenchError, match="out of range"):
        LogitLens(layer=9).detect_hallucination(llava, hall_request)
    with pytest.raises(BenchError, match="source"):
        LogitLens(source="x").detect_hallucination(llava, hall_request)
    with pytest.raises(BenchError, match="out of range"):
        AttentionLens(layers=(5,)).detect_hallucination(llava, hall_request)
    with pytest.raises(BenchError, match="query"):
        AttentionLens(query="x").detect_hallucination(llava, hall_request)
    with pytest.raises(BenchError, match="top_k"):
        ContextualLens(top_k=0).detect_hallucination(llava, hall_request)
    with pytest.raises(BenchError, match="no config option"):
        ContextualLens(layers=1)


def test_supports(llava, tiny_clip):
    for cls in DETECTORS:
        assert cls().supports(llava) is None
    assert Probing().supports(tiny_clip) is None
    for cls in (LogitLens, AttentionLens, ContextualLens):
        assert "contrastive" in cls().supports(tiny_clip)


# ------------------------------------------------------------ hallucination detectors
@pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.name)
def test_detectors_shape_finite_deterministic(cls, llava, hall_request):
    a = cls().detect_hallucination(llava, hall_request)
    hooks = _hooks(llava)
    b = cls().detect_hallucination(llava, hall_request)
    assert a.shape == (hall_request.items.n,) and a.dtype == torch.float64
    assert torch.isfinite(a).all() and torch.equal(a, b)
    assert _hooks(llava) == hooks  # every trace removed its hooks


def test_logit_lens_at_the_last_layer_is_the_models_own_nll(llava, hall_request):
    lens = LogitLens(layer=-1).detect_hallucination(llava, hall_request)
    nll = OutputEntropy(measure="nll").detect_hallucination(llava, hall_request)
    torch.testing.assert_close(lens, nll, rtol=1e-5, atol=1e-5)
    img = LogitLens(layer=-1, source="image").detect_hallucination(llava, hall_request)
    pope = torch.tensor([k == "pope" for k in hall_request.items.kinds])
    torch.testing.assert_close(img[pope], nll[pope], rtol=1e-5, atol=1e-5)  # POPE answers fall back to the span
    assert not torch.allclose(img[~pope], nll[~pope])


def test_attention_mass_is_a_share(llava, hall_request):
    s = AttentionLens(layers=(0, 1)).detect_hallucination(llava, hall_request)
    assert ((s <= 0) & (s >= -1)).all() and (s < 0).all()  # every query sees the image (causal: it comes first)
    pred = AttentionLens(query="predict").detect_hallucination(llava, hall_request)
    assert not torch.equal(s, pred)


def test_image_similarity_hand_computed():
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]]])  # 2 image tokens, then 2 text
    image = torch.tensor([[True, True, False, False]])
    span = torch.tensor([[False, False, True, True]])
    c = 2 ** -0.5
    torch.testing.assert_close(image_similarity(h, span, image, 1), torch.tensor([(c + 1.0) / 2]))
    torch.testing.assert_close(image_similarity(h, span, image, 2), torch.tensor([(c + 0.5) / 2]))
    torch.testing.assert_close(image_similarity(h, span, image, 9), torch.tensor([(c + 0.5) / 2]))


def test_probe_recovers_a_span_identity_rule_from_the_fit_split(llava, hall_request):
    method = Probing(layer=0, pool="mean")
    scores = method.detect_hallucination(llava, hall_request)
    truth = torch.tensor([int(s in ("blue square", "yes")) for s in hall_request.items.spans])
    for kind in ("caption", "pope"):
        sel = torch.tensor([k == kind for k in hall_request.items.kinds])
        assert scores[sel][truth[sel] == 1].min() > scores[sel][truth[sel] == 0].max()
    assert set(method.fitted) == {"probe_caption", "probe_pope"}
    # fitted state depends on the fit split alone
    fitted = dict(method.fitted)
    other_items = HallucinationRequest(_outputs(7, ["blue square"], 9), hall_request.fit, hall_request.fit_labels_B)
    again = Probing(layer=0, pool="mean")
    again.detect_hallucination(llava, other_items)
    assert again.fitted == fitted


# ------------------------------------------------------------ logit lens localize
def test_logit_lens_localize_ablated_site_contributes_nothing(tiny_planted_llava):
    from tasks.localization import LocalizationTask

    model = tiny_planted_llava
    task = LocalizationTask()
    cands = task.candidates(model)
    req = task.request(model, task.examples(model, 6, 0, "test"), cands)
    base = LogitLens().localize(model, req)
    assert base.shape == (6, len(cands)) and torch.isfinite(base).all() and (base.abs() > 0).all()
    inner = req.evaluate

    def ablated(which, read=(), write=None, copies=1, keep_grad=False):
        return inner(which, read, {**(write or {}), cands[0]: lambda v: torch.zeros_like(v)}, copies, keep_grad)

    req.evaluate = ablated
    s = LogitLens().localize(model, req)
    assert (s[:, 0] == 0).all() and (s[:, 1:] != base[:, 1:]).any()
    last_local = LogitLens(read="final").localize(model, req)[:, -1]
    torch.testing.assert_close(last_local, s[:, -1])  # at the last layer, "final" and "local" agree


def test_logit_lens_finds_the_planted_season_mlp_on_zoo_vlm():
    """Measured property of the shipped zoo-vlm (Llama LM, 4 blocks; season planted in block 3's MLP)."""
    from bench.registry import MODELS
    from tasks.localization import LocalizationTask

    model = MODELS.get("zoo-vlm")("zoo-vlm")
    task = LocalizationTask()
    cands = task.candidates(model)
    ex = task.examples(model, 16, 0, "test")
    scores = LogitLens().localize(model, task.request(model, ex, cands))
    season = torch.tensor([r == "season" for r in ex.relations])
    assert cands[int(scores[season].mean(0).argmax())] == "lm.blocks.3.mlp"
