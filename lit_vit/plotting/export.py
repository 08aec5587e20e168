"""Render a figure once, for TensorBoard and for a PNG file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image as PILImage
from torch import Tensor


def figure_to_image(fig: Figure) -> Tensor:
    """Render ``fig`` to a ``(3, H, W)`` uint8 tensor for ``add_image(..., dataformats="CHW")``.

    Rendered with the Agg canvas at the figure's dpi; the alpha channel is dropped.
    """
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).contiguous()


def save_image(image: Tensor, path: str | Path) -> Path:
    """Write a ``(3, H, W)`` uint8 image (a rendered figure) to ``path`` as PNG.

    With :func:`figure_to_image` this renders a figure once for both
    TensorBoard and the file. Parent directories are created; ``.png`` is
    added to a path without a suffix. Returns the path written.
    """
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(image.permute(1, 2, 0).numpy()).save(path, format="PNG")
    return path
