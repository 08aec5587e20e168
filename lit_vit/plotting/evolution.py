"""How measures moved during training: rows x epochs heatmaps, and curves over the epochs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from torch import Tensor

from lit_vit.plotting._style import (
    DPI,
    FONT,
    MAP_CMAP,
    TITLE_FONT,
    as_cpu,
    check_dim,
    finish_axes,
    set_title,
)

# A heatmap with at most this many cells prints its values in them.
MAX_ANNOTATED_CELLS = 60


def evolution_figure(
    epochs: Sequence[int],
    measures: Mapping[str, Tensor],
    ranges: Mapping[str, tuple],
    rows: Sequence[str] | None = None,
    row_title: str = "layer",
    title: str = "Attention by layer over the epochs",
) -> Figure:
    """A rows x epochs heatmap per measure, each panel on its own colour scale, with the
    values printed in the cells when there are few.

    Args:
        epochs: The analysed epochs, one column each.
        measures: measure name -> ``(R, E)`` values (rows are layers by default, columns epochs).
        ranges: measure name -> ``(vmin, vmax)`` of its colour scale; ``None`` for either end
            (or a measure not named) takes the data's.
        rows: Names of the ``R`` rows (``None``: their indices, 0, 1, ...).
        row_title: What the rows are, for the axis label.
        title: The figure's title.
    """
    count = len(measures)
    height = next(iter(measures.values())).shape[0] if measures else 1
    label_width = 0.06 * max((len(name) for name in rows), default=0) if rows else 0.0
    width = max(2.6, 0.22 * len(epochs) + 1.6) + label_width
    fig_width, fig_height = width * count + 0.3, max(2.6, 0.22 * height + 1.4)
    fig = Figure(figsize=(fig_width, fig_height), dpi=DPI)
    # Fixed margins in inches (constrained layout would cost more than drawing the figure):
    # left of each panel its tick labels and axis label, right of it its colorbar's labels.
    left, right, bottom, top = 0.45 + label_width, 0.45, 0.42, 0.55
    panel = (fig_width - left - right - (count - 1) * (left + right)) / max(1, count)
    axes = fig.subplots(
        1,
        max(1, count),
        squeeze=False,
        gridspec_kw={
            "left": left / fig_width,
            "right": 1 - right / fig_width,
            "bottom": bottom / fig_height,
            "top": 1 - top / fig_height,
            "wspace": (left + right) / panel,
        },
    )[0]
    for ax, (name, values) in zip(axes, measures.items(), strict=False):
        values = as_cpu(values, name)
        check_dim(values, 2, name, "(R, E)")
        low, high = _scale(values, *ranges.get(name, (None, None)))
        image = ax.imshow(
            values.numpy(), cmap=MAP_CMAP, vmin=low, vmax=high, aspect="auto",
            interpolation="nearest",
        )  # fmt: skip
        if values.numel() <= MAX_ANNOTATED_CELLS:
            _print_values(ax, image, values)  # the values say it: no colour bar needed
        else:
            colorbar = fig.colorbar(image, ax=ax, pad=0.02, aspect=30, ticks=[low, high])
            colorbar.ax.tick_params(labelsize=FONT)
            colorbar.ax.set_yticklabels([f"{low:.3g}", f"{high:.3g}"])
        _epoch_ticks(ax, epochs)
        ax.set_yticks(range(values.shape[0]))
        if rows is not None:
            ax.set_yticklabels(list(rows), fontsize=FONT)
        ax.set_ylabel(row_title, fontsize=FONT + 1)
        set_title(ax, name)
        ax.tick_params(labelsize=FONT, length=0)
    fig.suptitle(title, fontsize=TITLE_FONT)
    return fig


def evolution_curves_figure(
    epochs: Sequence[int],
    measures: Mapping[str, Tensor],
    rows: Sequence[str],
    ylabels: Mapping[str, str],
    title: str,
) -> Figure:
    """A panel per measure with one line per row over the epochs, each panel on its data's
    range, one colour per row in every panel and one legend: for few rows whose differences
    a heatmap's colours would hide.

    Args:
        epochs: The analysed epochs (x).
        measures: measure name -> ``(R, E)`` values; ``nan`` where a row has no value yet.
        rows: Names of the ``R`` rows (legend entries).
        ylabels: measure name -> its y-axis label.
        title: The figure's title.
    """
    count = max(1, len(measures))
    longest = max((len(name) for name in rows), default=0)
    legend_width = 0.3 + 0.065 * longest
    fig = Figure(figsize=(3.6 * count + legend_width + 0.3, 3.2), dpi=DPI)
    axes = fig.subplots(1, count, squeeze=False)[0]
    fig.subplots_adjust(
        left=0.6 / fig.get_figwidth(),
        right=1 - (legend_width + 0.1) / fig.get_figwidth(),
        bottom=0.45 / 3.2,
        top=1 - 0.55 / 3.2,
        wspace=0.45,
    )
    colors = [colormaps["tab10"](index % 10) for index in range(len(rows))]
    for ax, (name, values) in zip(axes, measures.items(), strict=False):
        values = as_cpu(values, name)
        check_dim(values, 2, name, "(R, E)")
        if values.shape[0] != len(rows):
            raise ValueError(f"{name} has {values.shape[0]} rows, rows names {len(rows)}")
        for line, row, color in zip(values.numpy(), rows, colors, strict=True):
            ax.plot(epochs, line, marker="o", markersize=3, lw=1.4, color=color, label=row)
        finish_axes(ax, name, xlabel="epoch", ylabel=ylabels.get(name, name))
        ax.ticklabel_format(axis="y", useOffset=False)
    axes[-1].legend(
        fontsize=FONT, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0
    )
    fig.suptitle(title, fontsize=TITLE_FONT)
    return fig


def _scale(values: Tensor, low: float | None, high: float | None) -> tuple:
    """A colour scale's ends, the data's where ``None``; never empty (a panel of zeros on a
    0-to-data scale is drawn at the bottom, not mid-scale)."""
    finite = values[values.isfinite()]
    if not len(finite):
        return low, high
    low = float(finite.min()) if low is None else low
    high = float(finite.max()) if high is None else high
    return low, max(high, low + 1e-3 * max(1.0, abs(low)))


def _epoch_ticks(ax: Axes, epochs: Sequence[int]) -> None:
    """At most about ten epoch labels under a heatmap's columns."""
    step = max(1, math.ceil(len(epochs) / 10))
    ax.set_xticks(range(0, len(epochs), step))
    ax.set_xticklabels([str(epochs[i]) for i in range(0, len(epochs), step)], fontsize=FONT)
    ax.set_xlabel("epoch", fontsize=FONT + 1)


def _print_values(ax: Axes, image: AxesImage, values: Tensor) -> None:
    """Each ``(R, E)`` cell's value in it, dark on light cells and light on dark ones."""
    for (row, column), value in _cells(values):
        red, green, blue, _ = image.cmap(image.norm(value))
        light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
        ax.text(
            column, row, f"{value:.2g}", ha="center", va="center", fontsize=FONT - 1,
            color="black" if light else "white",
        )  # fmt: skip


def _cells(values: Tensor):
    """``((row, column), value)`` of every finite cell of ``(R, E)`` values."""
    for row, line in enumerate(values.tolist()):
        for column, value in enumerate(line):
            if math.isfinite(value):
                yield (row, column), value
