"""LLaVA-OneVision (Li et al., 2024): ``LlavaOnevisionForConditionalGeneration``, a SigLIP tower and a
Qwen2 LM; LLaVA-NeXT's tiling (``anyres_max_9``), with ``batch_num_images`` saying each prompt holds
one image."""

from bench.sites import SiteSpec
from models.adapters._format import Adapter
from models.adapters._vlm import PLACEHOLDERS, decoder_lm, vision_tower

ADAPTER = Adapter(
    name="llava_onevision", model_types=("llava_onevision",), family="generative",
    load="models.hf_vlm:load_vlm", model_class="transformers:LlavaOnevisionForConditionalGeneration",
    towers=(vision_tower(extra=(("projector", "projector", SiteSpec("model.multi_modal_projector")),),
                         tower="vision_tiles", stream="tiles"),
            decoder_lm()),
    prompt_template="<|im_start|>user <image>\n{prompt}<|im_end|>\n<|im_start|>assistant\n", image_layout="tiled",
    extra_inputs=("image_sizes", "batch_num_images"),
    options={"placeholders": PLACEHOLDERS, "feature_layer": "vision_feature_layer"},
    tiny="models.tiny_hf:save_tiny_llava_onevision",
)
