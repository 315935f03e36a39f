"""LLaVA-NeXT (LLaVA-1.6, Liu et al., 2024): ``LlavaNextForConditionalGeneration``.

LLaVA-1.5's towers, but images at any resolution are tiled (``image_grid_pinpoints``): the vision
tower's batch axis holds every tile of every image (``1 + tiles`` per image), so its sites are
named ``vision_tiles.*`` (stream ``"tiles"``) and methods that pair vision rows with images refuse
it instead of misreading it. The image-token count depends on the image's size (unpadded features
plus one newline token per row): the wrapper measures it with the model's own packing."""

from bench.sites import SiteSpec
from models.adapters._format import Adapter
from models.adapters._vlm import PLACEHOLDERS, decoder_lm, vision_tower

ADAPTER = Adapter(
    name="llava_next", model_types=("llava_next",), family="generative",
    load="models.hf_vlm:load_vlm", model_class="transformers:LlavaNextForConditionalGeneration",
    towers=(vision_tower(extra=(("projector", "projector", SiteSpec("model.multi_modal_projector")),),
                         tower="vision_tiles", stream="tiles"),
            decoder_lm()),
    prompt_template="[INST] <image>\n{prompt} [/INST]", image_layout="tiled", extra_inputs=("image_sizes",),
    options={"placeholders": PLACEHOLDERS, "feature_layer": "vision_feature_layer"},
    tiny="models.tiny_hf:save_tiny_llava_next",
)
