"""Attention rollout and gradient-weighted rollout of the probe images."""

from __future__ import annotations

from typing import Literal

from lightning.pytorch import LightningModule, Trainer

from lit_vit.attention import rollout
from lit_vit.callbacks.base import AttentionCallback, ReportSection
from lit_vit.callbacks.probe import ProbeAnalysis
from lit_vit.plotting import rollout_figure


class AttentionRollout(AttentionCallback):
    """Image | map | overlay of attention rollout, plain and gradient-weighted.

    Rollout (Abnar & Zuidema 2020) follows attention through all layers;
    gradient rollout (Chefer et al. 2021) weighs each layer's attention by its
    gradient for a class: the true one and the predicted one. Definitions in
    ``docs/attention.md``.

    Logs:

    - image ``attention/rollout``: one row per probe image, columns rollout,
      gradient rollout (true class), gradient rollout (predicted class).

    Args:
        head_fusion: How heads are fused before rolling out.
        discard_ratio: Fraction in [0, 1) of the weakest patch attention
            dropped in each layer.
        start_layer: First layer rolled out.
        gradient: Add the two gradient-rollout columns.
        probe_size, every_n_epochs, seed, module: See
            :class:`~lit_vit.callbacks.base.AttentionCallback`.

    Raises:
        ValueError: For ``discard_ratio`` outside [0, 1), or at setup for a
            ``start_layer`` outside the model's depth.

    Example::

        Trainer(callbacks=[AttentionRollout(head_fusion="max", discard_ratio=0.9)])

    .. code-block:: yaml

        trainer:
          callbacks:
            - class_path: lit_vit.callbacks.AttentionRollout
              init_args: {head_fusion: mean, discard_ratio: 0.0}
    """

    report_order = 40

    def __init__(
        self,
        head_fusion: Literal["mean", "max", "min"] = "mean",
        discard_ratio: float = 0.0,
        start_layer: int = 0,
        gradient: bool = True,
        probe_size: int = 8,
        every_n_epochs: int = 1,
        seed: int = 0,
        module: str | None = None,
    ) -> None:
        super().__init__(probe_size, every_n_epochs, seed, module)
        if not 0 <= discard_ratio < 1:
            raise ValueError(f"AttentionRollout: discard_ratio={discard_ratio} must be in [0, 1).")
        self.head_fusion = head_fusion
        self.discard_ratio = discard_ratio
        self.start_layer = start_layer
        self.gradient = gradient

    def check_model(self, num_layers: int) -> None:
        if not 0 <= self.start_layer < num_layers:
            raise ValueError(
                f"AttentionRollout: start_layer={self.start_layer} but the model has "
                f"{num_layers} attention layers; use 0 to {num_layers - 1}."
            )

    def analyze(
        self, trainer: Trainer, pl_module: LightningModule, analysis: ProbeAnalysis
    ) -> None:
        recording = analysis.recording
        plain = (self.head_fusion, self.discard_ratio, self.start_layer) == ("mean", 0.0, 0)
        maps = {
            "rollout": analysis.rollout
            if plain
            else rollout(
                recording.attention,
                recording.layout,
                self.head_fusion,
                self.discard_ratio,
                self.start_layer,
            ).cpu()
        }
        if self.gradient:
            maps["grad rollout (true)"] = analysis.grad_rollout_true
            maps["grad rollout (pred)"] = analysis.grad_rollout_predicted
        names = self.class_names(trainer, analysis)
        labels = [names[label] for label in analysis.probe.labels]
        figure = rollout_figure(analysis.probe.pixels, maps, labels)
        path = self.log_figure(trainer, analysis.stage, "rollout", figure)
        if analysis.stage == "test":
            body = (
                f"Rollout with head fusion `{self.head_fusion}`, discard ratio "
                f"{self.discard_ratio}, from layer {self.start_layer}"
                + (
                    ", and gradient rollout for the true and the predicted class"
                    if self.gradient
                    else ""
                )
                + f".\n\n![rollout]({path.name})"
            )
            self.report_section = ReportSection("Attention rollout", self.report_order, body)
