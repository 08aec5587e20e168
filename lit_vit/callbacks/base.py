"""What every attention analysis callback shares: its name, its probe, its logging.

An analysis callback finds the trainer's
:class:`~lit_vit.callbacks.probe.AttentionProbe` at ``setup`` (one with
default settings is added when there is none) and declares what it needs
from the probe's capture (:attr:`AttentionCallback.gradients`,
:attr:`AttentionCallback.head_fusions`) and the runs it analyses
(:attr:`AttentionCallback.stages`: due validation runs, fit end, test). It
implements :meth:`AttentionCallback.analyze`, which the probe calls with the
run's shared :class:`~lit_vit.callbacks.analysis.ProbeAnalysis`; at test it
sets :attr:`AttentionCallback.report_section`.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from matplotlib.figure import Figure
from torch import Tensor

from lit_vit._arguments import check_counts
from lit_vit.callbacks._data import class_names, predicted_class_names
from lit_vit.callbacks.analysis import ProbeAnalysis
from lit_vit.callbacks.outputs import ProbeRun
from lit_vit.callbacks.probe import AttentionProbe, attach_probe
from lit_vit.callbacks.report import ReportSection


class AttentionCallback(Callback):
    """Base of the attention analysis callbacks.

    Args:
        every_n_epochs: Analyse every n-th validation epoch (and the last).
        name: Distinguishes several instances of one callback: their tags
            become ``val_attention/<name>/...``, their PNG files
            ``<name>/...png`` and their report sections "... (<name>)".
            ``None`` for a single instance.

    Raises:
        ValueError: For ``every_n_epochs`` below 1 or an empty ``name``.
    """

    report_order: ClassVar[int] = 100
    # The runs the probe hands this callback: "val" (due validation runs), "fit_end", "test".
    stages: frozenset[str] = frozenset({"val", "test"})
    # Analyse fast_dev_run's reduced runs too (off where a few batches prove nothing).
    on_reduced_runs: ClassVar[bool] = True
    hidden_states: ClassVar[bool] = False  # reads every block's output from the capture

    def __init__(self, every_n_epochs: int = 1, name: str | None = None) -> None:
        check_counts(type(self).__name__, every_n_epochs=every_n_epochs)
        if name is not None and not name.strip("/ "):
            raise ValueError(f"{type(self).__name__}: name={name!r} must be a non-empty string.")
        self.every_n_epochs = every_n_epochs
        self.name = name.strip("/ ") if name is not None else None
        self.report_section: ReportSection | None = None
        self.probe: AttentionProbe | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    @property
    def gradients(self) -> frozenset[str]:
        """Gradient targets the analysis needs: a subset of ``{"predicted", "true"}``."""
        return frozenset()

    @property
    def head_fusions(self) -> frozenset[str]:
        """Head fusions whose fused attention the analysis reads (``"mean"`` is always
        recorded): a subset of ``{"mean", "max", "min"}``."""
        return frozenset()

    @property
    def explained_test_images(self) -> int | None:
        """Test images whose explainer and control maps the analysis reads at test
        (:meth:`AttentionProbe.explained_test_set`); ``None`` for all, 0 for none."""
        return 0

    # -- Lightning hooks --------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.probe = attach_probe(trainer, pl_module, stage, self)
        self.check_model(self.probe.num_layers)

    # -- for subclasses ---------------------------------------------------------------

    def charts(self) -> dict[str, list[str]]:
        """TensorBoard's custom scalars: chart title -> regexes of the validation tags it draws,
        one line per matching tag (e.g. a line per layer)."""
        return {}

    def tag_pattern(self, key: str) -> str:
        """Regex of the validation tag ``val_attention/<name>/<key>`` (``key`` a regex itself)."""
        return "val_attention/" + self.key(key)

    def progress(self, run: ProbeRun, message: str) -> None:
        """Say on the console what the test-time analysis does now (silent during fit)."""
        if run.stage == "test":
            rank_zero_info(f"{self.title(type(self).__name__)}: {message}")

    def layer_pattern(self, series: str) -> str:
        """Regex of the per-layer series ``val_attention/<name>/<series>/layer_LL`` as the
        layers' own runs write it (tag ``val_attention/<name>/<series>``): a line and a colour
        per layer."""
        return "^" + re.escape(f"val_attention/{self.key(series)}") + "$"

    def check_model(self, num_layers: int) -> None:
        """Validate arguments that depend on the model (e.g. layer indices)."""

    def analyze(
        self, trainer: Trainer, pl_module: LightningModule, analysis: ProbeAnalysis
    ) -> None:
        """Analyse one captured run (rank zero only)."""
        raise NotImplementedError

    def due(self, trainer: Trainer) -> bool:
        """Whether this validation run is analysed: every n-th epoch, and the last."""
        epoch = trainer.current_epoch + 1
        max_epochs = trainer.max_epochs  # None or -1 when only max_steps bounds the run
        last = max_epochs is not None and max_epochs > 0 and epoch >= max_epochs
        return epoch % self.every_n_epochs == 0 or last

    def key(self, key: str) -> str:
        """``key`` within this instance's namespace: ``<name>/<key>`` when named."""
        return f"{self.name}/{key}" if self.name else key

    def title(self, title: str) -> str:
        """A report section title, with the instance's name when it has one."""
        return f"{title} ({self.name})" if self.name else title

    def log_figure(self, trainer: Trainer, run: ProbeRun, key: str, figure: Figure) -> str:
        """Log ``figure`` as image ``<tag_root>/<name>/<key>`` and save it as a PNG.

        Returns:
            The PNG's path relative to the run's folder.
        """
        return self.probe.outputs.log_figure(trainer, run, self.key(key), figure)

    def log_scalars(
        self, pl_module: LightningModule, run: ProbeRun, values: dict[str, float | Tensor]
    ) -> None:
        """Log each value as ``<tag_root>/<name>/<key>`` at the run's step (rank zero only).

        At validation runs through ``pl_module.log``, so any logger and
        ``EarlyStopping`` see them (at the step of the run's ``val/*`` metrics);
        at fit end (where Lightning allows no ``log``) and at test straight to
        the loggers, so that Lightning's table of test results keeps to
        ``test/acc`` and ``test/loss``.
        """
        scalars = {f"{run.tag_root}/{self.key(key)}": float(value) for key, value in values.items()}
        self.probe.outputs.note_scalars(pl_module.trainer, run, scalars)
        if run.stage == "val":
            for tag, value in scalars.items():
                pl_module.log(tag, value, rank_zero_only=True)
            return
        for logger in pl_module.trainer.loggers:
            logger.log_metrics(scalars, step=run.step)

    def class_names(self, trainer: Trainer, analysis: ProbeAnalysis) -> list[str]:
        """Names of the data's classes, for true labels."""
        return class_names(trainer, analysis.recording.logits.shape[-1])

    def predicted_names(self, trainer: Trainer, analysis: ProbeAnalysis) -> list[str]:
        """Names of the probe's predicted classes, in probe order."""
        names = predicted_class_names(trainer, analysis.recording.logits.shape[-1])
        return [names[label] for label in analysis.predictions]


class HistoryCallback(AttentionCallback):
    """An analysis callback that keeps its evolution over the analysed epochs
    (:attr:`history`) in the checkpoint, so that a resumed run continues it. Only these are
    stateful to Lightning (two unnamed instances of the others get lit-vit's own message)."""

    history: dict[str, Any]

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "history" in state_dict:
            self.history = self.restored_history(state_dict["history"])

    def restored_history(self, history: dict[str, Any]) -> dict[str, Any]:
        """The history of a checkpoint as this version keeps it (override to fill in what an
        older version did not keep)."""
        return history
