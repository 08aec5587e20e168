"""A weight EMA that evaluates as the model: timm's ``ModelEmaV3``, swapped in place.

During fit, :class:`SwappedEma` follows the training weights of a ViT. For
validation (and everything that reads the module then: the attention
callbacks, checkpoints) it swaps the EMA weights into the ViT itself, in place,
so the optimizer keeps its parameters and nothing else needs to know. A
checkpoint's ``state_dict`` holds the EMA weights, so it tests and deploys as
the EMA model; the training weights ride along under
:data:`TRAINING_WEIGHTS_KEY` for resuming.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import Tensor, nn

# Checkpoint key of the raw (non-EMA) weights when EMA is on; ``state_dict`` holds the EMA ones.
TRAINING_WEIGHTS_KEY = "lit_vit_training_weights"


class SwappedEma:
    """The EMA of ``vit``'s weights, and which of the two weight sets ``vit`` holds now.

    Args:
        decay: timm's EMA decay (e.g. 0.9998), reached after its warm-up of the decay.
        prefix: The ViT's name in the LightningModule's ``state_dict`` (``"vit."``).
    """

    def __init__(self, decay: float, prefix: str = "vit.") -> None:
        self.decay = decay
        self.prefix = prefix
        self.ema: ModelEmaV3 | None = None
        self._holds_training_weights = False  # whether the EMA module holds the raw weights
        self._restored: dict[str, dict[str, Tensor]] | None = None

    def start(self, vit: nn.Module, device: torch.device) -> None:
        """At fit start: a fresh EMA of ``vit`` (or, when resuming, the checkpoint's two sets)."""
        # With timm's warm-up the decay grows with the step, so that the early EMA is not
        # mostly the initial weights (at 0.9995 without it, 22% of them after 3,000 steps).
        self.ema = ModelEmaV3(vit, decay=self.decay, use_warmup=True, device=device)
        self._holds_training_weights = False
        if self._restored is not None:  # resuming: vit holds the EMA weights
            self.ema.module.load_state_dict(self._restored["ema"])
            vit.load_state_dict(self._restored["training"])
            self._restored = None

    def update(self, vit: nn.Module, step: int) -> None:
        """After an optimizer step (``vit`` holds the training weights)."""
        self.ema.update(vit, step=step)

    def train_with(self, vit: nn.Module) -> None:
        """Put the training weights into ``vit`` (after a validation run)."""
        if self._holds_training_weights:
            self._swap(vit)

    def evaluate_with(self, vit: nn.Module) -> None:
        """Put the EMA weights into ``vit`` (validation, fit end)."""
        if not self._holds_training_weights:
            self._swap(vit)

    def save(self, vit: nn.Module, checkpoint: dict[str, Any]) -> None:
        """``state_dict`` gets the EMA weights; the training weights go beside them."""
        holder = self.ema.module
        ema, training = (vit, holder) if self._holds_training_weights else (holder, vit)
        state = checkpoint["state_dict"]
        for name, tensor in ema.state_dict().items():
            state[f"{self.prefix}{name}"] = tensor.detach().clone()
        checkpoint[TRAINING_WEIGHTS_KEY] = {
            name: tensor.detach().clone() for name, tensor in training.state_dict().items()
        }

    def load(self, checkpoint: dict[str, Any]) -> None:
        """Keep both weight sets of a checkpoint for a resumed fit (evaluation uses
        ``state_dict``, the EMA)."""
        training = checkpoint.get(TRAINING_WEIGHTS_KEY)
        if training is not None:
            ema = {
                name.removeprefix(self.prefix): tensor
                for name, tensor in checkpoint["state_dict"].items()
                if name.startswith(self.prefix)
            }
            self._restored = {"ema": ema, "training": training}

    @torch.no_grad()
    def _swap(self, vit: nn.Module) -> None:
        """Exchange the weights of ``vit`` and the EMA in place."""
        ema_state = self.ema.module.state_dict()
        for name, tensor in vit.state_dict().items():
            kept = tensor.clone()
            tensor.copy_(ema_state[name])
            ema_state[name].copy_(kept)
        self._holds_training_weights = not self._holds_training_weights
