"""Knowledge neurons, decomposition and attention knockout on the shipped zoo models (small n).

Each test checks a property the method's definition implies: completeness of integrated
gradients, exact additivity of the direct-effect decomposition, that the knockout's editable
attention is eager attention when no edit is installed, and that batched sweeps equal
their one-site-at-a-time definition.
"""

from __future__ import annotations

import pytest
import torch

from bench.errors import BenchError
from bench.registry import MODELS, TASKS


@pytest.fixture(scope="module")
def vlm():
    return MODELS.get("zoo-vlm")("zoo-vlm")


@pytest.fixture(scope="module")
def clip():
    return MODELS.get("zoo-clip")("zoo-clip")


def _request(model, n: int, cands: list[str] | None = None):
    task = TASKS.get("localization")()
    cands = cands or task.candidates(model)
    req = task.request(model, task.examples(model, n, 0, "test"), cands)
    req.fit = task.request(model, task.examples(model, n, 1_000_003, "fit"), cands)
    return req


# ----------------------------------------------------------------------------- attention knockout
def test_knockout_edit_zeroes_blocked_edges_and_renormalises():
    from methods.attention_knockout import knockout

    p = torch.softmax(torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0)), -1)
    block = torch.zeros(1, 4, 4, dtype=torch.bool)
    block[0, 3, :2] = True  # query 3 may not read keys 0, 1
    out = knockout(block, torch.tensor([1]))(p)
    assert torch.equal(out[0], p[0]) and torch.equal(out[2], p[2])  # other rows untouched
    assert torch.equal(out[1, :, :3], p[1, :, :3])  # other queries untouched
    assert (out[1, :, 3, :2] == 0).all()
    torch.testing.assert_close(out[1, :, 3].sum(-1), torch.ones(2))
    torch.testing.assert_close(out[1, :, 3, 2:], p[1, :, 3, 2:] / p[1, :, 3, 2:].sum(-1, keepdim=True))


def test_editable_attention_is_eager_attention_and_is_restored(clip):
    from methods.attention_knockout import editable_patterns

    req = _request(clip, 4)
    site = clip.layer_sites("vision", "pattern")[1]
    with torch.no_grad():
        base, _ = req.evaluate("clean")
        # a trace write of the returned pattern would not reach the output (why the method needs its
        # own path): the site refuses writes
        with pytest.raises(BenchError, match="cannot be written"):
            req.evaluate("clean", write={site: torch.zeros_like})
        with editable_patterns(clip, {site: lambda p: p}):
            same, _ = req.evaluate("clean")
            assert clip.module.config._attn_implementation == "mmi_editable_eager"
        with editable_patterns(clip, {site: lambda p: torch.ones_like(p) / p.shape[-1]}):
            uniform, _ = req.evaluate("clean")
    assert torch.equal(base, same)
    assert (base - uniform).abs().max() > 0.1
    assert clip.module.config._attn_implementation == "eager"
    assert clip.module.config.vision_config._attn_implementation == "eager"


def test_knockout_batched_sweep_equals_one_window_at_a_time(clip):
    from methods.attention_knockout import AttentionKnockout, editable_patterns, knockout

    req = _request(clip, 3)
    m = AttentionKnockout(window=2, copies_per_pass=3)
    scores = m.localize(clip, req)
    assert scores.shape == (3, 4)
    patterns = clip.layer_sites("vision", "pattern")
    block = m.blocked_edges(clip, req, 65)
    assert block[:, 0, 1:].all() and not block[:, 1:].any() and not block[:, 0, 0].any()
    with torch.no_grad():
        base, _ = req.evaluate("clean")
        for layer in (1, 3):  # window 2 around layer l: layers l, l + 1 (clipped)
            edits = {patterns[j]: knockout(block, torch.arange(3)) for j in (layer, layer + 1) if j < 4}
            with editable_patterns(clip, edits):
                knocked, _ = req.evaluate("clean")
            torch.testing.assert_close(scores[:, layer], (base - knocked).double(), atol=1e-5, rtol=1e-5)
    with pytest.raises(BenchError):
        AttentionKnockout(window=0)


def test_knockout_generative_blocks_readout_to_image_tokens(vlm):
    from methods.attention_knockout import AttentionKnockout

    req = _request(vlm, 2)
    n_q = int(req.positions_N.max()) + 1
    block = AttentionKnockout().blocked_edges(vlm, req, n_q)
    img = vlm.image_positions(req.prompts)[:, :n_q]
    for i in range(2):
        assert torch.equal(block[i, req.positions_N[i]], img[i])
        assert block[i].sum() == img[i].sum() > 0  # only the readout row


def test_subject_words_is_the_varying_slot():
    from methods.attention_knockout import subject_words

    assert subject_words(["a gavizo", "a dovi", "a zen"]) == [1]
    assert subject_words(["a b c", "a b c"]) == [0, 1, 2]


