"""Tiny models and synthetic attention for the attention-analysis tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import timm
import torch
from torch import Tensor, nn

from lit_vit.attention import TokenLayout

TINY = dict(
    pretrained=False,
    img_size=28,
    patch_size=4,
    in_chans=1,
    embed_dim=32,
    depth=2,
    num_heads=2,
    num_classes=10,
)


@pytest.fixture
def make_vit() -> Callable[..., nn.Module]:
    """``make_vit(name="vit_tiny_patch16_224", **overrides)``: a seeded 2-layer, 32-wide ViT."""

    def make(name: str = "vit_tiny_patch16_224", **overrides) -> nn.Module:
        torch.manual_seed(0)
        return timm.create_model(name, **{**TINY, **overrides})

    return make


@pytest.fixture
def random_attention() -> Callable[..., Tensor]:
    """``random_attention(layout, layers, batch, heads, seed, sharp)``: softmax rows."""

    def make(
        layout: TokenLayout,
        layers: int = 3,
        batch: int = 2,
        heads: int = 3,
        seed: int = 0,
        sharp: float = 3.0,
    ) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        n = layout.num_tokens
        logits = sharp * torch.randn(layers, batch, heads, n, n, generator=gen)
        return logits.softmax(dim=-1)

    return make
