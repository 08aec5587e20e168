"""CP-LRP's signed pixel relevance: evidence for the class in red, against it in blue."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure
from torch import Tensor

from lit_vit.plotting._style import DPI, FONT, TITLE_FONT, as_cpu, check_dim, set_title

__all__ = ["RELEVANCE_CMAP", "signed_relevance_figure"]

RELEVANCE_CMAP = "RdBu_r"
"""Diverging colormap of signed relevance: white is 0 in every panel."""


def signed_relevance_figure(
    images: Tensor,
    relevance: Tensor,
    titles: Sequence[str] | None = None,
    title: str = "CP-LRP relevance for the predicted class (red: for, blue: against)",
) -> Figure:
    """Each image beside its signed relevance, on a colour scale centred on 0.

    Every relevance panel is scaled to ``[-m, m]`` with ``m`` its largest absolute
    value, so white is exactly 0 and the two signs are comparable within a panel.

    Args:
        images: ``(B, C, H, W)`` raw pixels in [0, 1] (first channel shown in gray
            when ``C != 3``).
        relevance: ``(B, H, W)`` signed pixel relevance.
        titles: One title per image (e.g. ``"true Coat, pred Coat"``).
        title: The figure's title.

    Raises:
        ValueError: Shapes that do not match, or a title per image missing.
    """
    images, relevance = as_cpu(images, "images"), as_cpu(relevance, "relevance")
    check_dim(images, 4, "images", "(B, C, H, W)")
    check_dim(relevance, 3, "relevance", "(B, H, W)")
    if relevance.shape[0] != images.shape[0] or relevance.shape[1:] != images.shape[2:]:
        raise ValueError(
            f"relevance must be (B, H, W) = {(images.shape[0], *images.shape[2:])} for images "
            f"{tuple(images.shape)}, got {tuple(relevance.shape)}"
        )
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"titles must name each of the {len(images)} images, got {len(titles)}")
    batch = len(images)
    fig = Figure(figsize=(1.5 * batch + 0.6, 3.8), dpi=DPI)
    axes = fig.subplots(2, batch, squeeze=False)
    fig.subplots_adjust(top=0.80, bottom=0.03, hspace=0.35)  # room for the title over the titles
    shown = images.permute(0, 2, 3, 1) if images.shape[1] == 3 else images[:, 0]
    for column in range(batch):
        top, bottom = axes[0, column], axes[1, column]
        top.imshow(shown[column].clamp(0, 1), cmap="gray", vmin=0, vmax=1)
        limit = float(relevance[column].abs().max()) or 1.0
        panel = bottom.imshow(relevance[column], cmap=RELEVANCE_CMAP, vmin=-limit, vmax=limit)
        if titles is not None:
            set_title(top, titles[column], FONT)
        set_title(bottom, f"|R| max {limit:.2g}", FONT)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    colorbar = fig.colorbar(panel, ax=axes[1, :].tolist(), fraction=0.02, pad=0.01)
    colorbar.set_ticks([-limit, 0, limit], labels=["-max", "0", "+max"])
    colorbar.ax.tick_params(labelsize=FONT)
    fig.suptitle(title, fontsize=TITLE_FONT)
    return fig
