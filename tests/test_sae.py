"""The SAE core (bench/kit/sae.py) and the ``sae`` method (methods/sae.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.capabilities import EditRequest, HallucinationRequest, ScoredOutputs
from bench.errors import BenchError
from bench.kit.sae import SAE, SAEConfig, cached_sae, loss_recovered, sae_key, sae_stats, train_sae
from methods.sae import SAEMethod, _edit_objective, _eta_within


def planted_acts(n: int = 2048, d: int = 16, f: int = 32, active: int = 3, seed: int = 0) -> torch.Tensor:
    """Activations that are sparse sums of ``active`` of ``f`` random unit directions (a known dictionary)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(f, d, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    codes = torch.zeros(n, f)
    idx = torch.stack([torch.randperm(f, generator=g)[:active] for _ in range(n)])
    codes.scatter_(1, idx, torch.rand(n, active, generator=g) * 2 + 0.5)
    return codes @ dirs + 3.0  # an offset: centring happens inside the SAE


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMI_BENCH_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------- core
@pytest.mark.parametrize("kind", ["relu", "topk", "jumprelu"])
def test_each_kind_reconstructs_a_sparse_dictionary_sparsely(kind):
    x = planted_acts()
    cfg = SAEConfig(kind=kind, expansion=2, k=4, steps=400, l1=0.01, l0=0.002)
    sae = train_sae(x, cfg)
    st = sae_stats(sae, x)
    assert st["fvu"] < 0.15, st
    assert st["l0"] < 0.5 * sae.n_features, st  # sparse: far fewer than half the features fire
    assert torch.allclose(sae.directions_FD.norm(dim=1), torch.ones(sae.n_features), atol=1e-5)
    if kind == "topk":
        assert st["l0"] <= cfg.k + 1e-9


def test_training_is_bit_identical_per_seed_and_changes_with_it():
    x = planted_acts(n=512)
    cfg = SAEConfig(kind="jumprelu", expansion=2, steps=60)
    a, b = train_sae(x, cfg).state(), train_sae(x, cfg).state()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = train_sae(x, SAEConfig(kind="jumprelu", expansion=2, steps=60, seed=1)).state()
    assert not torch.equal(a["W_dec_FD"], c["W_dec_FD"])


def test_sparsity_penalties_buy_sparsity():
    x = planted_acts(n=1024)
    for kind, knob in (("relu", "l1"), ("jumprelu", "l0")):
        lo = sae_stats(train_sae(x, SAEConfig(kind=kind, expansion=2, steps=300, **{knob: 0.0})), x)
        hi = sae_stats(train_sae(x, SAEConfig(kind=kind, expansion=2, steps=300, **{knob: 0.05})), x)
        assert hi["l0"] < 0.7 * lo["l0"], (kind, lo, hi)


def test_jumprelu_threshold_gets_the_straight_through_gradient():
    sae = SAE(2, 3, SAEConfig(kind="jumprelu", threshold_init=0.5, bandwidth=0.2))
    z = torch.tensor([[0.55, 0.9, 0.1]])  # feature 0 within ε/2 of θ, 1 far above, 2 far below
    sae.theta_F.requires_grad_(True)
    out = sae._act(z)
    assert torch.equal(out.detach(), torch.tensor([[0.55, 0.9, 0.0]]))
    (g,) = torch.autograd.grad(out.sum(), [sae.theta_F])
    assert torch.allclose(g, torch.tensor([-0.5 / 0.2, 0.0, 0.0]))


def test_stats_on_a_hand_example():
    sae = SAE(2, 2, SAEConfig(kind="relu"))
    with torch.no_grad():
        sae.W_enc_DF.copy_(torch.eye(2))
        sae.W_dec_FD.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, -1.0]])  # the second row's feature is cut by the ReLU
    st = sae_stats(sae, x)
    # residuals: 0 and 1; variance about the mean (0.5, -0.5): 4 × 0.25
    assert st["fvu"] == pytest.approx(1.0 / 1.0)
    assert st["l0"] == pytest.approx(0.5) and st["dead"] == pytest.approx(0.5)


def test_loss_recovered_definition():
    assert loss_recovered(metric_clean=2.0, metric_sae=2.5, metric_zero=4.0) == pytest.approx(0.75)
    assert loss_recovered(metric_clean=5.0, metric_sae=4.0, metric_zero=1.0) == pytest.approx(0.75)  # higher-better
    assert math.isnan(loss_recovered(1.0, 0.5, 1.0))


def test_cache_reuses_the_trained_sae_and_keys_on_config(tmp_path):
    x = planted_acts(n=256)
    cfg = SAEConfig(expansion=2, steps=30)
    first = cached_sae(x, cfg)
    files = list((tmp_path / "cache" / "sae").glob("*.safetensors"))
    assert [f.stem for f in files] == [sae_key(x, cfg)]
    again = cached_sae(x, cfg)
    assert all(torch.equal(first.state()[k], again.state()[k]) for k in first.state())
    assert sae_key(x, SAEConfig(expansion=2, steps=31)) != sae_key(x, cfg)


def test_feature_edits_keep_the_error_term():
    x = planted_acts(n=256)
    sae = train_sae(x, SAEConfig(expansion=2, steps=50))
    v = x[:8, None].repeat(1, 3, 1)  # [B, L, D]
    assert torch.equal(sae.splice(keep_error=True)(v), v)
    f = sae.encode(v)
    feats = torch.arange(sae.n_features)
    assert torch.allclose(sae.feature_edit(feats)(v), v - sae.decode_delta(f), atol=1e-5)  # ablate all
    assert torch.allclose(sae.feature_edit(feats[:5], f[0, 0, :5])(v[:1, :1]), v[:1, :1], atol=1e-5)  # no-op clamp


