"""Figures of attention maps and attention measures, for TensorBoard and PNG files.

Every function takes torch tensors (CPU or GPU, any float dtype; they are
copied with ``.detach().float().cpu()`` and never modified) and returns a
:class:`matplotlib.figure.Figure` built with matplotlib's object API only:
``matplotlib.pyplot`` is never imported, so no global figure registry exists,
nothing has to be closed and no backend has to be chosen (a figure no longer
referenced is garbage collected). Render a figure once
with :func:`figure_to_image`, then log the pixels with
``logger.experiment.add_image(tag, image, step, dataformats="CHW")`` and write
them with :func:`save_image` (or call ``fig.savefig`` for other formats).

Images are raw pixels in [0, 1], ``(B, C, H, W)`` with ``C = 1`` (shown gray)
or ``C = 3`` (RGB). Maps are patch grids ``(gh, gw)``, upsampled bilinearly to
the image size for overlays (any grid on any image size: a 7x10 grid on a
28x40 image, or a grid that does not divide the image). Overlays draw the map
with the ``inferno`` colormap at alpha 0.5 over the gray image; each map is
scaled to its own minimum and maximum, so colours show where a map is high
relative to itself, not its absolute value. The quantities are defined in
``docs/attention.md``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from PIL import Image as PILImage
from torch import Tensor

__all__ = [
    "MAP_CMAP",
    "distance_scatter_figure",
    "faithfulness_figure",
    "figure_to_image",
    "head_maps_figure",
    "layer_bar_figure",
    "layer_head_heatmap_figure",
    "layer_maps_figure",
    "metric_by_class_figure",
    "resolution_figure",
    "rollout_figure",
    "save_image",
]

MAP_CMAP = "inferno"
"""Colormap of every attention map and heatmap."""

OVERLAY_ALPHA = 0.5
DPI = 100
CELL = 1.25  # inches an image grid's cell is wide, roughly (whole-pixel enlargement)
MAX_COLUMNS = 8  # head_maps_figure wraps after this many cells
_LEFT_PX = 45  # pixels left of an image grid: two-line row labels
_TOP_PX = 60  # pixels above it: the title and two-line column titles
_PAD_PX = 8  # pixels right of and below it
_GAP_PX = 8  # pixels between its cells
_TITLE_PX = 14  # pixels more between rows when later rows have titles too
_FRAME_GRAY = 0.6  # the 1-pixel frame around each cell
_FONT = 8
_TITLE_FONT = 10
_WRONG_COLOR = "tab:red"  # row label of a misclassified image


# --------------------------------------------------------------------------- inputs


def _cpu(x: Tensor | Sequence[float], name: str) -> Tensor:
    """A float32 CPU copy-or-view of ``x`` that is never written to."""
    try:
        return torch.as_tensor(x).detach().float().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}") from err


def _check_dim(x: Tensor, dim: int, name: str, shape: str) -> None:
    if x.dim() != dim:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")


def _images(images: Tensor, name: str = "images") -> Tensor:
    """``(B, C, H, W)`` with C in {1, 3}, as float32 on the CPU."""
    images = _cpu(images, name)
    _check_dim(images, 4, name, "(B, C, H, W)")
    if images.shape[1] not in (1, 3):
        raise ValueError(
            f"{name} must have 1 (gray) or 3 (RGB) channels, got shape {tuple(images.shape)}"
        )
    return images


def _names(names: Sequence[str] | None, count: int, name: str) -> list[str] | None:
    if names is None:
        return None
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"{name} must have one entry per image ({count}), got {len(names)}")
    return names


def _gray(image: Tensor) -> np.ndarray:
    """``(C, H, W)`` in [0, 1] -> ``(H, W)`` luminance."""
    image = image.clamp(0, 1)
    if image.shape[0] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (image * weights).sum(0).numpy()
    return image[0].numpy()


def _scaled(grid: Tensor) -> Tensor:
    """``grid`` scaled to [0, 1] by its own range; a constant grid becomes 0.5."""
    low, high = grid.min(), grid.max()
    if not torch.isfinite(high - low) or high - low <= 1e-12:
        return torch.full_like(grid, 0.5)
    return (grid - low) / (high - low)


def _upsample(grid: Tensor, size: tuple[int, int]) -> Tensor:
    """``(gh, gw)`` -> ``(H, W)``, bilinear with patch centres on pixel centres."""
    out = F.interpolate(grid[None, None], size=size, mode="bilinear", align_corners=False)
    return out[0, 0]


# --------------------------------------------------------------------------- image grids
#
# An image grid (layer maps, rollout, head maps, resolution) is one RGB mosaic
# drawn by a single ``imshow`` on a single Axes, with the titles and row labels
# as text around it: the cells are composed here as pixels (the map through
# the colormap, alpha-blended over the gray image) instead of one Axes per
# cell, which for a 100-cell grid cost seconds in Axes creation, tick set-up
# and drawing (``benchmarks/callback_overhead.py``).


def _cell_shape(height: int, width: int) -> tuple[int, int]:
    """Pixel size of a cell showing an ``height x width`` image, about ``CELL * DPI`` wide.

    Small images are enlarged by a whole factor (sharp, even pixels); large
    ones are shrunk to fit.
    """
    scale = CELL * DPI / max(height, width)
    if scale >= 1:
        scale = math.floor(scale)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _fit(pixels: Tensor, shape: tuple[int, int]) -> Tensor:
    """``(3, h, w)`` -> ``(3, *shape)``: blocks when enlarging, area average when shrinking."""
    if tuple(pixels.shape[-2:]) == shape:
        return pixels
    shrinking = shape[0] < pixels.shape[-2] or shape[1] < pixels.shape[-1]
    mode = "area" if shrinking else "nearest-exact"
    return F.interpolate(pixels[None], size=shape, mode=mode)[0]


@functools.cache
def _map_colormap() -> Colormap:
    """``MAP_CMAP``, looked up once (the registry hands out a fresh copy per lookup)."""
    return colormaps[MAP_CMAP]


def _colorize(values: Tensor) -> Tensor:
    """``(h, w)`` in [0, 1] -> ``(3, h, w)`` RGB through ``MAP_CMAP``."""
    rgba = _map_colormap()(values.numpy())
    return torch.from_numpy(rgba[..., :3]).float().permute(2, 0, 1)


def _image_pixels(image: Tensor) -> Tensor:
    """``(C, H, W)`` in [0, 1] -> ``(3, H, W)``: gray for one channel, RGB for three."""
    return image.clamp(0, 1).expand(3, -1, -1)


def _map_pixels(grid: Tensor) -> Tensor:
    """``(gh, gw)`` -> ``(3, gh, gw)``: the map alone, scaled to its own range."""
    return _colorize(_scaled(grid))


def _overlay_pixels(image: Tensor, grid: Tensor) -> Tensor:
    """``(C, H, W)`` image and ``(gh, gw)`` map -> ``(3, H, W)``.

    The map is upsampled bilinearly to the image, coloured and blended with
    ``OVERLAY_ALPHA`` over the image's gray.
    """
    size = (image.shape[-2], image.shape[-1])
    gray = torch.from_numpy(_gray(image)).expand(3, -1, -1)
    heat = _colorize(_upsample(_scaled(grid), size))
    return (1 - OVERLAY_ALPHA) * gray + OVERLAY_ALPHA * heat


def _row_label(true: str | None, predicted: str | None) -> tuple[str, str] | None:
    """Text and colour of a row label; red when the prediction is wrong."""
    if true is None and predicted is None:
        return None
    if predicted is None:
        return true, "black"
    lines = ([f"true: {true}"] if true is not None else []) + [f"pred: {predicted}"]
    wrong = true is not None and predicted != true
    return "\n".join(lines), _WRONG_COLOR if wrong else "black"


def _mosaic_figure(
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
    pixels = (mosaic.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    ax.imshow(pixels, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    # Text in the image's pixel coordinates (pixel centres at integers, y down).
    for (row, column), title in titles.items():
        x = lefts[column] + (cell_w - 1) / 2
        ax.text(x, tops[row] - 3, title, ha="center", va="bottom", fontsize=_FONT)
    for row, label in enumerate(row_labels):
        if label is not None:
            text, color = label
            y = tops[row] + (cell_h - 1) / 2
            ax.text(-4, y, text, rotation=90, ha="right", va="center", fontsize=_FONT, color=color)
    fig.suptitle(suptitle, fontsize=_TITLE_FONT, y=1 - 4 / height_px, va="top", wrap=True)
    return fig


# --------------------------------------------------------------------------- map grids


def layer_maps_figure(
    images: Tensor,
    maps: Tensor,
    class_names: Sequence[str] | None = None,
    predicted_names: Sequence[str] | None = None,
) -> Figure:
    """Class-token attention of every layer, one row per image.

    Each row: the image, then the overlay of each layer's map. The row label is
    the true class, and the predicted one (in red when wrong) if given.

    Args:
        images: ``(B, C, H, W)`` raw pixels in [0, 1].
        maps: ``(L, B, gh, gw)`` attention of the class token over the patches
            of each layer, heads averaged.
        class_names: One true class name per image.
        predicted_names: One predicted class name per image.
    """
    images = _images(images)
    maps = _cpu(maps, "maps")
    _check_dim(maps, 4, "maps", "(L, B, gh, gw)")
    batch = images.shape[0]
    if maps.shape[1] != batch:
        raise ValueError(
            f"maps must have shape (L, B, gh, gw) with B = {batch} images, got {tuple(maps.shape)}"
        )
    class_names = _names(class_names, batch, "class_names")
    predicted_names = _names(predicted_names, batch, "predicted_names")
    layers = maps.shape[0]

    shape = _cell_shape(*images.shape[-2:])
    cells = [
        [_fit(_image_pixels(images[row]), shape)]
        + [_fit(_overlay_pixels(images[row], maps[layer, row]), shape) for layer in range(layers)]
        for row in range(batch)
    ]
    titles = {(0, 0): "image"} | {(0, 1 + layer): f"layer {layer}" for layer in range(layers)}
    labels = [
        _row_label(
            class_names[row] if class_names else None,
            predicted_names[row] if predicted_names else None,
        )
        for row in range(batch)
    ]
    return _mosaic_figure(
        cells,
        "Class-token attention per layer (heads averaged, each map scaled to its range)",
        titles,
        labels,
    )


def head_maps_figure(
    image: Tensor, maps: Tensor, layer: int, class_name: str | None = None
) -> Figure:
    """Class-token attention of each head of one layer, on one image.

    The image, then one overlay per head, wrapped after ``MAX_COLUMNS`` cells.

    Args:
        image: ``(C, H, W)`` raw pixels in [0, 1].
        maps: ``(H, gh, gw)`` attention of the class token of each head.
        layer: 0-based index of the layer, for the title.
        class_name: Class of the image, for the title.
    """
    image = _images(_cpu(image, "image")[None], "image")[0]
    maps = _cpu(maps, "maps")
    _check_dim(maps, 3, "maps", "(H, gh, gw)")
    heads = maps.shape[0]
    columns = min(1 + heads, MAX_COLUMNS)

    shape = _cell_shape(*image.shape[-2:])
    sequence = [_fit(_image_pixels(image), shape)]
    sequence += [_fit(_overlay_pixels(image, maps[head]), shape) for head in range(heads)]
    names = ["image" if class_name is None else class_name]
    names += [f"head {head}" for head in range(heads)]
    cells = [sequence[start : start + columns] for start in range(0, len(sequence), columns)]
    titles = {divmod(index, columns): name for index, name in enumerate(names)}

    title = f"Layer {layer}: class-token attention per head (each map scaled to its range)"
    if class_name is not None:
        title = f"{class_name}: " + title[0].lower() + title[1:]
    return _mosaic_figure(cells, title, titles)


def rollout_figure(
    images: Tensor, maps: Mapping[str, Tensor], class_names: Sequence[str] | None = None
) -> Figure:
    """Several saliency maps of the same images, alone and as overlays.

    Rows are images; columns: the image, then for each map the map alone (one
    block per patch) and its overlay on the image.

    Args:
        images: ``(B, C, H, W)`` raw pixels in [0, 1].
        maps: Name -> ``(B, gh, gw)`` map, e.g. ``{"rollout": ..., "grad rollout
            (pred)": ...}``; the names become column titles.
        class_names: One class name per image (row labels).
    """
    images = _images(images)
    batch = images.shape[0]
    if not maps:
        raise ValueError("maps must name at least one map, got an empty mapping")
    grids = {}
    for name, grid in maps.items():
        grid = _cpu(grid, f"maps[{name!r}]")
        if grid.dim() != 3 or grid.shape[0] != batch:
            raise ValueError(
                f"maps[{name!r}] must have shape (B, gh, gw) with B = {batch} images, "
                f"got {tuple(grid.shape)}"
            )
        grids[name] = grid
    class_names = _names(class_names, batch, "class_names")

    shape = _cell_shape(*images.shape[-2:])
    cells = []
    for row in range(batch):
        cells.append([_fit(_image_pixels(images[row]), shape)])
        for grid in grids.values():
            cells[-1].append(_fit(_map_pixels(grid[row]), shape))
            cells[-1].append(_fit(_overlay_pixels(images[row], grid[row]), shape))
    titles = {(0, 0): "image"}
    for index, name in enumerate(grids):
        titles[0, 1 + 2 * index] = name
        titles[0, 2 + 2 * index] = f"{name}\non image"
    labels = [_row_label(class_names[row] if class_names else None, None) for row in range(batch)]
    return _mosaic_figure(cells, "Saliency maps (each scaled to its range)", titles, labels)


def resolution_figure(
    images_by_size: Mapping[str, Tensor],
    maps_by_size: Mapping[str, Tensor],
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Rollout maps of the same images at several input sizes.

    Rows are images, columns sizes (in the order of ``images_by_size``); each
    cell is that size's map over that size's image, titled e.g. ``"20x20 (5x5 grid)"``,
    every size shown at the cell size of the first.

    Args:
        images_by_size: Size label -> ``(B, C, h, w)`` raw pixels in [0, 1].
        maps_by_size: Size label -> ``(B, gh, gw)`` rollout maps; same keys.
        class_names: One class name per image (row labels).
    """
    if not images_by_size:
        raise ValueError("images_by_size must hold at least one size, got an empty mapping")
    if set(images_by_size) != set(maps_by_size):
        raise ValueError(
            "images_by_size and maps_by_size must have the same keys, got "
            f"{sorted(images_by_size)} and {sorted(maps_by_size)}"
        )
    sizes = list(images_by_size)
    images = {s: _images(images_by_size[s], f"images_by_size[{s!r}]") for s in sizes}
    batch = images[sizes[0]].shape[0]
    grids = {}
    for size in sizes:
        grid = _cpu(maps_by_size[size], f"maps_by_size[{size!r}]")
        if images[size].shape[0] != batch or grid.dim() != 3 or grid.shape[0] != batch:
            raise ValueError(
                f"size {size!r}: images must be (B, C, h, w) and maps (B, gh, gw) with "
                f"B = {batch}, got {tuple(images[size].shape)} and {tuple(grid.shape)}"
            )
        grids[size] = grid
    class_names = _names(class_names, batch, "class_names")

    shape = _cell_shape(*images[sizes[0]].shape[-2:])
    cells = [
        [_fit(_overlay_pixels(images[size][row], grids[size][row]), shape) for size in sizes]
        for row in range(batch)
    ]
    titles = {}
    for column, size in enumerate(sizes):
        gh, gw = grids[size].shape[-2:]
        titles[0, column] = f"{size} ({gh}x{gw} grid)"
    labels = [_row_label(class_names[row] if class_names else None, None) for row in range(batch)]
    return _mosaic_figure(
        cells, "Attention rollout by input size (each map scaled to its range)", titles, labels
    )


# --------------------------------------------------------------------------- measures


def layer_bar_figure(values: Tensor, title: str, ylabel: str) -> Figure:
    """One bar per layer with its value written on top (3 decimals).

    Args:
        values: ``(L,)`` one value per layer, e.g. head diversity in [0, 1].
        title: Figure title.
        ylabel: Label of the value axis.
    """
    values = _cpu(values, "values")
    _check_dim(values, 1, "values", "(L,)")
    layers = values.shape[0]
    fig = Figure(figsize=(max(4.0, 0.5 * layers + 1.5), 3.0), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(range(layers), values.numpy(), color="#5b3a8c", width=0.7)
    ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2, rotation=90 if layers > 12 else 0)
    finite = values[torch.isfinite(values)]
    high = max(float(finite.max()), 0.0) if finite.numel() else 1.0
    low = min(float(finite.min()), 0.0) if finite.numel() else 0.0
    span = (high - low) or 1.0
    ax.set_ylim(
        low - (0.15 * span if low < 0 else 0.0), high + (0.3 if layers > 12 else 0.15) * span
    )
    ax.set_xticks(range(layers))
    ax.set_xlabel("layer", fontsize=_FONT + 1)
    ax.set_ylabel(ylabel, fontsize=_FONT + 1)
    ax.set_title(title, fontsize=_TITLE_FONT)
    ax.tick_params(labelsize=_FONT)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _head_colors(heads: int) -> list:
    """Distinct colours for ``heads`` categories (tab10 / tab20, else viridis samples)."""
    if heads <= 10:
        return [colormaps["tab10"](h) for h in range(heads)]
    if heads <= 20:
        return [colormaps["tab20"](h) for h in range(heads)]
    return [colormaps["viridis"](h / (heads - 1)) for h in range(heads)]


def distance_scatter_figure(
    distance: Tensor,
    ylabel: str = "mean attention distance (px)",
    reference: float | None = None,
) -> Figure:
    """Attention distance of every head against depth (Dosovitskiy et al., 2020, Fig. 7).

    One dot per head (colour = head index, slightly offset sideways so heads at
    the same value stay visible), the per-layer mean over heads as a line, and
    an optional dashed reference level labelled "uniform".

    Args:
        distance: ``(L, H)`` distance of each head of each layer.
        ylabel: Label of the distance axis (and, without its unit, the title).
        reference: Value drawn as a dashed line, e.g. 1.0 for relative distance.
    """
    distance = _cpu(distance, "distance")
    _check_dim(distance, 2, "distance", "(L, H)")
    layers, heads = distance.shape
    fig = Figure(figsize=(max(4.5, 0.35 * layers + 3.0), 3.4), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(layers, dtype=float)
    spread = min(0.3, 0.06 * heads)
    offsets = np.linspace(-spread, spread, heads) if heads > 1 else np.zeros(1)
    for head, color in enumerate(_head_colors(heads)):
        ax.scatter(
            x + offsets[head],
            distance[:, head].numpy(),
            s=18,
            color=color,
            edgecolors="none",
            label=f"head {head}",
            zorder=3,
        )
    ax.plot(x, distance.mean(1).numpy(), color="0.2", lw=1.2, label="mean over heads", zorder=2)
    if reference is not None:
        ax.axhline(reference, color="0.5", ls="--", lw=1, label="uniform", zorder=1)
    top = float(distance[torch.isfinite(distance)].max()) if distance.numel() else 1.0
    if reference is not None:
        top = max(top, float(reference))
    ax.set_ylim(0, 1.08 * top if top > 0 else 1.0)
    ax.set_xlim(-0.6, layers - 0.4)
    ax.set_xticks(range(layers))
    ax.set_xlabel("layer (network depth)", fontsize=_FONT + 1)
    ax.set_ylabel(ylabel, fontsize=_FONT + 1)
    quantity = re.sub(r"\s*\([^)]*\)\s*$", "", ylabel) or "distance"
    ax.set_title(quantity[0].upper() + quantity[1:] + " per head", fontsize=_TITLE_FONT)
    ax.tick_params(labelsize=_FONT)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
        ncols=1 if heads <= 12 else 2,
        handletextpad=0.2,
        borderaxespad=0,
    )
    return fig


def layer_head_heatmap_figure(
    values: Tensor,
    title: str,
    cbar_label: str,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Figure:
    """A layers x heads heatmap, with each value written in its cell when there are <= 200.

    Args:
        values: ``(L, H)`` one value per head of each layer (rows are layers).
        title: Figure title.
        cbar_label: Label of the colour bar.
        vmin: Bottom of the colour scale (default: the smallest value).
        vmax: Top of the colour scale (default: the largest value).
    """
    values = _cpu(values, "values")
    _check_dim(values, 2, "values", "(L, H)")
    layers, heads = values.shape
    fig = Figure(
        figsize=(max(3.5, 0.5 * heads + 2.0), max(2.5, 0.32 * layers + 1.2)),
        dpi=DPI,
        layout="constrained",
    )
    ax = fig.add_subplot()
    image = ax.imshow(
        values.numpy(), cmap=MAP_CMAP, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest"
    )
    colorbar = fig.colorbar(image, ax=ax, pad=0.02, aspect=30)
    colorbar.set_label(cbar_label, fontsize=_FONT + 1)
    colorbar.ax.tick_params(labelsize=_FONT)
    if layers * heads <= 200:
        low, high = image.get_clim()
        for layer in range(layers):
            for head in range(heads):
                value = float(values[layer, head])
                level = (value - low) / (high - low) if high > low else 0.5
                ax.text(
                    head,
                    layer,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7 if heads <= 12 else 6,
                    color="black" if level > 0.6 else "white",
                )
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_xlabel("head", fontsize=_FONT + 1)
    ax.set_ylabel("layer", fontsize=_FONT + 1)
    ax.set_title(title, fontsize=_TITLE_FONT)
    ax.tick_params(labelsize=_FONT, length=0)
    return fig


def faithfulness_figure(fractions: Tensor, curves: Mapping[str, Tensor]) -> Figure:
    """Deletion and insertion curves, mean over images, with the AUC in the legend.

    Curves are sorted into the deletion or the insertion panel by their name
    (``"deletion: rollout"``, ``"insertion: random"``); the part after ``":"``
    is the legend entry, with one colour per method in both panels and random
    orders dashed gray. A panel is drawn only if some curve belongs to it.

    Args:
        fractions: ``(T + 1,)`` fraction of patches deleted / inserted.
        curves: Name -> ``(B, T + 1)`` probability of the class predicted on
            the clean image, per image and fraction.
    """
    fractions = _cpu(fractions, "fractions")
    _check_dim(fractions, 1, "fractions", "(T + 1,)")
    panels: dict[str, list[tuple[str, Tensor]]] = {"deletion": [], "insertion": []}
    for name, curve in curves.items():
        curve = _cpu(curve, f"curves[{name!r}]")
        if curve.dim() == 1:
            curve = curve[None]
        if curve.dim() != 2 or curve.shape[1] != fractions.shape[0]:
            raise ValueError(
                f"curves[{name!r}] must have shape (B, T + 1) with T + 1 = {fractions.shape[0]}, "
                f"got {tuple(curve.shape)}"
            )
        kind = "insertion" if "insertion" in name.lower() else "deletion"
        if kind not in name.lower():
            raise ValueError(f"curves[{name!r}]: the name must contain 'deletion' or 'insertion'")
        panels[kind].append((name, curve))
    panels = {kind: entries for kind, entries in panels.items() if entries}
    if not panels:
        raise ValueError("curves must hold at least one curve, got an empty mapping")

    methods: list[str] = []
    for entries in panels.values():
        for name, _ in entries:
            method = _method(name)
            if method not in methods and "random" not in method.lower():
                methods.append(method)
    palette = _head_colors(max(len(methods), 1))
    hint = {"deletion": "lower AUC is better", "insertion": "higher AUC is better"}

    fig = Figure(figsize=(4.0 * len(panels) + 0.5, 3.3), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    x = fractions.numpy()
    for ax, (kind, entries) in zip(axes, panels.items(), strict=True):
        for name, curve in entries:
            mean = curve.mean(0)
            auc = float(torch.trapezoid(mean, fractions))
            method = _method(name)
            if "random" in method.lower():
                style = {"color": "0.5", "ls": "--"}
            else:
                style = {"color": palette[methods.index(method)], "ls": "-"}
            ax.plot(x, mean.numpy(), lw=1.5, label=f"{method} (AUC {auc:.3f})", **style)
        ax.set_title(f"{kind} ({hint[kind]})", fontsize=_TITLE_FONT)
        ax.set_xlabel("fraction of patches", fontsize=_FONT + 1)
        ax.set_xlim(float(x.min()), float(x.max()))
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=_FONT)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(fontsize=7, frameon=False, loc="best")
    axes[0].set_ylabel("probability of predicted class", fontsize=_FONT + 1)
    batch = next(iter(panels.values()))[0][1].shape[0]
    fig.suptitle(f"Deletion / insertion, mean over {batch} images", fontsize=_TITLE_FONT)
    return fig


def _method(name: str) -> str:
    """``"deletion: rollout"`` -> ``"rollout"``; a name without ``":"`` is kept."""
    return name.split(":", 1)[1].strip() if ":" in name else name


def metric_by_class_figure(
    values: Tensor,
    labels: Tensor,
    class_names: Sequence[str] | None,
    title: str,
    ylabel: str,
) -> Figure:
    """Mean of a per-image measure for each class, with the image count per class.

    NaN values (e.g. lift of an image without foreground) are left out of the
    mean and the count; a class without images gets no bar and ``n=0``. The
    dashed line is the mean over all images.

    Args:
        values: ``(B,)`` one value per image.
        labels: ``(B,)`` integer class of each image.
        class_names: Name of each class, indexed by label (``None``: the index).
        title: Figure title.
        ylabel: Label of the value axis.
    """
    values = _cpu(values, "values")
    labels = torch.as_tensor(labels).detach().cpu()
    _check_dim(values, 1, "values", "(B,)")
    if labels.shape != values.shape or labels.is_floating_point():
        raise ValueError(
            f"labels must be integers of shape {tuple(values.shape)}, got "
            f"{tuple(labels.shape)} {labels.dtype}"
        )
    labels = labels.long()
    if class_names is not None:
        classes = len(class_names)
    else:
        classes = int(labels.max()) + 1 if labels.numel() else 0
    if labels.numel() and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(
            f"labels must lie in [0, {classes}) (one per class name), "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    names = (
        [str(n) for n in class_names]
        if class_names is not None
        else [str(c) for c in range(classes)]
    )

    valid = torch.isfinite(values)
    means, counts = [], []
    for c in range(classes):
        chosen = values[(labels == c) & valid]
        counts.append(chosen.numel())
        means.append(float(chosen.mean()) if chosen.numel() else float("nan"))

    fig = Figure(figsize=(max(4.0, 0.55 * classes + 1.5), 3.4), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    present = [c for c in range(classes) if counts[c]]
    bars = ax.bar(present, [means[c] for c in present], color="#5b3a8c", width=0.7)
    ax.bar_label(
        bars,
        labels=[f"{means[c]:.2f}\nn={counts[c]}" for c in present],
        fontsize=7,
        padding=2,
    )
    for c in range(classes):
        if not counts[c]:
            ax.text(c, 0, "n=0", ha="center", va="bottom", fontsize=7, color="0.4")
    if valid.any():
        ax.axhline(
            float(values[valid].mean()), color="0.4", ls="--", lw=1, label="mean of all images"
        )
        ax.legend(fontsize=7, frameon=False, loc="lower right")
    finite = [means[c] for c in present]
    high = max(finite + [0.0])
    low = min(finite + [0.0])
    span = (high - low) or 1.0
    ax.set_ylim(low - (0.1 * span if low < 0 else 0.0), high + 0.25 * span)
    ax.set_xticks(range(classes))
    long_names = max((len(n) for n in names), default=0) > 6
    ax.set_xticklabels(
        names, rotation=35 if long_names else 0, ha="right" if long_names else "center"
    )
    ax.set_ylabel(ylabel, fontsize=_FONT + 1)
    ax.set_title(title, fontsize=_TITLE_FONT)
    ax.tick_params(labelsize=_FONT)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


# --------------------------------------------------------------------------- output


def per_image_metrics_figure(
    values,
    true_names: Sequence[str],
    predicted_names: Sequence[str],
    uniform: dict[str, float],
    k: float,
    m: float,
) -> Figure:
    """Focus, coverage and lift of each image as horizontal bars, uniform values dashed.

    Args:
        values: Per-image ``focus``, ``coverage`` and ``lift`` (``(B,)`` each;
            NaN lift is drawn as an empty bar labelled ``nan``).
        true_names, predicted_names: Class names per image, for the labels.
        uniform: ``{"focus": ..., "coverage": ...}`` of a uniform map.
        k, m: The focus and coverage parameters, for the titles.
    """
    count = len(true_names)
    labels = [
        f"{i}: {true}" if true == pred else f"{i}: {true} (pred {pred})"
        for i, (true, pred) in enumerate(zip(true_names, predicted_names, strict=True))
    ]
    panels = (
        ("focus", f"focus@{k:g}", uniform["focus"]),
        ("coverage", f"coverage@{m:g}", uniform["coverage"]),
        ("lift", "lift on the object", 1.0),
    )
    fig = Figure(figsize=(9.0, max(2.2, 0.28 * count + 1.0)), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True)
    rows = list(range(count))
    for ax, (name, title, reference) in zip(axes, panels, strict=True):
        data = getattr(values, name).tolist()
        shown = [0.0 if math.isnan(value) else value for value in data]
        bars = ax.barh(rows, shown, color="#5b3a8c", height=0.7)
        ax.bar_label(bars, labels=[f"{value:.2f}" for value in data], fontsize=7, padding=2)
        ax.axvline(reference, color="0.4", ls="--", lw=1)
        high = max([reference, *(value for value in shown)])
        ax.set_xlim(0, 1.25 * high if high > 0 else 1.0)
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_yticks(rows)
    axes[0].set_yticklabels(labels)
    axes[0].invert_yaxis()
    fig.suptitle("Rollout map per probe image (dashed: a uniform map)", fontsize=10)
    return fig


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
