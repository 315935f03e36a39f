"""Stable Diffusion 3 (Esser et al., 2024): a ``StableDiffusion3Pipeline`` folder. An MMDiT
(``SD3Transformer2DModel``) of joint blocks in which image and text tokens attend together (no UNet,
no ``down/mid/up`` sites), conditioned on CLIP-L and CLIP-G (with projection: the pooled vector) and
optionally T5, over a VAE's latents; a rectified flow (prediction type ``flow_prediction``), sampled
with the folder's ``FlowMatchEulerDiscreteScheduler`` (:class:`models.hf_dit.SD3Wrapper`).

Sites: the text towers ``text`` (CLIP-L), ``text_2`` (CLIP-G) and ``text_3`` (T5, when the folder
has one), each ``{embed, blocks.{i}.{resid_post,attn,attn.pattern,attn.head.{h},mlp,mlp.neurons},
final}``, and per joint block ``dit.blocks.{i}...`` (:mod:`models.adapters._dit`) with the joint and
cross maps (the wrapper computes attention with an explicit softmax for them); the last block
updates only the image stream."""

from bench.sites import SiteSpec
from models.adapters._dit import joint_block
from models.adapters._format import Adapter, Blocks, Tower


def clip_tower(tower: str, root: str) -> Tower:
    return Tower(tower, "text", f"{root}.text_model.encoder.layers", f"{root}.num_hidden_layers",
                 f"{root}.num_attention_heads", d_model=f"{root}.hidden_size",
                 embed=SiteSpec(f"{root}.text_model.embeddings"), final=SiteSpec(f"{root}.text_model.final_layer_norm"),
                 extra=((f"{tower}.proj", "proj", SiteSpec(f"{root}.text_projection")),))


T5 = Tower("text_3", "text", "text_encoder_3.encoder.block", "text_encoder_3.num_layers",
           "text_encoder_3.num_heads", d_model="text_encoder_3.d_model",
           embed=SiteSpec("text_encoder_3.encoder.block.0", hook="input"), attn="layer.0.SelfAttention", o_proj="o",
           mlp="layer.1.DenseReluDense", neurons=SiteSpec("wo", hook="input"),
           final=SiteSpec("text_encoder_3.encoder.final_layer_norm"), pattern_index=2)

ADAPTER = Adapter(
    name="sd3", model_types=("StableDiffusion3Pipeline",), family="diffusion",
    load="models.hf_dit:load_sd3", model_class="diffusers:SD3Transformer2DModel",
    towers=(clip_tower("text", "text_encoder"), clip_tower("text_2", "text_encoder_2"), T5),
    blocks=(Blocks("dit.blocks", "dit", "transformer.transformer_blocks", "transformer.num_layers",
                   joint_block(context_in_last=False, patterns=True)),),
    image_layout="none",
    options={"text_encoder": "transformers:CLIPTextModelWithProjection", "t5": "transformers:T5EncoderModel",
             "max_sequence_length": 256, "sampling": {"steps": 28, "guidance": 7.0, "mask_padding": False}},
    tiny="models.tiny_hf:save_tiny_sd3",
)
