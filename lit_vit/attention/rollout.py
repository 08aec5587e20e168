"""Class-token attention, attention rollout (Abnar & Zuidema 2020) and
gradient-weighted rollout (Chefer, Gur & Wolf 2021).

All functions take the whole-model attention ``(L, B, H, N, N)`` of an
:class:`~lit_vit.attention.capture.AttentionRecording` and its ``TokenLayout``.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from lit_vit.attention._validate import (
    check_attention_shape,
    checked_attention,
    checked_chunks,
    renormalize,
)
from lit_vit.attention.layout import TokenLayout

__all__ = ["QueryAttention", "cls_attention", "gradient_rollout", "rollout"]

HeadFusion = Literal["mean", "max", "min"]
HEAD_FUSIONS: tuple[str, ...] = ("mean", "max", "min")


class QueryAttention(NamedTuple):
    """Where the query token looks, per layer and head.

    Attributes:
        maps: ``(L, B, H, gh, gw)`` distribution over patches (sums to 1).
        prefix_mass: ``(L, B, H)`` attention mass on prefix tokens, in [0, 1]:
            of the class-token row (self-attention included); without a class
            token, the mean over patch query rows.
    """

    maps: Tensor
    prefix_mass: Tensor


def query_rows(matrix: Tensor, layout: TokenLayout) -> Tensor:
    """``(..., N, N) -> (..., N)``: the class-token row, else the mean of patch rows."""
    if layout.has_class_token:
        return matrix[..., 0, :]
    return matrix[..., layout.num_prefix_tokens :, :].mean(dim=-2)


def _start_vector(layout: TokenLayout, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Row vector ``e_0`` (class token) or the mean of the patch basis vectors."""
    v = torch.zeros(*shape, layout.num_tokens, device=device)
    if layout.has_class_token:
        v[..., 0] = 1.0
    else:
        v[..., layout.num_prefix_tokens :] = 1.0 / layout.num_patches
    return v


def _to_grid(row: Tensor, layout: TokenLayout) -> Tensor:
    """``(..., N)`` row -> ``(..., gh, gw)`` patch part renormalised to sum 1."""
    patches = renormalize(row[..., layout.num_prefix_tokens :])
    return patches.reshape(*patches.shape[:-1], *layout.grid_size)


def cls_attention(
    attention: Tensor, layout: TokenLayout, *, validate: bool = True
) -> QueryAttention:
    """Per-head attention of the query token over the patch grid.

    With a class token the query is row 0; without one it is the mean of the
    patch query rows. The patch part is renormalised to sum 1; the mass left
    on prefix tokens is returned separately, never dropped silently.

    Args:
        attention: ``(L, B, H, N, N)`` post-softmax attention.
        layout: token layout with ``N`` tokens.
        validate: check the values (skip it for an already validated
            :class:`~lit_vit.attention.AttentionRecording`); shapes are always checked.

    Returns:
        :class:`QueryAttention` with ``maps (L, B, H, gh, gw)`` and
        ``prefix_mass (L, B, H)``.

    Raises:
        ValueError: bad attention shape, values or layout.
    """
    attention = checked_attention(attention, layout, validate)
    return query_attention(query_rows(attention, layout), layout)


def query_attention(rows: Tensor, layout: TokenLayout) -> QueryAttention:
    """:class:`QueryAttention` of the ``(L, B, H, N)`` rows of :func:`query_rows`."""
    prefix_mass = rows[..., : layout.num_prefix_tokens].sum(dim=-1)
    return QueryAttention(maps=_to_grid(rows, layout), prefix_mass=prefix_mass)


def fuse_heads(attention: Tensor, head_fusion: str) -> Tensor:
    if head_fusion == "mean":
        return attention.mean(dim=-3)
    if head_fusion == "max":
        return attention.amax(dim=-3)
    if head_fusion == "min":
        return attention.amin(dim=-3)
    raise ValueError(f"head_fusion must be one of 'mean', 'max', 'min', got {head_fusion!r}.")


def _discard(fused: Tensor, layout: TokenLayout, ratio: float) -> Tensor:
    """Zero the smallest ``floor(ratio * N * G)`` patch-key entries of each image.

    ``fused`` is ``(..., N, N)``; the count is taken over the last two dims.
    """
    prefix = fused[..., : layout.num_prefix_tokens]
    patches = fused[..., layout.num_prefix_tokens :]
    flat = patches.flatten(-2)  # (..., N * G)
    count = math.floor(ratio * flat.shape[-1])
    if count == 0:
        return fused
    index = flat.argsort(dim=-1, stable=True)[..., :count]
    flat = flat.scatter(-1, index, 0.0)
    return torch.cat([prefix, flat.reshape(patches.shape)], dim=-1)


def _fused(attention: Tensor, layout: TokenLayout, head_fusion: str, ratio: float) -> Tensor:
    """One layer's ``(B, H, N, N)`` attention fused over heads, then discarded: ``(B, N, N)``."""
    fused = fuse_heads(attention, head_fusion)
    return _discard(fused, layout, ratio) if ratio > 0 else fused


