"""Class-token attention, attention rollout (Abnar & Zuidema 2020) and gradient-weighted
rollout (Chefer, Gur & Wolf 2021) of a full attention tensor.

Each function takes the whole-model attention ``(L, B, H, N, N)`` of an
:class:`~lit_vit.attention.capture.AttentionRecording` and its ``TokenLayout``,
reduces it once with :func:`~lit_vit.attention.reduction.reduce_attention`
(whose arguments and errors they share) and calls the
:class:`~lit_vit.attention.ReducedAttention` method of its name, which
defines the measure.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from lit_vit.attention._validate import check_attention_shape
from lit_vit.attention.layout import TokenLayout
from lit_vit.attention.propagation import (
    HeadFusion,
    check_rollout_settings,
    mean_rollout_row,
    to_grid,
)
from lit_vit.attention.reduced import QueryAttention
from lit_vit.attention.reduction import reduce_attention

__all__ = ["QueryAttention", "cls_attention", "gradient_rollout", "rollout"]


def cls_attention(
    attention: Tensor, layout: TokenLayout, *, validate: bool = True
) -> QueryAttention:
    """:meth:`ReducedAttention.cls_attention <lit_vit.attention.ReducedAttention.cls_attention>`:
    ``maps (L, B, H, gh, gw)``, ``prefix_mass (L, B, H)``."""
    reduced = reduce_attention(
        attention, layout, parts=("query_rows",), head_fusions=(), validate=validate
    )
    return reduced.cls_attention()


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
    """:meth:`ReducedAttention.rollout <lit_vit.attention.ReducedAttention.rollout>`:
    ``(B, gh, gw)``, sums to 1 per image.

    Mean fusion without discard streams the input (one pass, no fused matrix).
    """
    num_layers = check_attention_shape(attention, layout).shape[0]
    check_rollout_settings(head_fusion, discard_ratio, start_layer, num_layers, method)  # fail fast
    if method == "row" and head_fusion == "mean" and discard_ratio == 0:
        return to_grid(mean_rollout_row(attention, layout, start_layer, validate), layout)
    reduced = reduce_attention(
        attention, layout, parts=(), head_fusions=(head_fusion,), validate=validate
    )
    return reduced.rollout(head_fusion, discard_ratio, start_layer, method)


def gradient_rollout(
    attention: Tensor, attention_grad: Tensor, layout: TokenLayout, *, validate: bool = True
) -> Tensor:
    """:meth:`ReducedAttention.gradient_rollout
    <lit_vit.attention.ReducedAttention.gradient_rollout>` of ``attention`` and its
    gradient ``attention_grad`` (same shape, ``AttentionRecording.attention_grads[i]``):
    ``(B, gh, gw)``."""
    reduced = reduce_attention(
        attention,
        layout,
        parts=(),
        head_fusions=(),
        gradients=(attention_grad,),
        validate=validate,
    )
    return reduced.gradient_rollout()
