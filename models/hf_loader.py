"""``--model hf:<local path>``: a saved Hugging Face checkpoint behind the benchmark's contract.

The wrapper is picked from the checkpoint itself, so the user names a folder, not a wrapper:

| folder holds | ``model_type`` / pipeline | family | wrapper |
|---|---|---|---|
| ``config.json`` | ``clip`` | contrastive | :class:`models.hf_clip.CLIPWrapper` |
| ``config.json`` | ``siglip`` | contrastive | :class:`models.hf_clip.SiglipWrapper` |
| ``config.json`` | ``llava`` | generative | :class:`models.hf_llava.LlavaWrapper` |
| ``model_index.json`` | a Stable Diffusion pipeline | diffusion | :class:`models.hf_diffusion.DiffusionWrapper` |

Loading reads local files only (``local_files_only``): this module never touches the network.

**Ground truth beside a checkpoint.** Tasks that score against known mechanisms (localization
and editing need planted facts, spurious a known shortcut, diffusion tasks a judge that reads
samples) run on an ``hf:`` checkpoint when its folder holds ``mmi_bench.json``::

    {"planted": [{"relation": "home", "site": "lm.blocks.1.mlp", "entities": ["..."],
                  "world_seed": 0, "n_entities": 64, "question": "what is the home of the glyph?",
                  "values": ["north", "south", "east", "west"], "renders": [],
                  "mediation": [["lm.blocks.0.mlp", 0.09], ["lm.blocks.1.mlp", 0.88], ...]}],
     "tags": {"spurious": "background"},
     "judge": "zoo-oracle",
     "prompt_template": "USER: <image>\n{prompt} ASSISTANT:"}

(every key optional; ``mediation`` is the fact's interchange profile, see ``bench zoo audit``,
without which the localization task's mediation metrics are NaN): a model trained with planted ground truth and saved with
``save_pretrained`` is then evaluated exactly as a zoo model is. ``prompt_template`` is the
LLaVA conversation format (default LLaVA-1.5's); ``judge`` names the image classifier that
reads diffusion samples (``zoo-oracle``); ``sampling`` overrides the diffusion sampler's
settings (:class:`models.hf_diffusion.SamplingConfig`; Stable Diffusion's by default).
``bench zoo export NAME --out DIR`` writes a zoo model in this form.
Each checkpoint brings its own tokenizer, and its image normalisation from
``preprocessor_config.json`` (``image_mean``/``image_std``; CLIP's values when absent). A
checkpoint is read once per process, when a cell first needs it (planning reads only the config).
"""

from __future__ import annotations

import contextlib
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.model import Model
from bench.registry import resolve
from models import adapters
from models.adapters._format import Adapter, check_sites, site_config
from models import hf_dit, hf_vlm  # noqa: F401  adapters' loaders: part of the hf source's code (its digest)
from models.hf_common import CLIP_MEAN, CLIP_STD, load_error, load_tokenizer, normalisation, pad_rows, pipeline_parts, weights_hash
from models.hf_source import FAMILIES, PREFIX, SUPPORTED, checkpoint_type, family_of, is_hf, path_of, read_json

# the built-in adapters are discovered at run time (models.adapters reads the folder with ast), not
# imported here: the hf: source's code digest (bench.harness.identity.source_code_digest) covers every
# file of the folder through this declaration, so editing or adding an adapter re-runs the hf: cells
__digest_includes__ = ("models.adapters.*",)

__all__ = ["CLIP_MEAN", "CLIP_STD", "FAMILIES", "PREFIX", "SUPPORTED", "checkpoint_type", "family_of", "is_hf",
           "load_hf", "weights_hash"]

# LLaVA-1.5's conversation format; ``<image>`` is expanded to the vision tower's feature count
LLAVA_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"


def load_hf(name: str) -> Model:
    """Load ``hf:<path>`` through the adapter its config names (:mod:`models.adapters`), and check
    every site of the result against one real forward (:func:`check_model_sites`)."""
    path = path_of(name)
    kind = checkpoint_type(path)
    adapter = adapter_for(kind)
    loader: Callable[[Adapter, str, Path, dict[str, Any]], Model] = resolve(adapter.load)
    sidecar = read_sidecar(path)
    with _quiet():
        model = loader(adapter, name, path, sidecar)
        check_model_sites(model, getattr(model, "adapter", adapter))  # a wrapper may drop optional parts
    apply_sidecar(model, sidecar, path)
    return model


