"""Qwen2-VL (Wang et al., 2024): ``Qwen2VLForConditionalGeneration``.

Its ViT packs every image's patches into one sequence without a batch axis: its sites are
``[Σpatches, D]``, so they are named ``vision_packed.*`` (stream ``"packed"``), not ``vision.*``,
and methods that index a vision tower's ``[B, P, D]`` rows refuse this model instead of misreading
it. It takes ``image_grid_thw`` (dynamic resolution) and attends within each image through
``cu_seqlens``; its attention returns a bare tensor (no ``attn.pattern`` site: ``attn_index`` and
``pattern_index`` are ``None``). ``vision_packed.embed`` is the sequence entering the first block
(Qwen2.5-VL reorders the patch embeddings into attention windows after ``patch_embed``). The merger
(``projector``) turns 2×2 patches into one LM token; the LM positions image tokens with M-RoPE,
which needs ``mm_token_type_ids``. The token layout is the grid of merged patches the LM sees."""

from bench.sites import SiteSpec
from models.adapters._format import Adapter, Tower
from models.adapters._vlm import decoder_lm

VISION = Tower("vision_packed", "packed", "model.visual.blocks", "vision_config.depth", "vision_config.num_heads",
               d_model="vision_config.embed_dim", embed=SiteSpec("model.visual.blocks.0", hook="input"), attn="attn",
               o_proj="proj", mlp="mlp", neurons=SiteSpec("act"), attn_index=None, pattern_index=None,
               extra=(("projector", "projector", SiteSpec("model.visual.merger")),))

ADAPTER = Adapter(
    name="qwen2_vl", model_types=("qwen2_vl",), family="generative",
    load="models.hf_vlm:load_vlm", model_class="transformers:Qwen2VLForConditionalGeneration",
    towers=(VISION, decoder_lm()),
    prompt_template="<|im_start|>user\n<|vision_start|><image><|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n",
    image_layout="dynamic", extra_inputs=("image_grid_thw", "mm_token_type_ids"),
    tiny="models.tiny_hf:save_tiny_qwen2_vl",
)
