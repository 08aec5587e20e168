"""``lit-vit``: the LightningCLI for training, testing and probing ViTs.

``lit-vit fit --config configs/fashion_mnist.yaml`` trains;
``lit-vit test --config configs/fashion_mnist.yaml --ckpt_path CKPT`` tests.
Every run writes to its own ``logs/<name>/version_<n>/``, so no run can
overwrite another's checkpoints or logs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from lit_vit.callbacks import PredictionWriter
from lit_vit.data import FashionMNISTDataModule
from lit_vit.model import LitViT

SUBCOMMANDS_WITH_CKPT = ("fit", "validate", "test", "predict")


class LitViTCLI(LightningCLI):
    """LightningCLI with the data's shape linked into the model and
    checkpoints that are always kept (best by ``val/acc`` and last)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.in_chans", apply_on="instantiate")
        parser.link_arguments("data.img_size", "model.img_size")
        # Own argument groups, so a config's trainer.callbacks list cannot drop them.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch{epoch:03d}-val_acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config["trainer"].get("fast_dev_run"):
            # Lightning's ModelCheckpoint still writes last.ckpt at train end under fast_dev_run.
            config["checkpoint"]["save_last"] = False
        ckpt_path = self._ckpt_path()
        if ckpt_path and ckpt_path not in ("last", "best", "hpc") and not Path(ckpt_path).is_file():
            raise FileNotFoundError(
                f"--ckpt_path '{ckpt_path}' does not exist. Checkpoints are written to "
                "logs/<name>/version_<n>/checkpoints/ (fit prints the path when it ends)."
            )

    def after_instantiate_classes(self) -> None:
        ckpt_path = self._ckpt_path()
        if ckpt_path and Path(ckpt_path).is_file():
            check_checkpoint_matches(ckpt_path, self.model)

    def after_fit(self) -> None:
        checkpoint = self.trainer.checkpoint_callback
        if checkpoint is None or not self.trainer.is_global_zero:
            return
        rank_zero_info(f"Best checkpoint ({checkpoint.monitor}): {checkpoint.best_model_path}")
        rank_zero_info(f"Last checkpoint: {checkpoint.last_model_path}")
        rank_zero_info(f"Logs: {self.trainer.log_dir}")

    def _ckpt_path(self) -> str | None:
        if self.subcommand not in SUBCOMMANDS_WITH_CKPT:
            return None
        return self.config[self.subcommand].get("ckpt_path")


def check_checkpoint_matches(ckpt_path: str, model: torch.nn.Module) -> None:
    """Fail early, and clearly, when a checkpoint was made for another model shape.

    Raises:
        ValueError: Listing up to five tensors whose shapes differ or that
            are missing, and the fix.
    """
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False).get("state_dict", {})
    expected = model.state_dict()
    problems = [
        f"{name}: checkpoint {tuple(state[name].shape)}, model {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in state and state[name].shape != tensor.shape
    ]
    problems += [f"{name}: missing from the checkpoint" for name in expected if name not in state]
    if problems:
        listed = "\n  ".join(problems[:5])
        raise ValueError(
            f"--ckpt_path '{ckpt_path}' belongs to another model shape ({len(problems)} "
            f"tensors differ):\n  {listed}\nUse the config the checkpoint was trained with, e.g. "
            "the config.yaml saved beside it in its version directory."
        )


def main(args: ArgsType = None) -> None:
    """Entry point of ``lit-vit`` and ``python -m lit_vit``.

    Errors caused by the user's input or environment (bad values; missing
    files, data or weights: ``ValueError`` and ``OSError``) print one clear
    message and exit with status 2; ``LIT_VIT_DEBUG=1`` shows the traceback.
    """
    try:
        LitViTCLI(
            LitViT,
            FashionMNISTDataModule,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "logs", "name": "lit_vit"},
                },
            },
            args=args,
        )
    except (ValueError, OSError) as error:
        if os.environ.get("LIT_VIT_DEBUG"):
            raise
        print(f"lit-vit: error: {error}\n(set LIT_VIT_DEBUG=1 for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
