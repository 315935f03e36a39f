"""Generative wrapper over transformers' ``LlavaForConditionalGeneration`` (zoo-vlm and ``hf:`` LLaVAs).

The site map is data (the ``llava`` adapter, :mod:`models.adapters.llava`): vision tower blocks
(``vision.*``), the projector (``projector``) and the language model
(``lm.blocks.{i}.*``, ``lm.embed``, ``lm.final``). LLaVA splices image features
into the token sequence, so LM sites are ``stream="mixed"`` and
:meth:`LlavaWrapper.image_positions` says which positions hold image tokens.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from bench.errors import BenchError
from bench.model import GenerativeModel, SpanInputs, TokenLayout
from bench.sites import Site, SiteSpec
from models.adapters._format import Adapter
from models.adapters._vlm import VISION_TOWERS, VisionTowerMap
from models.adapters.llava import ADAPTER as LLAVA_ADAPTER

Encode = Callable[[list[str], list[str] | None], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
Decode = Callable[[list[int]], str]


def vision_tower_map(config: Any) -> VisionTowerMap:
    kind = getattr(config.vision_config, "model_type", "clip_vision_model")
    if kind not in VISION_TOWERS:
        raise BenchError(f"LLaVA with a {kind!r} vision tower has no site map yet "
                         f"(known: {', '.join(VISION_TOWERS)}); add one to models.adapters._vlm.VISION_TOWERS")
    return VISION_TOWERS[kind]


def llava_image_features(config: Any) -> int:
    """How many image tokens the LM sees: one per patch, plus the class token under the "full"
    feature strategy (LLaVA's "default" drops it)."""
    vc = config.vision_config
    n = (vc.image_size // vc.patch_size) ** 2
    keep_cls = config.vision_feature_select_strategy == "full" and vision_tower_map(config).has_cls
    return n + int(keep_cls)


def llava_site_map(config: Any, adapter: Adapter = LLAVA_ADAPTER) -> tuple[list[Site], dict[str, SiteSpec]]:
    """Sites of a LLaVA-shaped checkpoint, from its adapter (default :mod:`models.adapters.llava`)."""
    vision_tower_map(config)  # an unknown vision tower: one line naming the known ones
    return adapter.site_map(config)


class LlavaWrapper(GenerativeModel):
    """A ``LlavaForConditionalGeneration`` behind the generative contract.

    ``encode(prompts, answers)`` returns ``(ids, mask, labels)`` with image
    placeholders in place; ``decode(token_ids)`` turns generated ids into text;
    ``preprocess`` maps [0, 1] pixels to the vision tower's input.
    """

    def __init__(self, name: str, llava: Any, encode: Encode, decode: Decode,
                 preprocess: Callable[[torch.Tensor], torch.Tensor], weights_hash: str, eos_id: int,
                 pad_id: int) -> None:
        llava.set_attn_implementation("eager")
        llava.eval()
        self.vision_map = self.vision_tower_map(llava.config)
        sites, specs = self.adapter.site_map(llava.config)
        super().__init__(name, llava, specs, sites)
        self.llava = llava
        self.encode = encode
        self.decode = decode
        self.preprocess = preprocess
        self._hash = weights_hash
        self.eos_id = eos_id
        self.pad_id = pad_id

    adapter: Adapter = LLAVA_ADAPTER

    def vision_tower_map(self, config: Any) -> VisionTowerMap | None:
        """The vision tower's map (an unknown tower is one line naming the known ones)."""
        return vision_tower_map(config)

    @property
    def weights_hash(self) -> str:
        return self._hash

    def token_layout(self) -> TokenLayout:
        vc = self.llava.config.vision_config
        g = vc.image_size // vc.patch_size
        c = int(self.vision_map is not None and self.vision_map.has_cls)
        return TokenLayout(cls=0 if c else None, image=slice(c, c + g * g), grid=(g, g), patch_size=vc.patch_size)

    @property
    def image_token_id(self) -> int:
        return int(self.llava.config.image_token_index)

    def _encode(self, prompts: list[str], targets: list[str] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``encode`` on the host (the tokenizer builds there), its tensors then on the model's device."""
        with torch.device("cpu"):
            ids, mask, labels = self.encode(prompts, targets)
        return ids.to(self.device), mask.to(self.device), labels.to(self.device) if labels is not None else labels

    def image_positions(self, prompts: list[str]) -> torch.Tensor:
        ids, _, _ = self._encode(prompts, None)
        return ids == self.image_token_id

    @torch.no_grad()
    def generate(self, pixels_BCHW: torch.Tensor, prompts: list[str], max_new_tokens: int = 24) -> list[str]:
        ids, mask, _ = self._encode(prompts, None)
        if (mask == 0).any():  # right padding would sit between prompt and answer: batch by length
            lengths = mask.sum(1).tolist()
            out: list[str] = [""] * len(prompts)
            for n in sorted(set(lengths)):
                rows = [i for i, l in enumerate(lengths) if l == n]
                for i, text in zip(rows, self.generate(pixels_BCHW[rows], [prompts[i] for i in rows], max_new_tokens)):
                    out[i] = text
            return out
        gen = self.llava.generate(**self.model_inputs(pixels_BCHW, ids, mask), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.eos_id,
                                  pad_token_id=self.pad_id)
        texts = []
        for row in gen[:, ids.shape[1]:].tolist():
            texts.append(self.decode(row[: row.index(self.eos_id)] if self.eos_id in row else row))
        return texts

    def logprobs(self, pixels_BCHW: torch.Tensor, prompts: list[str], targets: list[str]) -> torch.Tensor:
        ids, mask, labels = self._encode(prompts, targets)
        logits = self.llava(**self.model_inputs(pixels_BCHW, ids, mask)).logits
        lp = logits[:, :-1].log_softmax(-1)
        tgt = labels[:, 1:]
        keep = tgt != -100
        tok = lp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
        return (tok * keep).sum(-1)

    def encode_spans(self, prompts: list[str], prefixes: list[str], spans: list[str]) -> SpanInputs:
        full = [f"{p} {s}".strip() for p, s in zip(prefixes, spans)]
        ids, mask, labels = self._encode(prompts, full)
        if any(p.strip() for p in prefixes):
            _, _, lab_prefix = self._encode(prompts, [p.strip() for p in prefixes])
            n_prefix = (lab_prefix != -100).sum(1) - 1  # answer tokens before the span (minus <eos>)
        else:
            n_prefix = torch.zeros(len(prompts), dtype=torch.long, device=ids.device)
        answer = labels != -100
        start = answer.float().argmax(1)  # first answer position
        n_answer = answer.sum(1) - 1  # without <eos>
        pos = torch.arange(ids.shape[1], device=ids.device)[None]
        span = (pos >= (start + n_prefix)[:, None]) & (pos < (start + n_answer)[:, None])
        if (span.sum(1) == 0).any():
            raise ValueError("a span tokenised to nothing")
        return SpanInputs(ids, mask, span, ids == self.image_token_id)

    def forward_tokens(self, pixels_BCHW: torch.Tensor, ids_BL: torch.Tensor, mask_BL: torch.Tensor) -> torch.Tensor:
        return self.llava(**self.model_inputs(pixels_BCHW, ids_BL, mask_BL)).logits

    def model_inputs(self, pixels_BCHW: torch.Tensor, ids_BL: torch.Tensor, mask_BL: torch.Tensor) -> dict[str, Any]:
        """The forward's keyword arguments for images and token ids, on the model's device
        (architectures with extra inputs, :mod:`models.hf_vlm`, add theirs here)."""
        return {"input_ids": ids_BL.to(self.device), "attention_mask": mask_BL.to(self.device),
                "pixel_values": self.preprocess(pixels_BCHW.to(self.device))}

    def unembed(self, hidden_BPD: torch.Tensor) -> torch.Tensor:
        return self.llava.lm_head(self.llava.model.language_model.norm(hidden_BPD))

    def randomized(self, seed: int) -> "LlavaWrapper":
        from transformers import LlavaForConditionalGeneration

        torch.manual_seed(seed)
        fresh = LlavaForConditionalGeneration(self.llava.config)
        return LlavaWrapper(f"{self.name}[randomized:{seed}]", fresh, self.encode, self.decode, self.preprocess,
                            f"random-init:{seed}", self.eos_id, self.pad_id)
