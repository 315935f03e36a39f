"""SigLIP 2 (Tschannen et al., 2025): ``transformers.Siglip2Model``. SigLIP's sites on the same
module paths; its NaFlex vision tower takes flattened patches with a patch mask and
``spatial_shapes`` (extra inputs), built by :class:`models.hf_clip.Siglip2Wrapper` on a fixed square
grid that fills ``num_patches``."""

from models.adapters._format import Adapter
from models.adapters.siglip import TEXT, VISION

ADAPTER = Adapter(
    name="siglip2", model_types=("siglip2",), family="contrastive",
    load="models.hf_loader:load_contrastive", model_class="transformers:Siglip2Model",
    towers=(VISION, TEXT), image_layout="fixed", extra_inputs=("pixel_attention_mask", "spatial_shapes"),
    options={"wrapper": "siglip2", "cls_token": False},
    tiny="models.tiny_hf:save_tiny_siglip2",
)
