"""PixArt-α/Σ (Chen et al., 2023/2024): a ``PixArtTransformer2DModel`` DiT conditioned on a T5
encoder through cross-attention, with a VAE (``PixArt{Alpha,Sigma}Pipeline`` folders).

Sites (module paths in the wrapper's tree, :class:`models.hf_dit.PixArtWrapper`; counts read from
``text_encoder.*`` / ``transformer.*`` configs): the T5 encoder as the ``text`` tower
(``text.blocks.{i}.{resid_post,attn,attn.pattern,attn.head.{h},mlp,mlp.neurons}``; T5's attention
returns ``(output, position_bias, weights)``, so the pattern is element 2), and per DiT block
``dit.blocks.{i}`` (block output), ``.attn.self``, ``.attn.cross`` (outputs ``[B, tokens, D]``),
``.attn.self.pattern`` / ``.attn.cross.pattern`` (probabilities, through the UNet's site processor),
``.attn.cross.k`` / ``.v`` (the prompt's key and value projections) and ``.ff``. Sampled with DDIM
from the checkpoint's scheduler config; the learned-variance half of the output is dropped, as the
pipeline does."""

from bench.sites import SiteSpec
from models.adapters._format import Adapter, Blocks, BlockSite, Tower

TEXT = Tower("text", "text", "text_encoder.encoder.block", "text_encoder.num_layers", "text_encoder.num_heads",
             d_model="text_encoder.d_model", embed=SiteSpec("text_encoder.encoder.block.0", hook="input"),
             attn="layer.0.SelfAttention", o_proj="o", mlp="layer.1.DenseReluDense",
             neurons=SiteSpec("wo", hook="input"), final=SiteSpec("text_encoder.encoder.final_layer_norm"),
             pattern_index=2)
BLOCK = (BlockSite("", "block", SiteSpec("")),
         BlockSite("attn.self", "attn", SiteSpec("attn1")),
         BlockSite("attn.self.pattern", "pattern", SiteSpec("attn1.processor.probs")),
         BlockSite("attn.cross", "cross_attn", SiteSpec("attn2")),
         BlockSite("attn.cross.pattern", "cross_pattern", SiteSpec("attn2.processor.probs")),
         BlockSite("attn.cross.k", "cross_k", SiteSpec("attn2.to_k"), stream="text"),
         BlockSite("attn.cross.v", "cross_v", SiteSpec("attn2.to_v"), stream="text"),
         BlockSite("ff", "mlp", SiteSpec("ff")))

ADAPTER = Adapter(
    name="pixart", model_types=("PixArtAlphaPipeline", "PixArtSigmaPipeline"), family="diffusion",
    load="models.hf_dit:load_pixart", model_class="diffusers:PixArtTransformer2DModel", component="transformer",
    towers=(TEXT,),
    blocks=(Blocks("dit.blocks", "dit", "transformer.transformer_blocks", "transformer.num_layers", BLOCK),),
    image_layout="none", options={"text_encoder": "transformers:T5EncoderModel",
                                  "sampling": {"steps": 20, "guidance": 4.5, "mask_padding": True}},
    tiny="models.tiny_hf:save_tiny_pixart",
)
