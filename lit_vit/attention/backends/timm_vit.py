"""timm's ``VisionTransformer`` and every family on its ``Attention`` path (EVA, DeiT, BEiT, ...):
the explicit attention path (``fused_attn = False``), read at the output of ``attn_drop``."""

from __future__ import annotations

import contextlib

from torch import nn

from lit_vit._private import compiled_original
from lit_vit.attention.backends.base import (
    Capture,
    CaptureBackend,
    Readout,
    capture_at_attn_drop,
    eval_mode_dtype,
)
from lit_vit.attention.layout import TokenLayout, is_timm_style

try:  # timm's standard attention; look-alikes are duck-typed below
    from timm.layers import Attention as _TimmAttention
except ImportError:  # pragma: no cover
    _TimmAttention = ()


class TimmBackend(CaptureBackend):
    family = "timm"

    @classmethod
    def claims(cls, module: nn.Module) -> bool:
        return is_timm_style(module) and compiled_original(module) is None

    @classmethod
    def is_attention(cls, module: nn.Module) -> bool:
        if _TimmAttention and isinstance(module, _TimmAttention):
            return True
        return (
            hasattr(module, "fused_attn")
            and isinstance(getattr(module, "attn_drop", None), nn.Module)
            and (hasattr(module, "qkv") or hasattr(module, "q_proj"))
        )

    def layout(self, image_size: tuple[int, int]) -> TokenLayout:
        return TokenLayout.from_model(self.vit, image_size)

    def input_size(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.vit.patch_embed.img_size)

    def resize(self, vit: nn.Module, size: tuple[int, int]) -> None:
        vit.set_input_size(img_size=size)

    def readout(self) -> Readout:
        vit = self.vit
        if not (hasattr(vit, "forward_head") and hasattr(vit, "norm")):
            return super().readout()
        return Readout(
            pooling=lambda tokens: vit.forward_head(vit.norm(tokens), pre_logits=True),
            head=lambda pooled: vit.get_classifier()(pooled),
            dtype=eval_mode_dtype(vit),
        )

    def capture_modules(self, capture: Capture, restore: contextlib.ExitStack) -> None:
        capture_at_attn_drop(self.modules, capture, restore)

    def no_attention_message(self) -> str:
        kinds = sorted({type(m).__name__ for m in self.vit.modules()})
        return (
            "no attention modules found (timm Attention, or a module with `qkv`, `attn_drop` "
            f"and `fused_attn`); module types in the model: {kinds}. Pass module_pattern= "
            "with a regex for the attention modules' names."
        )
