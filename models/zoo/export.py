"""``bench zoo export NAME --out DIR``: a zoo model as a Hugging Face checkpoint folder.

The zoo's models are transformers / diffusers models already; exporting saves them with
``save_pretrained`` beside what ``hf:`` loading needs to treat them exactly as the zoo loader
does: a fast tokenizer reproducing the zoo's word-level tokenisation, the image normalisation
(``preprocessor_config.json``) and the ground truth (``mmi_bench.json``: planted relations, tags,
the judge, the LLaVA prompt format, the sampler settings). ``--model hf:DIR`` then runs every
task the zoo model runs, through the Hugging Face path: a test checks the two give the same
numbers. It is also how to hand a zoo model to tools that read Hugging Face checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.model import Model
from bench.world import Vocab
from models.hf_clip import CLIPWrapper
from models.hf_diffusion import DiffusionWrapper
from models.hf_llava import LlavaWrapper
from models.hf_loader import SIDECAR
from models.zoo import WEIGHTS_DIR

EXPORTABLE = ("zoo-clip", "zoo-clip-spurious", "zoo-vlm", "zoo-diffusion")


def word_tokenizer(vocab: Vocab, max_len: int, template: bool) -> Any:
    """A ``PreTrainedTokenizerFast`` giving the ids :meth:`bench.world.Vocab.encode` gives:
    lower-cased words ``[a-z]+`` and the marks ``,`` ``?``, everything else dropped, unknown
    words ``<unk>``; with ``template``, ``<bos> … <eos>`` around them (as :meth:`Vocab.batch`)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab.words)}, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[^a-z,?]+"), behavior="removed"),
        pre_tokenizers.Split(Regex(r"[,?]"), behavior="isolated")])
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # words joined by spaces, " ," → ","
    if template:
        tk.post_processor = processors.TemplateProcessing(
            single="<bos> $A <eos>", special_tokens=[("<bos>", vocab.bos_id), ("<eos>", vocab.eos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                   eos_token="<eos>", model_max_length=max_len, clean_up_tokenization_spaces=True)


def _sidecar(model: Model, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if model.planted:
        out["planted"] = [asdict(r) for r in model.planted]  # tuples are written as JSON lists
    if model.tags:
        out["tags"] = dict(model.tags)
    out.update(extra)
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def export_zoo(name: str, out: Path) -> Path:
    """Write zoo model ``name`` to ``out`` as a checkpoint ``hf:`` loads; returns ``out``."""
    from bench.registry import MODELS

    if name not in EXPORTABLE:
        raise BenchError(f"zoo model {name!r} cannot be exported (exportable: {', '.join(EXPORTABLE)})")
    if not (WEIGHTS_DIR / f"{name}.safetensors").exists():
        raise BenchError(f"zoo weights for {name!r} are missing; run `bench zoo train {name}`")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchError(f"{str(out)!r} exists and is not an empty folder; export into a new folder")
    model = MODELS.get(name)(name)
    meta = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    vocab = Vocab(meta["vocab"])
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, CLIPWrapper):
        model.clip.save_pretrained(out)
        word_tokenizer(vocab, int(meta["config"]["max_text_len"]), template=True).save_pretrained(out)
        _preprocessor(out)
        _write_json(out / SIDECAR, _sidecar(model))
    elif isinstance(model, LlavaWrapper):
        model.llava.save_pretrained(out)
        max_len = int(model.llava.config.text_config.max_position_embeddings)
        word_tokenizer(vocab, max_len, template=False).save_pretrained(out)
        _preprocessor(out)
        # the zoo's sequence is <bos> <image>×n prompt answer <eos>: no conversation wrapper
        _write_json(out / SIDECAR, _sidecar(model, prompt_template="<image>{prompt}"))
    elif isinstance(model, DiffusionWrapper):
        _export_diffusion(model, vocab, int(meta["config"]["max_text_len"]), out)
    return out


def _preprocessor(out: Path) -> None:
    from models.zoo.clip import PIXEL_MEAN, PIXEL_STD

    _write_json(out / "preprocessor_config.json", {"image_mean": [PIXEL_MEAN] * 3, "image_std": [PIXEL_STD] * 3})


def _export_diffusion(model: DiffusionWrapper, vocab: Vocab, max_len: int, out: Path) -> None:
    import diffusers

    model.unet.save_pretrained(out / "unet")
    model.text_encoder.save_pretrained(out / "text_encoder")
    word_tokenizer(vocab, max_len, template=True).save_pretrained(out / "tokenizer")
    model.scheduler.save_pretrained(out / "scheduler")
    # pixel space: no VAE folder, so the UNet denoises images in [-1, 1]
    _write_json(out / "model_index.json", {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": str(diffusers.__version__),
        "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "scheduler": ["diffusers", "DDIMScheduler"],
        "vae": [None, None], "safety_checker": [None, None], "feature_extractor": [None, None]})
    extra: dict[str, Any] = {"sampling": asdict(model.sampling)}
    if model.judge is not None:
        extra["judge"] = "zoo-oracle"
    _write_json(out / SIDECAR, _sidecar(model, **extra))