def mixed_attention(
    attention: Tensor, layout: TokenLayout, head_fusion: str, discard_ratio: float
) -> Tensor:
    """One layer's ``Ã = rownorm(0.5 * fused + 0.5 * I)``: heads fused, weakest patch entries
    discarded, the residual added. ``(B, H, N, N)`` -> ``(B, N, N)``, rows sum to 1."""
    fused = _fused(attention, layout, head_fusion, discard_ratio)
    mixed = 0.5 * fused + 0.5 * torch.eye(layout.num_tokens, device=attention.device)
    return mixed / mixed.sum(dim=-1, keepdim=True)


def check_rollout_arguments(
    attention: object,
    layout: TokenLayout,
    head_fusion: str,
    discard_ratio: object,
    start_layer: object,
) -> None:
    """Raise a ValueError naming the bad value for rollout's (and flow's) arguments."""
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of 'mean', 'max', 'min', got {head_fusion!r}.")
    if (
        isinstance(discard_ratio, bool)
        or not isinstance(discard_ratio, (int, float))
        or not 0 <= discard_ratio < 1
    ):
        raise ValueError(f"discard_ratio must be a number in [0, 1), got {discard_ratio!r}.")
    num_layers = check_attention_shape(attention, layout).shape[0]
    if (
        isinstance(start_layer, bool)
        or not isinstance(start_layer, int)
        or not 0 <= start_layer < num_layers
    ):
        raise ValueError(
            f"start_layer must be an int in [0, {num_layers - 1}] (the attention has "
            f"{num_layers} layers), got {start_layer!r}."
        )


def _row_times_mixed(row: Tensor, fused: Tensor, row_sums: Tensor | None = None) -> Tensor:
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


def _mean_rollout_row(
    attention: Tensor, layout: TokenLayout, start_layer: int, validate: bool
) -> Tensor:
    """Row-form rollout for mean head fusion without discard: one pass over memory.

    ``row @ rownorm(0.5 * mean_h A + 0.5 * I)`` is ``w @ mean_h A + w`` with
    ``w = 0.5 * row / (0.5 * mean_h rowsum(A) + 0.5)`` (see
    :func:`_row_times_mixed`), and ``w @ mean_h A = [w, ..., w] @ A.reshape(H N, N) / H``.
    So no fused ``(B, N, N)`` matrix is formed, the row sums come from the
    validation, and each cache-sized chunk is validated and used while it is
    in cache. An image's row depends only on its own chunks, so it is updated
    in place, chunk by chunk, last layer first.

    Args:
        attention: ``(L, B, H, N, N)`` attention.
        layout: token layout with ``N`` tokens.
        start_layer: first layer included.
        validate: validate each chunk on the way (else only compute).

    Returns:
        ``(B, N)`` row of the rollout matrix (class-token row, or mean patch row).
    """
    _, batch, heads, n, _ = attention.shape
    row = _start_vector(layout, (batch,), attention.device)  # (B, N)
    chunks = checked_chunks(attention, layout, last_layer_first=True, check_values=validate)
    for chunk in chunks:
        if chunk.layer < start_layer:
            continue  # validated, not part of the product
        weights = 0.5 * row[chunk.images] / (0.5 * chunk.row_sums.mean(dim=1) + 0.5)  # (b, N)
        stacked = weights.repeat(1, heads)[:, None, :]  # (b, 1, H N)
        mixed = torch.bmm(stacked, chunk.attention.reshape(-1, heads * n, n))[:, 0] / heads
        row[chunk.images] = mixed + weights
    return row


def rollout(
    attention: Tensor,
    layout: TokenLayout,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
    method: Literal["row", "matrix"] = "row",
    *,
    validate: bool = True,
) -> Tensor:
    """Attention rollout map over the patch grid.

    Per layer: fuse heads, zero the smallest ``discard_ratio`` of patch-key
    entries, ``Ã = rownorm(0.5 * fused + 0.5 * I)``; then
    ``R = Ã[L-1] @ ... @ Ã[start_layer]`` and take the class-token row of
    ``R`` (without a class token: the mean of its patch rows) over patch keys,
    renormalised to sum 1.

    Args:
        attention: ``(L, B, H, N, N)`` post-softmax attention.
        layout: token layout with ``N`` tokens.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over heads.
        discard_ratio: fraction in [0, 1) of patch-key entries zeroed per layer
            and image (prefix-key entries are never discarded).
        start_layer: first layer included, ``0 <= start_layer < L``.
        method: ``"row"`` propagates one row vector (``O(L N^2)`` per image);
            ``"matrix"`` forms the full product (``O(L N^3)``). Same result.
        validate: check the values (skip it for an already validated
            :class:`~lit_vit.attention.AttentionRecording`); shapes are always checked.

    Returns:
        ``(B, gh, gw)`` float32, non-negative, sums to 1 per image.

    Raises:
        ValueError: bad attention or layout, unknown ``head_fusion`` or
            ``method``, ``discard_ratio`` outside [0, 1), ``start_layer`` out of
            range.
    """
    if method not in ("row", "matrix"):
        raise ValueError(f"method must be 'row' or 'matrix', got {method!r}.")
    check_rollout_arguments(attention, layout, head_fusion, discard_ratio, start_layer)
    num_layers = attention.shape[0]
    if method == "row" and head_fusion == "mean" and discard_ratio == 0:
        return _to_grid(_mean_rollout_row(attention, layout, start_layer, validate), layout)
    attention = checked_attention(attention, layout, validate)
    batch = attention.shape[1]
    layers = range(num_layers - 1, start_layer - 1, -1)  # last layer first
    if method == "row":
        row = _start_vector(layout, (batch,), attention.device)  # (B, N)
        for layer in layers:
            fused = _fused(attention[layer], layout, head_fusion, discard_ratio)  # (B, N, N)
            row = _row_times_mixed(row, fused)
    else:
        product = torch.eye(layout.num_tokens, device=attention.device).expand(batch, -1, -1)
        for layer in layers:
            product = product @ mixed_attention(
                attention[layer], layout, head_fusion, discard_ratio
            )
        row = query_rows(product, layout)
    return _to_grid(row, layout)


