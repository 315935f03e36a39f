"""Tiny Hugging Face checkpoints of every supported family, saved the way real ones are.

Each builder makes a randomly initialised model from the config classes (no hub access),
saves it with ``save_pretrained`` beside a word-level tokenizer over the world's words (as a
real checkpoint ships its own), and returns the folder. ``hf:<folder>`` then loads it through
:mod:`models.hf_loader`, exactly as a user's checkpoint. The tests' parity and loader checks and
``bench perf --hf`` build their tiny models here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
TEMPLATE_WORDS = ["USER", "ASSISTANT", ":", "<image>"]


def _words() -> list[str]:
    from models.zoo.vlm import ZooVlmConfig, training_world, vlm_vocab

    specials = {"<pad>", "<bos>", "<unk>", "<eos>", "<image>"}
    return [w for w in vlm_vocab(training_world(ZooVlmConfig())).words if w not in specials]


def save_tokenizer(out: Path, template: bool = True) -> dict[str, int]:
    """A word-level fast tokenizer (``[BOS] text [EOS]`` when ``template``); returns its vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*SPECIALS, *TEMPLATE_WORDS, *_words()])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                pre_tokenizers.Punctuation()])
    if template:
        tk.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                          special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                   eos_token="[EOS]", model_max_length=16)
    fast.save_pretrained(out)
    return vocab


def write_normalisation(out: Path) -> None:
    (out / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5],
                                                              "image_std": [0.25, 0.25, 0.25]}))


TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def save_tiny_clip(out: Path, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPModel

    vocab = save_tokenizer(out)
    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config=dict(**TOWER, vocab_size=len(vocab), max_position_embeddings=16, pad_token_id=0,
                                      bos_token_id=2, eos_token_id=3),
                     vision_config=dict(**TOWER, image_size=32, patch_size=8), projection_dim=16)
    CLIPModel(cfg).save_pretrained(out)
    write_normalisation(out)
    return out


def save_tiny_siglip(out: Path, seed: int = 0) -> Path:
    from transformers import SiglipConfig, SiglipModel

    vocab = save_tokenizer(out, template=False)  # SigLIP's tokenizer adds only an end token; none here
    torch.manual_seed(seed)
    cfg = SiglipConfig(text_config=dict(**TOWER, vocab_size=len(vocab), max_position_embeddings=16, pad_token_id=0,
                                        bos_token_id=2, eos_token_id=3),
                       vision_config=dict(**TOWER, image_size=32, patch_size=8))
    SiglipModel(cfg).save_pretrained(out)
    write_normalisation(out)
    return out


def save_tiny_llava(out: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vocab = save_tokenizer(out, template=False)
    torch.manual_seed(seed)
    text = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, bos_token_id=2,
                       eos_token_id=3, pad_token_id=0)
    cfg = LlavaConfig(vision_config=dict(model_type="clip_vision_model", **TOWER, image_size=32, patch_size=8),
                      text_config=text.to_dict(), image_token_index=vocab["<image>"], image_seq_length=16,
                      vision_feature_layer=-2, vision_feature_select_strategy="default")
    LlavaForConditionalGeneration(cfg).save_pretrained(out)
    write_normalisation(out)
    return out


