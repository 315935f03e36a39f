"""A judge the user names (``bench evaluate --judge hf:FOLDER``): a contrastive checkpoint (CLIP, SigLIP)
read zero-shot, for the tasks that score a diffusion model's samples (editing, attribution).

Zero-shot classification as in CLIP (Radford et al., 2021, "Learning Transferable Visual Models From
Natural Language Supervision", §3.1.4): an image is given the label whose prompt has the highest
image-text similarity. :meth:`ContrastiveJudge.__call__` reads the world's four attributes, each
among its own vocabulary (the :class:`bench.model.ImageJudge` contract, so it stands in for zoo-oracle):

- ``shape``: "a photo of a {shape}"; ``colour``: "a photo of a {colour} object";
- ``position``: "a photo of an object at the {position}"; ``background``: "a photo of an object
  on a {background} background".

:meth:`ContrastiveJudge.read_concepts` reads an open vocabulary (the concepts a ``concept_edit`` file
names, TIME / UCE's setting): "a photo of a {concept}" for each label, plus the null prompt "a photo"
(read as ``""``, "none of them"), so an erased concept can be read as absent even when the file names
one concept only; UCE scores erasure with a classifier's top-1 the same way (Gandikota et al., 2024).

Images are resized (bilinear, antialiased) to the judge's input size; embeddings are computed under
``torch.no_grad`` in batches of the judge model's ``batch_size``, on the judge model's device. The
judge's :attr:`~ContrastiveJudge.identity` (``name@weights_hash``) is what cell keys, records and the
tasks' per-process memos carry, so a figure read by one judge is never reused for another.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.model import ContrastiveModel
from bench.kit.world import BACKGROUNDS, COLOURS, POSITIONS, SHAPES

NULL_PROMPT = "a photo"
ATTRIBUTES: dict[str, tuple[str, tuple[str, ...]]] = {
    "shape": ("a photo of a {}", tuple(SHAPES)),
    "colour": ("a photo of a {} object", tuple(COLOURS)),
    "position": ("a photo of an object at the {}", tuple(POSITIONS)),
    "background": ("a photo of an object on a {} background", tuple(BACKGROUNDS)),
}


class ContrastiveJudge:
    """A contrastive model read zero-shot as an image judge (see the module docstring)."""

    def __init__(self, model: ContrastiveModel, name: str, weights_hash: str) -> None:
        self.model = model
        self.name = name
        self.weights_hash = weights_hash
        self._text: dict[tuple[str, ...], torch.Tensor] = {}

    @property
    def identity(self) -> str:
        """``name@weights_hash``: the judge as cell keys, records and memos name it."""
        return f"{self.name}@{self.weights_hash}"

    def _texts(self, prompts: tuple[str, ...]) -> torch.Tensor:
        if prompts not in self._text:  # the label prompts are the same for every image: embedded once
            with torch.no_grad():
                self._text[prompts] = self.model.encode_text(list(prompts))
        return self._text[prompts]

    @torch.no_grad()
    def _images(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        size = self.model.image_size
        device = next(self.model.module.parameters()).device
        out = []
        for i in range(0, len(pixels_BCHW), self.model.batch_size):
            x_BCHW = pixels_BCHW[i : i + self.model.batch_size].to(device=device, dtype=torch.float32)
            if x_BCHW.shape[-1] != size or x_BCHW.shape[-2] != size:
                x_BCHW = F.interpolate(x_BCHW, size=(size, size), mode="bilinear", antialias=True,
                                       align_corners=False)
            out.append(self.model.encode_image(x_BCHW.clamp(0, 1)))
        return torch.cat(out)

    def _argmax(self, image_BD: torch.Tensor, prompts: tuple[str, ...]) -> list[int]:
        sims_BT = self.model.similarity_to(image_BD, self._texts(prompts).to(image_BD.device))
        return [int(j) for j in sims_BT.argmax(-1).tolist()]

    def __call__(self, pixels_BCHW: torch.Tensor) -> dict[str, list[str]]:
        """The world's four attributes of each image, one word each (zero-shot)."""
        image_BD = self._images(pixels_BCHW)
        out = {}
        for attr, (template, words) in ATTRIBUTES.items():
            out[attr] = [words[j] for j in self._argmax(image_BD, tuple(template.format(w) for w in words))]
        return out

    def read_concepts(self, pixels_BCHW: torch.Tensor, labels: tuple[str, ...]) -> list[str]:
        """Per image, the label among ``labels`` it shows ("a photo of a {label}"), or ``""`` when the
        null prompt "a photo" matches best (none of them)."""
        prompts = tuple(f"a photo of a {w}" for w in labels) + (NULL_PROMPT,)
        names = (*labels, "")
        return [names[j] for j in self._argmax(self._images(pixels_BCHW), prompts)]
