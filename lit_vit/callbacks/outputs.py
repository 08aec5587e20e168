"""Where an analysed run's outputs go: run folders, tags, loggers, TensorBoard's extra tabs.

:class:`RunOutputs` is the probe's writer. It names each analysed run
(:class:`ProbeRun`: its stage, logger step, PNG folder and tag root), sends
figures, Markdown and scalars to every logger that takes them and to files,
writes the per-layer series as TensorBoard runs of their own (one colour per
layer), the custom-scalars layout, the run's HParams row and the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from matplotlib.figure import Figure

from lit_vit._private import logged_step
from lit_vit.callbacks._loggers import IMAGE_LOGGERS, LayerRuns, log_image, log_report
from lit_vit.callbacks.hparams import (
    attention_summary,
    drop_placeholder_metric,
    write_fit_row,
    write_test_row,
)
from lit_vit.plotting import encode_png, figure_to_image, save_image

# Roots of the attention tags: after Lightning's "val/" and "test/" in TensorBoard's sorted
# lists, so that the training metrics stay on top.
VAL_ROOT, TEST_ROOT = "val_attention", "test_attention"


@dataclass(frozen=True)
class ProbeRun:
    """Where one analysed run logs.

    Attributes:
        stage: ``"val"`` (a validation run during fit), ``"fit_end"`` or ``"test"``.
        step: The logger step, the one of this run's ``val/*`` or ``test/*`` metrics.
        folder: Folder of this run's PNG files; ``None`` writes no file
            (``fast_dev_run``).
        tag_root: ``"val_attention"`` during fit, ``"test_attention"`` at test, so
            test values never land on the validation charts.
    """

    stage: str
    step: int
    folder: Path | None
    tag_root: str


class RunOutputs:
    """The probe's writer: one per probe, set up with each trainer."""

    def __init__(self) -> None:
        self.root: Path | None = None  # <log_dir>/attention; None under fast_dev_run
        self.last_val_step: int | None = None
        # The latest value of every attention scalar, by tag, for the runs' hparams summary.
        self._latest_scalars: dict[str, float] = {}
        self._layer_runs = LayerRuns()

    def setup(self, trainer: Trainer) -> None:
        """Find the run folder (none under ``fast_dev_run``), switch off Lightning's
        ``hp_metric`` placeholder and say where figures go when no logger shows images."""
        drop_placeholder_metric(trainer)
        # On every rank: under DDP, trainer.log_dir is a collective (a broadcast from rank 0).
        log_dir = trainer.log_dir or trainer.default_root_dir
        self.root = None if trainer.fast_dev_run else _run_folder(trainer, log_dir)
        if self.root is None:
            rank_zero_info(
                "AttentionProbe: fast_dev_run, so the attention callbacks run a reduced "
                "analysis (no files, no resolution sweep, test samples of the probe's size)."
            )
        elif not any(isinstance(lg, IMAGE_LOGGERS) for lg in trainer.loggers):
            rank_zero_info(
                f"AttentionProbe: no logger that shows images (TensorBoard, Weights & Biases, "
                f"MLflow), so attention figures are saved as PNG files under {self.root} "
                "only; scalars go to the trainer's loggers."
            )

    def close(self) -> None:
        self._layer_runs.close()

    def run(self, trainer: Trainer, stage: str) -> ProbeRun:
        """Where a run of ``stage`` (``"val"``, ``"fit_end"`` or ``"test"``) logs now."""
        # The step Lightning logs epoch-level metrics at (see LoggerConnector.log_metrics);
        # at fit end, that of the last validation run, whose model the sweep analyses.
        step = logged_step(trainer)
        if stage == "fit_end" and self.last_val_step is not None:
            step = self.last_val_step
        if stage == "val":
            folder = f"epoch_{trainer.current_epoch:03d}"
            if _validations_per_epoch(trainer) > 1:
                folder += f"_step_{step:07d}"
        else:
            folder = stage
        return ProbeRun(
            stage=stage,
            step=step,
            folder=None if self.root is None else self.root / folder,
            tag_root=TEST_ROOT if stage == "test" else VAL_ROOT,
        )

    def log_figure(self, trainer: Trainer, run: ProbeRun, key: str, figure: Figure) -> str:
        """Send ``figure`` as image ``<tag_root>/<key>`` at the run's step to every logger that
        shows images (TensorBoard, Weights & Biases, MLflow) and save it as a PNG.

        Returns:
            The PNG's path relative to the run's folder, ``<key>.png``.
        """
        image = figure_to_image(figure)  # (3, H, W) uint8: one render for the loggers and file
        png = encode_png(image)  # one encoding for TensorBoard and the file
        for logger in trainer.loggers:
            log_image(logger, f"{run.tag_root}/{key}", image, run.step, png)
        name = f"{key}.png"
        if run.folder is not None:
            save_image(png, run.folder / name)
        return name

    def log_text(self, trainer: Trainer, run: ProbeRun, key: str, text: str) -> None:
        """Log Markdown ``text`` as text ``<tag_root>/<key>``; save it as ``<key>.md``."""
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(f"{run.tag_root}/{key}", text, run.step)
        if run.folder is not None:
            path = run.folder / f"{key}.md"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n")

    def note_scalars(self, trainer: Trainer, run: ProbeRun, scalars: dict[str, float]) -> None:
        """Remember the latest value of each attention scalar (by full tag) and write the
        per-layer ones as TensorBoard runs of their own."""
        self._latest_scalars.update(scalars)
        self._layer_runs.log(trainer.loggers, scalars, run.step)

    def add_charts(self, trainer: Trainer, charts: dict[str, list[str]]) -> None:
        """TensorBoard's custom scalars: a multi-line chart per title (a line per matching
        tag), on rank zero."""
        if not charts or not trainer.is_global_zero:
            return
        layout = {title: ["Multiline", patterns] for title, patterns in charts.items()}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_custom_scalars({"attention": layout})

    def write_fit_row(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The fit's HParams row, with the validation runs' attention summary."""
        if trainer.is_global_zero and not trainer.sanity_checking and self.root is not None:
            summary = attention_summary(self._latest_scalars, VAL_ROOT, "val")
            write_fit_row(trainer, pl_module, summary)

    def write_test_row(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The test's HParams row (the fit's, when its run folder is known)."""
        if trainer.is_global_zero and self.root is not None:
            summary = attention_summary(self._latest_scalars, TEST_ROOT, "test")
            write_test_row(trainer, pl_module, summary, self.run(trainer, "test").step)

    def log_report(self, trainer: Trainer, path: Path) -> None:
        """Send the written report to every logger (Text tab, artifact)."""
        step = self.run(trainer, "test").step
        for logger in trainer.loggers:
            log_report(logger, path, f"{TEST_ROOT}/report", step)


def _run_folder(trainer: Trainer, log_dir: str) -> Path:
    """``<log_dir>/attention``, or ``<log_dir>/attention/<run>`` for a logger whose folder is
    shared by all its runs (MLflow, Weights & Biases), so that no run overwrites another's."""
    root = Path(log_dir) / "attention"
    logger = trainer.loggers[0] if trainer.loggers else None
    if logger is None or not trainer.is_global_zero:
        return root
    version = logger.version
    versioned = version is None or f"version_{version}" in Path(log_dir).parts
    return root if versioned or str(version) in Path(log_dir).parts else root / str(version)


def _validations_per_epoch(trainer: Trainer) -> float:
    """How many validation runs a training epoch has (1 for the usual once per epoch)."""
    batches, interval = trainer.num_training_batches, trainer.val_check_batch
    if not isinstance(interval, (int, float)) or not interval or math.isinf(batches):
        return 1.0
    return batches / interval
