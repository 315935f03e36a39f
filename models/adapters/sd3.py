"""Stable Diffusion 3 (Esser et al., 2024): ``SD3Transformer2DModel``, an MMDiT of joint blocks in
which image and text tokens attend together (no UNet, no ``down/mid/up`` sites). Sites
``dit.blocks.{i}...`` (:mod:`models.adapters._dit`); the last block updates only the image stream.
Its attention runs through diffusers' fused processors, which return no weights (no pattern sites)."""

from models.adapters._dit import joint_block
from models.adapters._format import Adapter, Blocks

ADAPTER = Adapter(
    name="sd3", model_types=("StableDiffusion3Pipeline",), family="diffusion",
    refusal="SD3 predicts a flow-matching velocity, which the diffusion contract (bench.model.DiffusionModel: "
            "epsilon, v_prediction or sample) cannot express yet, so its pipeline (two CLIP and one T5 text encoder) "
            "has no wrapper; its transformer's sites are declared and checked (tests/test_adapters.py)",
    model_class="diffusers:SD3Transformer2DModel", component="transformer",
    blocks=(Blocks("dit.blocks", "dit", "transformer_blocks", "num_layers", joint_block(context_in_last=False)),),
    image_layout="none", options={"probe": "models.hf_dit:sd3_inputs"},
    tiny="models.tiny_hf:save_tiny_sd3",
)
