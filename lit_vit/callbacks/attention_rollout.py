"""Attention rollout and gradient-weighted rollout of the probe images."""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_vit.attention import resize_images
from lit_vit.attention.propagation import HEAD_FUSIONS
from lit_vit.callbacks._data import predicted_class_names
from lit_vit.callbacks.analysis import ProbeAnalysis
from lit_vit.callbacks.base import HistoryCallback, ReportSection
from lit_vit.plotting import rollout_evolution_figure, rollout_figure

# Epochs the rollout strip shows at most, spread evenly over the analysed ones.
MAX_EPOCH_COLUMNS = 10
# Longest side, in pixels, of the probe images the strip keeps in the checkpoint.
STRIP_SIDE = 64


class AttentionRollout(HistoryCallback):
    """Image | map | overlay of attention rollout, plain and gradient-weighted.

    Rollout (Abnar & Zuidema 2020) follows attention through all layers;
    gradient rollout (Chefer et al. 2021) weighs each layer's attention by its
    gradient for a class: the true one and the predicted one. Definitions in
    ``docs/attention.md``.

    Logs:

    - image ``val_attention/rollout``: one row per probe image, columns rollout,
      gradient rollout (true class), gradient rollout (predicted class).
    - image ``val_attention/rollout_evolution``: per probe image (the first
      ``figure_rows``), its rollout at each analysed epoch so far (at most
      ``MAX_EPOCH_COLUMNS``, spread evenly, the last included); the maps are
      kept in the checkpoint (with the images as thumbnails of at most
      ``STRIP_SIDE`` pixels), so a resumed run continues the strip, and the
      test report shows it.

    At test the same tag under ``test_attention/``; with ``name=...`` it is
    ``val_attention/<name>/rollout``. Two instances with other settings (e.g.
    ``head_fusion="max"``) run side by side when each has its own name.

    Args:
        head_fusion: How heads are fused before rolling out.
        discard_ratio: Fraction in [0, 1) of the weakest patch attention
            dropped in each layer.
        start_layer: First layer rolled out.
        gradient: Add the two gradient-rollout columns (the probe then records
            attention gradients for the true and the predicted class).
        every_n_epochs, name: See :class:`~lit_vit.callbacks.base.AttentionCallback`.

    Raises:
        ValueError: For an unknown ``head_fusion``, ``discard_ratio`` outside
            [0, 1), or at setup for a ``start_layer`` outside the model's depth.

    Example::

        Trainer(
            callbacks=[
                AttentionRollout(),
                AttentionRollout(head_fusion="max", discard_ratio=0.9, name="rollout_max"),
            ]
        )
    """

    report_order = 40

    def __init__(
        self,
        head_fusion: Literal["mean", "max", "min"] = "mean",
        discard_ratio: float = 0.0,
        start_layer: int = 0,
        gradient: bool = True,
        every_n_epochs: int = 1,
        name: str | None = None,
    ) -> None:
        super().__init__(every_n_epochs, name)
        if head_fusion not in HEAD_FUSIONS:
            raise ValueError(
                f"AttentionRollout: head_fusion={head_fusion!r} must be one of {HEAD_FUSIONS}."
            )
        if not 0 <= discard_ratio < 1:
            raise ValueError(f"AttentionRollout: discard_ratio={discard_ratio} must be in [0, 1).")
        self.head_fusion = head_fusion
        self.discard_ratio = discard_ratio
        self.start_layer = start_layer
        self.gradient = gradient
        # Per analysed validation run: its epoch and the (R, gh, gw) rollout of the shown images;
        # once, those images as uint8 (R, C, H, W) pixels and their true classes.
        self.history: dict[str, Any] = _empty_history()

    @property
    def gradients(self) -> frozenset[str]:
        return frozenset({"true", "predicted"} if self.gradient else ())

    @property
    def head_fusions(self) -> frozenset[str]:
        return frozenset({self.head_fusion})

    def check_model(self, num_layers: int) -> None:
        if not 0 <= self.start_layer < num_layers:
            raise ValueError(
                f"AttentionRollout: start_layer={self.start_layer} but the model has "
                f"{num_layers} attention layers; use 0 to {num_layers - 1}."
            )

    def analyze(
        self, trainer: Trainer, pl_module: LightningModule, analysis: ProbeAnalysis
    ) -> None:
        rows = analysis.figure_rows
        maps = {"rollout": self._rollout(analysis)[:rows]}
        if analysis.stage == "val":
            self._remember(trainer.current_epoch, analysis, maps["rollout"])
        if self.gradient:
            maps["grad rollout (true)"] = analysis.gradient_rollout("true")[:rows]
            maps["grad rollout (pred)"] = analysis.gradient_rollout("predicted")[:rows]
        names = self.class_names(trainer, analysis)
        labels = [names[label] for label in analysis.probe.labels[:rows]]
        predicted = self.predicted_names(trainer, analysis)[:rows]
        figure = rollout_figure(analysis.probe.pixels[:rows], maps, labels, predicted)
        path = self.log_figure(trainer, analysis.run, "rollout", figure)
        evolution = self._log_evolution(trainer, analysis)
        if analysis.stage == "test":
            gradient = ", and gradient rollout for the true and the predicted class"
            body = (
                f"Rollout with head fusion `{self.head_fusion}`, discard ratio "
                f"{self.discard_ratio}, from layer {self.start_layer}"
                f"{gradient if self.gradient else ''}, on the first {rows} probe images."
                f"\n\n![rollout]({path})"
            )
            if evolution is not None:
                body += (
                    "\n\nThe validation probe's rollout at the analysed epochs of training "
                    f"(from the checkpoint's history):\n\n![rollout over the epochs]({evolution})"
                )
            self.report_section = ReportSection(
                self.title("Attention rollout"), self.report_order, body
            )

    def _remember(self, epoch: int, analysis: ProbeAnalysis, rollout_maps: Tensor) -> None:
        """Keep this validation run's ``(R, gh, gw)`` maps (and, once, the images shown); a
        restored history of other maps (a resume with another probe or input size) is
        dropped with a warning."""
        kept = self.history["maps"]
        if kept and kept[0].shape != rollout_maps.shape:
            rank_zero_warn(
                f"AttentionRollout: the restored history holds maps of shape "
                f"{tuple(kept[0].shape)}, this probe's are {tuple(rollout_maps.shape)} (another "
                "probe size or input size): the rollout strip starts again at this epoch."
            )
            self.history = _empty_history()
        self.history["epoch"].append(epoch)
        self.history["maps"].append(rollout_maps.clone())
        if self.history["pixels"] is None:
            rows = len(rollout_maps)
            self.history["pixels"] = thumbnails(analysis.probe.pixels[:rows], STRIP_SIDE)
            self.history["labels"] = analysis.probe.labels[:rows].clone()

    def _log_evolution(self, trainer: Trainer, analysis: ProbeAnalysis) -> str | None:
        """The strip of the validation probe's rollout over the epochs, or ``None`` before any."""
        epochs = self.history["epoch"]
        if not epochs:
            return None
        # The strip's images are the fit's validation probe: labelled with the model's classes.
        names = predicted_class_names(trainer, analysis.recording.logits.shape[-1])
        if int(self.history["labels"].max()) >= len(names):
            rank_zero_warn(
                f"AttentionRollout: the checkpoint's rollout history has labels up to "
                f"{int(self.history['labels'].max())}, the model {len(names)} classes: the "
                "strip over the epochs is left out."
            )
            return None
        shown = _spread(len(epochs), MAX_EPOCH_COLUMNS)
        maps = torch.stack([self.history["maps"][index] for index in shown])  # (E, R, gh, gw)
        figure = rollout_evolution_figure(
            self.history["pixels"].float() / 255,
            maps,
            [epochs[index] for index in shown],
            [names[label] for label in self.history["labels"]],
        )
        return self.log_figure(trainer, analysis.run, "rollout_evolution", figure)

    def _rollout(self, analysis: ProbeAnalysis):
        """``(B, gh, gw)`` rollout with this callback's settings (the shared one by default)."""
        if (self.head_fusion, self.discard_ratio, self.start_layer) == ("mean", 0.0, 0):
            return analysis.rollout
        reduced = analysis.recording.reduced
        return reduced.rollout(self.head_fusion, self.discard_ratio, self.start_layer).cpu()


def _empty_history() -> dict[str, Any]:
    """Epochs, ``(R, gh, gw)`` maps per epoch, and the ``(R, C, h, w)`` uint8 thumbnails and
    ``(R,)`` labels of the images they belong to."""
    return {"epoch": [], "maps": [], "pixels": None, "labels": None}


def _spread(count: int, most: int) -> list[int]:
    """At most ``most`` of ``range(count)``, evenly spread, first and last included."""
    if count <= most:
        return list(range(count))
    return sorted({round(index * (count - 1) / (most - 1)) for index in range(most)})


def thumbnails(pixels: Tensor, side: int) -> Tensor:
    """``(B, C, H, W)`` pixels in [0, 1] as uint8, shrunk (antialiased) to at most ``side``
    pixels on their longer side: the strip's images stay small in the checkpoint."""
    scale = side / max(pixels.shape[-2:])
    if scale < 1:
        size = tuple(max(1, round(length * scale)) for length in pixels.shape[-2:])
        pixels = resize_images(pixels, size).clamp(0, 1)
    return pixels.mul(255).round().to(torch.uint8)
