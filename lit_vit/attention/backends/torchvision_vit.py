"""torchvision's ``VisionTransformer``: each ``nn.MultiheadAttention`` runs an explicit forward
(the same computation as its own, with the probabilities kept) instead of
``need_weights=False``."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from lit_vit._private import packed_qkv
from lit_vit.attention.backends.base import Capture, CaptureBackend, Readout, eval_mode_dtype
from lit_vit.attention.layout import TokenLayout


class TorchvisionBackend(CaptureBackend):
    family = "torchvision"
    square_inputs = True

    @classmethod
    def claims(cls, module: nn.Module) -> bool:
        return type(module).__module__.startswith(
            "torchvision.models.vision_transformer"
        ) and hasattr(module, "class_token")

    @classmethod
    def is_attention(cls, module: nn.Module) -> bool:
        return isinstance(module, nn.MultiheadAttention)

    def layout(self, image_size: tuple[int, int]) -> TokenLayout:
        patch = int(self.vit.patch_size)
        height, width = image_size
        return TokenLayout(
            num_prefix_tokens=1,
            has_class_token=True,
            grid_size=(height // patch, width // patch),
            patch_size=(patch, patch),
        )

    def input_size(self) -> tuple[int, int]:
        return (int(self.vit.image_size), int(self.vit.image_size))

    def resize(self, vit: nn.Module, size: tuple[int, int]) -> None:
        """Square ``size`` inputs, the position embedding resampled by torchvision."""
        from torchvision.models.vision_transformer import interpolate_embeddings

        if size[0] != size[1]:
            raise ValueError(
                f"torchvision's VisionTransformer takes square images only, not "
                f"{size[0]}x{size[1]}."
            )
        state = {"encoder.pos_embedding": vit.encoder.pos_embedding.detach()}
        resized = interpolate_embeddings(size[0], vit.patch_size, state)["encoder.pos_embedding"]
        vit.encoder.pos_embedding = nn.Parameter(resized)
        vit.image_size = size[0]

    def readout(self) -> Readout:
        vit = self.vit
        return Readout(
            pooling=lambda tokens: vit.encoder.ln(tokens)[:, 0],
            head=vit.heads,
            dtype=eval_mode_dtype(vit),
        )

    def capture_modules(self, capture: Capture, restore: contextlib.ExitStack) -> None:
        for index, module in enumerate(self.modules):
            unsupported = [
                name
                for name, value in (
                    ("separate q/k/v projections", not packed_qkv(module)),
                    ("bias_k/bias_v", module.bias_k is not None),
                    ("add_zero_attn", module.add_zero_attn),
                    ("batch_first=False", not module.batch_first),
                )
                if value
            ]
            if unsupported:
                raise ValueError(
                    f"nn.MultiheadAttention with {', '.join(unsupported)} is not the kind "
                    "torchvision's VisionTransformer uses; lit-vit cannot read its attention."
                )
            module.forward = _explicit_forward(module, lambda a, index=index: capture(index, a))
            restore.callback(delattr, module, "forward")

    def versions_hint(self) -> str:
        return "lit-vit reads torchvision's nn.MultiheadAttention."


def _explicit_forward(module: nn.MultiheadAttention, capture: Callable[[Tensor], None]):
    """``nn.MultiheadAttention``'s self-attention, computed with its probabilities kept.

    The same computation as its own forward in eval mode (batch first, packed
    in-projection, no masks): ``softmax(q k^T / sqrt(d)) v`` per head, then the
    out-projection; the ``(B, H, N, N)`` probabilities go to ``capture``.
    """

    def forward(query: Tensor, key: Tensor, value: Tensor, *args, **kwargs):
        if not (query is key is value):
            raise ValueError("lit-vit reads self-attention only (query, key and value the same).")
        batch, tokens, width = query.shape
        heads = module.num_heads
        qkv = F.linear(query, module.in_proj_weight, module.in_proj_bias)  # (B, N, 3 D)
        q, k, v = qkv.view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) / math.sqrt(width // heads)).softmax(dim=-1)
        if module.training and module.dropout > 0:
            attention = F.dropout(attention, module.dropout)
        capture(attention)
        out = (attention @ v).transpose(1, 2).reshape(batch, tokens, width)  # (B, N, D)
        return module.out_proj(out), None

    return forward
