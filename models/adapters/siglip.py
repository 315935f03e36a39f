"""SigLIP (Zhai et al., 2023): ``transformers.SiglipModel``. The CLIP names on SigLIP's modules: no
class token, no pre-norm, no projection matrices; ``vision.proj`` is the attention-pooling head
(the image embedding before normalisation) and ``text.proj`` the linear head on the last token."""

from bench.sites import SiteSpec
from models.adapters._format import Adapter, Tower

VISION = Tower("vision", "image", "vision_model.encoder.layers", "vision_config.num_hidden_layers",
               "vision_config.num_attention_heads", d_model="vision_config.hidden_size",
               embed=SiteSpec("vision_model.embeddings"), final=SiteSpec("vision_model.post_layernorm"),
               extra=(("vision.proj", "proj", SiteSpec("vision_model.head")),))
TEXT = Tower("text", "text", "text_model.encoder.layers", "text_config.num_hidden_layers",
             "text_config.num_attention_heads", d_model="text_config.hidden_size",
             embed=SiteSpec("text_model.embeddings"), final=SiteSpec("text_model.final_layer_norm"),
             extra=(("text.proj", "proj", SiteSpec("text_model.head")),))

ADAPTER = Adapter(
    name="siglip", model_types=("siglip",), family="contrastive",
    load="models.hf_loader:load_contrastive", model_class="transformers:SiglipModel",
    towers=(VISION, TEXT), image_layout="fixed", options={"wrapper": "siglip", "cls_token": False},
    tiny="models.tiny_hf:save_tiny_siglip",
)
