"""What every capture backend answers, and the helpers all families share.

A capture backend knows one ViT family: which module is the ViT, where its
attention modules are (found by module type, not by attribute paths), its
token layout, its input size and how to change it, how its head reads the
last block, and how to make each attention module hand over the
probabilities that multiply the values, in the model's own graph (so that
gradients are the real ones), for one pass only. Everything changed for the
pass is recorded and restored when it ends, whatever happens.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from lit_vit.attention.layout import TokenLayout

__all__ = ["Capture", "CaptureBackend", "Readout", "eval_mode_dtype", "model_logits"]

# Called with (layer index in module order, (B, H, N, N) attention) during the pass.
Capture = Callable[[int, Tensor], None]


@dataclass(frozen=True)
class Readout:
    """How the model reads its last block's output, so that any block's can be read the same
    way (the logit lens): timm's ``norm`` then ``forward_head`` (its own pooling, ``fc_norm``
    and head); torchvision's ``encoder.ln``, the class token, ``heads``; a Hugging Face
    classifier's ``layernorm``, the class token, ``classifier`` (ViT, DeiT). A model whose
    head is not known gets the class token after the final norm and no head.

    Attributes:
        pooling: ``(B, N, D)`` tokens to ``(B, F)`` pooled features (after the final norm),
            in the model's dtype.
        head: ``(B, F)`` pooled features to ``(B, C)`` logits; None when unknown.
        dtype: The model's floating dtype (recorded hidden states are float32).
    """

    pooling: Callable[[Tensor], Tensor]
    head: Callable[[Tensor], Tensor] | None
    dtype: torch.dtype = torch.float32

    def pool(self, tokens: Tensor) -> Tensor:
        """``(B, N, D)`` tokens to ``(B, F)`` float32 pooled features."""
        return self.pooling(tokens.to(self.dtype)).float()

    def logits(self, tokens: Tensor) -> Tensor:
        """``(B, N, D)`` tokens to ``(B, C)`` float32 logits (needs a head)."""
        if self.head is None:
            raise ValueError("this model's head is not known: no logits from its tokens")
        return self.head(self.pooling(tokens.to(self.dtype))).float()


@dataclass
class CaptureBackend:
    """One ViT family's way to find, lay out and record attention (a subclass per family).

    Attributes:
        family: ``"timm"``, ``"huggingface"`` or ``"torchvision"`` (a class attribute).
        square_inputs: Whether the family's ViT takes square images only (a class attribute).
        vit_name: Qualified name of the ViT in the model (``""``: the model).
        vit: The ViT module.
        module_names: Qualified names (in the model) of its attention modules.
        modules: The attention modules, in module order.
    """

    family: ClassVar[str] = ""
    square_inputs: ClassVar[bool] = False  # the family's ViT takes square images only
    vit_name: str
    vit: nn.Module
    module_names: list[str]
    modules: list[nn.Module]

    # -- what each family answers ----------------------------------------------------------

    @classmethod
    def claims(cls, module: nn.Module) -> bool:
        """Whether ``module`` is a ViT of this family."""
        raise NotImplementedError

    @classmethod
    def is_attention(cls, module: nn.Module) -> bool:
        """Whether ``module`` is one of this family's attention modules."""
        raise NotImplementedError

    def layout(self, image_size: tuple[int, int]) -> TokenLayout:
        """Token layout for inputs of ``image_size`` pixels."""
        raise NotImplementedError

    def input_size(self) -> tuple[int, int]:
        """``(h, w)`` pixels the ViT was built for (its position embedding's grid)."""
        raise NotImplementedError

    def resize(self, vit: nn.Module, size: tuple[int, int]) -> None:
        """Make ``vit`` (a copy of this backend's ViT) take ``size`` inputs, in place."""
        raise NotImplementedError

    def readout(self) -> Readout:
        """How the ViT reads its last block (final norm, pooling, head)."""
        return Readout(pooling=lambda tokens: tokens[:, 0], head=None)

    def capture_modules(self, capture: Capture, restore: contextlib.ExitStack) -> None:
        """Make every attention module pass its probabilities to ``capture``; register the
        undoing on ``restore``."""
        raise NotImplementedError

    def versions_hint(self) -> str:
        """What this family's modules must look like, for a message."""
        return ""

    def no_attention_message(self) -> str:
        """Why no attention module was found, naming what was."""
        kinds = sorted({type(m).__name__ for m in self.vit.modules()})
        attention = [kind for kind in kinds if "ttention" in kind]
        return (
            f"found a {self.family} ViT ({type(self.vit).__name__}) but none of its "
            f"attention modules is of a kind lit-vit can read; attention module types found: "
            f"{attention or 'none'}. {self.versions_hint()}"
        )

    # -- shared ------------------------------------------------------------------------------

    def resized_copy(self, model: nn.Module, size: tuple[int, int]) -> nn.Module:
        """A deep copy of ``model`` whose ViT takes ``size`` inputs, position embeddings
        resampled to the new grid the family's own way; ``model`` is not modified.

        timm: ``set_input_size`` (bicubic ``resample_abs_pos_embed``). Hugging Face:
        the embeddings always run with ``interpolate_pos_encoding=True`` (bicubic, as in
        ``model(pixels, interpolate_pos_encoding=True)``). torchvision: square sizes,
        ``interpolate_embeddings`` (bicubic), the model's ``image_size`` updated.

        Raises:
            ValueError: A non-square size for torchvision, or a Hugging Face model
                whose embeddings cannot interpolate.
        """
        copied = copy.deepcopy(model)
        self.resize(copied.get_submodule(self.vit_name) if self.vit_name else copied, size)
        return copied

    def in_channels(self) -> int | None:
        """Input channels the patch embedding takes (``None``: unknown)."""
        conv = next((m for m in self.vit.modules() if isinstance(m, nn.Conv2d)), None)
        return None if conv is None else conv.in_channels

    @contextlib.contextmanager
    def capturing(self, capture: Capture) -> Iterator[None]:
        """For the duration of the block, every attention module passes its probabilities to
        ``capture``; everything changed is restored afterwards."""
        with contextlib.ExitStack() as restore:
            self.capture_modules(capture, restore)
            yield


def capture_at_attn_drop(
    modules: list[nn.Module], capture: Capture, restore: contextlib.ExitStack
) -> None:
    """timm's way, also for modules chosen by pattern: the explicit path (``fused_attn =
    False``), read at the output of ``attn_drop`` (or of the module itself without one)."""
    for index, module in enumerate(modules):
        if hasattr(module, "fused_attn"):
            restore.callback(setattr, module, "fused_attn", module.fused_attn)
            module.fused_attn = False
        drop = getattr(module, "attn_drop", None)
        target = drop if isinstance(drop, nn.Module) else module
        handle = target.register_forward_hook(lambda _m, _i, out, index=index: capture(index, out))
        restore.callback(handle.remove)


def model_logits(output: object) -> Tensor | None:
    """Logits from any family's output: a tensor, a tuple starting with one, or an object with
    ``.logits`` (Hugging Face's ``ImageClassifierOutput``); ``None`` for a backbone output."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0] if output[0].dim() == 2 else None
    return None


def eval_mode_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's parameters (float32 when it has none)."""
    floating = (p.dtype for p in model.parameters() if p.dtype.is_floating_point)
    return next(floating, torch.float32)
