"""Unit tests of relevance (Chefer et al., 2021), RISE and cross-attention (DAAM) maps:
hand-computed updates, toy scores with known answers, and tiny random models (real code path)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from bench.capabilities import AttributionRequest
from bench.errors import BenchError
from methods.cross_attention import CrossAttention
from methods.relevance import Relevance, relevance_update
from methods.rise import RISE, rise_masks


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.module.modules())


def _no_hooks(model) -> bool:
    return _hooks(model) == 0


@pytest.fixture(scope="module")
def clip_request(tiny_clip):
    from tasks.attribution import AttributionTask

    task = AttributionTask()
    ex = task.examples(tiny_clip, seed=0, n=3)
    req = task.request(tiny_clip, ex)
    req.batch_size = 2  # two chunks, the last one ragged
    return req


# ------------------------------------------------------------------ relevance
def test_relevance_update_by_hand():
    # one head, two tokens: R = I + (∇A ⊙ A)⁺ · I
    A = torch.tensor([[[[0.5, 0.5], [0.2, 0.8]]]])
    G = torch.tensor([[[[2.0, -1.0], [0.0, 1.0]]]])
    R = relevance_update(torch.eye(2)[None], A, G)
    torch.testing.assert_close(R, torch.tensor([[[2.0, 0.0], [0.0, 1.8]]]))
    # two heads are averaged after the positive part
    A2 = torch.cat([A, A], 1)
    G2 = torch.cat([G, -G], 1)
    torch.testing.assert_close(relevance_update(torch.eye(2)[None], A2, G2),
                               torch.tensor([[[1.5, 0.25], [0.0, 1.4]]]))


def test_relevance_matches_two_block_formula(tiny_clip, clip_request):
    """On the 2-block tiny CLIP: map = CLS row of Ā₁ + Ā₂ + Ā₂Ā₁ over image tokens."""
    model, req = tiny_clip, clip_request
    layout = model.token_layout()
    maps = Relevance().attribute(model, req)
    assert tuple(maps.shape) == (req.n, *layout.grid)
    assert _no_hooks(model)
    sites = model.layer_sites("vision", "pattern")
    x = req.pixels_BCHW.clone().requires_grad_(True)
    idx = torch.arange(req.n)
    with model.trace(read=sites, keep_grad=True) as t:
        s = req.score(x, idx)
    a1, a2 = t[sites[0]], t[sites[1]]
    g1, g2 = torch.autograd.grad(s.sum(), [a1, a2])
    b1 = (g1 * a1).clamp(min=0).mean(1).detach()
    b2 = (g2 * a2).clamp(min=0).mean(1).detach()
    expected = (b1 + b2 + b2 @ b1)[:, 0, layout.image].reshape(req.n, *layout.grid)
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-7)
    assert (maps >= 0).all() and (maps.flatten(1).sum(1) > 0).all()


def test_relevance_rows_deterministic_and_chunk_invariant(tiny_clip, clip_request):
    one = AttributionRequest(clip_request.pixels_BCHW, clip_request.score, clip_request.grid, batch_size=64)
    a = Relevance().attribute(tiny_clip, clip_request)
    torch.testing.assert_close(a, Relevance().attribute(tiny_clip, one), rtol=1e-4, atol=1e-7)
    assert torch.equal(a, Relevance().attribute(tiny_clip, clip_request))
    assert torch.equal(a, Relevance(row="cls").attribute(tiny_clip, clip_request))  # auto = cls on CLIP
    mean = Relevance(row="mean").attribute(tiny_clip, clip_request)
    assert mean.shape == a.shape and not torch.allclose(mean, a)


def test_relevance_auto_row_on_llava_is_mean(make_tiny_llava):
    from tasks.attribution import AttributionTask

    model = make_tiny_llava()
    task = AttributionTask()
    req = task.request(model, task.examples(model, seed=0, n=2))
    with torch.no_grad():
        req.score(req.pixels_BCHW, torch.arange(2))
    before = _hooks(model)  # transformers installs hooks of its own at the first forward pass
    assert Relevance().supports(model) is None
    auto = Relevance().attribute(model, req)
    torch.testing.assert_close(auto, Relevance(row="mean").attribute(model, req))
    assert tuple(auto.shape) == (2, *model.token_layout().grid) and torch.isfinite(auto).all()
    assert _hooks(model) == before


def test_relevance_score_blind_to_the_image_gives_zero_map(tiny_clip, clip_request):
    # the model runs, but the score ignores its output: zero gradient, nothing is relevant
    req = AttributionRequest(clip_request.pixels_BCHW, lambda x, i: tiny_clip.encode_image(x)[:, 0] * 0 + i.float(),
                             clip_request.grid)
    maps = Relevance().attribute(tiny_clip, req)
    assert torch.equal(maps, torch.zeros_like(maps))


def test_relevance_config_and_support(tiny_clip):
    with pytest.raises(BenchError):
        Relevance(row="first")
    assert Relevance().supports(tiny_clip) is None


# ------------------------------------------------------------------ RISE
def test_rise_masks_shape_range_and_seed():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    m = rise_masks(400, 7, 0.5, (32, 32), g(0))
    assert m.shape == (400, 32, 32) and m.min() >= 0 and m.max() <= 1
    assert abs(float(m.mean()) - 0.5) < 0.03  # bilinear upsampling keeps the keep-probability
    assert torch.equal(m, rise_masks(400, 7, 0.5, (32, 32), g(0)))
    assert not torch.equal(m, rise_masks(400, 7, 0.5, (32, 32), g(1)))
    # random shifts: masks are not all aligned to the same cell boundaries
    assert len({tuple(row.tolist()) for row in (m[:, :, 0] > 0.5).float()[:50]}) > 10


@pytest.fixture(scope="module")
def region_request():
    """A score that is the log of the mean brightness of the top-left 8×8 block only."""
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.5 * torch.rand(4, 3, 16, 16, generator=g)

    def score(pixels_NCHW, idx_N):
        return pixels_NCHW[:, :, :8, :8].mean((1, 2, 3)).clamp_min(1e-6).log()

    return AttributionRequest(x, score, (4, 4), batch_size=7)


def test_rise_finds_the_region_that_matters(region_request):
    maps = RISE(n_masks=300, cells=4).attribute(None, region_request)
    assert maps.shape == (4, 16, 16) and torch.isfinite(maps).all()
    inside, outside = maps[:, :6, :6].mean((1, 2)), maps[:, 10:, 10:].mean((1, 2))
    assert (inside > outside + 0.02).all()
    centred = RISE(n_masks=300, cells=4, baseline="mean").attribute(None, region_request)
    assert (centred[:, :6, :6].mean((1, 2)) > 0).all() and (centred[:, 10:, 10:].mean((1, 2)) < 0.05).all()


def test_rise_estimator_and_batching(region_request):
    """The map is Σ_i exp(score(x ⊙ M_i)) · M_i / (N·p), whatever the batch size."""
    N, p = 20, 0.5
    masks = rise_masks(N, 4, p, (16, 16), torch.Generator().manual_seed(3))
    x = region_request.pixels_BCHW
    probs = torch.stack([region_request.score(x * masks[i], torch.arange(4)).exp() for i in range(N)], 1)
    expected = torch.einsum("bn,nhw->bhw", probs, masks) / (N * p)
    for bs in (1, 7, 1000):
        req = replace(region_request, batch_size=bs)
        torch.testing.assert_close(RISE(n_masks=N, cells=4, seed=3).attribute(None, req), expected)


def test_rise_constant_score_and_config(region_request):
    req = replace(region_request, score=lambda x, i: torch.zeros(x.shape[0]))
    assert torch.equal(RISE(n_masks=10, baseline="mean").attribute(None, req), torch.zeros(4, 16, 16))
    for bad in (dict(n_masks=0), dict(cells=0), dict(p=0.0), dict(p=1.5), dict(baseline="blur")):
        with pytest.raises(BenchError):
            RISE(**bad)
    assert RISE().n_masks_for(None) > 0


def test_rise_on_tiny_clip(tiny_clip, clip_request):
    a = RISE(n_masks=16).attribute(tiny_clip, clip_request)
    assert tuple(a.shape) == (clip_request.n, 32, 32) and (a >= 0).all()
    assert torch.equal(a, RISE(n_masks=16).attribute(tiny_clip, clip_request))
    assert _no_hooks(tiny_clip)


# ------------------------------------------------------------------ cross-attention (DAAM)
@pytest.fixture(scope="module")
def tiny_diffusion(world):
    from bench.kit.world import Vocab
    from models.zoo.diffusion import DiffusionConfig, ZooDiffusion, build_text_encoder, build_unet
    from models.zoo_models import wrap_zoo_diffusion

    vocab = Vocab.for_world(world)
    text_cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    max_position_embeddings=12, eos_token_id=3, pad_token_id=0, bos_token_id=1)
    cfg = replace(DiffusionConfig(), block_out_channels=(16, 32), image_size=16, attention_heads=2, max_text_len=12)
    torch.manual_seed(0)
    zoo = ZooDiffusion(build_unet(cfg, 32), build_text_encoder({**text_cfg, "vocab_size": len(vocab)}), vocab, cfg)
    model = wrap_zoo_diffusion(zoo, "tiny-zoo-diffusion", "tiny")
    model.batch_size = 5  # rows of (example, timestep) pairs: ragged chunks
    return model


@pytest.fixture(scope="module")
def diffusion_request(tiny_diffusion):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16, generator=g)
    prompts = ["a red circle", "a blue square", "a green triangle"]
    return AttributionRequest(x, lambda p, i: p.sum((1, 2, 3)), (4, 4), batch_size=2, prompts=prompts,
                              target_words=[p.split(" ")[-1] for p in prompts])


def test_cross_attention_reads_the_word_columns(tiny_diffusion, diffusion_request):
    """Force every cross-attention map to put all mass on the target word for queries in the
    left half of its grid (and none elsewhere): the map is then heads × layers × timesteps on
    the left half of the image and 0 on the right (nearest upsampling)."""
    model, req = tiny_diffusion, diffusion_request
    sites = model.layer_sites("unet", "cross_pattern")
    assert sites
    pos = [model.prompt_token_positions([p], w)[0] for p, w in zip(req.prompts, req.target_words)]
    assert all(len(p) == 1 for p in pos)
    # rows are example-major (example, timestep) pairs; the test writes per row from a row counter
    K = 2
    row_pos = [pos[b][0] for b in range(req.n) for _ in range(K)]
    state = {}

    def write(site):
        gh, gw = model.attention_grid(site)

        def fn(probs):  # [r, heads, Q, L]
            start = state.setdefault(site, 0)
            r = probs.shape[0]
            new = torch.zeros_like(probs)
            left = (torch.arange(gh * gw) % gw) < gw // 2
            for j in range(r):
                new[j, :, left, row_pos[start + j]] = 1.0
            state[site] = start + r
            return new
        return fn

    with model.trace(write={s: write(s) for s in sites}):
        maps = CrossAttention(timesteps=(0.3, 0.7), upsample="nearest").attribute(model, req)
    with torch.no_grad(), model.trace(read=sites) as t:
        model.noise_pred(torch.zeros(1, *model.sample_shape), 10, ["a red circle"])
    n_heads = {t[s].shape[1] for s in sites}
    assert len(n_heads) == 1
    expected = float(n_heads.pop() * len(sites) * K)
    torch.testing.assert_close(maps[:, :, :8], torch.full((req.n, 16, 8), expected))
    torch.testing.assert_close(maps[:, :, 8:], torch.zeros(req.n, 16, 8))
    assert _no_hooks(model)


def test_cross_attention_real_maps(tiny_diffusion, diffusion_request):
    model, req = tiny_diffusion, diffusion_request
    method = CrossAttention()
    assert method.supports(model) is None
    a = method.attribute(model, req)
    assert tuple(a.shape) == (req.n, 16, 16) and (a >= 0).all() and (a.flatten(1).sum(1) > 0).all()
    assert torch.equal(a, CrossAttention().attribute(model, req))  # seeded noise: bit-identical
    # the map follows the word: another word of the same prompt gives another map
    other = replace(req, target_words=[p.split(" ")[1] for p in req.prompts])
    assert not torch.allclose(method.attribute(model, other), a)
    assert _no_hooks(model)


def test_cross_attention_support_and_errors(tiny_clip, tiny_diffusion, diffusion_request):
    assert CrossAttention().supports(tiny_clip) is not None
    with pytest.raises(BenchError):
        CrossAttention().attribute(tiny_diffusion, replace(diffusion_request, prompts=[]))
    with pytest.raises(BenchError):
        CrossAttention().attribute(tiny_diffusion, replace(diffusion_request, target_words=["hexagon"] * 3))
    for bad in (dict(timesteps=()), dict(timesteps=(1.5,)), dict(upsample="area")):
        with pytest.raises(BenchError):
            CrossAttention(**bad)
