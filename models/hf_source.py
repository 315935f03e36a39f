"""The ``hf:`` model source: what planning needs about a local Hugging Face checkpoint, without
importing torch or loading it (its family from the config, its canonical name, a digest of its
files). :mod:`models.hf_loader` loads it; both are registered together as the registry's ``hf``
source (:meth:`bench.registry.Registry.register_source`), so nothing else recognises ``hf:``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.kit.digests import stat_key
from models import adapters

PREFIX = "hf:"
# checkpoint type (config.json model_type, or "stable-diffusion" / a diffusers pipeline class) -> family,
# one entry per type a registered adapter claims and can load (models/adapters/, read without importing)
FAMILIES = adapters.families()
SUPPORTED = tuple(FAMILIES)
# what an hf: folder's digest covers: weights, configs, tokenizer vocabularies
HF_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".txt", ".model")


def is_hf(name: str) -> bool:
    return name.startswith(PREFIX)


def path_of(name: str) -> Path:
    """The folder an ``hf:<path>`` name points at."""
    return Path(name[len(PREFIX):]).expanduser()


def canonical(name: str) -> str:
    """``hf:<path>`` with the path resolved to an absolute one (two folders named ``clip`` are two
    models)."""
    return PREFIX + str(path_of(name).resolve())


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BenchError(f"hf: {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict):
        raise BenchError(f"hf: {path} holds a JSON {type(data).__name__}, not an object")
    return data


def checkpoint_type(path: Path) -> str:
    """The checkpoint type of a folder, from its config alone: ``model_type`` of ``config.json``, or
    for a diffusers pipeline ``stable-diffusion`` (Stable Diffusion 1.x/2.x) or its class name; a
    one-line ``BenchError`` when no adapter claims it or its adapter cannot load it yet."""
    if not path.is_dir():
        raise BenchError(f"hf: {str(path)!r} is not a folder (a checkpoint saved with save_pretrained)")
    if (path / "model_index.json").exists():
        cls = str(read_json(path / "model_index.json").get("_class_name", ""))
        kind = "stable-diffusion" if cls.startswith("StableDiffusion") and "XL" not in cls and "3" not in cls else cls
        name = adapters.adapter_name_for(kind) if kind else None
        if name is None:
            pipelines = [t for t, f in FAMILIES.items() if f == "diffusion"]
            raise BenchError(f"hf: {str(path)!r} is a diffusers {cls or 'pipeline'}; supported diffusion pipelines: "
                             f"Stable Diffusion 1.x/2.x (UNet2DConditionModel + CLIP text encoder) and "
                             f"{', '.join(pipelines)}; no adapter claims {cls or 'it'}: an adapter is one data file, "
                             f"{adapters.HOWTO}")
        return _loadable(kind, name, path)
    cfg = path / "config.json"
    if not cfg.exists():
        raise BenchError(f"hf: {str(path)!r} has no config.json (save the model with save_pretrained)")
    model_type = str(read_json(cfg).get("model_type", ""))
    name = adapters.adapter_name_for(model_type)
    if name is None:
        raise BenchError(adapters.missing(model_type))
    return _loadable(model_type, name, path)


def _loadable(kind: str, name: str, path: Path) -> str:
    why = adapters.refusal(name)
    if why:
        raise BenchError(f"hf: {str(path)!r} is a {kind} checkpoint; adapter {name!r} declares its sites but "
                         f"cannot load it yet: {why}")
    return kind


def family_of(name: str) -> str:
    """The family of an ``hf:`` checkpoint, from its config alone (nothing is loaded)."""
    return adapters.family_for(checkpoint_type(path_of(name)))


_DIGESTS: dict[tuple[Any, ...], str] = {}


def folder_digest(folder: Path) -> str:
    """sha256 (16 hex digits) over a checkpoint folder's weight, config and tokenizer files
    (:data:`HF_SUFFIXES`, recursively: diffusers pipelines keep each component in a subfolder;
    hidden files excluded): relative path and bytes, in path order; cached by every file's
    (size, mtime)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix in HF_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    stats = tuple((str(p.relative_to(folder)), stat_key(p)) for p in files)
    key = (str(folder.resolve()), stats)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        for rel, p in zip((s[0] for s in stats), files):
            h.update(f"{rel}\n".encode())
            with p.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        _DIGESTS[key] = h.hexdigest()[:16]
    return _DIGESTS[key]


def weights_digest(name: str) -> str:
    """:func:`folder_digest` of ``hf:<path>``."""
    return folder_digest(path_of(name))


# Declared for the registry (read with ast, not imported): ``hf:FOLDER`` names resolve through these
# functions; :mod:`models.hf_loader` is the code a record's provenance covers.
MMI_BENCH_MODEL_SOURCES = {
    "hf": {"load": "models.hf_loader:load_hf", "family": "models.hf_source:family_of",
           "canonical": "models.hf_source:canonical", "digest": "models.hf_source:weights_digest",
           "code": "models.hf_loader"},
}
