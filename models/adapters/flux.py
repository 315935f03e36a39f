"""Flux (Black Forest Labs, 2024): a ``FluxPipeline`` folder. A ``FluxTransformer2DModel`` of
double-stream joint blocks (``dit.blocks.{i}...``, as SD3's, with the joint and cross maps) followed
by single-stream blocks over the concatenated text and image tokens: ``dit.single_blocks.{i}`` (the
block's image-stream output), ``.attn`` (attention over the joint sequence, stream ``"mixed"``: text
tokens first), ``.attn.pattern`` / ``.attn.cross.pattern`` (its map, and the image-query × text-key
block of it) and ``.mlp.neurons`` (the parallel MLP's activations). Conditioned on T5 (the context:
the ``text`` tower, whose token positions the prompt's words have) and CLIP (the pooled vector: the
``text_2`` tower); a rectified flow over packed VAE latents with a resolution-dependent shift
(:class:`models.hf_dit.FluxWrapper`)."""

from bench.sites import SiteSpec
from models.adapters._dit import joint_block
from models.adapters._format import Adapter, Blocks, BlockSite, Tower

SINGLE = (BlockSite("", "block", SiteSpec("", index=1)),
          BlockSite("attn", "attn", SiteSpec("attn"), stream="mixed"),
          BlockSite("attn.pattern", "pattern", SiteSpec("attn.processor.probs"), stream="mixed"),
          BlockSite("attn.cross.pattern", "cross_pattern", SiteSpec("attn.processor.cross")),
          BlockSite("mlp.neurons", "neurons", SiteSpec("act_mlp"), stream="mixed"))

T5 = Tower("text", "text", "text_encoder_2.encoder.block", "text_encoder_2.num_layers", "text_encoder_2.num_heads",
           d_model="text_encoder_2.d_model", embed=SiteSpec("text_encoder_2.encoder.block.0", hook="input"),
           attn="layer.0.SelfAttention", o_proj="o", mlp="layer.1.DenseReluDense", neurons=SiteSpec("wo", hook="input"),
           final=SiteSpec("text_encoder_2.encoder.final_layer_norm"), pattern_index=2)
CLIP = Tower("text_2", "text", "text_encoder.encoder.layers", "text_encoder.num_hidden_layers",
             "text_encoder.num_attention_heads", d_model="text_encoder.hidden_size",
             embed=SiteSpec("text_encoder.embeddings"),
             final=SiteSpec("text_encoder.final_layer_norm"))

ADAPTER = Adapter(
    name="flux", model_types=("FluxPipeline",), family="diffusion",
    load="models.hf_dit:load_flux", model_class="diffusers:FluxTransformer2DModel",
    towers=(T5, CLIP),
    blocks=(Blocks("dit.blocks", "dit", "transformer.transformer_blocks", "transformer.num_layers",
                   joint_block(context_in_last=True, patterns=True)),
            Blocks("dit.single_blocks", "dit", "transformer.single_transformer_blocks",
                   "transformer.num_single_layers", SINGLE)),
    image_layout="none",
    options={"text_encoder": "transformers:CLIPTextModel", "t5": "transformers:T5EncoderModel",
             "max_sequence_length": 512, "sampling": {"steps": 28, "guidance": 3.5, "mask_padding": False}},
    tiny="models.tiny_hf:save_tiny_flux",
)
