"""One generic wrapper for LLaVA-shaped VLMs whose inputs go beyond ``pixel_values`` (nnsight's
answer: one class, the differences as data in each architecture's adapter).

What the adapters of :mod:`models.adapters` declare and this module acts on:

- ``image_layout="fixed"`` (PaliGemma): one ``[B, 3, S, S]`` image, a fixed count of image tokens;
- ``"tiled"`` (LLaVA-NeXT, LLaVA-OneVision): the image is fitted into the best of
  ``image_grid_pinpoints`` and cut into ``S × S`` tiles after a resized base view
  (``pixel_values [B, 1 + tiles, 3, S, S]`` and ``image_sizes``); the image-token count depends on
  the image's size, and is measured once at load by running the model's own feature packing;
- ``"dynamic"`` (Qwen2-VL, Qwen2.5-VL): patches packed without a batch axis (``[Σpatches, C·T·p·p]``)
  with ``image_grid_thw`` per image; ``mm_token_type_ids`` marks image tokens for M-RoPE;
- ``extra_inputs``: ``token_type_ids`` (PaliGemma's prefix-LM: 0 on image and prompt tokens, which
  attend bidirectionally, 1 on the answer; without it the prefix silently runs causally),
  ``image_sizes``, ``image_grid_thw``, ``mm_token_type_ids``.

Every image of one call is brought to one input size (:meth:`VlmWrapper.input_side`), so a prompt's
image-token count is known before the pixels are (``image_positions(prompts)`` has no pixels).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.registry import resolve
from models.adapters._format import Adapter, config_value
from models.hf_common import load_error, load_tokenizer, normalisation, pad_rows, weights_hash
from models.hf_source import read_json
from models.hf_llava import Decode, Encode, LlavaWrapper


class VlmWrapper(LlavaWrapper):
    """A VLM behind the generative contract, its specifics read from its :class:`Adapter`."""

    def __init__(self, name: str, model: Any, encode: Encode, decode: Decode, mean: Any, std: Any,
                 weights_hash: str, eos_id: int, pad_id: int, adapter: Adapter, side: int,
                 prefix_lengths: dict[bytes, int] | None = None) -> None:
        self.adapter = adapter
        self.side = side
        self._mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self._std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        # PaliGemma: the prompt (prefix) length of each encoded row, to set token_type_ids
        self.prefix_lengths = prefix_lengths if prefix_lengths is not None else {}
        super().__init__(name, model, encode, decode, self._normalise, weights_hash, eos_id, pad_id)

    # ---------------------------------------------------------------- inputs
    @property
    def image_token_id(self) -> int:
        cfg = self.llava.config
        return int(getattr(cfg, "image_token_index", None) or getattr(cfg, "image_token_id"))

    def _normalise(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        return (_resize(pixels_BCHW, self.side, self.side) - self._mean) / self._std

    def model_inputs(self, pixels_BCHW: torch.Tensor, ids_BL: torch.Tensor, mask_BL: torch.Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {"input_ids": ids_BL, "attention_mask": mask_BL}
        layout = self.adapter.image_layout
        if layout == "tiled":
            # one input size, so the image-token count encode() used holds for every image
            out["pixel_values"], out["image_sizes"] = tile(_resize(pixels_BCHW, self.side, self.side),
                                                           self.llava.config, self._mean, self._std)
            if "batch_num_images" in self.adapter.extra_inputs:
                out["batch_num_images"] = torch.ones(pixels_BCHW.shape[0], dtype=torch.long, device="cpu")
        elif layout == "dynamic":
            out["pixel_values"], out["image_grid_thw"] = pack_patches(self._normalise(pixels_BCHW), self.llava.config)
        else:
            out["pixel_values"] = self._normalise(pixels_BCHW)
        if "mm_token_type_ids" in self.adapter.extra_inputs:
            out["mm_token_type_ids"] = (ids_BL == self.image_token_id).long()
        if "token_type_ids" in self.adapter.extra_inputs:
            out["token_type_ids"] = self.token_type_ids(ids_BL, mask_BL)
        # everything the forward reads on the model's device (a no-op on the CPU)
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}

    def token_type_ids(self, ids_BL: torch.Tensor, mask_BL: torch.Tensor) -> torch.Tensor:
        """0 on the prefix (image and prompt tokens: bidirectional), 1 on the answer and padding.
        A row this wrapper did not encode (a method built it) gets only its image tokens as prefix."""
        tt = torch.ones_like(ids_BL)
        for i, row in enumerate(ids_BL):
            n = self.prefix_lengths.get(row.numpy().tobytes())
            if n is None:
                img = (row == self.image_token_id).nonzero()
                n = int(img.max()) + 1 if len(img) else 0
            tt[i, :n] = 0
        return tt

    def vision_tower_map(self, config: Any) -> Any:
        if self.adapter.image_layout == "dynamic":
            return None  # Qwen2-VL's own ViT: its sites are in its adapter, it has no class token
        return super().vision_tower_map(config)

    def token_layout(self) -> Any:
        if self.adapter.image_layout == "dynamic":
            # the grid the LM sees (merged patches); the ViT's own sites are packed (vision_packed.*)
            from bench.model import TokenLayout

            vc = self.llava.config.vision_config
            patch = int(vc.patch_size) * int(vc.spatial_merge_size)
            g = self.side // patch
            return TokenLayout(cls=None, image=slice(0, g * g), grid=(g, g), patch_size=patch)
        return super().token_layout()

    def randomized(self, seed: int) -> "VlmWrapper":
        torch.manual_seed(seed)
        fresh = type(self.llava)(self.llava.config)
        return VlmWrapper(f"{self.name}[randomized:{seed}]", fresh, self.encode, self.decode, self._mean, self._std,
                          f"random-init:{seed}", self.eos_id, self.pad_id, self.adapter, self.side, self.prefix_lengths)


# ---------------------------------------------------------------------------- image layouts
def _resize(pixels_BCHW: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if pixels_BCHW.shape[-2:] == (h, w):
        return pixels_BCHW
    return F.interpolate(pixels_BCHW, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def tile(pixels_BCHW: torch.Tensor, config: Any, mean: torch.Tensor, std: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaVA-NeXT's any-resolution input: a resized base view and the tiles of the image fitted
    (aspect kept, centred, padded with the mean) into the best of ``image_grid_pinpoints``."""
    from transformers.image_processing_utils import select_best_resolution

    S = int(config.vision_config.image_size)
    H, W = pixels_BCHW.shape[-2:]
    bh, bw = select_best_resolution((H, W), [list(p) for p in config.image_grid_pinpoints])
    scale = min(bh / H, bw / W)
    nh, nw = min(bh, math.ceil(H * scale)), min(bw, math.ceil(W * scale))
    fitted = (_resize(pixels_BCHW, nh, nw) - mean) / std
    top, left = (bh - nh) // 2, (bw - nw) // 2
    canvas = F.pad(fitted, (left, bw - nw - left, top, bh - nh - top))  # 0 = the mean after normalising
    tiles = canvas.unfold(2, S, S).unfold(3, S, S)  # [B, C, bh/S, bw/S, S, S]
    tiles = tiles.permute(0, 2, 3, 1, 4, 5).flatten(1, 2)  # [B, tiles, C, S, S], row-major
    base = ((_resize(pixels_BCHW, S, S) - mean) / std)[:, None]
    sizes = torch.tensor([[H, W]] * pixels_BCHW.shape[0], dtype=torch.long, device="cpu")
    return torch.cat([base, tiles], 1), sizes


