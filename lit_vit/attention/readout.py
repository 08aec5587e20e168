"""The ViT's blocks and its own readout (final norm, pooling, head), for every family.

The blocks are found from the attention modules the capture already knows:
each attention module's block is its nearest ancestor that sits in a
``ModuleList`` or ``Sequential`` (timm's ``blocks.3``, Hugging Face's
``vit.layers.3``, torchvision's ``encoder.layers.encoder_layer_3``), so a
block's output is the token sequence the next block reads.

The readout maps a block's ``(B, N, D)`` output to what the model computes
from its last block's:

- timm: ``norm``, then ``forward_head`` (the model's own pooling, ``fc_norm``
  and head; ``pre_logits=True`` for the pooled features);
- Hugging Face classifiers with a ``layernorm`` and a ``classifier`` on the
  class token (ViT, DeiT): ``classifier(layernorm(tokens)[:, 0])``;
- torchvision: ``heads(encoder.ln(tokens)[:, 0])``.

A model whose head this does not know (e.g. a backbone without one) gets the
class token after the final norm as its pooled features and no head.
"""

from __future__ import annotations

from torch import nn

from lit_vit.attention.backends import CaptureBackend, Readout

__all__ = ["Readout", "block_modules", "find_readout"]


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


def find_readout(backend: CaptureBackend) -> Readout:
    """The readout of the backend's ViT (see the module docstring)."""
    return backend.readout()
