"""How attention propagates through the layers: the kernels behind rollout and flow.

Per layer, heads are fused, the weakest patch-key entries optionally
discarded, and the residual stream added: ``Ã = rownorm(0.5 * fused + 0.5 * I)``.
Rollout multiplies the ``Ã`` (Abnar & Zuidema 2020); gradient rollout adds
``mean_h relu(dA * A)`` products (Chefer, Gur & Wolf 2021). Everything here
takes tensors already checked at the toolkit's boundary
(:func:`~lit_vit.attention.reduced.reduce_attention` or the recorder).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lit_vit.attention._validate import checked_chunks, renormalize
from lit_vit.attention.layout import TokenLayout

HeadFusion = Literal["mean", "max", "min"]
HEAD_FUSIONS: tuple[str, ...] = ("mean", "max", "min")


def check_head_fusions(head_fusions: object) -> None:
    """Raise a ValueError naming any head fusion not in :data:`HEAD_FUSIONS`."""
    unknown = [fusion for fusion in head_fusions if fusion not in HEAD_FUSIONS]
    if unknown:
        raise ValueError(f"head_fusions must be among {HEAD_FUSIONS}, got {list(head_fusions)!r}.")


def check_rollout_settings(
    head_fusion: object,
    discard_ratio: object,
    start_layer: object,
    num_layers: int,
    method: object = "row",
) -> None:
    """Raise a ValueError naming the bad value of rollout's (and flow's) settings."""
    if method not in ("row", "matrix"):
        raise ValueError(f"method must be 'row' or 'matrix', got {method!r}.")
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of 'mean', 'max', 'min', got {head_fusion!r}.")
    if (
        isinstance(discard_ratio, bool)
        or not isinstance(discard_ratio, (int, float))
        or not 0 <= discard_ratio < 1
    ):
        raise ValueError(f"discard_ratio must be a number in [0, 1), got {discard_ratio!r}.")
    if (
        isinstance(start_layer, bool)
        or not isinstance(start_layer, int)
        or not 0 <= start_layer < num_layers
    ):
        raise ValueError(
            f"start_layer must be an int in [0, {num_layers - 1}] (the attention has "
            f"{num_layers} layers), got {start_layer!r}."
        )


def query_rows(matrix: Tensor, layout: TokenLayout) -> Tensor:
    """``(..., N, N) -> (..., N)``: the class-token row, else the mean of patch rows."""
    if layout.has_class_token:
        return matrix[..., 0, :]
    return matrix[..., layout.num_prefix_tokens :, :].mean(dim=-2)


def start_vector(layout: TokenLayout, batch: int, device: torch.device) -> Tensor:
    """``(B, N)`` row vectors ``e_0`` (class token), else the mean of the patch basis vectors."""
    v = torch.zeros(batch, layout.num_tokens, device=device)
    if layout.has_class_token:
        v[..., 0] = 1.0
    else:
        v[..., layout.num_prefix_tokens :] = 1.0 / layout.num_patches
    return v


def to_grid(row: Tensor, layout: TokenLayout) -> Tensor:
    """``(..., N)`` row -> ``(..., gh, gw)`` patch part renormalised to sum 1."""
    patches = renormalize(row[..., layout.num_prefix_tokens :])
    return patches.reshape(*patches.shape[:-1], *layout.grid_size)


def fuse_heads(attention: Tensor, head_fusion: str) -> Tensor:
    """``(..., H, N, N) -> (..., N, N)``: mean, max or min over the heads."""
    if head_fusion == "mean":
        return attention.mean(dim=-3)
    if head_fusion == "max":
        return attention.amax(dim=-3)
    return attention.amin(dim=-3)


def discard(fused: Tensor, layout: TokenLayout, ratio: float) -> Tensor:
    """Zero the smallest ``floor(ratio * N * G)`` patch-key entries of each ``(N, N)`` matrix."""
    prefix = fused[..., : layout.num_prefix_tokens]
    patches = fused[..., layout.num_prefix_tokens :]
    flat = patches.flatten(-2)  # (..., N * G)
    count = math.floor(ratio * flat.shape[-1])
    if count == 0:
        return fused
    index = flat.argsort(dim=-1, stable=True)[..., :count]
    flat = flat.scatter(-1, index, 0.0)
    return torch.cat([prefix, flat.reshape(patches.shape)], dim=-1)


def mixed_attention(fused: Tensor, layout: TokenLayout, discard_ratio: float) -> Tensor:
    """``Ã = rownorm(0.5 * fused + 0.5 * I)`` after discarding: ``(B, N, N)``, rows sum to 1."""
    fused = discard(fused, layout, discard_ratio) if discard_ratio > 0 else fused
    mixed = 0.5 * fused + 0.5 * torch.eye(layout.num_tokens, device=fused.device)
    return mixed / mixed.sum(dim=-1, keepdim=True)


def row_times_mixed(row: Tensor, fused: Tensor, row_sums: Tensor | None = None) -> Tensor:
    """``row @ rownorm(0.5 * fused + 0.5 * I)`` without forming the ``(B, N, N)`` mix.

    With ``d_i = 0.5 * sum_j fused_ij + 0.5`` the mixed matrix is
    ``diag(1 / d) (0.5 * fused + 0.5 * I)``, so with ``w = 0.5 * row / d``
    the product is ``w @ fused + w``: one ``(B, N) x (B, N, N)`` product.

    Args:
        row: ``(B, N)`` row vectors.
        fused: ``(B, N, N)`` non-negative fused attention.
        row_sums: ``(B, N)`` its row sums when known (then ``fused`` is read once).

    Returns:
        ``(B, N)``.
    """
    row_sums = fused.sum(dim=-1) if row_sums is None else row_sums
    weights = 0.5 * row / (0.5 * row_sums + 0.5)
    return torch.bmm(weights[:, None, :], fused)[:, 0] + weights


def rollout_row(
    fused: Tensor,
    layout: TokenLayout,
    discard_ratio: float,
    start_layer: int,
    row_sums: Tensor | None = None,
) -> Tensor:
    """The query row of ``Ã[L-1] @ ... @ Ã[start_layer]``, one row vector carried down.

    Args:
        fused: ``(L, B, N, N)`` head-fused attention.
        layout: token layout with ``N`` tokens.
        discard_ratio: fraction of patch-key entries zeroed per layer and image.
        start_layer: first layer included.
        row_sums: ``(L, B, N)`` row sums of ``fused`` when known (used without discard).

    Returns:
        ``(B, N)``: ``O(L N^2)`` per image.
    """
    row = start_vector(layout, fused.shape[1], fused.device)
    for layer in range(fused.shape[0] - 1, start_layer - 1, -1):  # last layer first
        if discard_ratio > 0:
            row = row_times_mixed(row, discard(fused[layer], layout, discard_ratio))
        else:
            row = row_times_mixed(row, fused[layer], None if row_sums is None else row_sums[layer])
    return row


def rollout_matrix(
    fused: Tensor, layout: TokenLayout, discard_ratio: float, start_layer: int
) -> Tensor:
    """:func:`rollout_row` by the full ``(B, N, N)`` product (``O(L N^3)``): ``(B, N)``."""
    batch, n = fused.shape[1], layout.num_tokens
    product = torch.eye(n, device=fused.device).expand(batch, -1, -1)
    for layer in range(fused.shape[0] - 1, start_layer - 1, -1):
        product = product @ mixed_attention(fused[layer], layout, discard_ratio)
    return query_rows(product, layout)


def mean_rollout_row(
    attention: Tensor, layout: TokenLayout, start_layer: int, validate: bool
) -> Tensor:
    """:func:`rollout_row` of mean-fused attention without discard, streamed from the
    ``(L, B, H, N, N)`` tensor in one pass: no fused matrix is formed.

    ``w @ mean_h A`` is ``[w, ..., w] @ A.reshape(H N, N) / H``, and the row
    sums come with the validation, so each cache-sized chunk is validated and
    used while it is in cache. Forming the ``(L, B, N, N)`` mean instead costs
    more than a read pass of the input in page faults alone (N=577). An
    image's row depends only on its own chunks, so it is updated in place,
    chunk by chunk, last layer first.

    Args:
        attention: ``(L, B, H, N, N)`` attention, shape checked.
        layout: token layout with ``N`` tokens.
        start_layer: first layer included.
        validate: validate each chunk on the way (else only compute).

    Returns:
        ``(B, N)`` row of the rollout matrix (class-token row, or mean patch row).

    Raises:
        ValueError: bad values (see :func:`~lit_vit.attention._validate.checked_chunks`).
    """
    _, batch, heads, n, _ = attention.shape
    row = start_vector(layout, batch, attention.device)  # (B, N)
    chunks = checked_chunks(attention, layout, last_layer_first=True, check_values=validate)
    for chunk in chunks:
        if chunk.layer < start_layer:
            continue  # validated, not part of the product
        weights = 0.5 * row[chunk.images] / (0.5 * chunk.row_sums.mean(dim=1) + 0.5)  # (b, N)
        stacked = weights.repeat(1, heads)[:, None, :]  # (b, 1, H N)
        mixed = torch.bmm(stacked, chunk.attention.reshape(-1, heads * n, n))[:, 0] / heads
        row[chunk.images] = mixed + weights
    return row


def gradient_product(attention_grad: Tensor, attention: Tensor) -> Tensor:
    """``mean_h relu(dA * A)``: ``(..., H, N, N)`` -> ``(..., N, N)``."""
    return torch.relu(attention_grad * attention).mean(dim=-3)


def weighted_rollout_row(weighted: Tensor, layout: TokenLayout) -> Tensor:
    """Gradient rollout's row ``v = v + v @ Abar[l]`` for ``l = L-1 .. 0`` from ``e_0`` over
    the ``(L, B, N, N)`` products of :func:`gradient_product`: ``(B, N)``."""
    v = start_vector(layout, weighted.shape[1], weighted.device)
    for layer in reversed(range(weighted.shape[0])):
        v = v + torch.bmm(v[:, None, :], weighted[layer])[:, 0]
    return v
