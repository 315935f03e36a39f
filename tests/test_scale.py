"""`bench scale`: FLOPs per row at real shapes (counted on the meta device) against the analytic
count, and the roofline prediction from counted rows."""

from __future__ import annotations

import math

import pytest

from bench.errors import BenchError
from bench.harness.scale import BACKWARD_FACTOR, Shape, clip_shape, llava_shape, predict


def _transformer_flops(params: float, tokens: int, layers: int, width: int) -> float:
    """Kaplan et al. (2020), Table 1: 2·N per token for the weights, plus 2·n_layer·n_ctx·d for the
    attention scores and their weighted sum, per token (here over the full context, no cache)."""
    return 2 * params * tokens + 2 * layers * tokens * tokens * width * 2


def test_clip_vit_b32_image_flops_match_the_analytic_count() -> None:
    from transformers import CLIPConfig, CLIPVisionModel

    import torch

    s = clip_shape()
    cfg = CLIPConfig().vision_config
    with torch.device("meta"):
        vision = CLIPVisionModel(cfg)
    # weights that multiply every token: the blocks (not the embeddings, norms or the patch conv)
    blocks = sum(p.numel() for n, p in vision.named_parameters() if ".layers." in n and p.dim() == 2)
    tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1
    patch_conv = 2 * 3 * cfg.patch_size ** 2 * cfg.hidden_size * (tokens - 1)
    projection = 2 * cfg.hidden_size * CLIPConfig().projection_dim
    expected = _transformer_flops(blocks, tokens, cfg.num_hidden_layers, cfg.hidden_size) + patch_conv + projection
    assert s.flops["image"] == pytest.approx(expected, rel=0.01)
    assert 8e9 < s.flops["image"] < 9.5e9  # the ~8.8 GFLOP usually quoted for ViT-B/32 at 224 px


@pytest.mark.slow
def test_llava_7b_flops_match_the_analytic_count() -> None:
    s = llava_shape()
    assert 6.9e9 < s.params < 7.2e9
    tokens = 576 + 24
    lm_blocks = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    lm = _transformer_flops(lm_blocks, tokens, 32, 4096) + 2 * 4096 * 32064 * tokens  # + the logits
    # the vision tower up to its penultimate layer (23 of 24 blocks) over 577 tokens, the projector
    vit = _transformer_flops(23 * (4 * 1024 ** 2 + 2 * 1024 * 4096), 577, 23, 1024) + 2 * 3 * 14 ** 2 * 1024 * 576
    proj = 2 * 576 * (1024 * 4096 + 4096 * 4096)
    assert s.flops["lm"] == pytest.approx(lm + vit + proj, rel=0.02)
    # one more token: 2·N plus attention over the context, and its logits
    decode = 2 * lm_blocks + 2 * 32 * (2 * tokens + 1) * 4096 + 2 * 4096 * 32064
    assert s.flops["decode"] == pytest.approx(decode, rel=0.05)


def test_prediction_is_rows_times_flops_over_rate_with_backward_at_twice() -> None:
    shape = Shape("x", "contrastive", "zoo-clip", 1e8, {"image": 2e9, "text": 1e9})
    cells = [{"task": "attribution", "model": "zoo-clip", "method": "saliency", "status": "ok", "run_s": 3.0,
              "forward_rows": {"image": 100, "text": 4}, "backward_rows": {"image": 10}},
             {"task": "attribution", "model": "zoo-vlm", "method": "saliency", "status": "ok",
              "forward_rows": {"lm": 5}, "backward_rows": {}},  # another family's cell: not this shape's
             {"task": "editing", "model": "zoo-clip", "method": "rome", "status": "failed"}]
    (p,) = predict(shape, cells, {"cpu": 1e11, "gpu": 1e14})
    flop = (100 + BACKWARD_FACTOR * 10) * 2e9 + 4 * 1e9
    assert p.tflop == pytest.approx(flop / 1e12)
    assert p.seconds["cpu"] == pytest.approx(flop / 1e11) and p.seconds["gpu"] == pytest.approx(flop / 1e14)
    assert math.isclose(p.zoo_run_s, 3.0)
    with pytest.raises(BenchError, match="no FLOP count for unit"):
        predict(shape, [{**cells[0], "forward_rows": {"vae_encode": 3}}], {"cpu": 1.0})
