"""What every attention callback shares: scheduling, the probe, and logging.

A subclass implements :meth:`AttentionCallback.analyze` (called on rank zero
once per due validation epoch and once at test end, with the shared
:class:`~lit_vit.callbacks.probe.ProbeAnalysis`) and, for the test report,
returns a :class:`ReportSection` from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure
from torch import Tensor

from lit_vit.attention import AttentionRecorder
from lit_vit.callbacks.probe import (
    Probe,
    ProbeAnalysis,
    ProbeSettings,
    class_names,
    register_probe,
    shared_analysis,
    shared_probe,
)
from lit_vit.plotting import figure_to_image, save_image


@dataclass
class ReportSection:
    """A part of ``attention/report.md``.

    Attributes:
        title: Section heading.
        order: Position in the report (lower first).
        body: Markdown; figure links relative to the report's folder.
        facts: Numbers the report's summary reads, by name.
    """

    title: str
    order: int
    body: str
    facts: dict[str, Any] = field(default_factory=dict)


class AttentionCallback(Callback):
    """Base of the attention callbacks.

    Args:
        probe_size: Number of probe images (class-balanced, seeded).
        every_n_epochs: Analyse every n-th validation epoch (and the last).
        seed: Seed of the probe's selection.
        module: Qualified name of the ViT inside the LightningModule, for
            modules holding several; ``None`` finds the only one.

    Raises:
        ValueError: From :meth:`setup`, when the module has no ViT or no
            attention modules, ``module`` names none, or the probe is larger
            than the validation set.
    """

    report_order = 100

    def __init__(
        self, probe_size: int = 8, every_n_epochs: int = 1, seed: int = 0, module: str | None = None
    ) -> None:
        if probe_size < 1:
            raise ValueError(f"probe_size={probe_size} must be at least 1.")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs} must be at least 1.")
        self.settings = ProbeSettings(size=probe_size, seed=seed, module=module)
        self.every_n_epochs = every_n_epochs
        self.num_layers = 0
        self.report_section: ReportSection | None = None
        self._val_probe: Probe | None = None
        self._log_root = Path("attention")
        self._logged_without_tensorboard = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(probe_size=self.settings.size, seed=self.settings.seed)

    # -- Lightning hooks --------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        recorder = AttentionRecorder(pl_module, vit_name=self.settings.module)
        self.num_layers = len(recorder.module_names)
        # On every rank: under DDP, trainer.log_dir is a collective (a broadcast from rank 0).
        self._log_root = Path(trainer.log_dir or trainer.default_root_dir) / "attention"
        self.check_model(self.num_layers)
        self._check_probe_fits(trainer, stage)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self._due(trainer):
            return
        self._run(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._run(trainer, pl_module, "test")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from lit_vit.callbacks.report import write_report

        attention_callbacks = [cb for cb in trainer.callbacks if isinstance(cb, AttentionCallback)]
        if trainer.is_global_zero and attention_callbacks[0] is self:
            write_report(self.output_dir(trainer, "test"), attention_callbacks)

    def state_dict(self) -> dict[str, Any]:
        return {"probe": self._val_probe.state_dict()} if self._val_probe is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "probe" in state_dict:
            self._val_probe = Probe.from_state_dict(state_dict["probe"])

    # -- for subclasses ---------------------------------------------------------------

    def check_model(self, num_layers: int) -> None:
        """Validate arguments that depend on the model (e.g. layer indices)."""

    def analyze(
        self, trainer: Trainer, pl_module: LightningModule, analysis: ProbeAnalysis
    ) -> None:
        raise NotImplementedError

    def log_figure(self, trainer: Trainer, stage: str, name: str, figure: Figure) -> Path:
        """Log ``figure`` as image tag ``attention/<name>`` and save it as a PNG.

        Returns:
            The PNG's path: ``<log_dir>/attention/epoch_<e>/<name>.png``, or
            ``<log_dir>/attention/test/<name>.png`` at test.
        """
        image = figure_to_image(figure)  # (3, H, W) uint8: one render for TensorBoard and file
        tensorboard = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        for logger in tensorboard:
            logger.experiment.add_image(
                f"attention/{name}", image, trainer.global_step, dataformats="CHW"
            )
        if not tensorboard and not self._logged_without_tensorboard:
            self._logged_without_tensorboard = True
            rank_zero_warn(
                f"{type(self).__name__}: no TensorBoardLogger, so attention figures are only "
                f"saved as PNG files under {self.output_dir(trainer, stage).parent}."
            )
        return save_image(image, self.output_dir(trainer, stage) / f"{name}.png")

    def log_scalars(self, pl_module: LightningModule, values: dict[str, float | Tensor]) -> None:
        """``pl_module.log`` each value (rank zero only), so any logger and EarlyStopping see it."""
        for name, value in values.items():
            pl_module.log(name, float(value), rank_zero_only=True)

    def output_dir(self, trainer: Trainer, stage: str) -> Path:
        folder = "test" if stage == "test" else f"epoch_{trainer.current_epoch:03d}"
        return self._log_root / folder

    def class_names(self, trainer: Trainer, analysis: ProbeAnalysis) -> list[str]:
        return class_names(trainer, analysis.recording.logits.shape[-1])

    # -- internals --------------------------------------------------------------------

    def _due(self, trainer: Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        max_epochs = trainer.max_epochs  # None or -1 when only max_steps bounds the run
        last = max_epochs is not None and max_epochs > 0 and epoch >= max_epochs
        return epoch % self.every_n_epochs == 0 or last

    def _run(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        if stage == "val" and self._val_probe is not None:
            register_probe(trainer, stage, self.settings, self._val_probe)
        probe = shared_probe(trainer, pl_module, stage, self.settings)
        if stage == "val":
            self._val_probe = probe
        self.analyze(
            trainer, pl_module, shared_analysis(trainer, pl_module, stage, self.settings, probe)
        )

    def _check_probe_fits(self, trainer: Trainer, stage: str) -> None:
        datamodule = trainer.datamodule
        dataset_name = "val_dataset" if stage in ("fit", "validate") else "test_dataset"
        dataset = getattr(datamodule, dataset_name, None)
        if dataset is not None and len(dataset) < self.settings.size:
            raise ValueError(
                f"{type(self).__name__}: probe_size={self.settings.size} but the "
                f"{dataset_name.split('_')[0]} set has only {len(dataset)} images; "
                f"use probe_size <= {len(dataset)}."
            )