def adapter_for(kind: str) -> Adapter:
    name = adapters.adapter_name_for(kind)
    if name is None:
        raise BenchError(adapters.missing(kind))
    adapter = adapters.get(name)
    if not isinstance(adapter, Adapter):
        raise BenchError(f"hf: adapter {name!r} is a {type(adapter).__name__}, not a models.adapters.Adapter")
    return adapter


def probe_forward(model: Model) -> Callable[[], Any]:
    """One small forward of the family's operation (deterministic inputs: no random state is used)."""
    from bench.model import ContrastiveModel, DiffusionModel, GenerativeModel

    def pixels(side: int) -> torch.Tensor:
        return torch.linspace(0, 1, 2 * 3 * side * side).reshape(2, 3, side, side)

    if isinstance(model, ContrastiveModel):
        return lambda: model.similarity(pixels(model.image_size), ["a red circle", "a blue square"])
    if isinstance(model, GenerativeModel):
        return lambda: model.logprobs(pixels(32), ["what is it?", "is there a circle?"], ["a circle", "yes"])
    if isinstance(model, DiffusionModel):
        shape = model.sample_shape
        x = torch.linspace(-1, 1, 2 * shape[0] * shape[1] * shape[2]).reshape(2, *shape)
        return lambda: model.noise_pred(x, model.num_train_timesteps // 2, ["a red circle", "a blue square"])
    raise BenchError(f"hf: {model.name} is a {model.family} model, which has no probe forward")


def check_model_sites(model: Model, adapter: Adapter) -> None:
    """Every site's module, hook, tuple index and shape checked against one real forward
    (:func:`models.adapters._format.check_sites`): a wrong index is a load error, not a wrong read."""
    check_sites(adapter, site_config(model), model.module, model.sites(), model.site_specs, probe_forward(model))


SIDECAR = "mmi_bench.json"
_SIDECAR_KEYS = ("planted", "tags", "judge", "prompt_template", "sampling")
_PLANTED_KEYS = ("relation", "site", "entities", "world_seed", "n_entities", "question", "values")
JUDGES = ("zoo-oracle",)


def read_sidecar(path: Path) -> dict[str, Any]:
    """The checkpoint's ``mmi_bench.json`` (``{}`` when absent), checked key by key."""
    f = path / SIDECAR
    if not f.exists():
        return {}
    data = read_json(f)
    unknown = sorted(set(data) - set(_SIDECAR_KEYS))
    if unknown:
        raise BenchError(f"hf: {f}: unknown key {unknown[0]!r} (known: {', '.join(_SIDECAR_KEYS)})")
    for i, rel in enumerate(data.get("planted", [])):
        if not isinstance(rel, dict):
            raise BenchError(f"hf: {f}: planted[{i}] must be an object")
        missing = [k for k in _PLANTED_KEYS if k not in rel]
        if missing:
            raise BenchError(f"hf: {f}: planted[{i}] lacks {', '.join(map(repr, missing))}")
    tags = data.get("tags", {})
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise BenchError(f"hf: {f}: tags must map names to strings")
    if data.get("judge") not in (None, *JUDGES):
        raise BenchError(f"hf: {f}: unknown judge {data['judge']!r} (known: {', '.join(JUDGES)})")
    sampling = data.get("sampling", {})
    from models.hf_diffusion import SamplingConfig

    known = [f.name for f in fields(SamplingConfig)]
    if not isinstance(sampling, dict) or any(k not in known for k in sampling):
        raise BenchError(f"hf: {f}: sampling must be an object with keys among {', '.join(known)}")
    template = data.get("prompt_template")
    if template is not None and (not isinstance(template, str) or template.count("<image>") != 1
                                 or "{prompt}" not in template):
        raise BenchError(f"hf: {f}: prompt_template must hold '<image>' once and '{{prompt}}'")
    return data


def apply_sidecar(model: Model, sidecar: dict[str, Any], path: Path) -> None:
    """Planted relations, tags and the judge a checkpoint's ``mmi_bench.json`` declares."""
    from bench.model import DiffusionModel, PlantedRelation

    for i, rel in enumerate(sidecar.get("planted", [])):
        if rel["site"] not in model.site_specs:
            raise BenchError(f"hf: {path / SIDECAR}: planted[{i}] names site {rel['site']!r}, which "
                             f"{model.name} does not have")
        model.planted.append(PlantedRelation(
            str(rel["relation"]), str(rel["site"]), tuple(map(str, rel["entities"])), int(rel["world_seed"]),
            int(rel["n_entities"]), str(rel["question"]), tuple(map(str, rel["values"])),
            tuple((str(a), str(b)) for a, b in rel.get("renders", [])),
            _mediation_profile(rel.get("mediation", []), model, path, i)))
    model.tags.update(sidecar.get("tags", {}))
    if sidecar.get("judge"):
        if not isinstance(model, DiffusionModel):
            raise BenchError(f"hf: {path / SIDECAR}: a judge reads generated images; {model.name} is "
                             f"{model.family}")
        model.judge = ResizingJudge(str(sidecar["judge"]))


def _mediation_profile(raw: Any, model: Model, path: Path, i: int) -> tuple[tuple[str, float], ...]:
    """``planted[i].mediation``: ``[[site, flip rate], ...]`` (``bench zoo audit``), every site the model's."""
    try:
        prof = tuple((str(a), float(b)) for a, b in raw)
    except (TypeError, ValueError):
        raise BenchError(f"hf: {path / SIDECAR}: planted[{i}].mediation must be a list of [site, rate] pairs") from None
    bad = [a for a, _ in prof if a not in model.site_specs]
    if bad:
        raise BenchError(f"hf: {path / SIDECAR}: planted[{i}].mediation names site {bad[0]!r}, which "
                         f"{model.name} does not have")
    return prof


class ResizingJudge:
    """A judge (zoo-oracle) reading samples of any size: resized to the size it was trained on."""

    def __init__(self, name: str) -> None:
        from models.zoo_models import OracleJudge

        from models.zoo import WEIGHTS_DIR

        self.inner = OracleJudge(name)
        self.size = int(read_json(WEIGHTS_DIR / f"{name}.json")["config"]["image_size"])

    def __call__(self, pixels_BCHW: torch.Tensor) -> dict[str, list[str]]:
        if pixels_BCHW.shape[-1] != self.size:
            pixels_BCHW = F.interpolate(pixels_BCHW, size=(self.size, self.size), mode="bilinear",
                                        antialias=True, align_corners=False)
        return self.inner(pixels_BCHW)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Loading prints per-file progress bars and advice (install accelerate) that would break the
    grid's own progress bar; errors still surface as BenchErrors."""
    import diffusers
    import transformers

    t_level, d_level = transformers.logging.get_verbosity(), diffusers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    diffusers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(t_level)
        diffusers.logging.set_verbosity(d_level)
        transformers.logging.enable_progress_bar()
        diffusers.utils.logging.enable_progress_bar()


# ------------------------------------------------------------------------- contrastive
def load_contrastive(adapter: Adapter, name: str, path: Path, sidecar: dict[str, Any]) -> Model:
    from models.hf_clip import CLIPWrapper, Siglip2Wrapper, SiglipWrapper

    kind = adapter.name
    wrapper = {"clip": CLIPWrapper, "siglip": SiglipWrapper,
               "siglip2": Siglip2Wrapper}[adapter.options.get("wrapper", "clip")]
    cls = resolve(adapter.model_class)
    try:
        model = cls.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise load_error({"clip": "CLIP", "siglip": "SigLIP"}.get(kind, kind), path, e) from None
    tok = load_tokenizer(path, kind)
    # both were trained on fixed-length padded text (CLIP: 77 tokens); SigLIP pools the last position
    max_len = min(int(model.config.text_config.max_position_embeddings), int(tok.model_max_length))

    def tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tok(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
        ids = enc["input_ids"]
        return ids, enc.get("attention_mask", torch.ones_like(ids))

    mean, std = normalisation(path)
    return wrapper(name, model, tokenize, weights_hash(path), mean, std, adapter=adapter)


# -------------------------------------------------------------------------- generative
def load_llava(adapter: Adapter, name: str, path: Path, sidecar: dict[str, Any]) -> Model:
    template = str(sidecar.get("prompt_template") or adapter.prompt_template or LLAVA_TEMPLATE)
    from transformers import LlavaForConditionalGeneration

    from models.hf_llava import LlavaWrapper, llava_image_features

    try:
        llava = LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise load_error("LLaVA", path, e) from None
    tok = load_tokenizer(path, "LLaVA")
    cfg = llava.config
    image_id = int(cfg.image_token_index)
    n_image = llava_image_features(cfg)
    eos = tok.eos_token_id
    if eos is None:
        raise BenchError(f"hf: the LLaVA tokenizer in {str(path)!r} has no end-of-sequence token")
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    before, after = template.split("<image>")
    head = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + tok.encode(before, add_special_tokens=False)

    def encode(prompts: list[str], answers: list[str] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, labels = [], []
        for i, p in enumerate(prompts):
            prompt = head + [image_id] * n_image + tok.encode(after.format(prompt=p), add_special_tokens=False)
            ans = [] if answers is None else tok.encode(" " + answers[i], add_special_tokens=False) + [eos]
            rows.append(prompt + ans)
            labels.append([-100] * len(prompt) + ans)
        return pad_rows(rows, labels, pad)

    def decode(ids: list[int]) -> str:
        return str(tok.decode(ids, skip_special_tokens=True)).strip()

    size = int(cfg.vision_config.image_size)
    mean, std = (torch.as_tensor(v, dtype=torch.float32).reshape(-1, 1, 1) for v in normalisation(path))

    def preprocess(pixels_BCHW: torch.Tensor) -> torch.Tensor:
        if pixels_BCHW.shape[-1] != size or pixels_BCHW.shape[-2] != size:
            pixels_BCHW = F.interpolate(pixels_BCHW, size=(size, size), mode="bicubic", align_corners=False,
                                        antialias=True).clamp(0, 1)
        return (pixels_BCHW - mean) / std

    return LlavaWrapper(name, llava, encode, decode, preprocess, weights_hash(path), eos, pad)


# --------------------------------------------------------------------------- diffusion
def load_diffusion(adapter: Adapter, name: str, path: Path, sidecar: dict[str, Any]) -> Model:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from models.hf_diffusion import DiffusionWrapper, SamplingConfig

    parts = pipeline_parts(path, ("unet", "text_encoder", "tokenizer", "scheduler"))
    try:
        unet = UNet2DConditionModel.from_pretrained(parts["unet"], local_files_only=True)
        text = CLIPTextModel.from_pretrained(parts["text_encoder"], local_files_only=True)
        vae = (AutoencoderKL.from_pretrained(path / "vae", local_files_only=True)
               if (path / "vae").is_dir() else None)
        # any scheduler config → DDIM with eta 0: deterministic sampling from a seed
        sched = DDIMScheduler.from_config(DDIMScheduler.load_config(parts["scheduler"], local_files_only=True))
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise load_error("Stable Diffusion pipeline", path, e) from None
    tok = load_tokenizer(parts["tokenizer"], "Stable Diffusion")
    max_len = min(int(getattr(tok, "model_max_length", 77) or 77), int(text.config.max_position_embeddings))

    def tokenize(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tok(prompts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
        ids = enc["input_ids"]
        return ids, enc.get("attention_mask", (ids != tok.pad_token_id).long())

    # Stable Diffusion attends to padding (no prompt mask) and samples with guidance 7.5
    sampling = SamplingConfig(**{**adapter.options.get("sampling", {}), **sidecar.get("sampling", {})})
    return DiffusionWrapper(name, unet, text, tokenize, sched, weights_hash(path), vae=vae, sampling=sampling)
