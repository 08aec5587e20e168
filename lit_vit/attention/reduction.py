"""Reduce attention to a :class:`~lit_vit.attention.reduced.ReducedAttention`: layer by
layer as the recorder captures it, or a whole ``(L, B, H, N, N)`` tensor at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

import torch
from torch import Tensor

from lit_vit.attention._validate import (
    check_attention_shape,
    checked_attention,
    checked_chunks,
    renormalize,
)
from lit_vit.attention.layout import TokenLayout
from lit_vit.attention.propagation import (
    HEAD_FUSIONS,
    check_head_fusions,
    fuse_heads,
    gradient_product,
    query_rows,
)
from lit_vit.attention.reduced import ReducedAttention

__all__ = [
    "HEAD_FUSIONS",
    "PARTS",
    "LayerReduction",
    "reduce_attention",
    "reduce_layer",
    "stack_layers",
]

# What a reduction keeps besides the head-fused matrices.
PARTS: tuple[str, ...] = ("query_rows", "distances", "key_mass")


class LayerReduction(NamedTuple):
    """One layer's ``(B, H, N, N)`` attention reduced (``None``: a part not kept).

    Attributes:
        query_rows: ``(B, H, N)`` each head's query row over all keys.
        fused: head fusion -> ``(B, N, N)`` head-fused matrix.
        fused_row_sums: head fusion -> ``(B, N)`` its row sums.
        distances: ``(B, H)`` mean attention distance in pixels.
        key_mass: ``(B, H, N)`` mean attention each key receives over the queries.
    """

    query_rows: Tensor | None
    fused: dict[str, Tensor]
    fused_row_sums: dict[str, Tensor]
    distances: Tensor | None
    key_mass: Tensor | None


def reduce_layer(
    attention: Tensor,
    layout: TokenLayout,
    head_fusions: Sequence[str] = ("mean",),
    parts: Sequence[str] = PARTS,
) -> LayerReduction:
    """Reduce one layer's ``(B, H, N, N)`` float attention (see the module docstring)."""
    fused = {fusion: fuse_heads(attention, fusion) for fusion in head_fusions}
    return LayerReduction(
        # A copy: the class-token row is a view that would keep the whole layer alive.
        query_rows=query_rows(attention, layout).clone() if "query_rows" in parts else None,
        fused=fused,
        fused_row_sums={fusion: matrix.sum(dim=-1) for fusion, matrix in fused.items()},
        distances=_patch_query_distances(attention, layout) if "distances" in parts else None,
        key_mass=attention.mean(dim=-2) if "key_mass" in parts else None,
    )


def _patch_query_distances(attention: Tensor, layout: TokenLayout) -> Tensor:
    """``(B, H, N, N) -> (B, H)``: ``sum_j a_ij ||c_i - c_j||`` of the patch-to-patch rows
    renormalised over patch keys, averaged over patch queries ``i``."""
    p = layout.num_prefix_tokens
    patch_rows = renormalize(attention[..., p:, p:])  # (B, H, G, G)
    dist = layout.patch_distances(attention.device)  # (G, G)
    return torch.einsum("...ij,ij->...", patch_rows, dist) / layout.num_patches


def reduce_attention(
    attention: Tensor,
    layout: TokenLayout,
    *,
    parts: Sequence[str] = PARTS,
    head_fusions: Sequence[str] = ("mean",),
    gradients: Sequence[Tensor] = (),
    validate: bool = True,
) -> ReducedAttention:
    """Reduce a full attention tensor once, validating it on the way.

    Every public measure of a full tensor is this followed by the
    :class:`ReducedAttention` method of its name; they share these arguments.

    Args:
        attention: ``(L, B, H, N, N)`` post-softmax attention, any float dtype.
        layout: token layout with ``N`` tokens.
        parts: what to keep besides the fused matrices, a subset of :data:`PARTS`.
        head_fusions: the head fusions to keep, a subset of ``("mean", "max", "min")``.
        gradients: ``(L, B, H, N, N)`` gradients of a logit with respect to
            ``attention`` (``AttentionRecording.attention_grads``), one per target.
        validate: check the values (skip it for an already validated
            :class:`~lit_vit.attention.AttentionRecording`); shapes are always checked.

    Returns:
        The :class:`ReducedAttention`; its tensors are float32.

    Raises:
        ValueError: bad attention shape, values or layout (NaN or inf naming the
            layers, rows not summing to 1, negative entries), an unknown part or
            head fusion, or a gradient of another shape.
    """
    check_head_fusions(head_fusions)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"parts {unknown} are unknown; choose from {list(PARTS)}.")
    shape = tuple(check_attention_shape(attention, layout).shape[:4])  # (L, B, H, N)
    reduced = _empty(layout, shape, parts, head_fusions, attention.device)
    for chunk in checked_chunks(attention, layout, check_values=validate):
        piece = reduce_layer(chunk.attention, layout, head_fusions, parts)
        _write(reduced, piece, (chunk.layer, chunk.images))
    products = tuple(_gradient_products(grad, attention, layout, validate) for grad in gradients)
    return replace(reduced, gradient_products=products)


