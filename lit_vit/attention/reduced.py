"""Attention reduced, layer by layer while it is recorded, to what the analyses read.

The full attention of a recording is ``(L, B, H, N, N)`` float32: 4 GiB for 8
images of ViT-L/16 at 384 px (L=24, H=16, N=577), and as much again per
gradient. No analysis reads all of it:

- class-token maps, prefix mass, head diversity and entropy read each head's
  query row: ``(L, B, H, N)``;
- mean attention distance reads one number per image and head: ``(L, B, H)``;
- the sink rate reads the mean attention each key receives, per head: ``(L, B, H, N)``;
- rollout and attention flow read the head-fused matrices: ``(L, B, N, N)``
  per head fusion;
- gradient rollout reads ``mean_h relu(dA * A)``: ``(L, B, N, N)`` per target.

So the recorder reduces each layer as it arrives and drops it, and keeps at
most ``1/H`` of the full tensor (plus the ``(L, B, H, N)`` rows and key mass). Every
measure computed here equals the one computed from the full tensor (up to
float rounding; the tests compare both).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from lit_vit.attention.flow import attention_flow
from lit_vit.attention.layout import TokenLayout
from lit_vit.attention.metrics import (
    AttentionDistance,
    AttentionEntropy,
    distance_summary,
    diversity_of_queries,
    entropy_of_queries,
    patch_query_distances,
)
from lit_vit.attention.representations import SINK_THRESHOLD, sink_rate_of_keys
from lit_vit.attention.rollout import (
    HEAD_FUSIONS,
    HeadFusion,
    QueryAttention,
    fuse_heads,
    fused_rollout,
    query_attention,
    query_rows,
    weighted_rollout,
)

__all__ = ["HEAD_FUSIONS", "LayerReduction", "ReducedAttention", "reduce_layer"]


class LayerReduction(NamedTuple):
    """One layer's ``(B, H, N, N)`` attention reduced.

    Attributes:
        query_rows: ``(B, H, N)`` each head's query row over all keys.
        fused: head fusion -> ``(B, N, N)`` head-fused matrix.
        fused_row_sums: head fusion -> ``(B, N)`` its row sums.
        distances: ``(B, H)`` mean attention distance in pixels.
        key_mass: ``(B, H, N)`` mean attention each key receives over the queries.
    """

    query_rows: Tensor
    fused: dict[str, Tensor]
    fused_row_sums: dict[str, Tensor]
    distances: Tensor
    key_mass: Tensor


def reduce_layer(
    attention: Tensor, layout: TokenLayout, head_fusions: Sequence[str] = ("mean",)
) -> LayerReduction:
    """Reduce one layer's ``(B, H, N, N)`` float attention (see the module docstring)."""
    fused = {fusion: fuse_heads(attention, fusion) for fusion in head_fusions}
    return LayerReduction(
        # A copy: the class-token row is a view that would keep the whole layer alive.
        query_rows=query_rows(attention, layout).clone(),
        fused=fused,
        fused_row_sums={fusion: matrix.sum(dim=-1) for fusion, matrix in fused.items()},
        distances=patch_query_distances(attention, layout),
        key_mass=attention.mean(dim=-2),
    )