# ----------------------------------------------------------------------------- activation patching
def test_activation_patching_batched_sweep_equals_one_site_at_a_time(clip):
    """Each site's score is the clean metric minus the clean metric with that site's activation taken
    from the corrupt run, however many sites share a forward pass."""
    from methods.activation_patching import ActivationPatching

    req = _request(clip, 2)
    scores = ActivationPatching(sites_per_pass=3).localize(clip, req)
    assert scores.shape == (2, len(req.candidates)) and torch.isfinite(scores).all()
    torch.testing.assert_close(ActivationPatching().localize(clip, req), scores, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        base, _ = req.evaluate("clean")
        _, corrupt = req.evaluate("corrupt", read=req.candidates)
        for k, site in enumerate(req.candidates):
            patched, _ = req.evaluate("clean", write={site: lambda v, a=corrupt[site]: a})
            torch.testing.assert_close(scores[:, k], (base - patched).double(), atol=1e-5, rtol=1e-5)
    assert (scores.abs().sum(0) > 0).any()  # corrupting some site moves the metric


# ----------------------------------------------------------------------------- decomposition
def _all_components(tower: str, n_layers: int = 4) -> list[str]:
    return [f"{tower}.embed"] + [s for l in range(n_layers) for s in (f"{tower}.blocks.{l}.attn",
                                                                      f"{tower}.blocks.{l}.mlp")]


def test_decomposition_generative_contributions_sum_to_the_metric(vlm):
    from methods.decomposition import Decomposition

    req = _request(vlm, 4, _all_components("lm"))
    direct = Decomposition().localize(vlm, req)
    base, _ = req.evaluate("clean")
    # RMSNorm and the unembedding carry no bias: the direct effects add up to the logit difference
    torch.testing.assert_close(direct.sum(1), base.double(), atol=2e-3, rtol=1e-4)
    assert torch.equal(Decomposition(absolute=True).localize(vlm, req), direct.abs())


def test_decomposition_contrastive_contributions_plus_bias_sum_to_the_metric(clip):
    from methods.decomposition import Decomposition

    req = _request(clip, 4, _all_components("vision"))
    m = Decomposition()
    direct = m.localize(clip, req)
    # the post-layernorm's bias β is the one term that is no component's: add it by hand
    with torch.no_grad():
        _, tr = req.evaluate("clean", read=["vision.proj"])
        beta = clip.module.vision_model.post_layernorm.bias
        z = clip.module.visual_projection(beta[None]) / tr["vision.proj"].norm(dim=-1, keepdim=True)
        texts = [p.format(value=v) for p, a, b in zip(req.prompts, req.answers, req.alternatives) for v in (a, b)]
        sims = torch.stack([clip.similarity_to(z[i:i + 1], clip.encode_text(texts[2 * i: 2 * i + 2]))[0]
                            for i in range(4)])
        base, _ = req.evaluate("clean")
    torch.testing.assert_close(direct.sum(1) + (sims[:, 0] - sims[:, 1]).double(), base.double(),
                               atol=2e-3, rtol=1e-4)


# ----------------------------------------------------------------------------- knowledge neurons
def test_knowledge_neurons_completeness_and_determinism(clip):
    from methods.knowledge_neurons import KnowledgeNeurons, _scaled

    req = _request(clip, 2)
    fine = KnowledgeNeurons(steps=128, copies_per_pass=128).integrated_gradients(clip, req)  # [n, K, F]
    coarse = KnowledgeNeurons(steps=8, copies_per_pass=32).integrated_gradients(clip, req)
    assert fine.shape[:2] == (2, 4)
    # completeness: a layer's attributions sum to F(clean) − F(that layer's readout neurons zeroed),
    # up to the right Riemann sum's O(1/m) error, which shrinks with more steps
    with torch.no_grad():
        base, _ = req.evaluate("clean")
        for k in (2, 3):
            zeroed, _ = req.evaluate("clean", write={f"vision.blocks.{k}.mlp.neurons": _scaled(
                torch.arange(2), torch.zeros(2), req.positions_N)})
            expect = (base - zeroed).double()
            err_fine = (fine[:, k].sum(1) - expect).abs()
            assert (err_fine <= 0.1 * expect.abs() + 0.01).all(), (k, err_fine, expect)
            assert err_fine.sum() < (coarse[:, k].sum(1) - expect).abs().sum()
    rechunked = KnowledgeNeurons(steps=8, copies_per_pass=5).integrated_gradients(clip, req)
    torch.testing.assert_close(rechunked, coarse, atol=1e-9, rtol=1e-6)  # chunking does not change the sums
    assert torch.equal(KnowledgeNeurons(steps=8, copies_per_pass=32).integrated_gradients(clip, req), coarse)


def test_knowledge_neuron_scores_follow_the_threshold(clip):
    from methods.knowledge_neurons import KnowledgeNeurons

    req = _request(clip, 2)
    attr = KnowledgeNeurons(steps=8).integrated_gradients(clip, req)
    kn = attr > 0.2 * attr.flatten(1).max(1).values[:, None, None]
    count = KnowledgeNeurons(steps=8, score="count").localize(clip, req)
    share = KnowledgeNeurons(steps=8).localize(clip, req)
    assert torch.equal(count, kn.sum(2).double())
    torch.testing.assert_close(share.sum(1), torch.ones(2, dtype=torch.float64))
    assert ((share > 0) == (count > 0)).all()
    for bad in ({"steps": 0}, {"threshold": 0.0}, {"score": "max"}, {"positions": "some"}):
        with pytest.raises(BenchError):
            KnowledgeNeurons(**bad)
