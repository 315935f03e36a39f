"""CLIP (Radford et al., 2021): ``transformers.CLIPModel``, two towers meeting in a dot product."""

from bench.sites import SiteSpec
from models.adapters._format import Adapter, Tower

VISION = Tower("vision", "image", "vision_model.encoder.layers", "vision_config.num_hidden_layers",
               "vision_config.num_attention_heads", d_model="vision_config.hidden_size",
               embed=SiteSpec("vision_model.pre_layrnorm"), final=SiteSpec("vision_model.post_layernorm"),
               extra=(("vision.proj", "proj", SiteSpec("visual_projection")),))
TEXT = Tower("text", "text", "text_model.encoder.layers", "text_config.num_hidden_layers",
             "text_config.num_attention_heads", d_model="text_config.hidden_size",
             embed=SiteSpec("text_model.embeddings"), final=SiteSpec("text_model.final_layer_norm"),
             extra=(("text.proj", "proj", SiteSpec("text_projection")),))

ADAPTER = Adapter(
    name="clip", model_types=("clip",), family="contrastive",
    load="models.hf_loader:load_contrastive", model_class="transformers:CLIPModel",
    towers=(VISION, TEXT), image_layout="fixed", options={"wrapper": "clip", "cls_token": True},
    tiny="models.tiny_hf:save_tiny_clip",
)
