"""Small image operations shared by tasks and methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def box_blur(pixels_BCHW: torch.Tensor, k: int) -> torch.Tensor:
    """A ``k × k`` box blur with replicated borders (same size out)."""
    return F.avg_pool2d(F.pad(pixels_BCHW, [k // 2] * 4, mode="replicate"), k, stride=1)
