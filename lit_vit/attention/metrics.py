"""Per-head, per-layer and per-image measures of ViT attention.

Definitions, shapes and units are in ``docs/attention.md``. Every function is
batched, runs on the input's device in float32 and never modifies its inputs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_vit.attention._validate import (
    check_fraction,
    check_layout,
    check_saliency,
    checked_attention,
    renormalize,
)
from lit_vit.attention.layout import TokenLayout
from lit_vit.attention.rollout import cls_attention

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


def _plogp(p: Tensor, log=torch.log) -> Tensor:
    """``p * log(p)`` with ``0 log 0 = 0``."""
    return torch.where(p > 0, p * log(p.clamp_min(_TINY)), torch.zeros_like(p))


def query_distribution(attention: Tensor, layout: TokenLayout, *, validate: bool = True) -> Tensor:
    """Query distribution ``q`` of every layer, image and head over the patches.

    With a class token: row 0 restricted to patch keys; without: the mean of the
    patch query rows over patch keys. Renormalised to sum 1 (see
    :func:`~lit_vit.attention.rollout.cls_attention` for the prefix mass).

    Args:
        attention: ``(L, B, H, N, N)`` post-softmax attention.
        layout: token layout with ``N`` tokens.
        validate: check the values (skip it for an already validated
            :class:`~lit_vit.attention.AttentionRecording`); shapes are always checked.

    Returns:
        ``(L, B, H, G)`` float32, rows sum to 1.

    Raises:
        ValueError: bad attention or layout.
    """
    return cls_attention(attention, layout, validate=validate).maps.flatten(-2)


def head_diversity(attention: Tensor, layout: TokenLayout, *, validate: bool = True) -> Tensor:
    """Mean pairwise Jensen-Shannon divergence between the heads of each layer.

    JS in bits (log base 2), so in [0, 1]: 0 when all heads attend alike, 1 for
    heads with disjoint supports. Averaged over head pairs, then over images.

    Args:
        attention: ``(L, B, H, N, N)`` post-softmax attention.
        layout: token layout with ``N`` tokens.
        validate: check the values (skip it for an already validated
            :class:`~lit_vit.attention.AttentionRecording`); shapes are always checked.

    Returns:
        ``(L,)`` float32 in [0, 1]; 0 for a single head.

    Raises:
        ValueError: bad attention or layout.
    """
    return diversity_of_queries(query_distribution(attention, layout, validate=validate))


def diversity_of_queries(q: Tensor) -> Tensor:
    """:func:`head_diversity` of the ``(L, B, H, G)`` query distributions: ``(L,)``."""
    heads = q.shape[2]
    if heads < 2:
        return q.new_zeros(q.shape[0])
    # JS(p, r) = H(m) - (H(p) + H(r)) / 2 with m = (p + r) / 2, entropies in bits
    first, second = torch.triu_indices(heads, heads, offset=1, device=q.device)
    own = -_plogp(q, torch.log2).sum(dim=-1)  # (L, B, H)
    mixed = 0.5 * (q[:, :, first] + q[:, :, second])  # (L, B, pairs, G)
    mixed_entropy = -_plogp(mixed, torch.log2).sum(dim=-1)  # (L, B, pairs)
    pairs = mixed_entropy - 0.5 * (own[:, :, first] + own[:, :, second])
    pairs = pairs.clamp(0.0, 1.0)
    return pairs.mean(dim=-1).mean(dim=-1)


class AttentionEntropy(NamedTuple):
    """Entropy of each head's query distribution, averaged over images.

    Attributes:
        normalized: ``(L, H)`` entropy / log G, in [0, 1]; 1 is uniform.
        effective_area: ``(L, H)`` ``exp(entropy in nats) / G``, in (0, 1]: the
            fraction of the grid a uniform map of the same entropy would cover;
            comparable across input resolutions.
    """

    normalized: Tensor
    effective_area: Tensor


def attention_entropy(
    attention: Tensor, layout: TokenLayout, *, validate: bool = True
) -> AttentionEntropy:
    """Normalised entropy and effective area of each head's query distribution.

    Args:
        attention: ``(L, B, H, N, N)`` post-softmax attention.
        layout: token layout with ``N`` tokens.
        validate: check the values (skip it for an already validated
            :class:`~lit_vit.attention.AttentionRecording`); shapes are always checked.

    Returns:
        :class:`AttentionEntropy` of ``(L, H)`` tensors. With a single patch
        (``G = 1``) both are 1.

    Raises:
        ValueError: bad attention or layout.
    """
    return entropy_of_queries(query_distribution(attention, layout, validate=validate))


def entropy_of_queries(q: Tensor) -> AttentionEntropy:
    """:func:`attention_entropy` of the ``(L, B, H, G)`` query distributions."""
    grid = q.shape[-1]
    nats = -_plogp(q).sum(dim=-1)  # (L, B, H)
    normalized = (nats / math.log(grid)).clamp(0.0, 1.0) if grid > 1 else torch.ones_like(nats)
    area = (torch.exp(nats) / grid).clamp(max=1.0)
    return AttentionEntropy(normalized=normalized.mean(dim=1), effective_area=area.mean(dim=1))


class AttentionDistance(NamedTuple):
    """Mean attention distance of each head (Dosovitskiy et al. 2020, Fig. 7).

    Attributes:
        pixels: ``(L, H)`` expected distance in input pixels from a patch query
            to the patches it attends to.
        relative: ``(L, H)`` ``pixels`` divided by the same quantity for
            uniform attention over the grid; 1.0 = as global as uniform.
    """

    pixels: Tensor
    relative: Tensor


def mean_attention_distance(
    attention: Tensor, layout: TokenLayout, *, validate: bool = True
) -> AttentionDistance:
    """Mean attention distance of patch queries over patch keys.

    For each patch query ``i`` the patch-to-patch row is renormalised over patch
    keys; the distance is ``sum_j a_ij * ||c_i - c_j||`` with ``c`` the patch
    centres in pixels, averaged over queries and then images.

    Args:
        attention: ``(L, B, H, N, N)`` post-softmax attention.
        layout: token layout with ``N`` tokens.
        validate: check the values (skip it for an already validated
            :class:`~lit_vit.attention.AttentionRecording`); shapes are always checked.

    Returns:
        :class:`AttentionDistance` of ``(L, H)`` tensors. With a single patch
        ``relative`` is 1.

    Raises:
        ValueError: bad attention or layout.
    """
    attention = checked_attention(attention, layout, validate)
    return distance_summary(patch_query_distances(attention, layout), layout)


def patch_query_distances(attention: Tensor, layout: TokenLayout) -> Tensor:
    """Mean attention distance in pixels of every image and head, before averaging over images.

    Args:
        attention: ``(..., H, N, N)`` float attention, e.g. ``(L, B, H, N, N)`` or one
            layer's ``(B, H, N, N)``.
        layout: token layout with ``N`` tokens.

    Returns:
        ``(..., H)``: ``sum_j a_ij ||c_i - c_j||`` averaged over patch queries ``i``.
    """
    p = layout.num_prefix_tokens
    patch_rows = renormalize(attention[..., p:, p:])  # (..., H, G, G)
    dist = _patch_distances(layout, attention.device)  # (G, G)
    return torch.einsum("...ij,ij->...", patch_rows, dist) / layout.num_patches


def distance_summary(pixels: Tensor, layout: TokenLayout) -> AttentionDistance:
    """:class:`AttentionDistance` of the ``(L, B, H)`` per-image distances of
    :func:`patch_query_distances`: averaged over images, relative to uniform attention."""
    pixels = pixels.mean(dim=1)  # (L, H)
    uniform = _patch_distances(layout, pixels.device).mean()
    relative = pixels / uniform if float(uniform) > 0 else torch.ones_like(pixels)
    return AttentionDistance(pixels=pixels, relative=relative)


def _patch_distances(layout: TokenLayout, device: torch.device) -> Tensor:
    """``(G, G)`` float32 pixel distances between patch centres."""
    centers = layout.patch_centers(device=device).double()
    return torch.cdist(centers[None], centers[None])[0].float()


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
