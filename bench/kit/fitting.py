"""Fitted state: content hashes, an on-disk cache, and a record of what each method fitted.

Methods that learn something before they answer (probes, SAEs, steering vectors) fit on
the request's fit split only. Two helpers keep that honest and cheap:

- :func:`cached` stores a fitted artifact (a dict of tensors) under the content hash of
  everything it was fitted from, so a trained SAE is reused across cells and runs; the
  file is written atomically (an interrupted run leaves no half-written cache entry).
- :func:`record_fit` notes, on the method instance, the content hash of each artifact it
  fitted. A test re-runs fitting methods with the scored (test) examples changed and
  checks that these hashes do not move: fitted state depends on the fit split alone.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def content_hash(*parts: Any) -> str:
    """sha256 (hex, 24 chars) of tensors (dtype, shape and bytes), arrays, and anything else by ``repr``."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            t = p.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(p, np.ndarray):
            h.update(f"{p.dtype}{p.shape}".encode())
            h.update(np.ascontiguousarray(p).tobytes())
        elif isinstance(p, (list, tuple)):
            h.update(content_hash(*p).encode())
        elif isinstance(p, dict):
            h.update(content_hash(*[(k, p[k]) for k in sorted(p)]).encode())
        else:
            h.update(repr(p).encode())
        h.update(b"|")
    return h.hexdigest()[:24]


def cache_dir() -> Path:
    """``$MMI_BENCH_CACHE`` or ``~/.cache/mmi-bench``."""
    return Path(os.environ.get("MMI_BENCH_CACHE") or Path.home() / ".cache" / "mmi-bench")


def cached(kind: str, key: str, build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The artifact ``kind/key`` from the cache, or ``build()`` stored there (atomically).

    ``key`` must be a content hash of everything the artifact depends on (inputs, config,
    seed, code version). Set ``MMI_BENCH_CACHE=off`` to disable the cache.
    """
    if os.environ.get("MMI_BENCH_CACHE") == "off":
        return build()
    path = cache_dir() / kind / f"{key}.safetensors"
    if path.exists():
        try:
            return load_file(path)
        except Exception:  # a corrupt entry is rebuilt, not trusted
            path.unlink(missing_ok=True)
    out = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in out.items()}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def record_fit(method: Any, name: str, artifact: dict[str, torch.Tensor] | torch.Tensor) -> None:
    """Note on ``method`` (``method.fitted[name]``) the content hash of an artifact it fitted."""
    fitted = method.__dict__.setdefault("fitted", {})
    fitted[name] = content_hash(artifact)
