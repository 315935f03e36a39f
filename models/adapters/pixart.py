"""PixArt-α/Σ (Chen et al., 2023/2024): ``PixArtTransformer2DModel``, a DiT whose blocks have
self-attention over image tokens and cross-attention to T5 text states: ``dit.blocks.{i}`` (block
output), ``.attn.self``, ``.attn.cross`` (outputs ``[B, tokens, D]``), ``.attn.cross.k`` / ``.v``
(the prompt's key and value projections, where UCE/TIME-style edits act) and ``.ff``."""

from bench.sites import SiteSpec
from models.adapters._format import Adapter, Blocks, BlockSite

BLOCK = (BlockSite("", "block", SiteSpec("")),
         BlockSite("attn.self", "attn", SiteSpec("attn1")),
         BlockSite("attn.cross", "cross_attn", SiteSpec("attn2")),
         BlockSite("attn.cross.k", "cross_k", SiteSpec("attn2.to_k"), stream="text"),
         BlockSite("attn.cross.v", "cross_v", SiteSpec("attn2.to_v"), stream="text"),
         BlockSite("ff", "mlp", SiteSpec("ff")))

ADAPTER = Adapter(
    name="pixart", model_types=("PixArtAlphaPipeline", "PixArtSigmaPipeline"), family="diffusion",
    refusal="the PixArt pipeline (T5 text encoder, DPM-Solver sampler, VAE) has no wrapper yet; its transformer's "
            "sites are declared and checked (tests/test_adapters.py)",
    model_class="diffusers:PixArtTransformer2DModel", component="transformer",
    blocks=(Blocks("dit.blocks", "dit", "transformer_blocks", "num_layers", BLOCK),),
    image_layout="none", options={"probe": "models.hf_dit:pixart_inputs"},
    tiny="models.tiny_hf:save_tiny_pixart",
)
