"""Fast unit tests of the attribution methods (tiny random CLIP; linear toy scores)."""

from __future__ import annotations

import pytest
import torch

from bench.capabilities import AttributionRequest
from bench.errors import BenchError
from methods.attention_rollout import AttentionRollout
from methods.gradcam import GradCAM
from methods.input_x_gradient import InputXGradient
from methods.integrated_gradients import IntegratedGradients
from methods.occlusion import Occlusion
from methods.saliency import Saliency

ALL = [Saliency, InputXGradient, IntegratedGradients, Occlusion, AttentionRollout, GradCAM]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model():
    from bench.kit.world import Vocab, World
    from models.hf_clip import CLIPWrapper
    from models.zoo.clip import ZooClipConfig, build_clip

    torch.manual_seed(0)
    w = World(0)
    v = Vocab.for_world(w)
    clip = build_clip(ZooClipConfig(layers=2, text_layers=2), len(v), v.eos_id, v.pad_id)
    return CLIPWrapper("tiny", clip, lambda t: v.batch(t, 32), "hash")


@pytest.fixture(scope="module")
def request_(model):
    from tasks.attribution import AttributionTask

    task = AttributionTask()
    ex = task.examples(model, seed=0, n=3)
    req = task.request(model, ex)
    req.batch_size = 2  # two chunks, the last one ragged
    return req


def _fast(cls):
    return cls(n_steps=4) if cls is IntegratedGradients else cls()


def _no_hooks(model) -> bool:
    return all(len(m._forward_hooks) == 0 and len(m._forward_pre_hooks) == 0 for m in model.module.modules())


# ------------------------------------------------------------- on the model
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_shape_finite_deterministic(cls, model, request_):
    method = _fast(cls)
    assert method.supports(model) is None
    a = method.attribute(model, request_)
    b = method.attribute(model, request_)
    B, _, H, W = request_.pixels_BCHW.shape
    assert isinstance(a, torch.Tensor) and a.ndim == 3 and a.shape[0] == B
    assert tuple(a.shape[1:]) in {(H, W), tuple(request_.grid)}
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert _no_hooks(model)


def test_chunking_does_not_change_maps(model, request_):
    one = AttributionRequest(request_.pixels_BCHW, request_.score, request_.grid, batch_size=64)
    for cls in (Saliency, AttentionRollout, GradCAM):
        torch.testing.assert_close(cls().attribute(model, one), cls().attribute(model, request_),
                                   rtol=1e-4, atol=1e-6)


def test_attention_rollout_is_a_distribution(model, request_):
    maps = AttentionRollout().attribute(model, request_)
    assert tuple(maps.shape) == (request_.n, *model.token_layout().grid)
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(request_.n), rtol=0, atol=1e-5)
    assert _no_hooks(model)


def test_gradcam_nonnegative_and_informative(model, request_):
    maps = GradCAM().attribute(model, request_)
    assert (maps >= 0).all()
    assert (maps.flatten(1).max(1).values > 0).all()  # the default layer reaches the score
    assert _no_hooks(model)


def test_gradcam_layer_out_of_range(model):
    assert GradCAM(layer=5).supports(model) is not None
    assert GradCAM(layer=-3).supports(model) is not None
    assert GradCAM(layer=0).supports(model) is None


def test_config_validation():
    with pytest.raises(BenchError):
        IntegratedGradients(baseline="grey")
    with pytest.raises(BenchError):
        Occlusion(window=3)


# ------------------------------------------------------- linear toy score
@pytest.fixture(scope="module")
def linear():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 8, 8, generator=g)
    w = torch.randn(5, 3, 8, 8, generator=g)

    def score(pixels_NCHW, idx_N):
        return (pixels_NCHW * w[idx_N.long()]).sum((1, 2, 3))

    return x, w, AttributionRequest(x, score, (2, 2), batch_size=2)


def test_saliency_linear(linear):
    x, w, req = linear
    torch.testing.assert_close(Saliency().attribute(None, req), w.abs().sum(1))
    torch.testing.assert_close(Saliency(absolute=False).attribute(None, req), w.sum(1))


def test_input_x_gradient_linear(linear):
    x, w, req = linear
    torch.testing.assert_close(InputXGradient().attribute(None, req), (x * w).sum(1))


@pytest.mark.parametrize("internal", [None, 3, 7])
def test_integrated_gradients_completeness(linear, internal):
    x, w, req = linear
    maps = IntegratedGradients(n_steps=8, internal_batch_size=internal).attribute(None, req)
    torch.testing.assert_close(maps, (x * w).sum(1), rtol=1e-4, atol=1e-5)


def test_integrated_gradients_blur_baseline(linear):
    x, w, req = linear
    method = IntegratedGradients(n_steps=8, baseline="blur", blur_kernel=3)
    base = method.baseline_for(x)
    assert not torch.equal(base, x) and base.shape == x.shape
    torch.testing.assert_close(method.attribute(None, req), ((x - base) * w).sum(1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ppe", [None, 1, 3])
def test_occlusion_linear(linear, ppe):
    x, w, req = linear
    maps = Occlusion(perturbations_per_eval=ppe).attribute(None, req)
    expected = (x * w).sum(1).view(5, 2, 4, 2, 4).sum((2, 4))
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-5)
