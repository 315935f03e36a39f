"""Spurious-correlation methods: DFR, head ablation and TextSpan on zoo-clip-spurious."""

from __future__ import annotations

import pytest
import torch

from bench.capabilities import DebiasRequest
from bench.errors import BenchError
from bench.registry import METHODS


@pytest.fixture(scope="module")
def spurious_model():
    from models.zoo_models import load_zoo_clip_model

    return load_zoo_clip_model("zoo-clip-spurious")


def _fit_request(per_group: int) -> DebiasRequest:
    from bench.kit.world import World
    from tasks.spurious import SPURIOUS_VALUES, _scenes

    fit = _scenes(World(0), "fit", per_group, 0)
    return DebiasRequest(fit.pixels_BCHW, fit.labels_B, fit.spurious_B, ["a circle", "a square"],
                         [f"a photo on {v}" for v in SPURIOUS_VALUES], batch_size=64)


@pytest.fixture(scope="module")
def fit_request():
    return _fit_request(24)


@pytest.fixture(scope="module")
def small_fit_request():
    """12 scenes a group: enough for the head-ranking methods' properties checked below (the
    per-head decomposition they run over every fit image is their whole cost)."""
    return _fit_request(12)


@pytest.fixture(scope="module")
def test_split():
    from bench.kit.world import World
    from tasks.spurious import _scenes

    return _scenes(World(0), "test", 24, 0)


def _worst(model, iv, split) -> float:
    from tasks.spurious import group_accuracies, predict

    pred = predict(model, split.pixels_BCHW, ["a circle", "a square"], iv, 64)
    return float(group_accuracies(pred, split.labels_B, split.group_B).min())


# ------------------------------------------------------------------ decomposition
def test_head_writes_sum_to_the_attention_output(spurious_model, fit_request) -> None:
    from methods.head_ablation import _residual_writes, vision_heads

    m = spurious_model
    heads = vision_heads(m)
    x = fit_request.fit_pixels_BCHW[:3]
    attn = [f"vision.blocks.{L}.attn" for L in range(4)]
    with torch.no_grad():
        with m.trace(read=[*heads, *attn]) as t:
            m.encode_image(x)
        o_BHD = _residual_writes(m, x, heads, {h: t[h] for h in heads})
    for L in range(4):
        cols = [j for j, h in enumerate(heads) if m.site(h).layer == L]
        # Σ_h o_h + bias = attention output; the bias is the same for every image
        bias = t[attn[L]][:, 0] - o_BHD[:, cols].sum(1)
        assert torch.allclose(bias, bias[:1].expand_as(bias), atol=1e-4)
        assert o_BHD[:, cols].abs().max() > 1e-3


def test_through_final_linearisation_reconstructs_the_embedding(spurious_model, fit_request) -> None:
    from methods.head_ablation import _through_final

    m = spurious_model
    x = fit_request.fit_pixels_BCHW[:4]
    last = m.layer_sites("vision", "resid_post")[-1]
    zero_cls = lambda v: torch.cat([torch.zeros_like(v[:, :1]), v[:, 1:]], 1)  # noqa: E731
    with torch.no_grad():
        with m.trace(read=[last, "vision.proj"]) as t:
            m.encode_image(x)
        with m.trace(read=["vision.proj"], write={last: zero_cls}) as t0:
            m.encode_image(x)
        r = t[last][:, 0].double()
        sigma = (r.var(1, unbiased=False) + 1e-5).sqrt()
        direct = _through_final(m, x, r, sigma, last, "vision.proj")
    # P(γ ⊙ (r − mean r)) / σ(r) + P(β) is exactly the embedding (Gandelsman et al.'s identity)
    assert torch.allclose(direct.float() + t0["vision.proj"], t["vision.proj"], atol=1e-3, rtol=1e-3)


# ------------------------------------------------------------------ DFR
def test_balanced_indices_are_balanced_and_seeded() -> None:
    from methods.dfr import balanced_indices

    groups = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)
    a = balanced_indices(groups, torch.Generator().manual_seed(0))
    b = balanced_indices(groups, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert torch.bincount(groups[a]).tolist() == [3, 3, 3]


def test_dfr_raises_worst_group_accuracy(spurious_model, fit_request, test_split, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MMI_BENCH_CACHE", str(tmp_path))
    method = METHODS.get("dfr")()
    iv = method.debias(spurious_model, fit_request)
    assert iv.head is not None and iv.writes == {} and iv.components == 1
    base = _worst(spurious_model, None, test_split)
    after = _worst(spurious_model, iv, test_split)
    assert after > base + 0.2, (base, after)
    again = METHODS.get("dfr")()
    again.debias(spurious_model, fit_request)  # from the cache: the same last layer
    assert again.fitted == method.fitted
    with pytest.raises(BenchError):
        METHODS.get("dfr")(C=0.0).debias(spurious_model, fit_request)


# ------------------------------------------------------------------ head ablation and TextSpan
def test_head_ablation_ablates_k_heads_deterministically(spurious_model, small_fit_request) -> None:
    fit_request = small_fit_request
    a = METHODS.get("head_ablation")(k=3)
    iv = a.debias(spurious_model, fit_request)
    assert iv.components == 3 and len(iv.writes) == 3
    assert all(".attn.head." in s and s.startswith("vision.") for s in iv.writes)
    b = METHODS.get("head_ablation")(k=3)
    b.debias(spurious_model, fit_request)
    assert a.fitted == b.fitted
    # the chosen heads are the top-scored ones
    scores = {k.split(":", 1)[1]: v for k, v in a.diagnostics.items() if k.startswith("score:")}
    top = sorted(scores, key=lambda h: -scores[h])[:3]
    assert set(iv.writes) == set(top)
    with pytest.raises(BenchError):
        METHODS.get("head_ablation")(k=99).debias(spurious_model, fit_request)


def test_text_span_picks_the_texts_that_explain_the_variance() -> None:
    from methods.textspan import text_span

    g = torch.Generator().manual_seed(0)
    R = torch.eye(6)[:5] + 0.01 * torch.randn(5, 6, generator=g)
    coef = torch.randn(200, 2, generator=g) * torch.tensor([3.0, 1.0])
    C = coef[:, :1] * R[2] + coef[:, 1:] * R[4]  # varies along texts 2 (most) and 4
    idx, var = text_span(C, R, 3)
    assert idx[:2] == [2, 4]
    assert var[0] > var[1] > 10 * var[2]


def test_textspan_ablates_the_heads_described_by_spurious_texts(spurious_model, small_fit_request) -> None:
    fit_request = small_fit_request
    method = METHODS.get("textspan")()
    iv = method.debias(spurious_model, fit_request)
    shares = {k.split(":", 1)[1]: v for k, v in method.diagnostics.items() if k.startswith("share:")}
    assert len(shares) == 16 and all(0.0 <= s <= 1.0 + 1e-9 for s in shares.values())
    assert set(iv.writes) == {h for h, s in shares.items() if s >= 0.5}
    assert iv.components == len(iv.writes)
    assert all(len(d) == 5 for d in method.descriptions.values())
    none = METHODS.get("textspan")(min_share=1.0).debias(spurious_model, fit_request)
    assert none.components <= iv.components
    with pytest.raises(BenchError):
        METHODS.get("textspan")(n_texts=0).debias(spurious_model, fit_request)
