"""Writing zoo weights: one safetensors file plus a json of metadata with the file's sha256."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def records_hash(meta: dict[str, Any]) -> str:
    """What results on a zoo model are keyed by: its weights' sha256; for a model whose metadata
    ships sampling settings (``scheduler``: zoo-diffusion's guidance scale and DDIM steps) a digest
    of those too, ``+sampling-<digest8>``: the same weights sampled otherwise give other figures;
    and for an audited model (``bench zoo audit --write``) a digest of the mediation profiles the
    localization task scores against, ``+audit-<digest8>``: a re-audit that moves them re-runs
    what depends on them."""
    out = str(meta["sha256"])
    sched = meta.get("scheduler")
    if sched:
        out += f"+sampling-{hashlib.sha256(json.dumps(sched, sort_keys=True).encode()).hexdigest()[:8]}"
    profiles = {rel: {site: r["rate"] for site, r in a.get("mediation", {}).items()}
                for rel, a in meta.get("audit", {}).get("relations", {}).items()}
    if profiles:
        out += f"+audit-{hashlib.sha256(json.dumps(profiles, sort_keys=True).encode()).hexdigest()[:8]}"
    return out


def save_weights(name: str, state: dict[str, torch.Tensor], weights_dir: Path, **meta: Any) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` (``meta`` + sha256 + torch version)."""
    from safetensors.torch import save_file

    weights_dir.mkdir(parents=True, exist_ok=True)
    wpath = weights_dir / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(wpath), metadata={"name": name})
    record = {"name": name, **meta, "sha256": sha256_file(wpath), "torch": torch.__version__}
    (weights_dir / f"{name}.json").write_text(json.dumps(record, indent=2, default=str))
    return wpath


def write_card(name: str, body: str, meta: dict[str, Any], cards_dir: Path) -> Path:
    """Write ``<cards_dir>/<name>.md``: ``body`` followed by the files section with the sha256."""
    text = body.rstrip() + f"""

## Files
- `models/zoo/weights/{name}.safetensors` — sha256 `{meta['sha256']}`
- `models/zoo/weights/{name}.json` — config, vocabulary, figures
"""
    cards_dir.mkdir(parents=True, exist_ok=True)
    path = cards_dir / f"{name}.md"
    path.write_text(text)
    return path


def warmup_cosine_lr(step: int, lr: float, warmup: int, steps: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 at ``steps`` (every zoo model's schedule)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * p))


def module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of a module's parameters (the reference for reverting a phase-2 plant)."""
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@torch.no_grad()
def load_module_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (from :func:`module_state`) back into the module's parameters, in place."""
    for n, p in module.named_parameters():
        p.copy_(state[n])


def require_same_phase1(name: str, current: Any, recorded: Any, phase2_fields: frozenset[str] = frozenset()) -> None:
    """``bench zoo train NAME --phase2-only`` keeps the recorded phase 1: refuse when the current
    config (a dataclass) differs from the recorded one outside ``phase2_fields``, since a full
    retrain would then train another phase 1 and the result could not be reproduced."""
    from dataclasses import fields

    from bench.errors import BenchError

    changed = [f.name for f in fields(current)
               if f.name not in phase2_fields and getattr(current, f.name) != getattr(recorded, f.name)]
    if changed:
        raise BenchError(f"{name}: the config's {', '.join(changed)} changed since phase 1 was trained; "
                         f"run `bench zoo train {name}` for a full retrain")
