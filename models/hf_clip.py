"""Contrastive wrappers over transformers' ``CLIPModel`` (zoo-clip and ``hf:`` CLIPs) and
``SiglipModel`` (``hf:`` SigLIPs).

The site maps are data, the adapters :mod:`models.adapters.clip` and :mod:`models.adapters.siglip`
(:func:`clip_site_map` and :func:`siglip_site_map` expand them from layer and head counts), so
another CLIP-like architecture is an adapter plus, where its similarity differs, one method
(:class:`SiglipWrapper` is 30 lines).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Callable

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.model import ContrastiveModel, TokenLayout
from bench.sites import Site, SiteSpec
from models.adapters._format import Adapter
from models.adapters.clip import ADAPTER as CLIP_ADAPTER
from models.adapters.siglip import ADAPTER as SIGLIP_ADAPTER
from models.adapters.siglip2 import ADAPTER as SIGLIP2_ADAPTER

Tokenize = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]

def _counts(n_layers: dict[str, int], n_heads: dict[str, int]) -> Any:
    """A stand-in config carrying only the counts a tower map reads."""
    return SimpleNamespace(**{f"{t}_config": SimpleNamespace(num_hidden_layers=n_layers[t], num_attention_heads=n_heads[t],
                                                             hidden_size=0) for t in ("vision", "text")})


def clip_site_map(n_layers: dict[str, int], n_heads: dict[str, int]) -> tuple[list[Site], dict[str, SiteSpec]]:
    """Sites of a CLIP (the ``clip`` adapter, :mod:`models.adapters.clip`): per tower, embeddings,
    every block's residual output, attention output, attention pattern, each head's output (the
    per-head values entering ``out_proj``), MLP output and MLP neurons, the final norm and projection."""
    return CLIP_ADAPTER.site_map(_counts(n_layers, n_heads))


def siglip_site_map(n_layers: dict[str, int], n_heads: dict[str, int]) -> tuple[list[Site], dict[str, SiteSpec]]:
    """Sites of a SigLIP (the ``siglip`` adapter, :mod:`models.adapters.siglip`): the CLIP map's names
    on SigLIP's modules."""
    return SIGLIP_ADAPTER.site_map(_counts(n_layers, n_heads))


class CLIPWrapper(ContrastiveModel):
    """A ``transformers.CLIPModel`` behind the contrastive contract.

    ``pixel_mean``/``pixel_std`` normalise [0, 1] pixels the way the checkpoint
    was trained. Attention runs eagerly so that ``attn.pattern`` sites exist.
    """

    def __init__(self, name: str, clip: Any, tokenize: Tokenize, weights_hash: str,
                 pixel_mean: Any = 0.5, pixel_std: Any = 0.25, adapter: Adapter | None = None) -> None:
        if adapter is not None:  # another architecture's sites on this wrapper (a plugin adapter)
            self.adapter = adapter
        clip.set_attn_implementation("eager")
        clip.eval()
        sites, specs = self.adapter.site_map(clip.config)
        super().__init__(name, clip, specs, sites)
        self.clip = clip
        self.tokenize = tokenize
        self._hash = weights_hash
        self._mean = torch.as_tensor(pixel_mean, dtype=torch.float32).reshape(-1, 1, 1)
        self._std = torch.as_tensor(pixel_std, dtype=torch.float32).reshape(-1, 1, 1)

    adapter: Adapter = CLIP_ADAPTER
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
                           self._mean, self._std, adapter=self.adapter)


class SiglipWrapper(CLIPWrapper):
    """A ``transformers.SiglipModel`` behind the contrastive contract (Zhai et al., 2023).

    SigLIP scores a pair with a sigmoid of ``exp(t)·cos + b``, so :meth:`similarity_to`
    adds the learned bias; there is no class token (``token_layout().cls`` is ``None``), and
    its text tower pools the last position, so ``tokenize`` should pad to a fixed length as
    SigLIP was trained (the loader pads to ``max_position_embeddings``).
    """

    adapter: Adapter = SIGLIP_ADAPTER
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
                             self._mean, self._std, adapter=self.adapter)


class Siglip2Wrapper(SiglipWrapper):
    """A ``transformers.Siglip2Model`` (Tschannen et al., 2025) behind the contrastive contract.

    SigLIP 2's NaFlex vision tower takes patches, not pixels: ``[B, max_patches, p·p·C]`` (row-major
    patches, channels last, as ``Siglip2ImageProcessor`` cuts them) with a patch mask and each
    image's ``spatial_shapes``. Every image is resized to the square grid that fills
    ``num_patches`` (no padding patches), so the token layout is a fixed ``g × g`` grid.
    """

    adapter: Adapter = SIGLIP2_ADAPTER

    @property
    def grid(self) -> int:
        return math.isqrt(int(self.clip.config.vision_config.num_patches))

    @property
    def image_size(self) -> int:
        return self.grid * int(self.clip.config.vision_config.patch_size)

    def token_layout(self) -> TokenLayout:
        g, p = self.grid, int(self.clip.config.vision_config.patch_size)
        return TokenLayout(cls=None, image=slice(0, g * g), grid=(g, g), patch_size=p)

    def patches(self, pixels_BCHW: torch.Tensor) -> dict[str, torch.Tensor]:
        """The vision tower's inputs for [0, 1] pixels of side :attr:`image_size`."""
        pixels_BCHW = pixels_BCHW.to(self.device)  # (differentiable: a gradient flows back to the caller's pixels)
        x = (pixels_BCHW - self._mean.to(self.device)) / self._std.to(self.device)
        B, C, H, W = x.shape
        p = int(self.clip.config.vision_config.patch_size)
        g = self.grid
        if (H, W) != (g * p, g * p):
            raise BenchError(f"{self.name} takes {g * p}×{g * p} images (its num_patches grid), got {H}×{W}")
        patches = x.reshape(B, C, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(B, g * g, p * p * C)
        return {"pixel_values": patches, "pixel_attention_mask": torch.ones(B, g * g, dtype=torch.long, device=x.device),
                "spatial_shapes": torch.tensor([[g, g]] * B, dtype=torch.long, device=x.device)}

    def encode_image(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.get_image_features(**self.patches(pixels_BCHW)).pooler_output, dim=-1)

    def randomized(self, seed: int) -> "Siglip2Wrapper":
        torch.manual_seed(seed)
        fresh = type(self.clip)(self.clip.config)
        return Siglip2Wrapper(f"{self.name}[randomized:{seed}]", fresh, self.tokenize, f"random-init:{seed}",
                              self._mean, self._std, adapter=self.adapter)
