"""Contrastive wrappers over transformers' ``CLIPModel`` (zoo-clip and ``hf:`` CLIPs) and
``SiglipModel`` (``hf:`` SigLIPs).

The site maps are data: :func:`clip_site_map` and :func:`siglip_site_map` turn a config into
site names → module paths, so another CLIP-like architecture is a new mapping plus, where its
similarity differs, one method (:class:`SiglipWrapper` is 30 lines).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from bench.model import ContrastiveModel, TokenLayout
from bench.sites import Site, SiteSpec
from models.site_maps import TowerMap, build_sites

Tokenize = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]

def clip_site_map(n_layers: dict[str, int], n_heads: dict[str, int]) -> tuple[list[Site], dict[str, SiteSpec]]:
    """Sites of a CLIP: per tower, embeddings, every block's residual output,
    attention output, attention pattern, each head's output (the per-head values
    entering ``out_proj``), MLP output and MLP neurons, the final norm and projection."""
    return build_sites([
        TowerMap("vision", "image", "vision_model.encoder.layers", n_layers["vision"], n_heads["vision"],
                 embed=SiteSpec("vision_model.pre_layrnorm"), final=SiteSpec("vision_model.post_layernorm"),
                 extra=(("vision.proj", "proj", SiteSpec("visual_projection")),)),
        TowerMap("text", "text", "text_model.encoder.layers", n_layers["text"], n_heads["text"],
                 embed=SiteSpec("text_model.embeddings"), final=SiteSpec("text_model.final_layer_norm"),
                 extra=(("text.proj", "proj", SiteSpec("text_projection")),)),
    ])


def siglip_site_map(n_layers: dict[str, int], n_heads: dict[str, int]) -> tuple[list[Site], dict[str, SiteSpec]]:
    """Sites of a SigLIP: the CLIP map's names on SigLIP's modules. SigLIP has no class token,
    no pre-norm and no projection matrices: ``vision.proj`` is its attention-pooling head
    (``vision_model.head``: the image embedding before normalisation, as CLIP's
    ``visual_projection`` output is) and ``text.proj`` the linear head on the last token."""
    return build_sites([
        TowerMap("vision", "image", "vision_model.encoder.layers", n_layers["vision"], n_heads["vision"],
                 embed=SiteSpec("vision_model.embeddings"), final=SiteSpec("vision_model.post_layernorm"),
                 extra=(("vision.proj", "proj", SiteSpec("vision_model.head")),)),
        TowerMap("text", "text", "text_model.encoder.layers", n_layers["text"], n_heads["text"],
                 embed=SiteSpec("text_model.embeddings"), final=SiteSpec("text_model.final_layer_norm"),
                 extra=(("text.proj", "proj", SiteSpec("text_model.head")),)),
    ])


class CLIPWrapper(ContrastiveModel):
    """A ``transformers.CLIPModel`` behind the contrastive contract.

    ``pixel_mean``/``pixel_std`` normalise [0, 1] pixels the way the checkpoint
    was trained. Attention runs eagerly so that ``attn.pattern`` sites exist.
    """

    def __init__(self, name: str, clip: Any, tokenize: Tokenize, weights_hash: str,
                 pixel_mean: Any = 0.5, pixel_std: Any = 0.25) -> None:
        clip.set_attn_implementation("eager")
        clip.eval()
        cfg = clip.config
        sites, specs = self.site_map(
            {"vision": cfg.vision_config.num_hidden_layers, "text": cfg.text_config.num_hidden_layers},
            {"vision": cfg.vision_config.num_attention_heads, "text": cfg.text_config.num_attention_heads},
        )
        super().__init__(name, clip, specs, sites)
        self.clip = clip
        self.tokenize = tokenize
        self._hash = weights_hash
        self._mean = torch.as_tensor(pixel_mean, dtype=torch.float32).reshape(-1, 1, 1)
        self._std = torch.as_tensor(pixel_std, dtype=torch.float32).reshape(-1, 1, 1)

    site_map = staticmethod(clip_site_map)

    @property
    def weights_hash(self) -> str:
        return self._hash

    @property
    def image_size(self) -> int:
        return int(self.clip.config.vision_config.image_size)

    def token_layout(self) -> TokenLayout:
        vc = self.clip.config.vision_config
        g = vc.image_size // vc.patch_size
        return TokenLayout(cls=0, image=slice(1, 1 + g * g), grid=(g, g), patch_size=vc.patch_size)

    def encode_image(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        pixels_BCHW = pixels_BCHW.to(self.device)  # (differentiable: a gradient flows back to the caller's pixels)
        x = (pixels_BCHW - self._mean.to(self.device)) / self._std.to(self.device)
        return F.normalize(self.clip.get_image_features(pixel_values=x).pooler_output, dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        with torch.device("cpu"):  # the tokenizer builds on the host; the ids go to the model's device
            ids, mask = self.tokenize(texts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        return F.normalize(self.clip.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, dim=-1)

    def similarity_to(self, image_BD: torch.Tensor, text_TD: torch.Tensor) -> torch.Tensor:
        return self.clip.logit_scale.exp() * image_BD @ text_TD.T

    def randomized(self, seed: int) -> "CLIPWrapper":
        from transformers import CLIPModel

        torch.manual_seed(seed)
        fresh = CLIPModel(self.clip.config)
        return CLIPWrapper(f"{self.name}[randomized:{seed}]", fresh, self.tokenize, f"random-init:{seed}",
                           self._mean, self._std)


class SiglipWrapper(CLIPWrapper):
    """A ``transformers.SiglipModel`` behind the contrastive contract (Zhai et al., 2023).

    SigLIP scores a pair with a sigmoid of ``exp(t)·cos + b``, so :meth:`similarity_to`
    adds the learned bias; there is no class token (``token_layout().cls`` is ``None``), and
    its text tower pools the last position, so ``tokenize`` should pad to a fixed length as
    SigLIP was trained (the loader pads to ``max_position_embeddings``).
    """

    site_map = staticmethod(siglip_site_map)

    def token_layout(self) -> TokenLayout:
        vc = self.clip.config.vision_config
        g = vc.image_size // vc.patch_size
        return TokenLayout(cls=None, image=slice(0, g * g), grid=(g, g), patch_size=vc.patch_size)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        with torch.device("cpu"):  # the tokenizer builds on the host; the ids go to the model's device
            ids, _ = self.tokenize(texts)  # SigLIP was trained without a text attention mask
        ids = ids.to(self.device)
        return F.normalize(self.clip.get_text_features(input_ids=ids).pooler_output, dim=-1)

    def similarity_to(self, image_BD: torch.Tensor, text_TD: torch.Tensor) -> torch.Tensor:
        return self.clip.logit_scale.exp() * image_BD @ text_TD.T + self.clip.logit_bias

    def randomized(self, seed: int) -> "SiglipWrapper":
        from transformers import SiglipModel

        torch.manual_seed(seed)
        fresh = SiglipModel(self.clip.config)
        return SiglipWrapper(f"{self.name}[randomized:{seed}]", fresh, self.tokenize, f"random-init:{seed}",
                             self._mean, self._std)