def _empty(
    layout: TokenLayout,
    shape: tuple[int, int, int, int],
    parts: Sequence[str],
    head_fusions: Sequence[str],
    device: torch.device,
) -> ReducedAttention:
    """A :class:`ReducedAttention` of uninitialised float32 tensors for ``(L, B, H, N)``
    attention, filled chunk by chunk (so the result is the only copy made)."""
    layers, batch, heads, n = shape

    def empty(*size: int) -> Tensor:
        return torch.empty(*size, device=device)

    return ReducedAttention(
        layout=layout,
        query_rows=empty(layers, batch, heads, n) if "query_rows" in parts else None,
        fused={fusion: empty(layers, batch, n, n) for fusion in head_fusions},
        fused_row_sums={fusion: empty(layers, batch, n) for fusion in head_fusions},
        distances=empty(layers, batch, heads) if "distances" in parts else None,
        key_mass=empty(layers, batch, heads, n) if "key_mass" in parts else None,
    )


def _write(reduced: ReducedAttention, piece: LayerReduction, index: tuple[int, slice]) -> None:
    """Copy one chunk's reduction into ``reduced`` at ``[layer, images]``."""
    for name in PARTS:
        if getattr(piece, name) is not None:
            getattr(reduced, name)[index] = getattr(piece, name)
    for fusion, matrix in piece.fused.items():
        reduced.fused[fusion][index] = matrix
        reduced.fused_row_sums[fusion][index] = piece.fused_row_sums[fusion]


def _gradient_products(
    gradient: Tensor, attention: Tensor, layout: TokenLayout, validate: bool
) -> Tensor:
    """``(L, B, N, N)`` products ``mean_h relu(dA * A)`` of a checked gradient."""
    gradient = checked_attention(
        gradient, layout, validate, name="attention_grad", rows_sum_to_one=False
    )
    if gradient.shape != attention.shape:
        raise ValueError(
            f"attention_grad has shape {tuple(gradient.shape)} but attention has "
            f"{tuple(attention.shape)}; pass the gradient recorded with this attention."
        )
    return gradient_product(gradient, attention.float())


def stack_layers(
    layers: Sequence[LayerReduction],
    layout: TokenLayout,
    gradient_products: Sequence[Sequence[Tensor]] = (),
) -> ReducedAttention:
    """Stack per-layer reductions (forward order); ``gradient_products`` holds one
    sequence of ``(B, N, N)`` per target, one entry per layer."""

    def stacked(tensors: Sequence[Tensor | None]) -> Tensor | None:
        return None if tensors[0] is None else torch.stack(list(tensors))

    fusions = layers[0].fused
    return ReducedAttention(
        layout=layout,
        query_rows=stacked([layer.query_rows for layer in layers]),
        fused={f: torch.stack([layer.fused[f] for layer in layers]) for f in fusions},
        fused_row_sums={
            f: torch.stack([layer.fused_row_sums[f] for layer in layers]) for f in fusions
        },
        distances=stacked([layer.distances for layer in layers]),
        key_mass=stacked([layer.key_mass for layer in layers]),
        gradient_products=tuple(torch.stack(list(target)) for target in gradient_products),
    )
