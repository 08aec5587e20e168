"""SaCo, the salience-guided faithfulness coefficient (Wu et al., CVPR 2024).

Deletion curves ask whether the most salient patches matter most; SaCo asks
whether the map's *amounts* are right: a group of patches that holds more
saliency should, removed on its own, cost the model more confidence.

Patches are ordered by saliency (most salient first, ties by patch index)
and split into ``K`` groups ``G_1..G_K`` whose sizes differ by at most one,
the larger ones first (as ``numpy.array_split``). ``s_i`` is the saliency in
``G_i``; ``d_i`` is the drop of the clean-predicted class's probability when
only ``G_i`` is replaced by the image's mean value (per channel). Over all
pairs ``i < j``, with ``w = |s_i - s_j|``, the coefficient adds ``+w`` where
``d_i >= d_j`` and ``-w`` otherwise, divided by the sum of the weights: 1 when
every more salient group costs at least as much, -1 for the reverse, about 0
for a random map (and 0 when all groups hold the same saliency).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from lit_vit.attention.faithfulness import _patch_size, checked_maps, classifier_logits

__all__ = ["group_of_patches", "saco", "saco_coefficient"]


def saco(
    model: nn.Module,
    images: Tensor,
    saliency: Tensor | Mapping[str, Tensor],
    patch_size,
    *,
    groups: int = 10,
    max_batch: int = 512,
) -> Tensor | dict[str, Tensor]:
    """SaCo of saliency maps: ``K = groups`` perturbed copies per image and map.

    ``model``, ``images``, ``saliency`` and ``patch_size`` as in
    :func:`~lit_vit.attention.road`.

    Args:
        groups: Number ``K`` of patch groups, at least 2 and at most the patches.
        max_batch: Largest number of perturbed images in one forward pass.

    Returns:
        ``(B,)`` float32 coefficients in [-1, 1], or for a mapping a dict of them.

    Raises:
        ValueError: Bad shapes, ``groups`` out of range, a map with NaN or inf
            values, or a model that returns no ``(n, K)`` logits.
    """
    ph, pw = _patch_size(patch_size)
    maps, grid = checked_maps(images, saliency, (ph, pw))
    b = len(images)
    num_patches = grid[0] * grid[1]
    if isinstance(groups, bool) or not isinstance(groups, int) or not 2 <= groups <= num_patches:
        raise ValueError(f"groups must be an int in [2, {num_patches}], got {groups!r}")

    flat = torch.stack([v.detach().float().cpu().reshape(b, num_patches) for v in maps.values()])
    member = group_of_patches(flat, groups)  # (S, B, G) group index of every patch
    sums = torch.zeros(*flat.shape[:2], groups).scatter_add_(2, member, flat)  # (S, B, K)
    one_hot = member[..., None] == torch.arange(groups)  # (S, B, G, K)
    removed = one_hot.permute(0, 1, 3, 2).reshape(len(maps), b, groups, *grid)  # (S, B, K, gh, gw)
    pixels = removed.repeat_interleave(ph, dim=-2).repeat_interleave(pw, dim=-1).to(images.device)
    mean = images.detach().mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    image = images.detach()[None, :, None]  # (1, B, 1, C, H, W)
    perturbed = torch.where(pixels[:, :, :, None], mean[None, :, None], image)  # (S,B,K,C,H,W)
    clean, _ = classifier_logits(model, [images])
    predicted = clean.argmax(dim=-1)
    logits, _ = classifier_logits(model, perturbed.flatten(0, 2).split(max_batch))
    probability = logits.softmax(dim=-1).view(len(maps), b, groups, -1)
    index = predicted.view(1, b, 1, 1).expand(*probability.shape[:-1], 1)
    after = probability.gather(-1, index).squeeze(-1)  # (S, B, K)
    before = clean.softmax(dim=-1).gather(1, predicted[:, None])  # (B, 1)
    coefficients = saco_coefficient(sums, (before[None] - after).cpu())  # (S, B)
    results = dict(zip(maps, coefficients, strict=True))
    return results if isinstance(saliency, Mapping) else results["saliency"]


def group_of_patches(saliency: Tensor, groups: int) -> Tensor:
    """The group (0 = most salient) of every patch: ``(..., G)`` saliency to ``(..., G)`` int64.

    Patches sorted by decreasing saliency (ties by index) and split into ``groups``
    consecutive runs whose sizes differ by at most one, larger first.
    """
    num_patches = saliency.shape[-1]
    order = torch.argsort(saliency, dim=-1, descending=True, stable=True)
    small, extra = divmod(num_patches, groups)
    sizes = torch.tensor([small + 1] * extra + [small] * (groups - extra))
    group_at_rank = torch.repeat_interleave(torch.arange(groups), sizes)  # (G,)
    return torch.empty_like(order).scatter_(-1, order, group_at_rank.expand_as(order))


def saco_coefficient(salience: Tensor, drop: Tensor) -> Tensor:
    """SaCo from per-group salience and probability drop, both ``(..., K)`` in rank order.

    Returns:
        ``(...)`` float32: ``sum_{i<j} sign_ij |s_i - s_j| / sum_{i<j} |s_i - s_j|`` with
        ``sign_ij = +1`` where ``d_i >= d_j``, else ``-1``; 0 where every weight is 0.
    """
    k = salience.shape[-1]
    first, second = torch.triu_indices(k, k, offset=1)
    weight = (salience[..., first] - salience[..., second]).abs()
    sign = torch.where(drop[..., first] >= drop[..., second], 1.0, -1.0)
    total = weight.sum(dim=-1)
    signed = (sign * weight).sum(dim=-1)
    return torch.where(total > 0, signed / total.clamp_min(1e-30), torch.zeros_like(total)).float()