def test_bad_configs_are_bench_errors():
    with pytest.raises(BenchError):
        train_sae(torch.zeros(10, 4), SAEConfig(kind="gated"))
    with pytest.raises(BenchError):
        SAEMethod(kind="nope")
    with pytest.raises(BenchError):
        SAEMethod(aggregate="sum")
    with pytest.raises(BenchError):
        SAEMethod(bogus=1)


def test_eta_within_separates_attribute_from_class():
    cls = torch.tensor([0, 0, 1, 1] * 4)
    sp = torch.tensor([0, 1, 0, 1] * 4)
    x = torch.stack([sp.double(), cls.double(), torch.ones(16, dtype=torch.float64)], 1)
    eta_sp, eta_cls = _eta_within(x, sp, cls), _eta_within(x, cls, sp)
    assert torch.allclose(eta_sp, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(eta_cls, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))


# ----------------------------------------------------------------- method, on zoo models
FAST = dict(steps=60, expansion=2, max_tokens=2048)


def _localize_request(model, n=6):
    from tasks.localization import LocalizationTask

    task = LocalizationTask()
    cands = task.candidates(model)
    req = task.request(model, task.examples(model, n, 0, "test"), cands)
    req.fit = task.request(model, task.examples(model, n, 1_000_003, "fit"), cands)
    return req


def test_signed_feature_attribution_equals_attribution_patching(zoo_clip):
    """With the error node, feature-space attribution patching sums to the site's attribution patching
    (the decoder is linear): a check of the feature-gradient algebra."""
    from methods.grad_x_activation import GradXActivation

    req = _localize_request(zoo_clip)
    signed = SAEMethod(aggregate="signed", **FAST)
    s = signed.localize(zoo_clip, req)
    ref = GradXActivation().localize(zoo_clip, req)
    assert torch.allclose(s, ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()))
    absolute = SAEMethod(**FAST).localize(zoo_clip, req)
    assert (absolute >= s.abs() - 1e-6).all()  # node mass bounds the net effect
    assert set(signed.fitted) == {f"localize:{c}" for c in req.candidates}
    d = signed.diagnostics
    assert {"sae_fvu", "sae_l0", "sae_dead", "sae_loss_recovered"} <= set(d) and d["sae_l0"] <= 8 + 1e-9


def test_debias_ablates_spurious_features_and_helps_on_the_fit_split():
    from bench.harness.runner import load_model
    from tasks.spurious import SpuriousTask

    model = load_model("zoo-clip-spurious")
    m = SAEMethod(**FAST)
    res = SpuriousTask().run(model, m, seed=0, quick=True)
    assert res.metrics["components_touched"] >= 1
    assert "debias:ablated" in m.fitted and m.diagnostics["sae_fvu"] < 0.5
    # the ablation count is chosen on the fit split; held out, it should not make the worst group worse
    assert res.metrics["worst_group_accuracy"] >= res.metrics["unmodified_worst_group_accuracy"]


def test_edit_clamp_moves_the_objective_towards_the_new_answer(zoo_clip):
    from bench.kit.editing import ParameterSnapshot, applied_edit
    from tasks.editing import EditingConfig, build_cases

    case = build_cases(zoo_clip, 1, EditingConfig(), seed=0)[0]
    req = EditRequest(case.edit_pixels_RCHW[None], [case.relation.question], [case.old], [case.new],
                      site=case.relation.site, values=[case.relation.values])
    snap = ParameterSnapshot(zoo_clip.module)
    iv = SAEMethod(**FAST).edit(zoo_clip, req)
    assert snap.unchanged() and 1 <= iv.components <= 4
    J = _edit_objective(zoo_clip, req)
    with torch.no_grad():
        before = float(J())
        with applied_edit(zoo_clip, iv):
            after = float(J())
    assert after > before


def test_hallucination_detector_learns_a_separable_label(make_tiny_llava, world):
    """Labels that the span token determines ("yes" vs "no") must be read off the SAE codes."""
    model = make_tiny_llava()
    scenes = list(world.scenes("fit", 24, 0))
    pix = torch.from_numpy(np.stack([s.image_HWC for s in scenes])).permute(0, 3, 1, 2).float() / 255

    def outs(sl: slice) -> tuple[ScoredOutputs, torch.Tensor]:
        spans = ["yes" if i % 2 else "no" for i in range(sl.start, sl.stop)]
        so = ScoredOutputs(pix[sl], ["is there a red circle?"] * len(spans), [""] * len(spans), spans,
                           ["pope"] * len(spans))
        return so, torch.tensor([int(s == "yes") for s in spans])

    fit, y_fit = outs(slice(0, 16))
    items, y = outs(slice(16, 24))
    m = SAEMethod(**FAST)
    scores = m.detect_hallucination(model, HallucinationRequest(items, fit, y_fit))
    assert scores.shape == (8,) and torch.isfinite(scores).all()
    assert scores[y == 1].min() > scores[y == 0].max()
    assert any(k.startswith("hallucination:probe") for k in m.fitted)
    again = SAEMethod(**FAST).detect_hallucination(model, HallucinationRequest(items, fit, y_fit))
    assert torch.equal(scores, again)
