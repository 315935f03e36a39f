from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def world():
    from bench.world import World

    return World(0)


@pytest.fixture(scope="session")
def tiny_clip(world):
    """A randomly initialised zoo-shaped CLIP (2 layers per tower): fast, real code path."""
    from bench.world import Vocab
    from models.hf_clip import CLIPWrapper
    from models.zoo.clip import ZooClipConfig, build_clip

    vocab = Vocab.for_world(world)
    torch.manual_seed(0)
    clip = build_clip(ZooClipConfig(layers=2, text_layers=2), len(vocab), vocab.eos_id, vocab.pad_id)
    return CLIPWrapper("tiny-clip", clip, lambda t: vocab.batch(t, 32), "tiny")


@pytest.fixture(scope="session")
def zoo_clip():
    """The shipped, trained zoo-clip."""
    from models.zoo_models import load_zoo_clip_model

    return load_zoo_clip_model("zoo-clip")
