"""``--model hf:<local path>``: a saved Hugging Face checkpoint behind the benchmark's contract.

The wrapper is picked from the checkpoint's own config (``config.json``'s ``model_type``), so
the user names a folder, not a wrapper. Loading reads local files only (``local_files_only``):
this module never touches the network. Supported now: CLIP (``model_type: clip``), with its
tokenizer and the image normalisation of its ``preprocessor_config.json``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from bench.errors import BenchError
from bench.model import Model

PREFIX = "hf:"
SUPPORTED = ("clip",)


def is_hf(name: str) -> bool:
    return name.startswith(PREFIX)


def _config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise BenchError(f"hf: {str(path)!r} is not a folder (a checkpoint saved with save_pretrained)")
    if (path / "model_index.json").exists():
        raise BenchError(f"hf: {str(path)!r} is a diffusers pipeline; diffusion checkpoints are not supported yet "
                         f"(supported: {', '.join(SUPPORTED)})")
    cfg = path / "config.json"
    if not cfg.exists():
        raise BenchError(f"hf: {str(path)!r} has no config.json (save the model with save_pretrained)")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise BenchError(f"hf: {cfg} is not valid JSON ({e.msg}, line {e.lineno})") from None


def weights_hash(path: Path) -> str:
    """sha256 over the checkpoint's weight files (name and bytes, in name order)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not files:
        raise BenchError(f"hf: {str(path)!r} holds no weight files (*.safetensors / *.bin)")
    for p in files:
        h.update(p.name.encode())
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def family_of(name: str) -> str:
    """The family of an ``hf:`` checkpoint, from its config alone (nothing is loaded)."""
    model_type = _config(Path(name[len(PREFIX):]).expanduser()).get("model_type", "")
    if model_type == "clip":
        return "contrastive"
    raise BenchError(f"hf: model_type {model_type!r} is not supported yet (supported: {', '.join(SUPPORTED)})")


def load_hf(name: str) -> Model:
    """Load ``hf:<path>`` with the wrapper its config names."""
    path = Path(name[len(PREFIX):]).expanduser()
    cfg = _config(path)
    if cfg.get("model_type") != "clip":
        raise BenchError(f"hf: model_type {cfg.get('model_type')!r} is not supported yet "
                         f"(supported: {', '.join(SUPPORTED)})")
    return _load_clip(name, path)


def _load_clip(name: str, path: Path) -> Model:
    from transformers import AutoTokenizer, CLIPModel

    from models.hf_clip import CLIPWrapper

    try:
        clip = CLIPModel.from_pretrained(path, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise BenchError(f"hf: could not load the CLIP in {str(path)!r}: {str(e).splitlines()[0]}") from None
    max_len = int(clip.config.text_config.max_position_embeddings)

    def tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    mean: Any = [0.48145466, 0.4578275, 0.40821073]  # CLIP's defaults, when the checkpoint names none
    std: Any = [0.26862954, 0.26130258, 0.27577711]
    pre = path / "preprocessor_config.json"
    if pre.exists():
        try:
            p = json.loads(pre.read_text())
        except json.JSONDecodeError as e:
            raise BenchError(f"hf: {pre} is not valid JSON ({e.msg}, line {e.lineno})") from None
        mean, std = p.get("image_mean", mean), p.get("image_std", std)
    return CLIPWrapper(name, clip, tokenize, weights_hash(path), mean, std)
