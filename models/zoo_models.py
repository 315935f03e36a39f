"""Loaders for the zoo's shipped models (registered in ``bench.registry``)."""

from __future__ import annotations

from functools import partial

from bench.errors import BenchError
from bench.world import Vocab
from models.hf_clip import CLIPWrapper
from models.hf_llava import LlavaWrapper
from models.zoo import WEIGHTS_DIR


def _tokenize(vocab: Vocab, max_len: int, texts: list[str]):  # type: ignore[no-untyped-def]
    return vocab.batch(texts, max_len)


def load_zoo_clip_model(name: str = "zoo-clip") -> CLIPWrapper:
    from models.zoo.clip import PIXEL_MEAN, PIXEL_STD, load_zoo_clip

    if not (WEIGHTS_DIR / f"{name}.safetensors").exists():
        raise BenchError(f"zoo weights for {name!r} are missing; run `bench zoo train {name}`")
    clip, vocab, meta = load_zoo_clip(name, WEIGHTS_DIR)
    tok = partial(_tokenize, vocab, meta["config"]["max_text_len"])
    return CLIPWrapper(name, clip, tok, meta["sha256"], PIXEL_MEAN, PIXEL_STD)


def load_zoo_vlm_model(name: str = "zoo-vlm") -> LlavaWrapper:
    from models.zoo.vlm import load_zoo_vlm, wrapper_io

    if not (WEIGHTS_DIR / f"{name}.safetensors").exists():
        raise BenchError(f"zoo weights for {name!r} are missing; run `bench zoo train {name}`")
    llava, vocab, meta = load_zoo_vlm(name, WEIGHTS_DIR)
    encode, decode, preprocess = wrapper_io(vocab, llava.config.image_seq_length)
    return LlavaWrapper(name, llava, encode, decode, preprocess, meta["sha256"], vocab.eos_id, vocab.pad_id)
