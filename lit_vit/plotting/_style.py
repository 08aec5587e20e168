"""What every figure shares: the colormap, resolution, fonts and input copies."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

MAP_CMAP = "inferno"
"""Colormap of every attention map and heatmap."""

DPI = 100
FONT = 8
TITLE_FONT = 10


def set_margins(
    fig: Figure, left: float, right: float, bottom: float, top: float, wspace: float = 0.0
) -> None:
    """Place the subplots with fixed margins in inches (and ``wspace`` inches between panels).

    Constrained layout measures every text artist to place the axes, which
    costs more than drawing a small chart; the charts are drawn every epoch,
    so they reserve known room for their labels instead.
    """
    width, height = fig.get_size_inches()
    columns = max(1, fig.axes[0].get_subplotspec().get_gridspec().ncols) if fig.axes else 1
    panel = (width - left - right - (columns - 1) * wspace) / columns
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=wspace / panel if columns > 1 else None,
    )


def set_title(ax: Axes, title: str, fontsize: float = TITLE_FONT) -> None:
    """Title ``ax`` at a fixed height above it: no chart has ticks on top, and matplotlib's
    search for them measures every tick label again at each draw."""
    ax.set_title(title, fontsize=fontsize, y=1.0)


def finish_axes(
    ax: Axes, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None
) -> None:
    """Label ``ax`` as every chart does: axis labels at ``FONT + 1``, the title at
    ``TITLE_FONT``, tick labels at ``FONT``, no top or right spine."""
    if xlabel is not None:
        ax.set_xlabel(xlabel, fontsize=FONT + 1)
    if ylabel is not None:
        ax.set_ylabel(ylabel, fontsize=FONT + 1)
    if title is not None:
        set_title(ax, title)
    ax.tick_params(labelsize=FONT)
    ax.spines[["top", "right"]].set_visible(False)


def set_value_limits(ax: Axes, values: Sequence[float], below: float, above: float) -> None:
    """Y limits for bars of ``values`` with their labels: from ``min(values, 0)`` (less
    ``below`` of the span when negative) to ``max(values, 0)`` plus ``above`` of the span."""
    finite = [value for value in values if math.isfinite(value)]
    high = max([*finite, 0.0]) if finite else 1.0
    low = min([*finite, 0.0])
    span = (high - low) or 1.0
    ax.set_ylim(low - (below * span if low < 0 else 0.0), high + above * span)


def as_cpu(x: Tensor | Sequence[float], name: str) -> Tensor:
    """A float32 CPU copy-or-view of ``x`` that is never written to."""
    try:
        return torch.as_tensor(x).detach().float().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}") from err


def check_dim(x: Tensor, dim: int, name: str, shape: str) -> None:
    if x.dim() != dim:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")


def category_colors(count: int) -> list:
    """Distinct colours for ``count`` categories (tab10 / tab20, else viridis samples)."""
    if count <= 10:
        return [colormaps["tab10"](index) for index in range(count)]
    if count <= 20:
        return [colormaps["tab20"](index) for index in range(count)]
    return [colormaps["viridis"](index / (count - 1)) for index in range(count)]
