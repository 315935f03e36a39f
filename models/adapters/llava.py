"""LLaVA-1.5 (Liu et al., 2023): ``LlavaForConditionalGeneration``: a CLIP or SigLIP vision tower,
a projector, and a decoder LM reading a fixed grid of image tokens spliced into the prompt."""

from bench.sites import SiteSpec
from models.adapters._format import Adapter
from models.adapters._vlm import PLACEHOLDERS, decoder_lm, vision_tower

ADAPTER = Adapter(
    name="llava", model_types=("llava",), family="generative",
    load="models.hf_loader:load_llava", model_class="transformers:LlavaForConditionalGeneration",
    towers=(vision_tower(extra=(("projector", "projector", SiteSpec("model.multi_modal_projector")),)),
            decoder_lm()),
    prompt_template="USER: <image>\n{prompt} ASSISTANT:", image_layout="fixed",
    options={"placeholders": PLACEHOLDERS, "feature_layer": "vision_feature_layer"},
    tiny="models.tiny_hf:save_tiny_llava",
)
