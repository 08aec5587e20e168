"""How each ViT family is found, laid out and made to show its attention: a backend per family.

- :class:`TimmBackend`: timm's ``VisionTransformer`` and every family with its
  ``Attention`` path (EVA, DeiT, BEiT, ...), read at ``attn_drop``;
- :class:`HuggingFaceBackend`: Hugging Face transformers (ViT, DeiT, DINOv2 with
  and without registers), the eager attention implementation;
- :class:`TorchvisionBackend`: torchvision's ``VisionTransformer``, an explicit
  ``nn.MultiheadAttention`` forward with the probabilities kept;
- :class:`PatternBackend`: the modules the user's name pattern chooses
  (``AttentionRecorder(module_pattern=...)``) on any of them, read as timm's are.

Each answers the same questions (:class:`CaptureBackend`): does it claim this
model, its token layout, its input size and a resized copy, its readout, a
capturing context. :func:`find_backend` (``discovery.py``) asks each family in
turn and is the one finder (:func:`find_vit` returns its ViT). Hierarchical and
windowed models (Swin and the like) have no global token grid and are refused
with a message that says so.
"""

from __future__ import annotations

from lit_vit.attention.backends.base import (
    Capture,
    CaptureBackend,
    Readout,
    eval_mode_dtype,
    model_logits,
)
from lit_vit.attention.backends.discovery import (
    BACKENDS,
    find_backend,
    find_vit,
)
from lit_vit.attention.backends.hugging_face import HuggingFaceBackend
from lit_vit.attention.backends.pattern import PatternBackend, with_pattern
from lit_vit.attention.backends.timm_vit import TimmBackend
from lit_vit.attention.backends.torchvision_vit import TorchvisionBackend

__all__ = [
    "BACKENDS",
    "Capture",
    "CaptureBackend",
    "HuggingFaceBackend",
    "PatternBackend",
    "Readout",
    "TimmBackend",
    "TorchvisionBackend",
    "eval_mode_dtype",
    "find_backend",
    "find_vit",
    "model_logits",
    "with_pattern",
]
