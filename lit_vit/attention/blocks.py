"""The ViT's blocks, for every family, found from the attention modules the capture knows.

Each attention module's block is its nearest ancestor that sits in a
``ModuleList`` or ``Sequential`` (timm's ``blocks.3``, Hugging Face's
``vit.layers.3``, torchvision's ``encoder.layers.encoder_layer_3``), so a
block's output is the token sequence the next block reads. How the model
reads its last block (final norm, pooling, head) is each backend's
:meth:`~lit_vit.attention.backends.CaptureBackend.readout`.
"""

from __future__ import annotations

from torch import nn

from lit_vit.attention.backends import CaptureBackend

__all__ = ["block_modules"]


def block_modules(model: nn.Module, backend: CaptureBackend) -> list[nn.Module]:
    """The block around each of the backend's attention modules, in their order.

    Raises:
        ValueError: An attention module in no ``ModuleList`` or ``Sequential``.
    """
    containers = {
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList | nn.Sequential)
    }
    blocks = []
    for name in backend.module_names:
        parts = name.split(".")
        ancestors = [".".join(parts[:end]) for end in range(len(parts) - 1, 0, -1)]
        block = next((a for a in ancestors if a.rpartition(".")[0] in containers), None)
        if block is None:
            raise ValueError(f"the attention module {name} sits in no list of blocks")
        blocks.append(model.get_submodule(block))
    return blocks
