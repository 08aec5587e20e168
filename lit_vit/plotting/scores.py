"""Figures of scores per map, image and class: faithfulness curves, focus and coverage per
probe image, a measure per class, the sanity checks' randomisation curves."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor

from lit_vit.plotting._style import (
    DPI,
    FONT,
    TITLE_FONT,
    as_cpu,
    category_colors,
    check_dim,
    finish_axes,
    set_margins,
    set_value_limits,
)

# Above this many classes, per-class charts show only the classes with images.
MAX_EMPTY_CLASSES_SHOWN = 20


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
    fractions = as_cpu(fractions, "fractions")
    check_dim(fractions, 1, "fractions", "(T + 1,)")
    panels: dict[str, list[tuple[str, Tensor]]] = {"deletion": [], "insertion": []}
    for name, curve in curves.items():
        curve = as_cpu(curve, f"curves[{name!r}]")
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
    palette = category_colors(max(len(methods), 1))
    hint = {"deletion": "lower AUC is better", "insertion": "higher AUC is better"}

    fig = Figure(figsize=(4.0 * len(panels) + 0.5, 3.3), dpi=DPI)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    set_margins(fig, left=0.6, right=0.15, bottom=0.45, top=0.55, wspace=0.25)
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
        ax.set_xlim(float(x.min()), float(x.max()))
        ax.set_ylim(0, 1.02)
        finish_axes(ax, f"{kind} ({hint[kind]})", xlabel="fraction of patches")
        ax.legend(fontsize=7, frameon=False, loc="best")
    axes[0].set_ylabel("probability of predicted class", fontsize=FONT + 1)
    batch = next(iter(panels.values()))[0][1].shape[0]
    fig.suptitle(f"Deletion / insertion, mean over {batch} images", fontsize=TITLE_FONT)
    return fig


def _method(name: str) -> str:
    """``"deletion: rollout"`` -> ``"rollout"``; a name without ``":"`` is kept."""
    return name.split(":", 1)[1].strip() if ":" in name else name


def _class_means(values: Tensor, labels: Tensor, classes: int) -> tuple[list[float], list[int]]:
    """The mean of ``(B,)`` values per class (NaN for a class without values) and the count,
    for labels in ``[0, classes)``."""
    counts = torch.bincount(labels, minlength=classes)
    sums = torch.bincount(labels, weights=values.double(), minlength=classes)
    means = torch.where(counts > 0, sums / counts.clamp_min(1), float("nan"))
    return means.tolist(), counts.tolist()


def _checked_labels(
    values: Tensor, labels: Tensor, class_names: Sequence[str] | None
) -> tuple[Tensor, list[str]]:
    """``(B,)`` long labels, checked against ``(B,)`` values and the classes, and the classes'
    names (their indices without ``class_names``)."""
    labels = torch.as_tensor(labels).detach().cpu()
    check_dim(values, 1, "values", "(B,)")
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
        [str(n) for n in class_names] if class_names is not None else list(map(str, range(classes)))
    )
    return labels, names


def metric_by_class_figure(
    values: Tensor,
    labels: Tensor,
    class_names: Sequence[str] | None,
    title: str,
    ylabel: str,
) -> Figure:
    """Mean of a per-image measure for each class, with the image count per class.

    NaN values (e.g. lift of an image without foreground) are left out of the
    mean and the count; a class without images gets no bar and ``n=0``, or is
    left out when there are more than ``MAX_EMPTY_CLASSES_SHOWN`` classes (a
    folder scored against ImageNet's 1000). The dashed line is the mean over
    all images.

    Args:
        values: ``(B,)`` one value per image.
        labels: ``(B,)`` integer class of each image.
        class_names: Name of each class, indexed by label (``None``: the index).
        title: Figure title.
        ylabel: Label of the value axis.
    """
    values = as_cpu(values, "values")
    labels, names = _checked_labels(values, labels, class_names)
    classes = len(names)

    valid = torch.isfinite(values)
    means, counts = _class_means(values[valid], labels[valid], classes)
    if classes > MAX_EMPTY_CLASSES_SHOWN:  # e.g. ImageNet's 1000: the classes with images
        kept = [c for c in range(classes) if counts[c]]
        names, means, counts = ([row[c] for c in kept] for row in (names, means, counts))
        classes = len(kept)

    fig = Figure(figsize=(max(4.0, 0.55 * classes + 1.5), 3.4), dpi=DPI)
    ax = fig.add_subplot()
    long_names = max((len(n) for n in names), default=0) > 6
    bottom = 0.35 + (0.055 * max(len(n) for n in names) if long_names else 0.1)
    set_margins(fig, left=0.6, right=0.15, bottom=bottom, top=0.3)
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
    set_value_limits(ax, [means[c] for c in present], below=0.1, above=0.25)
    ax.set_xticks(range(classes))
    ax.set_xticklabels(
        names, rotation=35 if long_names else 0, ha="right" if long_names else "center"
    )
    finish_axes(ax, title, ylabel=ylabel)
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
    fig = Figure(figsize=(9.0, max(2.2, 0.28 * count + 1.0)), dpi=100)
    axes = fig.subplots(1, len(panels), sharey=True)
    label_width = 0.07 * max((len(label) for label in labels), default=0) + 0.15
    set_margins(fig, left=label_width, right=0.15, bottom=0.3, top=0.55, wspace=0.2)
    rows = list(range(count))
    for ax, (name, title, reference) in zip(axes, panels, strict=True):
        data = getattr(values, name).tolist()
        shown = [0.0 if math.isnan(value) else value for value in data]
        bars = ax.barh(rows, shown, color="#5b3a8c", height=0.7)
        ax.bar_label(bars, labels=[f"{value:.2f}" for value in data], fontsize=7, padding=2)
        ax.axvline(reference, color="0.4", ls="--", lw=1)
        high = max([reference, *(value for value in shown)])
        ax.set_xlim(0, 1.25 * high if high > 0 else 1.0)
        finish_axes(ax, title)
    axes[0].set_yticks(rows)
    axes[0].set_yticklabels(labels)
    axes[0].invert_yaxis()
    fig.suptitle("Rollout map per probe image (dashed: a uniform map)", fontsize=10)
    return fig


def randomization_figure(
    labels: Sequence[str], correlations: Mapping[str, Tensor], threshold: float = 0.5
) -> Figure:
    """Cascading randomisation: each explainer's Spearman correlation with its trained map
    against the cumulative randomisation steps, with the pass threshold dashed.

    Args:
        labels: ``"trained"`` then the steps (``"head"``, ``"block 11"``, ..., ``"embeddings"``).
        correlations: explainer -> ``(len(labels),)`` mean correlation.
        threshold: correlation above which a fully randomised explainer fails.
    """
    fig = Figure(figsize=(max(5.0, 0.45 * len(labels) + 2.5), 3.6), dpi=DPI)
    ax = fig.add_subplot()
    longest = max((len(label) for label in labels), default=0)
    # Below the axes: tick labels rotated 60 degrees (about 0.06 inch per character), then the
    # axis title.
    set_margins(fig, left=0.6, right=0.15, bottom=0.55 + 0.06 * longest, top=0.3)
    steps = np.arange(len(labels))
    lowest = -0.3
    for index, (name, values) in enumerate(correlations.items()):
        values = as_cpu(values, name)
        check_dim(values, 1, name, "(steps,)")
        color = colormaps["tab10"](index % 10)
        ax.plot(steps, values.numpy(), marker="o", markersize=3, color=color, label=name)
        lowest = min(lowest, float(values.nan_to_num(0.0).min()) - 0.05)
    ax.axhline(threshold, color="0.5", linestyle="--", linewidth=0.8)
    ax.axhline(0.0, color="0.8", linewidth=0.8)
    ax.set_xticks(steps)
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=FONT)
    ax.set_ylim(lowest, 1.05)  # Spearman is at most 1; a strong anti-correlation stays in view
    finish_axes(
        ax,
        "Cascading model-parameter randomisation",
        xlabel="randomised cumulatively, from the top",
        ylabel="Spearman with the trained map",
    )
    ax.legend(fontsize=FONT, frameon=False, loc="best")
    return fig
