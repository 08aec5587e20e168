"""A learnable 2-D distance bias for timm attention: a locality prior the model may unlearn.

Each head ``h`` adds ``-slope_h * d(i, j)`` to its attention logits, where
``d`` is the Euclidean distance in patches between the grid positions of
query ``i`` and key ``j`` (ALiBi's linear bias, in two dimensions). Prefix
tokens (class, registers) get no bias either way. The slopes start at
``1, 1/2, 1/4, ...`` per head, so every layer begins local in some heads
and nearly global in others, and they are trained with the network (no
weight decay, as timm skips 1-D parameters): a layer whose slopes fall to
zero has learned to be global.
"""

from __future__ import annotations

import math

import torch
from timm.layers import Attention
from torch import Tensor, nn


class DistanceBiasAttention(Attention):
    """timm's ``Attention`` with the distance bias added to its ``attn_mask``.

    Built by timm in place of its ``Attention``
    (``timm.create_model(..., attn_layer=DistanceBiasAttention)``), so the
    module names, ``fused_attn`` and ``attn_drop`` stay timm's and the
    attention that lit-vit's capture reads includes the bias.

    Args:
        dim, num_heads, **kwargs: timm's ``Attention`` arguments.
        num_prefix_tokens: Tokens before the patch grid (class, registers);
            :func:`set_prefix_tokens` sets it from the ViT.

    Raises:
        ValueError: At forward, when the tokens after the prefix do not form a
            square grid.
    """

    def __init__(self, dim: int, num_heads: int = 8, num_prefix_tokens: int = 1, **kwargs) -> None:
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.num_prefix_tokens = num_prefix_tokens
        self.slope = nn.Parameter(2.0 ** -torch.arange(num_heads, dtype=torch.float32))  # (H,)

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        """``(B, N, D)`` tokens to ``(B, N, D)``; a given ``attn_mask`` (additive, or boolean
        with True where attending is allowed) is combined with the bias."""
        bias = self.bias(x.shape[1]).to(_logit_dtype(x))  # (1, H, N, N)
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # True: may attend
            bias = bias.masked_fill(~attn_mask, -math.inf)
        elif attn_mask is not None:
            bias = bias + attn_mask
        return super().forward(x, attn_mask=bias, is_causal=is_causal)

    def bias(self, tokens: int) -> Tensor:
        """The additive bias ``(1, H, N, N)`` for ``N = tokens``; zero on prefix rows and
        columns."""
        prefix = self.num_prefix_tokens
        distance = grid_distances(tokens - prefix, device=self.slope.device)  # (G, G)
        grid_bias = -self.slope[:, None, None] * distance  # (H, G, G)
        return nn.functional.pad(grid_bias, (prefix, 0, prefix, 0))[None]


def grid_distances(grid_tokens: int, device: torch.device | None = None) -> Tensor:
    """Euclidean distances ``(G, G)``, in patches, between the cells of a square grid of ``G``
    cells numbered row by row like a ViT's patch tokens.

    Raises:
        ValueError: ``grid_tokens`` is not a square number.
    """
    side = math.isqrt(grid_tokens)
    if side * side != grid_tokens:
        raise ValueError(
            f"the distance bias needs a square patch grid; {grid_tokens} patch tokens are not "
            "one. Use square images, or a model with model.distance_bias: false."
        )
    rows, columns = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    cells = torch.stack([rows.flatten(), columns.flatten()], dim=1).to(device, torch.float32)
    return torch.cdist(cells, cells)


def set_prefix_tokens(vit: nn.Module) -> None:
    """Give every :class:`DistanceBiasAttention` of a timm ViT its ``num_prefix_tokens``."""
    for module in vit.modules():
        if isinstance(module, DistanceBiasAttention):
            module.num_prefix_tokens = vit.num_prefix_tokens


def _logit_dtype(x: Tensor) -> torch.dtype:
    """The dtype of the attention logits: autocast's when it is on, else the tokens'."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype
