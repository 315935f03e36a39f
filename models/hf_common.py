"""What every ``hf:`` loader shares: the weights' hash, one-line load errors, the checkpoint's image
normalisation and tokenizer (:mod:`models.hf_loader` and :mod:`models.hf_vlm` import it)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from bench.errors import BenchError
from models.hf_source import read_json

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # used when a checkpoint names none
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def weights_hash(path: Path) -> str:
    """sha256 over the checkpoint's weight files (relative path and bytes, in path order)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        raise BenchError(f"hf: {str(path)!r} holds no weight files (*.safetensors / *.bin)")
    for p in files:
        h.update(str(p.relative_to(path)).encode())
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def load_error(kind: str, path: Path, e: Exception) -> BenchError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return BenchError(f"hf: could not load the {kind} in {str(path)!r}: {first}")


def normalisation(path: Path) -> tuple[Any, Any]:
    pre = path / "preprocessor_config.json"
    if not pre.exists():
        return CLIP_MEAN, CLIP_STD
    p = read_json(pre)
    return p.get("image_mean", CLIP_MEAN), p.get("image_std", CLIP_STD)


def load_tokenizer(path: Path, kind: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise load_error(f"{kind} tokenizer", path, e) from None


def pipeline_parts(path: Path, parts: tuple[str, ...]) -> dict[str, Path]:
    """A diffusers pipeline folder's component folders; one line naming any that are missing."""
    found = {p: path / p for p in parts}
    missing = [p for p, d in found.items() if not d.is_dir()]
    if missing:
        raise BenchError(f"hf: the pipeline in {str(path)!r} lacks its {', '.join(missing)} folder(s)")
    return found


def pad_rows(rows: list[list[int]], labels: list[list[int]], pad: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token rows right-padded: ``(ids, mask, labels)``, labels ``-100`` where nothing is scored."""
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad, dtype=torch.long, device="cpu")
    lab = torch.full((len(rows), L), -100, dtype=torch.long, device="cpu")
    mask = torch.zeros((len(rows), L), dtype=torch.long, device="cpu")
    for i, (r, l) in enumerate(zip(rows, labels)):
        ids[i, : len(r)], lab[i, : len(l)], mask[i, : len(r)] = torch.tensor(r), torch.tensor(l), 1
    return ids, mask, lab