def fused_rollout(
    fused: Tensor,
    layout: TokenLayout,
    discard_ratio: float = 0.0,
    start_layer: int = 0,
    row_sums: Tensor | None = None,
) -> Tensor:
    """:func:`rollout` of attention whose heads are already fused.

    Args:
        fused: ``(L, B, N, N)`` head-fused attention (validated where it was recorded).
        layout: token layout with ``N`` tokens.
        discard_ratio: as in :func:`rollout`.
        start_layer: as in :func:`rollout`.
        row_sums: ``(L, B, N)`` row sums of ``fused`` when known: without discard,
            each matrix is then read once.

    Returns:
        ``(B, gh, gw)`` float32, non-negative, sums to 1 per image.

    Raises:
        ValueError: bad shape or layout, ``discard_ratio`` or ``start_layer``.
    """
    check_rollout_arguments(fused[:, :, None], layout, "mean", discard_ratio, start_layer)
    row = _start_vector(layout, (fused.shape[1],), fused.device)  # (B, N)
    for layer in range(fused.shape[0] - 1, start_layer - 1, -1):  # last layer first
        if discard_ratio > 0:
            row = _row_times_mixed(row, _discard(fused[layer], layout, discard_ratio))
        else:
            row = _row_times_mixed(row, fused[layer], None if row_sums is None else row_sums[layer])
    return _to_grid(row, layout)


def gradient_rollout(
    attention: Tensor, attention_grad: Tensor, layout: TokenLayout, *, validate: bool = True
) -> Tensor:
    """Class-specific gradient-weighted rollout (Chefer et al., ICCV 2021).

    ``Abar[l] = mean_h relu(dA[l] * A[l])``; ``R = I``; for each layer in
    forward order ``R = R + Abar[l] @ R``. The map is the class-token row of
    ``R`` (without a class token: the mean of its patch rows) over patch keys,
    renormalised to sum 1 (uniform if it has no mass there). Computed as one
    row vector: ``v = e_0; v = v + v @ Abar[l]`` for ``l = L-1 .. 0``.

    Args:
        attention: ``(L, B, H, N, N)`` attention of the real forward graph.
        attention_grad: same shape, ``d logit_c / d attention``
            (``AttentionRecording.attention_grads[i]``).
        layout: token layout with ``N`` tokens.
        validate: check the values (skip it for an already validated
            :class:`~lit_vit.attention.AttentionRecording`); shapes are always checked.

    Returns:
        ``(B, gh, gw)`` float32, non-negative, sums to 1 per image.

    Raises:
        ValueError: bad attention, gradient or layout, or mismatched shapes.
    """
    attention = checked_attention(attention, layout, validate)
    attention_grad = checked_attention(
        attention_grad, layout, validate, name="attention_grad", rows_sum_to_one=False
    )
    if attention_grad.shape != attention.shape:
        raise ValueError(
            f"attention_grad has shape {tuple(attention_grad.shape)} but attention has "
            f"{tuple(attention.shape)}; pass the gradient recorded with this attention."
        )
    return weighted_rollout(gradient_product(attention_grad, attention), layout)


def gradient_product(attention_grad: Tensor, attention: Tensor) -> Tensor:
    """``mean_h relu(dA * A)``: ``(..., H, N, N)`` -> ``(..., N, N)``."""
    return torch.relu(attention_grad * attention).mean(dim=-3)


def weighted_rollout(weighted: Tensor, layout: TokenLayout) -> Tensor:
    """Gradient rollout of the ``(L, B, N, N)`` products of :func:`gradient_product`:
    ``(B, gh, gw)``."""
    v = _start_vector(layout, (weighted.shape[1],), weighted.device)
    for layer in reversed(range(weighted.shape[0])):
        v = v + torch.bmm(v[:, None, :], weighted[layer])[:, 0]
    return _to_grid(v, layout)
