"""Qwen2.5-VL (Bai et al., 2025): ``Qwen2_5_VLForConditionalGeneration``. Qwen2-VL's layout (packed
patches, ``image_grid_thw``, M-RoPE) with an RMSNorm ViT whose MLP is gated (neurons enter
``down_proj``) and whose blocks attend in windows except ``fullatt_block_indexes``."""

from bench.sites import SiteSpec
from models.adapters._format import Adapter, Tower
from models.adapters._vlm import decoder_lm
from models.adapters.qwen2_vl import ADAPTER as QWEN2_VL

VISION = Tower("vision_packed", "packed", "model.visual.blocks", "vision_config.depth", "vision_config.num_heads",
               d_model="vision_config.hidden_size", embed=SiteSpec("model.visual.blocks.0", hook="input"), attn="attn",
               o_proj="proj", mlp="mlp", neurons=SiteSpec("down_proj", hook="input"), attn_index=None,
               pattern_index=None, extra=(("projector", "projector", SiteSpec("model.visual.merger")),))

ADAPTER = Adapter(
    name="qwen2_5_vl", model_types=("qwen2_5_vl",), family="generative",
    load="models.hf_vlm:load_vlm", model_class="transformers:Qwen2_5_VLForConditionalGeneration",
    towers=(VISION, decoder_lm()), prompt_template=QWEN2_VL.prompt_template,
    image_layout="dynamic", extra_inputs=("image_grid_thw", "mm_token_type_ids"),
    tiny="models.tiny_hf:save_tiny_qwen2_5_vl",
)
