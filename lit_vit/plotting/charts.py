"""Charts of attention measures per layer and head: bars, scatters and heatmaps."""

from __future__ import annotations

import re

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from lit_vit.plotting._style import (
    DPI,
    FONT,
    MAP_CMAP,
    as_cpu,
    category_colors,
    check_dim,
    finish_axes,
    set_margins,
    set_title,
    set_value_limits,
)


def layer_bar_figure(values: Tensor, title: str, ylabel: str) -> Figure:
    """One bar per layer with its value written on top (3 decimals).

    Args:
        values: ``(L,)`` one value per layer, e.g. head diversity in [0, 1].
        title: Figure title.
        ylabel: Label of the value axis.
    """
    values = as_cpu(values, "values")
    check_dim(values, 1, "values", "(L,)")
    layers = values.shape[0]
    fig = Figure(figsize=(max(4.0, 0.5 * layers + 1.5), 3.0), dpi=DPI)
    ax = fig.add_subplot()
    set_margins(fig, left=0.6, right=0.15, bottom=0.45, top=0.3)
    bars = ax.bar(range(layers), values.numpy(), color="#5b3a8c", width=0.7)
    ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2, rotation=90 if layers > 12 else 0)
    set_value_limits(ax, values.tolist(), below=0.15, above=0.3 if layers > 12 else 0.15)
    ax.set_xticks(range(layers))
    finish_axes(ax, title, xlabel="layer", ylabel=ylabel)
    return fig


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
    distance = as_cpu(distance, "distance")
    check_dim(distance, 2, "distance", "(L, H)")
    layers, heads = distance.shape
    fig = Figure(figsize=(max(4.5, 0.35 * layers + 3.0), 3.4), dpi=DPI)
    ax = fig.add_subplot()
    # right: the legend, one or two columns of "head 11" entries and "mean over heads"
    set_margins(fig, left=0.6, right=1.15 if heads <= 12 else 2.1, bottom=0.45, top=0.3)
    x = np.arange(layers, dtype=float)
    spread = min(0.3, 0.06 * heads)
    offsets = np.linspace(-spread, spread, heads) if heads > 1 else np.zeros(1)
    for head, color in enumerate(category_colors(heads)):
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
    quantity = re.sub(r"\s*\([^)]*\)\s*$", "", ylabel) or "distance"
    title = quantity[0].upper() + quantity[1:] + " per head"
    finish_axes(ax, title, xlabel="layer (network depth)", ylabel=ylabel)
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
    values = as_cpu(values, "values")
    check_dim(values, 2, "values", "(L, H)")
    layers, heads = values.shape
    fig = Figure(
        figsize=(max(3.5, 0.5 * heads + 2.0), max(2.5, 0.32 * layers + 1.2)),
        dpi=DPI,
    )
    ax = fig.add_subplot()
    set_margins(fig, left=0.5, right=0.7, bottom=0.45, top=0.3)  # right: the colorbar's labels
    image = ax.imshow(
        values.numpy(), cmap=MAP_CMAP, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest"
    )
    colorbar = fig.colorbar(image, ax=ax, pad=0.02, aspect=30)
    colorbar.set_label(cbar_label, fontsize=FONT + 1)
    colorbar.ax.tick_params(labelsize=FONT)
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
    ax.set_xlabel("head", fontsize=FONT + 1)
    ax.set_ylabel("layer", fontsize=FONT + 1)
    set_title(ax, title)
    ax.tick_params(labelsize=FONT, length=0)
    return fig
