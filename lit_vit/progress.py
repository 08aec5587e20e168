"""What the console shows: a bar on a terminal, a line per epoch otherwise, and no tips.

On a terminal, Lightning's tqdm or rich bar, with the epoch out of the total
(``Epoch 3/30``, where Lightning shows ``Epoch 2/29``). When the output goes to
a file or a pipe (``lit-vit fit ... > train.log``, a batch job), a bar would
write a line per refresh (about half a megabyte for a short run), so
:class:`EpochLines` writes one line per epoch instead.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar

# The metrics an epoch's line shows, those that exist.
LINE_METRICS = ("train/loss_epoch", "train/acc", "val/loss", "val/acc")


def epoch_of_total(trainer: Trainer) -> str:
    """``Epoch 3/30`` for the third of 30 epochs."""
    total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
    return f"Epoch {trainer.current_epoch + 1}/{total}"


class EpochProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar, with the epoch out of the total."""

    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        self.train_progress_bar.set_description(epoch_of_total(trainer))


class EpochRichProgressBar(RichProgressBar):
    """Lightning's rich progress bar, with the epoch out of the total."""

    def _get_train_description(self, current_epoch: int) -> str:
        description = epoch_of_total(self.trainer)
        return f"{description:{len(self.validation_description)}}"


class EpochLines(ProgressBar):
    """One line per training epoch on stdout: its metrics and how long it took.

    ``Epoch 3/30: train/loss_epoch 0.512, val/loss 0.488, val/acc 0.8125 (95 s)``
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._start = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._enabled or not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        shown = [f"{name} {float(metrics[name]):.4g}" for name in LINE_METRICS if name in metrics]
        seconds = time.perf_counter() - self._start
        print(f"{epoch_of_total(trainer)}: {', '.join(shown)} ({seconds:.0f} s)", flush=True)


def console_progress(bar: ProgressBar) -> ProgressBar:
    """The progress display in place of Lightning's default ``bar``: with the epoch out of
    the total on a terminal, :class:`EpochLines` when stdout is none."""
    if not sys.stdout.isatty():
        return EpochLines()
    return {TQDMProgressBar: EpochProgressBar, RichProgressBar: EpochRichProgressBar}[type(bar)]()


class _DropTips(logging.Filter):
    """Drops Lightning's advertising lines ("💡 Tip: ...") from its console output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip:")


def quiet_lightning() -> None:
    """The CLI's console shows lit-vit's lines and Lightning's own, not its tips, the
    deprecation noise of its internals under this torch, or its advice to pass the fit's
    checkpoint callback to an evaluation (tested with Lightning 2.6)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in logger.filters):
        logger.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # test, validate, predict and analyze leave out the fit's ModelCheckpoint on purpose.
    warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`")
