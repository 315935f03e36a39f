"""PaliGemma (Beyer et al., 2024): ``PaliGemmaForConditionalGeneration``, a SigLIP tower, a linear
projector and a Gemma LM run as a prefix-LM: image and prompt tokens attend bidirectionally, which
the model does only when given ``token_type_ids`` (0 on the prefix); without them it silently runs
causally. Its prompt is the image tokens, then ``<bos>``, the prompt and a newline."""

from bench.sites import SiteSpec
from models.adapters._format import Adapter
from models.adapters._vlm import PLACEHOLDERS, decoder_lm, vision_tower

ADAPTER = Adapter(
    name="paligemma", model_types=("paligemma",), family="generative",
    load="models.hf_vlm:load_vlm", model_class="transformers:PaliGemmaForConditionalGeneration",
    towers=(vision_tower(extra=(("vision.final", "final", SiteSpec("model.vision_tower.post_layernorm")),
                                ("projector", "projector", SiteSpec("model.multi_modal_projector")))),
            decoder_lm()),
    prompt_template="<image>{prompt}\n", image_layout="fixed", extra_inputs=("token_type_ids",),
    options={"placeholders": PLACEHOLDERS, "bos_after_image": True},
    tiny="models.tiny_hf:save_tiny_paligemma",
)
