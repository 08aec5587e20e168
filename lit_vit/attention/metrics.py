"""Per-head, per-layer and per-image measures of ViT attention, and of saliency maps.

Definitions, shapes and units are in ``docs/attention.md``. Every function is
batched, runs on the input's device in float32 and never modifies its inputs.
The attention measures take ``(L, B, H, N, N)`` attention, reduce it once with
:func:`~lit_vit.attention.reduction.reduce_attention` (whose arguments and
errors they share) and call the :class:`~lit_vit.attention.ReducedAttention`
method of their name, which defines the measure.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_vit.attention._validate import check_fraction, check_layout, check_saliency
from lit_vit.attention.layout import TokenLayout
from lit_vit.attention.reduced import AttentionDistance, AttentionEntropy, ReducedAttention
from lit_vit.attention.reduction import reduce_attention

__all__ = [
    "AttentionDistance",
    "AttentionEntropy",
    "ObjectMass",
    "attention_entropy",
    "coverage",
    "focus_score",
    "foreground_mask",
    "head_diversity",
    "mean_attention_distance",
    "object_mass",
    "query_distribution",
]

_TINY = torch.finfo(torch.float32).tiny


def query_distribution(attention: Tensor, layout: TokenLayout, *, validate: bool = True) -> Tensor:
    """:meth:`ReducedAttention.query_distribution
    <lit_vit.attention.ReducedAttention.query_distribution>`: ``(L, B, H, G)``."""
    return _query_reduction(attention, layout, validate).query_distribution()


def head_diversity(attention: Tensor, layout: TokenLayout, *, validate: bool = True) -> Tensor:
    """:meth:`ReducedAttention.head_diversity <lit_vit.attention.ReducedAttention.head_diversity>`:
    ``(L,)`` in [0, 1]."""
    return _query_reduction(attention, layout, validate).head_diversity()


def attention_entropy(
    attention: Tensor, layout: TokenLayout, *, validate: bool = True
) -> AttentionEntropy:
    """:meth:`ReducedAttention.attention_entropy
    <lit_vit.attention.ReducedAttention.attention_entropy>`: ``(L, H)`` each."""
    return _query_reduction(attention, layout, validate).attention_entropy()


def mean_attention_distance(
    attention: Tensor, layout: TokenLayout, *, validate: bool = True
) -> AttentionDistance:
    """:meth:`ReducedAttention.mean_attention_distance
    <lit_vit.attention.ReducedAttention.mean_attention_distance>`: ``(L, H)`` each."""
    reduced = reduce_attention(
        attention, layout, parts=("distances",), head_fusions=(), validate=validate
    )
    return reduced.mean_attention_distance()


def _query_reduction(attention: Tensor, layout: TokenLayout, validate: bool) -> ReducedAttention:
    return reduce_attention(
        attention, layout, parts=("query_rows",), head_fusions=(), validate=validate
    )


def _top_count(fraction: float, total: int) -> int:
    """``ceil(fraction * total)`` robust to float noise (0.3 * 10 is 3.0000000000000004)."""
    return max(1, min(total, math.ceil(round(fraction * total, 9))))


def focus_score(saliency: Tensor, k: float = 0.1) -> Tensor:
    """Mass held by the ``ceil(k * G)`` largest entries of each saliency map.

    Args:
        saliency: ``(B, gh, gw)`` or ``(B, G)`` non-negative map (renormalised
            to sum 1 here; a map with no mass counts as uniform).
        k: fraction of patches in (0, 1].

    Returns:
        ``(B,)`` float32 in [ceil(kG)/G, 1]: ``ceil(kG)/G`` for a uniform map,
        1 for a one-hot map.

    Raises:
        ValueError: bad saliency or ``k`` outside (0, 1].
    """
    k = check_fraction(k, "k")
    s = check_saliency(saliency)
    top = torch.topk(s, _top_count(k, s.shape[-1]), dim=-1).values
    return top.sum(dim=-1).clamp(max=1.0)


def coverage(saliency: Tensor, m: float = 0.5) -> Tensor:
    """Fraction of patches needed, largest first, to reach mass ``m``.

    Ties at the threshold count as reached (tolerance 1e-6, sums in float64).

    Args:
        saliency: ``(B, gh, gw)`` or ``(B, G)`` non-negative map (renormalised
            to sum 1 here; a map with no mass counts as uniform).
        m: target mass in (0, 1].

    Returns:
        ``(B,)`` float32 in [1/G, 1]: ``ceil(mG)/G`` for a uniform map, ``1/G``
        for a one-hot map.

    Raises:
        ValueError: bad saliency or ``m`` outside (0, 1].
    """
    m = check_fraction(m, "m")
    s = check_saliency(saliency).double()
    s = s / s.sum(dim=-1, keepdim=True)
    mass = torch.sort(s, dim=-1, descending=True).values.cumsum(dim=-1)
    count = (mass < m - 1e-6).sum(dim=-1) + 1
    return (count.clamp(max=s.shape[-1]).double() / s.shape[-1]).float()


def foreground_mask(images: Tensor, layout: TokenLayout, threshold: float = 0.1) -> Tensor:
    """Foreground patches: mean raw pixel value (over channels and pixels) >= threshold.

    Args:
        images: ``(B, C, H, W)`` raw pixels in [0, 1] (before normalisation).
            ``H, W`` may differ from the grid by less than one patch, as timm
            allows (pixels beyond the grid are ignored, padding is not counted).
        layout: token layout of the input size.
        threshold: minimum mean pixel value of a foreground patch, in [0, 1].

    Returns:
        ``(B, gh, gw)`` bool.

    Raises:
        ValueError: images not 4-D, empty, outside [0, 1], or not matching the grid.
    """
    layout = check_layout(layout)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}.")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}.")
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor of raw pixels, got {shape}.")
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch (B=0).")
    x = images.float()
    low, high = float(x.min()), float(x.max())
    if not (math.isfinite(low) and math.isfinite(high)) or low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(
            f"images must be raw pixels in [0, 1], got values in [{low:.3g}, {high:.3g}]; pass "
            "the images before normalisation, or supply your own foreground mask."
        )
    (gh, gw), (ph, pw) = layout.grid_size, layout.patch_size
    height, width = x.shape[-2:]
    if not (-ph < gh * ph - height < ph and -pw < gw * pw - width < pw):
        raise ValueError(
            f"images are {height}x{width} pixels but the layout is a {gh}x{gw} grid of "
            f"{ph}x{pw} patches ({gh * ph}x{gw * pw} pixels); build the layout for this size."
        )
    x = x.mean(dim=1, keepdim=True)[..., : gh * ph, : gw * pw]
    ones = torch.ones_like(x)
    pad = (0, gw * pw - x.shape[-1], 0, gh * ph - x.shape[-2])
    total = F.avg_pool2d(F.pad(x, pad), (ph, pw))
    count = F.avg_pool2d(F.pad(ones, pad), (ph, pw))
    return (total / count)[:, 0] >= threshold


class ObjectMass(NamedTuple):
    """Saliency on foreground patches.

    Attributes:
        mass: ``(B,)`` fraction of the map's mass on foreground patches, in [0, 1].
        lift: ``(B,)`` ``mass`` / foreground fraction of the grid; 1.0 is no
            better than uniform. NaN for an image without foreground patches.
    """

    mass: Tensor
    lift: Tensor


def object_mass(saliency: Tensor, mask: Tensor) -> ObjectMass:
    """Mass of a saliency map on a foreground mask, and its lift over uniform.

    Args:
        saliency: ``(B, gh, gw)`` or ``(B, G)`` non-negative map (renormalised
            to sum 1 here).
        mask: bool foreground mask of the same shape (e.g. :func:`foreground_mask`).

    Returns:
        :class:`ObjectMass` of ``(B,)`` float32 tensors.

    Raises:
        ValueError: bad saliency, or mask not bool or of another shape.
    """
    s = check_saliency(saliency)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}; "
            "use foreground_mask(...) or mask > 0.5."
        )
    if mask.shape != saliency.shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but saliency has {tuple(saliency.shape)}."
        )
    fg = mask.flatten(1).to(device=s.device, dtype=s.dtype)
    mass = (s * fg).sum(dim=-1).clamp(0.0, 1.0)
    fraction = fg.mean(dim=-1)
    lift = torch.where(fraction > 0, mass / fraction.clamp_min(_TINY), float("nan"))
    return ObjectMass(mass=mass, lift=lift)
