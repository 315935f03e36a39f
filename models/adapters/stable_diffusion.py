"""Stable Diffusion 1.x/2.x: a diffusers ``UNet2DConditionModel`` conditioned on a transformers
``CLIPTextModel`` (``StableDiffusion*Pipeline`` folders other than XL and 3).

The text encoder's sites are the ``clip`` adapter's text tower re-rooted at ``text_encoder``; the
UNet's (``unet.{down.i|mid|up.i}...``) are read off its module tree by
:class:`models.hf_diffusion.UNetMap`, since a UNet's block layout is itself in its config
(``down_block_types``, ``layers_per_block``, ...). Attention maps are sites because the wrapper
installs :class:`models.hf_diffusion.SiteAttnProcessor` (same numbers as diffusers' processor)."""

from models.adapters._format import Adapter

ADAPTER = Adapter(
    name="stable_diffusion", model_types=("stable-diffusion",), family="diffusion",
    load="models.hf_loader:load_diffusion", model_class="diffusers:UNet2DConditionModel",
    image_layout="none", prompt_template="",
    options={"text_encoder": "transformers:CLIPTextModel", "sampling": {"steps": 25, "guidance": 7.5,
                                                                         "mask_padding": False}},
    tiny="models.tiny_hf:save_tiny_sd",
)
