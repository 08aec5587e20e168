"""The image grid every mosaic is: cells composed as pixels and pasted into the canvas.

Each grid's cells are composed as pixels (the map through the colormap, alpha-blended
over the gray image), all cells of a column in one batched pass, and the mosaic is
copied into the canvas pixel for pixel; titles and row labels are text around it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from torch import Tensor

from lit_vit.plotting._style import DPI, FONT, MAP_CMAP, TITLE_FONT, as_cpu, check_dim

OVERLAY_ALPHA = 0.5
CELL = 1.25  # inches an image grid's cell is wide, roughly (whole-pixel enlargement)
MAX_COLUMNS = 8  # head_maps_figure wraps after this many cells
_LEFT_PX = 45  # pixels left of an image grid: two-line row labels
_TOP_PX = 60  # pixels above it: the title and two-line column titles
_PAD_PX = 8  # pixels right of and below it
_GAP_PX = 8  # pixels between its cells
_TITLE_PX = 14  # pixels more between rows when later rows have titles too
_FRAME_GRAY = 0.6  # the 1-pixel frame around each cell
_WRONG_COLOR = "tab:red"  # row label of a misclassified image


def checked_images(images: Tensor, name: str = "images") -> Tensor:
    """``(B, C, H, W)`` with C in {1, 3}, as float32 on the CPU."""
    images = as_cpu(images, name)
    check_dim(images, 4, name, "(B, C, H, W)")
    if images.shape[1] not in (1, 3):
        raise ValueError(
            f"{name} must have 1 (gray) or 3 (RGB) channels, got shape {tuple(images.shape)}"
        )
    return images


def checked_names(names: Sequence[str] | None, count: int, name: str) -> list[str] | None:
    if names is None:
        return None
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"{name} must have one entry per image ({count}), got {len(names)}")
    return names


def _gray(images: Tensor) -> Tensor:
    """``(B, C, H, W)`` in [0, 1] -> ``(B, 1, H, W)`` luminance."""
    images = images.clamp(0, 1)
    if images.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images * weights).sum(1, keepdim=True)
    return images


def _scaled(grids: Tensor) -> Tensor:
    """``(..., gh, gw)`` grids, each scaled to [0, 1] by its own range; a constant grid
    (or one with a non-finite range) becomes 0.5."""
    low = grids.amin(dim=(-2, -1), keepdim=True)
    span = grids.amax(dim=(-2, -1), keepdim=True) - low
    flat = ~torch.isfinite(span) | (span <= 1e-12)
    return torch.where(flat, 0.5, (grids - low) / torch.where(flat, 1.0, span))


def _upsample(grids: Tensor, size: tuple[int, int]) -> Tensor:
    """``(..., gh, gw)`` -> ``(..., H, W)``, bilinear with patch centres on pixel centres."""
    flat = grids.reshape(-1, 1, *grids.shape[-2:])
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*grids.shape[:-2], *size)


# --------------------------------------------------------------------------- image grids
#
# An image grid (layer maps, rollout, head maps, resolution) is one RGB mosaic
# pasted into the canvas (``_PastedPixels``), with the titles and row labels
# as text around it: the cells are composed here as pixels (the map through
# the colormap, alpha-blended over the gray image) instead of one Axes per
# cell, which for a 100-cell grid cost seconds in Axes creation, tick set-up
# and drawing (``benchmarks/callback_overhead.py``).


def cell_shape(height: int, width: int) -> tuple[int, int]:
    """Pixel size of a cell showing an ``height x width`` image, about ``CELL * DPI`` wide.

    Small images are enlarged by a whole factor (sharp, even pixels); large
    ones are shrunk to fit.
    """
    scale = CELL * DPI / max(height, width)
    if scale >= 1:
        scale = math.floor(scale)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _fit(pixels: Tensor, shape: tuple[int, int]) -> Tensor:
    """``(..., 3, h, w)`` -> ``(..., 3, *shape)``: blocks when enlarging, area average when
    shrinking."""
    if tuple(pixels.shape[-2:]) == shape:
        return pixels
    shrinking = shape[0] < pixels.shape[-2] or shape[1] < pixels.shape[-1]
    mode = "area" if shrinking else "nearest-exact"
    flat = pixels.reshape(-1, 3, *pixels.shape[-2:])
    return F.interpolate(flat, size=shape, mode=mode).reshape(*pixels.shape[:-2], *shape)


@functools.cache
def _map_colormap() -> Colormap:
    """``MAP_CMAP``, looked up once (the registry hands out a fresh copy per lookup)."""
    return colormaps[MAP_CMAP]


def _colorize(values: Tensor) -> Tensor:
    """``(..., h, w)`` in [0, 1] -> ``(..., 3, h, w)`` RGB through ``MAP_CMAP``."""
    rgba = _map_colormap()(values.numpy())  # (..., h, w, 4), one look-up for all cells
    return torch.from_numpy(rgba[..., :3]).float().movedim(-1, -3)


def image_cells(images: Tensor, shape: tuple[int, int]) -> Tensor:
    """``(B, C, H, W)`` in [0, 1] -> ``(B, 3, *shape)`` cells: gray for one channel, RGB for
    three."""
    return _fit(images.clamp(0, 1).expand(-1, 3, -1, -1), shape)


def map_cells(grids: Tensor, shape: tuple[int, int]) -> Tensor:
    """``(B, gh, gw)`` -> ``(B, 3, *shape)`` cells: each map alone, scaled to its own range."""
    return _fit(_colorize(_scaled(grids)), shape)


def overlay_cells(images: Tensor, grids: Tensor, shape: tuple[int, int]) -> Tensor:
    """``(B, C, H, W)`` images and ``(K, B, gh, gw)`` maps -> ``(K, B, 3, *shape)`` cells.

    Each map is upsampled bilinearly to its image, coloured and blended with
    ``OVERLAY_ALPHA`` over the image's gray; all ``K * B`` cells in one pass.
    """
    heat = _colorize(_upsample(_scaled(grids), tuple(images.shape[-2:])))  # (K, B, 3, H, W)
    blended = (1 - OVERLAY_ALPHA) * _gray(images) + OVERLAY_ALPHA * heat
    return _fit(blended, shape)


def row_label(true: str | None, predicted: str | None) -> tuple[str, str] | None:
    """Text and colour of a row label; red when the prediction is wrong."""
    if true is None and predicted is None:
        return None
    if predicted is None:
        return true, "black"
    lines = ([f"true: {true}"] if true is not None else []) + [f"pred: {predicted}"]
    wrong = true is not None and predicted != true
    return "\n".join(lines), _WRONG_COLOR if wrong else "black"


class _PastedPixels(Artist):
    """``(3, H, W)`` RGB pixels in [0, 1] copied into the canvas as they are, their bottom-left
    corner at figure pixel ``(x, y)``; :attr:`pixels` holds them as ``(H, W, 3)`` uint8.

    ``figimage`` would colour-map, mask and resample even at one image pixel
    per canvas pixel (0.9 s for a 4,500-pixel-wide grid against 0.05 s here).
    """

    def __init__(self, pixels: Tensor, x: int, y: int) -> None:
        super().__init__()
        self.set_zorder(-1)  # under the titles and labels
        self.pixels = (pixels.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()  # (H, W, 3)
        opaque = np.full((*self.pixels.shape[:2], 1), 255, np.uint8)
        # RGBA rows bottom-up, as the renderer's pixel y grows upwards.
        self._rgba = np.ascontiguousarray(np.concatenate([self.pixels, opaque], axis=2)[::-1])
        self._x, self._y = x, y

    def draw(self, renderer) -> None:
        gc = renderer.new_gc()
        renderer.draw_image(gc, self._x, self._y, self._rgba)
        gc.restore()


def mosaic_figure(
    cells: Sequence[Sequence[Tensor]],
    suptitle: str,
    titles: Mapping[tuple[int, int], str],
    row_labels: Sequence[tuple[str, str] | None] = (),
) -> Figure:
    """One figure of a grid of equally sized image cells, drawn as one image.

    Args:
        cells: Rows of ``(3, ch, cw)`` RGB pixels in [0, 1], all of one size;
            a shorter row leaves its last cells empty.
        suptitle: Title of the figure.
        titles: ``(row, column)`` -> the title above that cell.
        row_labels: Per row, ``(text, colour)`` written left of it, or ``None``.
    """
    rows, columns = len(cells), max(len(row) for row in cells)
    cell_h, cell_w = cells[0][0].shape[-2:]
    row_gap = _GAP_PX + (_TITLE_PX if any(row > 0 for row, _ in titles) else 0)
    # Top-left pixel of each cell; a 1-pixel margin around all for the frames.
    tops = [1 + row * (cell_h + row_gap) for row in range(rows)]
    lefts = [1 + column * (cell_w + _GAP_PX) for column in range(columns)]
    mosaic = torch.ones(3, tops[-1] + cell_h + 1, lefts[-1] + cell_w + 1)  # (3, H, W)
    for row_cells, top in zip(cells, tops, strict=True):
        for pixels, left in zip(row_cells, lefts, strict=False):
            mosaic[:, top - 1 : top + cell_h + 1, left - 1 : left + cell_w + 1] = _FRAME_GRAY
            mosaic[:, top : top + cell_h, left : left + cell_w] = pixels

    height_px = _TOP_PX + mosaic.shape[1] + _PAD_PX
    width_px = _LEFT_PX + mosaic.shape[2] + _PAD_PX
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    # One image pixel per figure pixel: the Axes is exactly the mosaic's size.
    left, bottom, width, height = _LEFT_PX, _PAD_PX, mosaic.shape[2], mosaic.shape[1]
    ax = fig.add_axes((left / width_px, bottom / height_px, width / width_px, height / height_px))
    # Pasted pixel for pixel; the Axes only gives the text the image's pixel coordinates.
    fig.add_artist(_PastedPixels(mosaic, left, bottom))
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    # Text in the image's pixel coordinates (pixel centres at integers, y down).
    for (row, column), title in titles.items():
        x = lefts[column] + (cell_w - 1) / 2
        ax.text(x, tops[row] - 3, title, ha="center", va="bottom", fontsize=FONT)
    for row, label in enumerate(row_labels):
        if label is not None:
            text, color = label
            y = tops[row] + (cell_h - 1) / 2
            ax.text(-4, y, text, rotation=90, ha="right", va="center", fontsize=FONT, color=color)
    fig.suptitle(suptitle, fontsize=TITLE_FONT, y=1 - 4 / height_px, va="top", wrap=True)
    return fig


# --------------------------------------------------------------------------- map grids
