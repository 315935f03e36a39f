"""Towers shared by the LLaVA-shaped adapters (data only): the vision towers a VLM may embed, keyed
by the vision config's ``model_type``, and the decoder LM (Llama, Mistral, Qwen2, Gemma, Vicuna:
``self_attn.o_proj``, a gated MLP ending in ``down_proj``, a final ``norm``)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.sites import SiteSpec
from models.adapters._format import Tower


@dataclass(frozen=True)
class VisionTowerMap:
    """How one kind of vision tower inside a VLM names its modules (data, per ``model_type``)."""

    embed: str  # module whose output is the token sequence entering the first block
    has_cls: bool  # a class token at position 0 (dropped by the "default" feature strategy)


VISION_TOWERS: dict[str, VisionTowerMap] = {
    "clip_vision_model": VisionTowerMap("pre_layrnorm", has_cls=True),
    "siglip_vision_model": VisionTowerMap("embeddings", has_cls=False),
}
# Adapter.site_map fills ``{vision_embed}`` from the checkpoint's vision config
PLACEHOLDERS = {"vision_embed": ("vision_config.model_type", {k: v.embed for k, v in VISION_TOWERS.items()})}


def vision_tower(root: str = "model.vision_tower", extra: tuple = (), tower: str = "vision",  # type: ignore[type-arg]
                 stream: str = "image") -> Tower:
    """The vision tower; tiled models name it ``vision_tiles`` (stream ``"tiles"``): its batch axis
    holds every tile of every image, so methods that pair a vision site's rows with images refuse
    it instead of misreading it."""
    return Tower(tower, stream, f"{root}.encoder.layers", "vision_config.num_hidden_layers",
                 "vision_config.num_attention_heads", d_model="vision_config.hidden_size",
                 embed=SiteSpec(f"{root}.{{vision_embed}}"), extra=extra)


def decoder_lm(root: str = "model.language_model") -> Tower:
    return Tower("lm", "mixed", f"{root}.layers", "text_config.num_hidden_layers",
                 "text_config.num_attention_heads", d_model="text_config.hidden_size",
                 # the LM's input after image features are spliced in (embed_tokens alone holds placeholders)
                 embed=SiteSpec(f"{root}.layers.0", hook="input"), o_proj="o_proj",
                 neurons=SiteSpec("down_proj", hook="input"), final=SiteSpec(f"{root}.norm"))
