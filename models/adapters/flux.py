"""Flux (Black Forest Labs, 2024): ``FluxTransformer2DModel``: double-stream joint blocks
(``dit.blocks.{i}...``, as SD3's) followed by single-stream blocks over the concatenated text and
image tokens: ``dit.single_blocks.{i}`` (the block's image-stream output), ``.attn`` (attention over
the joint sequence, stream ``"mixed"``: text tokens first) and ``.mlp.neurons`` (the parallel MLP's
activations)."""

from bench.sites import SiteSpec
from models.adapters._dit import joint_block
from models.adapters._format import Adapter, Blocks, BlockSite

SINGLE = (BlockSite("", "block", SiteSpec("", index=1)),
          BlockSite("attn", "attn", SiteSpec("attn"), stream="mixed"),
          BlockSite("mlp.neurons", "neurons", SiteSpec("act_mlp"), stream="mixed"))

ADAPTER = Adapter(
    name="flux", model_types=("FluxPipeline",), family="diffusion",
    refusal="Flux predicts a flow-matching velocity, which the diffusion contract (bench.model.DiffusionModel: "
            "epsilon, v_prediction or sample) cannot express yet, so its pipeline (CLIP and T5 text encoders, packed "
            "latents) has no wrapper; its transformer's sites are declared and checked (tests/test_adapters.py)",
    model_class="diffusers:FluxTransformer2DModel", component="transformer",
    blocks=(Blocks("dit.blocks", "dit", "transformer_blocks", "num_layers", joint_block(context_in_last=True)),
            Blocks("dit.single_blocks", "dit", "single_transformer_blocks", "num_single_layers", SINGLE)),
    image_layout="none", options={"probe": "models.hf_dit:flux_inputs"},
    tiny="models.tiny_hf:save_tiny_flux",
)