def pack_patches(x_BCHW: torch.Tensor, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2-VL's packed input: per image, its ``T`` copies (a still image is a clip of one temporal
    patch) cut into ``p × p`` patches in merge-window order, flattened to ``[Σpatches, C·T·p·p]``,
    and ``image_grid_thw = [1, H/p, W/p]`` per image (as ``Qwen2VLImageProcessor`` lays them out)."""
    vc = config.vision_config
    p, m, T = int(vc.patch_size), int(vc.spatial_merge_size), int(vc.temporal_patch_size)
    B, C, H, W = x_BCHW.shape
    gh, gw = H // p, W // p
    x = x_BCHW[:, None].expand(B, T, C, H, W)
    x = x.reshape(B, T, C, gh // m, m, p, gw // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    packed = x.reshape(B * gh * gw, C * T * p * p)
    return packed, torch.tensor([[1, gh, gw]] * B, dtype=torch.long, device="cpu")


# ---------------------------------------------------------------------------------- the loader
def load_vlm(adapter: Adapter, name: str, path: Path, sidecar: dict[str, Any]) -> VlmWrapper:
    """``hf:`` loader of the adapters whose ``load`` names it (see the module docstring)."""
    cls = resolve(adapter.model_class)
    try:
        model = cls.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise load_error(adapter.name, path, e) from None
    model.set_attn_implementation("eager")
    model.eval()
    tok = load_tokenizer(path, adapter.name)
    cfg = model.config
    eos = tok.eos_token_id
    if eos is None:
        raise BenchError(f"hf: the {adapter.name} tokenizer in {str(path)!r} has no end-of-sequence token")
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    mean, std = normalisation(path)
    side = input_side(adapter, cfg, path)
    image_id = int(getattr(cfg, "image_token_index", None) or getattr(cfg, "image_token_id"))
    n_image = count_image_tokens(adapter, model, side, torch.as_tensor(mean).reshape(-1, 1, 1),
                                 torch.as_tensor(std).reshape(-1, 1, 1))
    template = str(sidecar.get("prompt_template") or adapter.prompt_template)
    prefix_lengths: dict[bytes, int] = {}
    encode = make_encode(tok, template, image_id, n_image, eos, pad, bool(adapter.options.get("bos_after_image")),
                         prefix_lengths)

    def decode(ids: list[int]) -> str:
        return str(tok.decode(ids, skip_special_tokens=True)).strip()

    return VlmWrapper(name, model, encode, decode, mean, std, weights_hash(path), eos, pad, adapter, side,
                      prefix_lengths)


def input_side(adapter: Adapter, config: Any, path: Path) -> int:
    """The one square input size every image is brought to: the vision tower's ``image_size`` for
    fixed and tiled layouts (a tiled model then sees the base view and the tiles of the best
    pinpoint for a square image), and for dynamic ones the smallest multiple of ``patch × merge``
    that holds 32 pixels and ``min_pixels``."""
    if adapter.image_layout != "dynamic":
        return int(config_value(config, "vision_config.image_size"))
    vc = config.vision_config
    factor = int(vc.patch_size) * int(vc.spatial_merge_size)
    pre = read_json(path / "preprocessor_config.json") if (path / "preprocessor_config.json").exists() else {}
    min_pixels = int(pre.get("min_pixels") or (pre.get("size") or {}).get("shortest_edge") or 0)
    side = max(32, math.isqrt(min_pixels))
    return factor * math.ceil(side / factor)


def count_image_tokens(adapter: Adapter, model: Any, side: int, mean: torch.Tensor, std: torch.Tensor) -> int:
    """How many image tokens one ``side × side`` image becomes in the LM sequence."""
    cfg = model.config
    if adapter.image_layout == "dynamic":
        m = int(cfg.vision_config.spatial_merge_size)
        return (side // int(cfg.vision_config.patch_size) // m) ** 2
    if adapter.image_layout == "tiled":  # the model's own packing (unpadding, newline tokens) decides
        pixels, sizes = tile(torch.zeros(1, 3, side, side), cfg, mean, std)
        kw = {"batch_num_images": torch.ones(1, dtype=torch.long)} if "batch_num_images" in adapter.extra_inputs else {}
        with torch.no_grad():
            out = model.model.get_image_features(pixel_values=pixels, image_sizes=sizes, **kw)
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        feats = feats[0] if isinstance(feats, (list, tuple)) else feats
        return int(feats.shape[0])
    n = getattr(cfg.text_config, "num_image_tokens", None) or getattr(cfg, "image_seq_length", None)
    return int(n) if n else (int(cfg.vision_config.image_size) // int(cfg.vision_config.patch_size)) ** 2


def make_encode(tok: Any, template: str, image_id: int, n_image: int, eos: int, pad: int, bos_after_image: bool,
                prefix_lengths: dict[bytes, int]) -> Callable[[list[str], list[str] | None],
                                                               tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``encode(prompts, answers) -> (ids, mask, labels)``: the template with ``<image>`` expanded to
    ``n_image`` image tokens (after the begin token, or before it with ``bos_after_image``,
    PaliGemma's order), the answer, ``<eos>``; right-padded. Each row's prompt length is recorded
    in ``prefix_lengths`` (for ``token_type_ids``)."""
    before, after = template.split("<image>")
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    enc_before = tok.encode(before, add_special_tokens=False) if before else []
    image = [image_id] * n_image
    head = (image + bos + enc_before) if bos_after_image else (bos + enc_before + image)

    def encode(prompts: list[str], answers: list[str] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, labels, n_prompt = [], [], []
        for i, p in enumerate(prompts):
            prompt = head + tok.encode(after.format(prompt=p), add_special_tokens=False)
            ans = [] if answers is None else tok.encode(" " + answers[i], add_special_tokens=False) + [eos]
            rows.append(prompt + ans)
            labels.append([-100] * len(prompt) + ans)
            n_prompt.append(len(prompt))
        ids, mask, lab = pad_rows(rows, labels, pad)
        if len(prefix_lengths) > 100_000:
            prefix_lengths.clear()
        for i, n in enumerate(n_prompt):
            prefix_lengths[ids[i].numpy().tobytes()] = n
            for k in range(n, ids.shape[1] + 1):  # the same prompt cut at any answer length (answer_inputs)
                prefix_lengths.setdefault(ids[i, :k].numpy().tobytes(), n)
        return ids, mask, lab

    return encode