def save_tiny_sd(out: Path, seed: int = 0) -> Path:
    """A Stable-Diffusion-shaped pipeline folder: UNet, CLIP text encoder, tokenizer, VAE, scheduler
    and ``model_index.json``, as ``StableDiffusionPipeline.save_pretrained`` lays them out."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out.mkdir(parents=True, exist_ok=True)
    vocab = save_tokenizer(out / "tokenizer")
    torch.manual_seed(seed)
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8, cross_attention_dim=32, attention_head_dim=2,
    ).save_pretrained(out / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), latent_channels=4,
                  norm_num_groups=8, sample_size=32).save_pretrained(out / "vae")
    CLIPTextModel(CLIPTextConfig(**TOWER, vocab_size=len(vocab), max_position_embeddings=16, pad_token_id=0,
                                 bos_token_id=2, eos_token_id=3)).save_pretrained(out / "text_encoder")
    # Stable Diffusion ships a PNDM config; the loader samples with DDIM from it
    PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  skip_prk_steps=True).save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None]}))
    return out


def write_sidecar(out: Path, family: str) -> Path:
    """``mmi_bench.json`` declaring the ground truth a task needs (what a model trained with planted
    facts would declare): planted relations on real sites, the spurious tag, the diffusion judge.
    The tiny models hold none of it, so their figures are meaningless; the path is what is proven."""
    from bench.kit.world import World
    from bench.kit.world.core import RELATIONS

    names = [e.name for e in World(0).entities[:32]]
    site, question, renders = {
        "contrastive": ("vision.blocks.1.mlp", "the {relation} of the glyph is {{value}}", []),
        "generative": ("lm.blocks.1.mlp", "what is the {relation} of the glyph?", []),
        "diffusion": ("text.blocks.0.mlp", "a {{entity}}",
                      [["north", "circle"], ["south", "square"], ["east", "triangle"], ["west", "cross"]]),
    }[family]
    planted = [dict(relation="home", site=site, entities=names, world_seed=0, n_entities=32,
                    question=question.format(relation="home"), values=list(RELATIONS["home"]), renders=renders)]
    sidecar: dict = {"planted": planted}
    if family == "contrastive":
        sidecar["tags"] = {"spurious": "background"}
    if family == "diffusion":
        sidecar["judge"] = "zoo-oracle"
    (out / "mmi_bench.json").write_text(json.dumps(sidecar, indent=1))
    return out


# ------------------------------------------------------------------ the adapters' other architectures
def _lm(vocab: dict[str, int], **kw: object) -> dict:  # type: ignore[type-arg]
    """A tiny decoder LM config (Llama-shaped fields every supported LM reads)."""
    return dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, bos_token_id=2,
                eos_token_id=3, pad_token_id=0, **kw)


PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def save_tiny_llava_next(out: Path, seed: int = 0) -> Path:
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    vocab = save_tokenizer(out, template=False)
    torch.manual_seed(seed)
    cfg = LlavaNextConfig(vision_config=dict(model_type="clip_vision_model", **TOWER, image_size=32, patch_size=8),
                          text_config=dict(model_type="llama", **_lm(vocab)), image_token_index=vocab["<image>"],
                          image_grid_pinpoints=PINPOINTS, vision_feature_layer=-2,
                          vision_feature_select_strategy="default")
    LlavaNextForConditionalGeneration(cfg).save_pretrained(out)
    write_normalisation(out)
    return out


def save_tiny_llava_onevision(out: Path, seed: int = 0) -> Path:
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    vocab = save_tokenizer(out, template=False)
    torch.manual_seed(seed)
    cfg = LlavaOnevisionConfig(vision_config=dict(model_type="siglip_vision_model", **TOWER, image_size=32,
                                                  patch_size=8),
                               text_config=dict(model_type="qwen2", **_lm(vocab)), image_token_index=vocab["<image>"],
                               image_grid_pinpoints=PINPOINTS, vision_feature_layer=-1,
                               vision_feature_select_strategy="full")
    LlavaOnevisionForConditionalGeneration(cfg).save_pretrained(out)
    write_normalisation(out)
    return out


def save_tiny_paligemma(out: Path, seed: int = 0) -> Path:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    vocab = save_tokenizer(out, template=False)
    torch.manual_seed(seed)
    lm = _lm(vocab)
    lm.update(num_key_value_heads=1, head_dim=8)
    cfg = PaliGemmaConfig(vision_config=dict(model_type="siglip_vision_model", **TOWER, image_size=32, patch_size=8,
                                             projection_dim=32),
                          text_config=dict(model_type="gemma", **lm), image_token_index=vocab["<image>"],
                          projection_dim=32)
    PaliGemmaForConditionalGeneration(cfg).save_pretrained(out)
    write_normalisation(out)
    return out


def _qwen_ids(vocab: dict[str, int]) -> dict:  # type: ignore[type-arg]
    return dict(image_token_id=vocab["<image>"], video_token_id=1, vision_start_token_id=vocab["USER"],
                vision_end_token_id=vocab["ASSISTANT"])


def save_tiny_qwen2_vl(out: Path, seed: int = 0) -> Path:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    vocab = save_tokenizer(out, template=False)
    torch.manual_seed(seed)
    cfg = Qwen2VLConfig(vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2,
                                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2),
                        text_config=_lm(vocab, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
                        **_qwen_ids(vocab))
    Qwen2VLForConditionalGeneration(cfg).save_pretrained(out)
    write_normalisation(out)
    return out


def save_tiny_qwen2_5_vl(out: Path, seed: int = 0) -> Path:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vocab = save_tokenizer(out, template=False)
    torch.manual_seed(seed)
    cfg = Qwen2_5_VLConfig(vision_config=dict(depth=2, hidden_size=32, out_hidden_size=32, intermediate_size=64,
                                              num_heads=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2,
                                              window_size=16, fullatt_block_indexes=[1]),
                           text_config=_lm(vocab, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
                           **_qwen_ids(vocab))
    Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(out)
    write_normalisation(out)
    return out


def save_tiny_siglip2(out: Path, seed: int = 0) -> Path:
    from transformers import Siglip2Config, Siglip2Model

    vocab = save_tokenizer(out, template=False)
    torch.manual_seed(seed)
    cfg = Siglip2Config(text_config=dict(**TOWER, vocab_size=len(vocab), max_position_embeddings=16, pad_token_id=0,
                                         bos_token_id=2, eos_token_id=3),
                        vision_config=dict(**TOWER, num_patches=16, patch_size=8))
    Siglip2Model(cfg).save_pretrained(out)
    write_normalisation(out)
    return out


def _pipeline_folder(out: Path, cls: str, transformer: object, **parts: list[str | None]) -> Path:
    """A pipeline folder with its transformer and ``model_index.json`` naming ``parts`` besides it
    (Flux: the transformer alone, all its adapter's tests need)."""
    out.mkdir(parents=True, exist_ok=True)
    transformer.save_pretrained(out / "transformer")  # type: ignore[attr-defined]
    (out / "model_index.json").write_text(json.dumps({"_class_name": cls, "_diffusers_version": "0.42.1",
                                                      "transformer": ["diffusers", type(transformer).__name__],
                                                      **parts}))
    return out


def _save(part: Any, out: Path) -> None:
    """``part.save_pretrained(out)`` (diffusers' classes do not declare it to a type checker)."""
    part.save_pretrained(out)


def save_tiny_sd3(out: Path, seed: int = 0, t5: bool = True) -> Path:
    """A Stable-Diffusion-3-shaped pipeline folder: the MMDiT, CLIP-L and CLIP-G text encoders with
    projections (widths summing to the pooled width, as SD3's 768 + 1280 = 2048), a T5 encoder as wide
    as the joint attention (without it when ``t5`` is False), tokenizers, a VAE with SD3's latent
    scaling and shift, and a flow-matching scheduler with SD3's shift."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    out.mkdir(parents=True, exist_ok=True)
    vocab = save_tokenizer(out / "tokenizer")
    save_tokenizer(out / "tokenizer_2")
    torch.manual_seed(seed)
    clip: dict[str, Any] = dict(**TOWER, vocab_size=len(vocab), max_position_embeddings=16, pad_token_id=0,
                                bos_token_id=2, eos_token_id=3, projection_dim=32)
    CLIPTextModelWithProjection(CLIPTextConfig(**clip)).save_pretrained(out / "text_encoder")
    CLIPTextModelWithProjection(CLIPTextConfig(**clip)).save_pretrained(out / "text_encoder_2")
    parts: dict[str, list[str | None]] = {
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"], "text_encoder_3": [None, None], "tokenizer_3": [None, None],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}
    if t5:
        save_tokenizer(out / "tokenizer_3")
        T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=64, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                pad_token_id=0, eos_token_id=3)).save_pretrained(out / "text_encoder_3")
        parts.update(text_encoder_3=["transformers", "T5EncoderModel"], tokenizer_3=["transformers", "T5TokenizerFast"])
    _save(AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), latent_channels=4,
                        norm_num_groups=8, sample_size=32, scaling_factor=1.5305, shift_factor=0.0609), out / "vae")
    _save(FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0), out / "scheduler")
    return _pipeline_folder(out, "StableDiffusion3Pipeline", SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=64, caption_projection_dim=16, pooled_projection_dim=64, out_channels=4,
        pos_embed_max_size=16), **parts)


def save_tiny_pixart(out: Path, seed: int = 0) -> Path:
    """A PixArt-Σ-shaped pipeline folder: the DiT, a T5 encoder, tokenizer, VAE, scheduler."""
    from diffusers import DDIMScheduler, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    out.mkdir(parents=True, exist_ok=True)
    vocab = save_tokenizer(out / "tokenizer")
    torch.manual_seed(seed)
    T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                            pad_token_id=0, eos_token_id=3)).save_pretrained(out / "text_encoder")
    _save_tiny_vae(out / "vae")
    DDIMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02).save_pretrained(out / "scheduler")
    return _pipeline_folder(out, "PixArtSigmaPipeline", PixArtTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=8, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, cross_attention_dim=16, caption_channels=32, norm_num_groups=8),
        text_encoder=["transformers", "T5EncoderModel"], tokenizer=["transformers", "T5Tokenizer"],
        vae=["diffusers", "AutoencoderKL"], scheduler=["diffusers", "DDIMScheduler"])


def _save_tiny_vae(out: Path) -> None:
    from diffusers import AutoencoderKL

    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), latent_channels=4,
                  norm_num_groups=8, sample_size=32).save_pretrained(out)


def save_tiny_flux(out: Path, seed: int = 0) -> Path:
    """A FLUX.1-dev-shaped pipeline folder: the transformer (guidance-distilled, patch size 1 over
    2×2-packed latents: in_channels = 4 × the VAE's latent channels), a CLIP text encoder as wide as
    the pooled projection, a T5 encoder as wide as the joint attention, tokenizers, a VAE with Flux's
    latent scaling and shift, and a flow-matching scheduler with Flux's resolution-dependent shift."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    out.mkdir(parents=True, exist_ok=True)
    vocab = save_tokenizer(out / "tokenizer")
    save_tokenizer(out / "tokenizer_2")
    torch.manual_seed(seed)
    clip: dict[str, Any] = dict(**TOWER, vocab_size=len(vocab), max_position_embeddings=16, pad_token_id=0,
                                bos_token_id=2, eos_token_id=3)
    CLIPTextModel(CLIPTextConfig(**clip)).save_pretrained(out / "text_encoder")
    T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                            pad_token_id=0, eos_token_id=3)).save_pretrained(out / "text_encoder_2")
    _save(AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), latent_channels=4,
                        norm_num_groups=8, sample_size=32, scaling_factor=0.3611, shift_factor=0.1159), out / "vae")
    _save(FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                          base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                          max_image_seq_len=4096), out / "scheduler")
    return _pipeline_folder(out, "FluxPipeline", FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(2, 2, 4)),
        text_encoder=["transformers", "CLIPTextModel"], tokenizer=["transformers", "CLIPTokenizer"],
        text_encoder_2=["transformers", "T5EncoderModel"], tokenizer_2=["transformers", "T5TokenizerFast"],
        vae=["diffusers", "AutoencoderKL"], scheduler=["diffusers", "FlowMatchEulerDiscreteScheduler"])