@dataclass(frozen=True)
class ReducedAttention:
    """What the analyses read of a recording's ``(L, B, H, N, N)`` attention.

    Attributes:
        layout: The token layout of the recorded input size.
        query_rows: ``(L, B, H, N)`` each head's query row (the class-token row;
            without a class token the mean patch row) over all keys.
        fused: Head fusion (``"mean"``, ``"max"``, ``"min"``) -> ``(L, B, N, N)``
            head-fused attention, for the fusions recorded.
        fused_row_sums: Head fusion -> ``(L, B, N)`` row sums of ``fused`` (so
            that rollout reads each fused matrix once).
        distances: ``(L, B, H)`` mean attention distance in pixels per image.
        key_mass: ``(L, B, H, N)`` mean attention each key receives over the queries.
        gradient_products: One ``(L, B, N, N)`` tensor ``mean_h relu(dA * A)`` per
            gradient target of the recording.
    """

    layout: TokenLayout
    query_rows: Tensor
    fused: Mapping[str, Tensor]
    fused_row_sums: Mapping[str, Tensor]
    distances: Tensor
    key_mass: Tensor
    gradient_products: tuple[Tensor, ...] = ()

    @classmethod
    def from_layers(
        cls,
        layers: Sequence[LayerReduction],
        layout: TokenLayout,
        gradient_products: Sequence[Sequence[Tensor]] = (),
    ) -> ReducedAttention:
        """Stack per-layer reductions (forward order); ``gradient_products`` holds one
        sequence of ``(B, N, N)`` per target, one entry per layer."""
        return cls(
            layout=layout,
            query_rows=torch.stack([layer.query_rows for layer in layers]),
            fused={
                fusion: torch.stack([layer.fused[fusion] for layer in layers])
                for fusion in layers[0].fused
            },
            fused_row_sums={
                fusion: torch.stack([layer.fused_row_sums[fusion] for layer in layers])
                for fusion in layers[0].fused
            },
            distances=torch.stack([layer.distances for layer in layers]),
            key_mass=torch.stack([layer.key_mass for layer in layers]),
            gradient_products=tuple(torch.stack(list(target)) for target in gradient_products),
        )

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors."""
        tensors = [
            self.query_rows,
            self.distances,
            self.key_mass,
            *self.fused.values(),
            *self.fused_row_sums.values(),
            *self.gradient_products,
        ]
        return sum(tensor.nbytes for tensor in tensors)

    def cls_attention(self) -> QueryAttention:
        """:func:`~lit_vit.attention.cls_attention`: ``(L, B, H, gh, gw)`` maps, ``(L, B, H)``
        prefix mass."""
        return query_attention(self.query_rows, self.layout)

    def head_diversity(self) -> Tensor:
        """:func:`~lit_vit.attention.head_diversity`: ``(L,)``."""
        return diversity_of_queries(self._query_distributions())

    def attention_entropy(self) -> AttentionEntropy:
        """:func:`~lit_vit.attention.attention_entropy`: ``(L, H)`` each."""
        return entropy_of_queries(self._query_distributions())

    def mean_attention_distance(self) -> AttentionDistance:
        """:func:`~lit_vit.attention.mean_attention_distance`: ``(L, H)`` each."""
        return distance_summary(self.distances, self.layout)

    def sink_rate(self, threshold: float = SINK_THRESHOLD) -> Tensor:
        """:func:`~lit_vit.attention.sink_rate`: ``(L,)``."""
        return sink_rate_of_keys(self.key_mass, threshold)

    def rollout(
        self, head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0, start_layer: int = 0
    ) -> Tensor:
        """:func:`~lit_vit.attention.rollout` with these settings: ``(B, gh, gw)``.

        Raises:
            ValueError: ``head_fusion`` was not recorded, or a bad setting.
        """
        fused = self._fused(head_fusion)
        row_sums = self.fused_row_sums[head_fusion]
        return fused_rollout(fused, self.layout, discard_ratio, start_layer, row_sums)

    def attention_flow(
        self, head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0, start_layer: int = 0
    ) -> Tensor:
        """:func:`~lit_vit.attention.attention_flow` with these settings: ``(B, gh, gw)``.

        Raises:
            ValueError: ``head_fusion`` was not recorded, or a bad setting.
        """
        fused = self._fused(head_fusion)[:, :, None]
        return attention_flow(
            fused, self.layout, "mean", discard_ratio, start_layer, validate=False
        )

    def gradient_rollout(self, target: int = 0) -> Tensor:
        """:func:`~lit_vit.attention.gradient_rollout` for the recording's gradient target
        ``target``: ``(B, gh, gw)``."""
        return weighted_rollout(self.gradient_products[target], self.layout)

    def _query_distributions(self) -> Tensor:
        """``(L, B, H, G)`` query rows over the patches, renormalised."""
        return query_attention(self.query_rows, self.layout).maps.flatten(-2)

    def _fused(self, head_fusion: str) -> Tensor:
        if head_fusion not in self.fused:
            raise ValueError(
                f"head_fusion {head_fusion!r} was not recorded (recorded: {sorted(self.fused)}); "
                f"record with head_fusions including {head_fusion!r}."
            )
        return self.fused[head_fusion]
