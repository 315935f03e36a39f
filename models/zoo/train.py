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
    _log(f"wrote {path}; its figures changed, so re-measure the planted facts: `bench zoo audit {name} --write`")
    return path


def write_card(name: str, weights_dir: Path = WEIGHTS_DIR, cards_dir: Path = CARDS_DIR) -> Path:
    """(Re)render the model card of ``name`` from its recorded metadata."""
    e = entry(name)
    if not (weights_dir / f"{name}.json").exists():
        raise BenchError(f"no shipped weights for {name!r}; run `bench zoo train {name}`")
    path = e.impl().zoo_card(name, weights_dir, cards_dir)
    meta = json.loads((weights_dir / f"{name}.json").read_text())
    if meta.get("audit"):  # the card's audit section comes from the sidecar too
        from models.zoo.audit import markdown, with_section

        path.write_text(with_section(path.read_text(), markdown(name, meta["audit"])))
    return path


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
            for k, v, rec in [*ZOO[n].impl().zoo_remeasure(n, meta, WEIGHTS_DIR), *audit_remeasure(n, meta)]:
                fine = abs(v - rec) <= tolerance
                print(f"{n}: {k} {v:.3f} (recorded {rec:.3f}) {'ok' if fine else 'MOVED'}")
                ok &= fine
    return ok


def _load_wrapped(name: str):  # type: ignore[no-untyped-def]
    from bench.registry import MODELS

    e = entry(name)
    if name not in MODELS:
        raise BenchError(f"{e.name} is not a benchmark model (it carries no planted facts to audit)")
    return MODELS.get(name)()


def audit_zoo(name: str, n: int = 128, write: bool = False, weights_dir: Path = WEIGHTS_DIR,
              cards_dir: Path = CARDS_DIR) -> dict:  # type: ignore[type-arg]
    """``bench zoo audit``: :func:`models.zoo.audit.audit` on the shipped model; ``write`` records it
    in the sidecar (``audit``) and the card's audit section. Returns the sidecar's ``audit`` dict."""
    from models.zoo.audit import audit, markdown, with_section

    if n < 8:
        raise BenchError("--n must be at least 8")
    model = _load_wrapped(name)
    if not model.planted:
        raise BenchError(f"{name} carries no planted facts to audit")
    from tqdm.auto import tqdm

    with tqdm(desc=f"audit {name}", total=None, disable=None, file=sys.stderr) as bar:
        def say(msg: str) -> None:
            bar.set_postfix_str(msg)
            bar.update(1)
        report = audit(model, n, progress=say)
    found = report.json()
    if write:
        meta_path = weights_dir / f"{name}.json"
        meta = json.loads(meta_path.read_text())
        meta["audit"] = found
        meta_path.write_text(json.dumps(meta, indent=2, default=str))
        card = cards_dir / f"{name}.md"
        if card.exists():
            card.write_text(with_section(card.read_text(), markdown(name, found)))
    return found


def audit_remeasure(name: str, meta: dict) -> list[tuple[str, float, float]]:  # type: ignore[type-arg]
    """The recorded audit's storage and collateral figures (the revert test, the unplanted
    entities) re-measured: ``[(figure, measured, recorded)]``; empty for a model never audited."""
    from models.zoo.audit import storage_only

    rec = meta.get("audit")
    if not rec:
        return []
    found = storage_only(_load_wrapped(name), int(rec["n"]))
    out = []
    for rel, v in rec["relations"].items():
        for part in ("recall", "unplanted"):
            for k, r in v[part].items():
                out.append((f"audit {rel} {part} {k}", found[rel][part][k].rate, float(r["rate"])))
    return out
