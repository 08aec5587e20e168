"""Lightning's ModelCheckpoint that never keeps a diverged model as its best."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor


def finite_weights(module: LightningModule) -> bool:
    """Whether every parameter of ``module`` is finite (no NaN or infinity)."""
    return all(bool(torch.isfinite(parameter).all()) for parameter in module.parameters())


class FiniteModelCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` whose monitored (best) checkpoints
    are models with finite weights and a finite monitored value.

    A diverged model (``--model.lr 1e6``) predicts one class for every image, so its
    accuracy is finite (about 1/classes) and Lightning's checkpoint would keep it as the best
    when nothing better came before. ``last.ckpt`` is still written: it is the last state, as
    it is. The same arguments as ``ModelCheckpoint``.
    """

    def check_monitor_top_k(self, trainer: Trainer, current: Tensor | None = None) -> bool:
        if current is not None and not torch.isfinite(current):
            return False
        if not finite_weights(trainer.lightning_module):
            rank_zero_warn(
                f"Epoch {trainer.current_epoch}: the model's weights are not finite (training "
                "diverged), so this checkpoint is not kept as a best one. Lower --model.lr."
            )
            return False
        return super().check_monitor_top_k(trainer, current)
