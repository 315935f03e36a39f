"""``bench zoo list | train | verify | card``: the zoo's catalogue and its retraining.

Each zoo model lives in one module of :mod:`models.zoo`, which provides three functions:

- ``zoo_train(name, out, steps, log) -> Path``: train deterministically from the recorded
  seed and write ``NAME.safetensors`` + ``NAME.json`` (config, sha256, figures) into ``out``;
- ``zoo_card(name, weights_dir, cards_dir) -> Path``: render the model card from that json;
- ``zoo_remeasure(name, meta, weights_dir) -> [(figure, measured, recorded)]``: re-measure
  the cheap figures of the card with the code that recorded them.
- optionally ``zoo_replant(name, source, out, log) -> Path``: re-run phase 2 (the plant) and
  the figures after it from the phase-1 model recoverable from ``source``'s weights
  (``bench zoo train NAME --phase2-only``).

Adding a zoo model is one module and one :class:`ZooEntry` line here.
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from bench.errors import BenchError, UnknownName
from models.zoo import CARDS_DIR, WEIGHTS_DIR


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str
    module: str  # the module implementing zoo_train / zoo_card / zoo_remeasure
    summary: str

    def impl(self) -> ModuleType:
        return importlib.import_module(self.module)


ZOO: dict[str, ZooEntry] = {e.name: e for e in (
    ZooEntry("zoo-clip", "contrastive", "models.zoo.clip", "tiny CLIP (ViT + text transformer), contrastive"),
    ZooEntry("zoo-clip-spurious", "contrastive", "models.zoo.spurious",
             "zoo-clip on a Waterbirds-style biased world (shape agrees with background 95%)"),
    ZooEntry("zoo-vlm", "generative", "models.zoo.vlm",
             "LLaVA-shaped VLM (zoo-clip ViT + projector + 4-layer Llama), planted co-occurrence hallucination"),
    ZooEntry("zoo-oracle", "oracle", "models.zoo.oracle", "CNN judge: reads shape/colour/position/background"),
    ZooEntry("zoo-diffusion", "diffusion", "models.zoo.diffusion", "text-to-scene pixel UNet, planted entity facts"),
)}


def _log(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(msg, file=sys.stderr)  # keeps progress bars intact


def entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise UnknownName("zoo model", name, ZOO)
    return ZOO[name]


def train(name: str, out: Path | None = None, steps: int | None = None, phase2_only: Path | None = None) -> Path:
    """Retrain ``name`` from its recorded config and seed; writes weights, metadata and card.
    ``phase2_only``: a weights folder whose phase-1 model is kept; only phase 2 runs again."""
    e = entry(name)
    if steps is not None and steps <= 0:
        raise BenchError("--steps must be positive")
    out = out or WEIGHTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    if phase2_only is not None:
        if not hasattr(e.impl(), "zoo_replant"):
            raise BenchError(f"{name} cannot re-run phase 2 alone; run `bench zoo train {name}`")
        if not (phase2_only / f"{name}.json").exists():
            raise BenchError(f"no {name} weights in {str(phase2_only)!r} to take phase 1 from")
        path = e.impl().zoo_replant(name, phase2_only, out, _log)
    else:
        path = e.impl().zoo_train(name, out, steps, _log)
    e.impl().zoo_card(name, out, CARDS_DIR if out == WEIGHTS_DIR else out)
    _log(f"wrote {path}")
    return path


def write_card(name: str, weights_dir: Path = WEIGHTS_DIR, cards_dir: Path = CARDS_DIR) -> Path:
    """(Re)render the model card of ``name`` from its recorded metadata."""
    e = entry(name)
    if not (weights_dir / f"{name}.json").exists():
        raise BenchError(f"no shipped weights for {name!r}; run `bench zoo train {name}`")
    return e.impl().zoo_card(name, weights_dir, cards_dir)


def listing() -> list[dict[str, str]]:
    """One row per zoo model: name, family, shipped or not, sha256 prefix, summary."""
    rows = []
    for e in ZOO.values():
        meta_path = WEIGHTS_DIR / f"{e.name}.json"
        sha = json.loads(meta_path.read_text())["sha256"][:12] if meta_path.exists() else "-"
        rows.append({"name": e.name, "family": e.family, "shipped": "yes" if meta_path.exists() else "no",
                     "sha256": sha, "summary": e.summary})
    return rows


def verify(name: str | None = None, quality: bool = True, tolerance: float = 0.02) -> bool:
    """Check each shipped model's sha256 and (optionally) re-measure its recorded figures."""
    from models.zoo.io import sha256_file

    names = [entry(name).name] if name else list(ZOO)
    ok = True
    for n in names:
        meta_path = WEIGHTS_DIR / f"{n}.json"
        if not meta_path.exists():
            if name:
                raise BenchError(f"no shipped weights for {n!r}; run `bench zoo train {n}`")
            print(f"{n}: not shipped yet (train it with `bench zoo train {n}`)")
            continue
        meta = json.loads(meta_path.read_text())
        digest = sha256_file(WEIGHTS_DIR / f"{n}.safetensors")
        good = digest == meta["sha256"]
        print(f"{n}: sha256 {'ok' if good else 'MISMATCH'} ({digest[:16]}…)")
        ok &= good
        if quality:
            for k, v, rec in ZOO[n].impl().zoo_remeasure(n, meta, WEIGHTS_DIR):
                fine = abs(v - rec) <= tolerance
                print(f"{n}: {k} {v:.3f} (recorded {rec:.3f}) {'ok' if fine else 'MOVED'}")
                ok &= fine
    return ok
