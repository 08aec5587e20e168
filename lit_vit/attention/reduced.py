"""Attention reduced to what the analyses read, and every measure of it: the toolkit's currency.

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

The recorder reduces each layer as it arrives and drops it; the public
functions on a full tensor (:func:`~lit_vit.attention.cls_attention`,
:func:`~lit_vit.attention.head_diversity`, ...) reduce it once with
:func:`~lit_vit.attention.reduction.reduce_attention` and call the
:class:`ReducedAttention` method of the same name, where each measure is
defined and documented. Mean-fused rollout without discard is the exception:
it streams the input (:func:`~lit_vit.attention.propagation.mean_rollout_row`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from lit_vit.attention.flow_network import flow_maps
from lit_vit.attention.layout import TokenLayout
from lit_vit.attention.propagation import (
    HeadFusion,
    check_rollout_settings,
    mixed_attention,
    rollout_matrix,
    rollout_row,
    to_grid,
    weighted_rollout_row,
)
from lit_vit.attention.representations import SINK_THRESHOLD, sink_rate_of_keys

__all__ = ["AttentionDistance", "AttentionEntropy", "QueryAttention", "ReducedAttention"]

_TINY = torch.finfo(torch.float32).tiny


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


@dataclass(frozen=True)
class ReducedAttention:
    """What the analyses read of ``(L, B, H, N, N)`` attention, and every measure of it.

    Made by the recorder (``AttentionRecording.reduced``) or
    :func:`~lit_vit.attention.reduction.reduce_attention`.
    A method whose part was not kept raises a ValueError naming it.

    Attributes:
        layout: The token layout of the recorded input size.
        query_rows: ``(L, B, H, N)`` each head's query row (the class-token row;
            without a class token the mean patch row) over all keys.
        fused: Head fusion (``"mean"``, ``"max"``, ``"min"``) -> ``(L, B, N, N)``
            head-fused attention, for the fusions kept.
        fused_row_sums: Head fusion -> ``(L, B, N)`` row sums of ``fused`` (so
            that rollout reads each fused matrix once).
        distances: ``(L, B, H)`` mean attention distance in pixels per image.
        key_mass: ``(L, B, H, N)`` mean attention each key receives over the queries.
        gradient_products: One ``(L, B, N, N)`` tensor ``mean_h relu(dA * A)`` per
            gradient target.
    """

    layout: TokenLayout
    query_rows: Tensor | None
    fused: Mapping[str, Tensor]
    fused_row_sums: Mapping[str, Tensor]
    distances: Tensor | None
    key_mass: Tensor | None
    gradient_products: tuple[Tensor, ...] = ()

    @property
    def num_layers(self) -> int:
        """``L``."""
        kept = [*self.fused.values(), self.query_rows, self.distances, self.key_mass]
        return next(tensor.shape[0] for tensor in kept if tensor is not None)

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
        return sum(tensor.nbytes for tensor in tensors if tensor is not None)

    def cls_attention(self) -> QueryAttention:
        """Per-head attention of the query token over the patch grid.

        With a class token the query is row 0; without one it is the mean of
        the patch query rows. The patch part is renormalised to sum 1; the mass
        left on prefix tokens is returned separately, never dropped silently.

        Returns:
            ``maps (L, B, H, gh, gw)`` and ``prefix_mass (L, B, H)``.
        """
        rows = self._part("query_rows")  # (L, B, H, N)
        prefix_mass = rows[..., : self.layout.num_prefix_tokens].sum(dim=-1)
        return QueryAttention(maps=to_grid(rows, self.layout), prefix_mass=prefix_mass)

    def query_distribution(self) -> Tensor:
        """The query rows of :meth:`cls_attention` over the patches: ``(L, B, H, G)``,
        rows sum to 1."""
        return self.cls_attention().maps.flatten(-2)

    def head_diversity(self) -> Tensor:
        """Mean pairwise Jensen-Shannon divergence between the heads of each layer.

        JS in bits (log base 2), so in [0, 1]: 0 when all heads attend alike, 1
        for heads with disjoint supports. Averaged over head pairs, then images.

        Returns:
            ``(L,)`` float32 in [0, 1]; 0 for a single head.
        """
        q = self.query_distribution()  # (L, B, H, G)
        heads = q.shape[2]
        if heads < 2:
            return q.new_zeros(q.shape[0])
        # JS(p, r) = H(m) - (H(p) + H(r)) / 2 with m = (p + r) / 2, entropies in bits
        first, second = torch.triu_indices(heads, heads, offset=1, device=q.device)
        own = -_plogp(q, torch.log2).sum(dim=-1)  # (L, B, H)
        mixed = 0.5 * (q[:, :, first] + q[:, :, second])  # (L, B, pairs, G)
        mixed_entropy = -_plogp(mixed, torch.log2).sum(dim=-1)  # (L, B, pairs)
        pairs = mixed_entropy - 0.5 * (own[:, :, first] + own[:, :, second])
        return pairs.clamp(0.0, 1.0).mean(dim=-1).mean(dim=-1)

    def attention_entropy(self) -> AttentionEntropy:
        """Normalised entropy and effective area of each head's query distribution.

        Returns:
            :class:`AttentionEntropy` of ``(L, H)`` tensors, averaged over images.
            With a single patch (``G = 1``) both are 1.
        """
        q = self.query_distribution()  # (L, B, H, G)
        grid = q.shape[-1]
        nats = -_plogp(q).sum(dim=-1)  # (L, B, H)
        normalized = (nats / math.log(grid)).clamp(0.0, 1.0) if grid > 1 else torch.ones_like(nats)
        area = (torch.exp(nats) / grid).clamp(max=1.0)
        return AttentionEntropy(normalized=normalized.mean(dim=1), effective_area=area.mean(dim=1))

    def mean_attention_distance(self) -> AttentionDistance:
        """Mean attention distance of patch queries over patch keys.

        For each patch query ``i`` the patch-to-patch row is renormalised over
        patch keys; the distance is ``sum_j a_ij * ||c_i - c_j||`` with ``c`` the
        patch centres in pixels, averaged over queries and then images.

        Returns:
            :class:`AttentionDistance` of ``(L, H)`` tensors. With a single patch
            ``relative`` is 1.
        """
        pixels = self._part("distances").mean(dim=1)  # (L, H)
        uniform = self.layout.patch_distances(pixels.device).mean()
        relative = pixels / uniform if float(uniform) > 0 else torch.ones_like(pixels)
        return AttentionDistance(pixels=pixels, relative=relative)

    def sink_rate(self, threshold: float = SINK_THRESHOLD) -> Tensor:
        """:func:`~lit_vit.attention.sink_rate`: ``(L,)``."""
        return sink_rate_of_keys(self._part("key_mass"), threshold)

    def rollout(
        self,
        head_fusion: HeadFusion = "mean",
        discard_ratio: float = 0.0,
        start_layer: int = 0,
        method: Literal["row", "matrix"] = "row",
    ) -> Tensor:
        """Attention rollout map over the patch grid (Abnar & Zuidema 2020).

        Per layer: fuse heads, zero the smallest ``discard_ratio`` of patch-key
        entries, ``Ã = rownorm(0.5 * fused + 0.5 * I)``; then
        ``R = Ã[L-1] @ ... @ Ã[start_layer]`` and take the class-token row of
        ``R`` (without a class token: the mean of its patch rows) over patch
        keys, renormalised to sum 1.

        Args:
            head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over heads (kept by the reduction).
            discard_ratio: fraction in [0, 1) of patch-key entries zeroed per
                layer and image (prefix-key entries are never discarded).
            start_layer: first layer included, ``0 <= start_layer < L``.
            method: ``"row"`` propagates one row vector (``O(L N^2)`` per image);
                ``"matrix"`` forms the full product (``O(L N^3)``). Same result.

        Returns:
            ``(B, gh, gw)`` float32, non-negative, sums to 1 per image.

        Raises:
            ValueError: ``head_fusion`` was not kept, a bad setting or ``method``.
        """
        fused = self._fused(head_fusion, discard_ratio, start_layer, method)
        if method == "matrix":
            row = rollout_matrix(fused, self.layout, discard_ratio, start_layer)
        else:
            row_sums = self.fused_row_sums[head_fusion]
            row = rollout_row(fused, self.layout, discard_ratio, start_layer, row_sums)
        return to_grid(row, self.layout)

    def attention_flow(
        self, head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0, start_layer: int = 0
    ) -> Tensor:
        """Attention flow map over the patch grid (Abnar & Zuidema 2020): the maximum
        flow from each patch through the layers of ``Ã`` (as in :meth:`rollout`, from
        ``start_layer``) to the class token, renormalised (see
        :mod:`~lit_vit.attention.flow_network`).

        Returns:
            ``(B, gh, gw)`` float32, non-negative, sums to 1 per image (uniform
            when no flow reaches the top).

        Raises:
            ValueError: as :meth:`rollout`.
        """
        fused = self._fused(head_fusion, discard_ratio, start_layer)
        mixed = torch.stack(
            [mixed_attention(matrix, self.layout, discard_ratio) for matrix in fused[start_layer:]]
        )  # (L - s, B, N, N)
        return flow_maps(mixed, self.layout)

    def gradient_rollout(self, target: int = 0) -> Tensor:
        """Class-specific gradient-weighted rollout (Chefer et al., ICCV 2021).

        ``Abar[l] = mean_h relu(dA[l] * A[l])``; ``R = I``; for each layer in
        forward order ``R = R + Abar[l] @ R``. The map is the class-token row
        of ``R`` (without a class token: the mean of its patch rows) over patch
        keys, renormalised to sum 1 (uniform if it has no mass there).

        Args:
            target: index of the gradient target.

        Returns:
            ``(B, gh, gw)`` float32, non-negative, sums to 1 per image.
        """
        row = weighted_rollout_row(self.gradient_products[target], self.layout)
        return to_grid(row, self.layout)

    def _part(self, name: str) -> Tensor:
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"{name} was not kept; reduce with parts including {name!r}.")
        return value

    def _fused(
        self, head_fusion: str, discard_ratio: float, start_layer: int, method: str = "row"
    ) -> Tensor:
        """The ``(L, B, N, N)`` fused matrices after checking the settings against them."""
        check_rollout_settings(head_fusion, discard_ratio, start_layer, self.num_layers, method)
        if head_fusion not in self.fused:
            raise ValueError(
                f"head_fusion {head_fusion!r} was not recorded (recorded: {sorted(self.fused)}); "
                f"record with head_fusions including {head_fusion!r}."
            )
        return self.fused[head_fusion]


def _plogp(p: Tensor, log=torch.log) -> Tensor:
    """``p * log(p)`` with ``0 log 0 = 0``."""
    return torch.where(p > 0, p * log(p.clamp_min(_TINY)), torch.zeros_like(p))
