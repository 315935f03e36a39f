"""zoo-diffusion and its oracle: shapes, determinism, sampling, save/load (fast, 1 thread)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.zoo.clip import images_to_tensor
from models.zoo.io import sha256_file
from models.zoo.oracle import (
    HEADS,
    OracleConfig,
    build_oracle,
    load_oracle,
    oracle_accuracy,
    predict,
    save_oracle,
    single_object_world,
    train_oracle,
)

ORACLE_CFG = replace(OracleConfig(), steps=5, batch_size=16, warmup=2, threads=1)


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ oracle
def test_oracle_heads_and_size():
    model = build_oracle(OracleConfig())
    assert 50_000 <= sum(p.numel() for p in model.parameters()) <= 150_000
    logits = model(torch.rand(3, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in logits.items()} == {
        "shape": (3, 4), "colour": (3, 6), "position": (3, 9), "background": (3, 3)}


def test_oracle_training_is_deterministic_and_predicts_valid_classes():
    a, ma = train_oracle(ORACLE_CFG, log=lambda _: None, final_eval=False)
    b, _ = train_oracle(ORACLE_CFG, log=lambda _: None, final_eval=False)
    assert _equal_states(a.state_dict(), b.state_dict())
    assert np.isfinite(ma["final_loss"])
    c, _ = train_oracle(replace(ORACLE_CFG, seed=1), log=lambda _: None, final_eval=False)
    assert not _equal_states(a.state_dict(), c.state_dict())
    scenes = list(single_object_world(0).scenes("test", 8))
    pred = predict(a, images_to_tensor(np.stack([s.image_HWC for s in scenes])))
    for k, classes in HEADS.items():
        assert pred[k].dtype == torch.long and pred[k].shape == (8,)
        assert int(pred[k].min()) >= 0 and int(pred[k].max()) < len(classes)
    acc = oracle_accuracy(a, single_object_world(0), n=32, split="test")
    assert set(acc) == {f"oracle_{k}" for k in HEADS}
    assert all(0.0 <= v <= 1.0 for v in acc.values())


def test_oracle_save_load_round_trip(tmp_path):
    model, metrics = train_oracle(replace(ORACLE_CFG, steps=2), log=lambda _: None, final_eval=False)
    path = save_oracle(model, ORACLE_CFG, metrics, tmp_path)
    back, meta = load_oracle(ORACLE_CFG.name, tmp_path)
    assert _equal_states(model.state_dict(), back.state_dict())
    assert meta["sha256"] == sha256_file(path)
    x = torch.rand(4, 3, 32, 32)
    assert all(torch.equal(predict(model, x)[k], predict(back, x)[k]) for k in HEADS)


# --------------------------------------------------------------- diffusion
DIFF_STEPS = 2


@pytest.fixture(scope="module")
def diffusion_cfg():
    from models.zoo.diffusion import DiffusionConfig

    return replace(DiffusionConfig(), steps=DIFF_STEPS, batch_size=4, warmup=1, threads=1)


@pytest.fixture(scope="module")
def trained(diffusion_cfg):
    from models.zoo.diffusion import train_diffusion

    return train_diffusion(diffusion_cfg, log=lambda _: None)


def test_diffusion_architecture(trained):
    model, metrics = trained
    unet = model.unet
    assert tuple(unet.config.block_out_channels) == (32, 64, 64)
    assert unet.config.cross_attention_dim == model.text_encoder.config.hidden_size == 64
    assert list(unet.config.down_block_types) == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    # the text tower is zoo-clip's, unchanged by training
    from models.zoo import WEIGHTS_DIR
    from models.zoo.clip import load_zoo_clip

    clip, vocab, _ = load_zoo_clip("zoo-clip", WEIGHTS_DIR)
    assert vocab.words == model.vocab.words
    ref = clip.text_model.state_dict()
    mine = {k.removeprefix("text_model."): v for k, v in model.text_encoder.state_dict().items()}
    assert set(ref) <= set(mine) and all(torch.equal(mine[k], v) for k, v in ref.items())
    assert np.isfinite(metrics["final_loss"]) and len(metrics["history"]) == 1


def test_diffusion_training_is_deterministic(trained, diffusion_cfg):
    from models.zoo.diffusion import train_diffusion

    a, _ = trained
    b, mb = train_diffusion(diffusion_cfg, log=lambda _: None)
    assert _equal_states(a.state_dict(), b.state_dict())
    assert np.isfinite(mb["final_loss"])
    # the EMA moved away from the trained weights' initial copy but is not the weights themselves
    assert not _equal_states(a.unet.state_dict(), a.ema_unet.state_dict())


def test_sampling_is_deterministic_from_the_seed(trained):
    from models.zoo.diffusion import sample

    model, _ = trained
    prompts = ["a red circle", "a blue square at the top left"]
    x = sample(model, prompts, seed=3, steps=3)
    y = sample(model, prompts, seed=3, steps=3)
    z = sample(model, prompts, seed=4, steps=3)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(x, y)
    assert not torch.equal(x, z)


def test_sampler_inverts_the_training_parameterisation(trained):
    """DDIM driven by the exact v of a fixed image (computed with the *training* scheduler's
    ``get_velocity``) must land on that image: the schedule and parameterisation agree."""
    from types import SimpleNamespace

    from models.zoo.diffusion import make_scheduler, sample

    model, _ = trained
    train_sched = make_scheduler(model.cfg)
    target = torch.rand(1, 3, 32, 32) * 2 - 1

    class ExactV(torch.nn.Module):
        def forward(self, x, t, encoder_hidden_states=None, encoder_attention_mask=None):
            ab = train_sched.alphas_cumprod[int(t)]
            x0 = target.expand_as(x)
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
            tt = torch.full((x.shape[0],), int(t))
            return SimpleNamespace(sample=train_sched.get_velocity(x0, eps, tt))

    exact = SimpleNamespace(cfg=model.cfg, ema_unet=ExactV(), encode_prompts=model.encode_prompts)
    out = sample(exact, ["a red circle"], seed=0, steps=10)  # type: ignore[arg-type]
    assert torch.allclose(out, (target + 1) / 2, atol=1e-4)


def test_generation_quality_keys(trained):
    from models.zoo.diffusion import generation_quality

    model, _ = trained
    oracle = build_oracle(OracleConfig())
    q = generation_quality(model, oracle, n=4, seed=0, steps=2, batch=4)
    assert set(q) == {"gen_shape", "gen_colour", "gen_both"}
    assert all(0.0 <= v <= 1.0 for v in q.values())
    assert q["gen_both"] <= min(q["gen_shape"], q["gen_colour"])


def test_diffusion_save_load_round_trip(trained, tmp_path):
    from models.zoo.diffusion import load_diffusion, sample, save_diffusion

    model, metrics = trained
    path = save_diffusion(model, metrics, tmp_path)
    back, meta = load_diffusion(model.cfg.name, tmp_path)
    assert meta["sha256"] == sha256_file(path)
    assert json.loads((tmp_path / f"{model.cfg.name}.json").read_text())["sha256"] == sha256_file(path)
    assert _equal_states(model.state_dict(), back.state_dict())
    assert back.vocab.words == model.vocab.words
    assert torch.equal(sample(model, ["a green cross"], seed=0, steps=2), sample(back, ["a green cross"], seed=0, steps=2))
