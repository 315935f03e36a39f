"""``bench zoo export NAME --out DIR``: a zoo model as a Hugging Face checkpoint folder.

The zoo's models are transformers / diffusers models already; exporting saves them with
``save_pretrained`` beside what ``hf:`` loading needs to treat them exactly as the zoo loader
does: a fast tokenizer reproducing the zoo's word-level tokenisation, the image normalisation
(``preprocessor_config.json``) and the ground truth (``mmi_bench.json``: planted relations, tags,
the judge, the LLaVA prompt format, the sampler settings). ``--model hf:DIR`` then runs every
task the zoo model runs, through the Hugging Face path: a test checks the two give the same
numbers. It is also how to hand a zoo model to tools that read Hugging Face checkpoints.

The exported LLaVA also runs in plain transformers, with nothing from this project::

    processor = AutoProcessor.from_pretrained(DIR)          # LlavaProcessor, PIL image processor
    model = LlavaForConditionalGeneration.from_pretrained(DIR)
    inputs = processor(images=image, text="<image>what colour is the circle?", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

``<image>`` is a special token at the config's ``image_token_index``, expanded to one token per
patch; the tokenizer puts ``<bos>`` first, so the ids are the zoo's ``<bos> <image>×n prompt``.
The prompt format is the sidecar's ``prompt_template`` (``<image>{prompt}``, no conversation
wrapper); the chat template renders an image part and a text part as exactly that.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.model import Model
from bench.kit.world import Vocab
from models.hf_clip import CLIPWrapper
from models.hf_diffusion import DiffusionWrapper
from models.hf_llava import LlavaWrapper
from models.hf_loader import SIDECAR
from models.zoo import WEIGHTS_DIR

EXPORTABLE = ("zoo-clip", "zoo-clip-spurious", "zoo-vlm", "zoo-diffusion")


def word_tokenizer(vocab: Vocab, max_len: int, template: bool) -> Any:
    """A ``PreTrainedTokenizerFast`` giving the ids :meth:`bench.kit.world.Vocab.encode` gives:
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
        processor = _llava_processor(model.llava.config, vocab)
        processor.save_pretrained(out)  # tokenizer, processor_config.json (image processor inside), chat template
        # the image processor on its own too: AutoImageProcessor reads it, and ``hf:`` loading its mean / std
        processor.image_processor.save_pretrained(out)
        # the zoo's sequence is <bos> <image>×n prompt answer <eos>: no conversation wrapper
        _write_json(out / SIDECAR, _sidecar(model, prompt_template=LLAVA_PROMPT))
    elif isinstance(model, DiffusionWrapper):
        _export_diffusion(model, vocab, int(meta["config"]["max_text_len"]), out)
    return out


# The zoo-vlm's prompt format: ``<image>`` (expanded by the processor to one token per patch),
# then the question; the tokenizer puts ``<bos>`` first. No conversation wrapper, no generation prompt.
LLAVA_PROMPT = "<image>{prompt}"
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}")


def llava_tokenizer(vocab: Vocab, max_len: int) -> Any:
    """:func:`word_tokenizer` for the LLaVA: ``<bos>`` before the words (as the zoo's
    ``encode_batch``; no ``<eos>``: the answer follows) and ``<image>`` a special token at its
    vocabulary id (the config's ``image_token_index``) instead of the word "image"."""
    from tokenizers import AddedToken, processors

    from models.zoo.vlm import IMAGE_TOKEN

    tok = word_tokenizer(vocab, max_len, template=False)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B:1", special_tokens=[("<bos>", vocab.bos_id)])
    tok.add_special_tokens({"additional_special_tokens": [AddedToken(IMAGE_TOKEN, special=True, normalized=False)]})
    if tok.convert_tokens_to_ids(IMAGE_TOKEN) != vocab.words.index(IMAGE_TOKEN):
        raise BenchError(f"export: {IMAGE_TOKEN} did not keep its vocabulary id")
    return tok


def _llava_processor(config: Any, vocab: Vocab) -> Any:
    """A ``LlavaProcessor`` giving the zoo-vlm's inputs from a PIL image and ``<image>{prompt}``:
    ``input_ids`` ``<bos> <image>×n prompt`` and ``pixel_values`` ``(x / 255 - mean) / std`` at the
    tower's size (zoo images already are; others are resized and cropped as CLIP's processor
    does). The image processor is the PIL one: it needs no torchvision."""
    from transformers import LlavaProcessor

    try:  # transformers 5: the PIL backend has its own class (CLIPImageProcessor needs torchvision)
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # transformers 4: CLIPImageProcessor is the PIL / numpy one
        from transformers import CLIPImageProcessor as ImageProcessor  # type: ignore[assignment]

    from models.hf_llava import vision_tower_map
    from models.zoo.clip import PIXEL_MEAN, PIXEL_STD
    from models.zoo.vlm import IMAGE_TOKEN

    vc = config.vision_config
    size = int(vc.image_size)
    images = ImageProcessor(
        do_resize=True, size={"shortest_edge": size}, do_center_crop=True, crop_size={"height": size, "width": size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=[PIXEL_MEAN] * 3,
        image_std=[PIXEL_STD] * 3, do_convert_rgb=True)
    tok = llava_tokenizer(vocab, int(config.text_config.max_position_embeddings))
    return LlavaProcessor(
        image_processor=images, tokenizer=tok, patch_size=int(vc.patch_size), image_token=IMAGE_TOKEN,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=int(vision_tower_map(config).has_cls), chat_template=LLAVA_CHAT_TEMPLATE)


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
