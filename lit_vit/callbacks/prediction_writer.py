"""Write ``lit-vit predict`` results to a CSV file in the run's directory."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    """Save predictions as ``<log_dir>/predictions.csv``.

    One row per image, in data order: ``index, prediction, class_name,
    probability`` (the probability of the predicted class). Class names come
    from ``trainer.datamodule.class_names`` when it has them.

    Args:
        filename: File name inside the run's log directory.

    Example::

        trainer = Trainer(callbacks=[PredictionWriter()])
    """

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename

    def write_on_epoch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        predictions: list[Any],
        batch_indices: Any,
    ) -> None:
        # trainer.log_dir is a collective under DDP: every rank asks for it.
        path = Path(trainer.log_dir or trainer.default_root_dir) / self.filename
        if not trainer.is_global_zero or not predictions:
            return
        names = getattr(trainer.datamodule, "class_names", None)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["index", "prediction", "class_name", "probability"])
            index = 0
            for batch in predictions:
                labels = batch["predictions"].tolist()
                probabilities = batch["probabilities"].max(dim=-1).values.tolist()
                for label, probability in zip(labels, probabilities, strict=True):
                    name = names[label] if names else str(label)
                    writer.writerow([index, label, name, f"{probability:.6f}"])
                    index += 1
