"""A run's row in TensorBoard's HParams tab: its hyperparameters, accuracy and attention summary.

TensorBoard's HParams plugin makes one row of every run folder that holds a
session record, with a column per hyperparameter and per declared metric; a
metric's value is the last point of the scalar with that tag in the same
folder. So each fit writes one session into its own run folder, declaring
``val/acc``, ``val/loss``, ``test/acc``, ``test/loss`` and the attention
summary (:func:`attention_summary`) of both stages; a later ``lit-vit test``
of one of its checkpoints adds its scalars to that folder, so fit and test of
a model share a row. A test of a checkpoint that no fit folder holds gets a row
of its own. Lightning's ``hp_metric`` placeholder is switched off (it would
make a second, empty-valued session), and keys that start with ``_`` (e.g.
LightningCLI's ``_instantiator``) are no columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from lit_vit._private import switch_off_hp_metric

STAGE_METRICS = {"val": ("val/acc", "val/loss"), "test": ("test/acc", "test/loss")}


def attention_summary(scalars: dict[str, float], root: str, stage: str) -> dict[str, float]:
    """One number per attention measure under ``root``, keyed ``hparams/<stage>_<measure>``.

    A per-layer series (``<root>/<measure>/layer_LL``) gives the mean of its
    first and of its last third of the layers (``<measure>_first_layers``,
    ``<measure>_last_layers``: early against late, e.g. local against global
    attention); any other scalar is kept as it is.

    Args:
        scalars: Latest value of every attention scalar, by full tag.
        root: ``val_attention`` or ``test_attention``.
        stage: ``val`` or ``test``, the keys' prefix.
    """
    per_layer: dict[str, dict[int, float]] = {}
    summary = {}
    for tag, value in scalars.items():
        if not tag.startswith(f"{root}/"):
            continue
        measure, _, last = tag.removeprefix(f"{root}/").rpartition("/")
        if measure and last.startswith("layer_") and last[6:].isdigit():
            per_layer.setdefault(measure, {})[int(last[6:])] = value
        else:
            summary[summary_key(stage, tag.removeprefix(f"{root}/"))] = value
    for measure, layers in per_layer.items():
        values = [layers[layer] for layer in sorted(layers)]
        third = max(1, len(values) // 3)
        summary[summary_key(stage, f"{measure}_first_layers")] = sum(values[:third]) / third
        summary[summary_key(stage, f"{measure}_last_layers")] = sum(values[-third:]) / third
    return summary


def summary_key(stage: str, measure: str) -> str:
    """``hparams/<stage>_<measure>`` with ``/`` in ``measure`` as ``_``."""
    return f"hparams/{stage}_{measure.replace('/', '_')}"


def drop_placeholder_metric(trainer: Trainer) -> None:
    """Switch off Lightning's ``hp_metric = -1`` placeholder session of every TensorBoard
    logger (before Lightning logs the hyperparameters): the run's row is written here."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            # Only settable as TensorBoardLogger(default_hp_metric=...); tested with Lightning 2.6.
            switch_off_hp_metric(logger)


def run_hyperparameters(trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
    """The model's and the data's hyperparameters (``data.<name>``), as the columns take them
    (numbers, strings and booleans; anything else as its string), without ``_`` keys."""
    params = dict(getattr(pl_module, "hparams", {}))
    params |= {f"data.{k}": v for k, v in getattr(trainer.datamodule, "hparams", {}).items()}
    return {
        key: value if isinstance(value, bool | int | float | str) else str(value)
        for key, value in params.items()
        if not key.startswith("_") and not key.startswith("data._")
    }


def write_session(writer: SummaryWriter, params: dict[str, Any], metrics: list[str]) -> None:
    """Declare ``writer``'s folder a session with ``params`` and the ``metrics`` columns
    (their values are the folder's scalars of those tags; nothing is logged here)."""
    experiment, start, end = hparams(params, dict.fromkeys(metrics, 0.0))
    for summary in (experiment, start, end):
        writer.file_writer.add_summary(summary)


def declared_metrics(val_summary: dict[str, float]) -> list[str]:
    """The columns of a row: accuracy and loss of both stages, and each summary measure of
    ``val_summary`` for both stages."""
    measures = [key.removeprefix("hparams/val_") for key in val_summary]
    return [
        *STAGE_METRICS["val"],
        *STAGE_METRICS["test"],
        *(summary_key(stage, measure) for measure in measures for stage in STAGE_METRICS),
    ]


def fit_run_of(checkpoint: str | None, test_run: str | Path) -> Path | None:
    """The TensorBoard run folder a checkpoint was saved in (``<run>/checkpoints/x.ckpt`` next
    to the run's event files) when the test logs beside it (``test_run`` in the same
    experiment folder, as ``lit-vit test`` does), else None: a test logged elsewhere
    (``lit-vit analyze``, another data set) keeps a row of its own and writes nothing into
    the fit's folder."""
    if not checkpoint:
        return None
    folder = Path(checkpoint).resolve().parent
    run = folder.parent
    beside = run.parent == Path(test_run).resolve().parent
    if beside and folder.name == "checkpoints" and any(run.glob("events.out.tfevents.*")):
        return run
    return None


def write_fit_row(trainer: Trainer, pl_module: LightningModule, summary: dict[str, float]) -> None:
    """The fit's row in TensorBoard's HParams tab: its hyperparameters, and as metrics
    ``val/acc``, ``val/loss`` and the final attention ``summary`` (logged here at the last
    step), with the columns a later test of its checkpoints fills."""
    params = run_hyperparameters(trainer, pl_module)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_metrics(summary, step=trainer.global_step)
            write_session(logger.experiment, params, declared_metrics(summary))


def write_test_row(
    trainer: Trainer, pl_module: LightningModule, summary: dict[str, float], step: int
) -> None:
    """The test's accuracy, loss and attention ``summary`` in the row of the fit that saved
    the checkpoint when the test logs beside it (scalars added to that run folder at
    ``step``), else in a row of the test's own (``lit-vit analyze``, a checkpoint from
    elsewhere)."""
    tensorboard = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
    if not tensorboard:
        return
    results = {
        tag: float(trainer.callback_metrics[tag])
        for tag in STAGE_METRICS["test"]
        if tag in trainer.callback_metrics
    }
    fit_run = fit_run_of(trainer.ckpt_path, tensorboard[0].log_dir)
    if fit_run is not None:
        writer = SummaryWriter(str(fit_run), filename_suffix=".test")
        for tag, value in (results | summary).items():
            writer.add_scalar(tag, value, step)
        writer.close()
        rank_zero_info(f"HParams: this test fills the row of {fit_run}")
        return
    params = run_hyperparameters(trainer, pl_module)
    for logger in tensorboard:
        logger.log_metrics(summary, step=step)
        write_session(logger.experiment, params, [*STAGE_METRICS["test"], *summary])
