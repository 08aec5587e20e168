"""Attention flow (Abnar & Zuidema 2020) of a full attention tensor; the network is in
:mod:`~lit_vit.attention.flow_network`."""

from __future__ import annotations

from torch import Tensor

from lit_vit.attention._validate import check_attention_shape
from lit_vit.attention.layout import TokenLayout
from lit_vit.attention.propagation import HeadFusion, check_rollout_settings
from lit_vit.attention.reduction import reduce_attention

__all__ = ["attention_flow"]


def attention_flow(
    attention: Tensor,
    layout: TokenLayout,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
    *,
    validate: bool = True,
) -> Tensor:
    """:meth:`ReducedAttention.attention_flow <lit_vit.attention.ReducedAttention.attention_flow>`
    of ``(L, B, H, N, N)`` attention: ``(B, gh, gw)``.

    ``attention``, ``layout``, ``validate`` and the errors as
    :func:`~lit_vit.attention.reduction.reduce_attention`; the settings as the method.
    """
    num_layers = check_attention_shape(attention, layout).shape[0]
    check_rollout_settings(head_fusion, discard_ratio, start_layer, num_layers)  # fail fast
    reduced = reduce_attention(
        attention, layout, parts=(), head_fusions=(head_fusion,), validate=validate
    )
    return reduced.attention_flow(head_fusion, discard_ratio, start_layer)
