"""What the layers compute, at one epoch: similarity between layers and curves over depth."""

from __future__ import annotations

import math
from collections.abc import Mapping

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from lit_vit.plotting._style import (
    DPI,
    FONT,
    MAP_CMAP,
    TITLE_FONT,
    as_cpu,
    check_dim,
    finish_axes,
    set_margins,
    set_title,
)
from lit_vit.plotting.evolution import MAX_ANNOTATED_CELLS, _print_values


def similarity_figure(matrices: Mapping[str, Tensor], title: str) -> Figure:
    """A layers x layers heatmap per panel on one 0-1 scale (CKA), values printed in few cells.

    Args:
        matrices: panel title -> ``(L, L)`` similarity of every pair of layers.
        title: The figure's title.
    """
    count = max(1, len(matrices))
    layers = next(iter(matrices.values())).shape[0] if matrices else 1
    side = max(2.4, 0.3 * layers + 1.2)
    fig = Figure(figsize=(count * (side + 0.9) + 0.2, side + 0.9), dpi=DPI)
    axes = fig.subplots(1, count, squeeze=False)[0]
    set_margins(fig, left=0.55, right=0.6, bottom=0.45, top=0.55, wspace=0.9)
    for ax, (name, values) in zip(axes, matrices.items(), strict=False):
        values = as_cpu(values, name)
        check_dim(values, 2, name, "(L, L)")
        image = ax.imshow(
            values.numpy(), cmap=MAP_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest"
        )
        if values.numel() <= MAX_ANNOTATED_CELLS:
            _print_values(ax, image, values)
        ax.set_xticks(range(len(values)))
        ax.set_yticks(range(len(values)))
        ax.set_xlabel("layer", fontsize=FONT + 1)
        ax.set_ylabel("layer", fontsize=FONT + 1)
        set_title(ax, name)
        ax.tick_params(labelsize=FONT, length=0)
    if matrices:  # one colour bar: every panel is on the same 0-1 scale
        colorbar = fig.colorbar(image, ax=list(axes), pad=0.03, aspect=25, fraction=0.05)
        colorbar.ax.tick_params(labelsize=FONT)
    fig.suptitle(title, fontsize=TITLE_FONT)
    return fig


def layer_curves_figure(
    panels: Mapping[str, Mapping[str, Tensor]],
    title: str,
    references: Mapping[str, float] | None = None,
) -> Figure:
    """A panel per quantity with a line per measure over the layers, each on its data's range,
    the legend under each panel.

    Args:
        panels: panel title (its y label) -> measure name -> ``(L,)`` values.
        title: The figure's title.
        references: panel title -> a value drawn dashed (e.g. the model's accuracy).
    """
    count = max(1, len(panels))
    legend_rows = max((math.ceil(len(lines) / 2) for lines in panels.values()), default=1)
    bottom = 0.75 + 0.18 * legend_rows  # tick labels, axis title, then the legend
    fig = Figure(figsize=(3.4 * count + 0.3, 2.6 + bottom), dpi=DPI)
    axes = fig.subplots(1, count, squeeze=False)[0]
    set_margins(fig, left=0.6, right=0.15, bottom=bottom, top=0.55, wspace=0.65)
    for ax, (panel, lines) in zip(axes, panels.items(), strict=False):
        for index, (name, values) in enumerate(lines.items()):
            values = as_cpu(values, name)
            check_dim(values, 1, name, "(L,)")
            color = colormaps["tab10"](index % 10)
            ax.plot(range(len(values)), values.numpy(), marker="o", markersize=3, color=color,
                    label=name)  # fmt: skip
        if references and panel in references:
            ax.axhline(references[panel], color="0.5", linestyle="--", linewidth=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        finish_axes(ax, xlabel="layer", ylabel=panel)
        ax.legend(fontsize=FONT, frameon=False, loc="upper left", bbox_to_anchor=(-0.15, -0.22),
                  ncols=2)  # fmt: skip
    fig.suptitle(title, fontsize=TITLE_FONT)
    return fig
