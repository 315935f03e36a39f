"""What a task hands a method, and what the method hands back, per capability.

These types are the whole interface between tasks and methods: tasks build the
requests, methods answer them; neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

CAPABILITIES: tuple[str, ...] = ("localize", "detect_hallucination", "edit", "debias", "attribute")

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class AttributionRequest:
    """Explain a scalar target per example with a map over the input image.

    ``score(pixels_NCHW, example_idx_N) -> score_N`` is differentiable in the
    pixels; row ``n`` is scored with the target of example ``example_idx_N[n]``,
    so a method may evaluate many perturbed copies of any example in one batch.
    ``grid`` is the patch grid the task scores on; methods may return maps at
    pixel resolution ``[B, H, W]`` or patch resolution ``[B, *grid]``.
    """

    pixels_BCHW: torch.Tensor
    score: ScoreFn
    grid: tuple[int, int]
    batch_size: int = 64

    @property
    def n(self) -> int:
        return int(self.pixels_BCHW.shape[0])

    def chunks(self, requires_grad: bool = False) -> "Iterator[tuple[torch.Tensor, torch.Tensor]]":
        """``(pixels_nCHW, example_idx_n)`` in chunks of ``batch_size`` examples (fresh leaf tensors)."""
        bs = max(1, int(self.batch_size))
        for i in range(0, self.n, bs):
            x = self.pixels_BCHW[i : i + bs].detach().clone().requires_grad_(requires_grad)
            yield x, torch.arange(i, i + x.shape[0], device=x.device)

    def score_all(self, pixels_NCHW: torch.Tensor, example_idx_N: torch.Tensor) -> torch.Tensor:
        """``score`` in chunks of ``batch_size`` rows (no gradient)."""
        outs = []
        with torch.no_grad():
            for i in range(0, pixels_NCHW.shape[0], self.batch_size):
                outs.append(self.score(pixels_NCHW[i : i + self.batch_size], example_idx_N[i : i + self.batch_size]))
        return torch.cat(outs) if outs else torch.zeros(0)
