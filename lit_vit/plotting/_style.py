"""What every figure shares: the colormap, resolution, fonts and input copies."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

MAP_CMAP = "inferno"
"""Colormap of every attention map and heatmap."""

DPI = 100
FONT = 8
TITLE_FONT = 10


def as_cpu(x: Tensor | Sequence[float], name: str) -> Tensor:
    """A float32 CPU copy-or-view of ``x`` that is never written to."""
    try:
        return torch.as_tensor(x).detach().float().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}") from err


def check_dim(x: Tensor, dim: int, name: str, shape: str) -> None:
    if x.dim() != dim:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
