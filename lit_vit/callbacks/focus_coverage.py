"""Focus, coverage and object mass of the rollout map, per image and per class."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from lit_vit.attention import (
    TokenLayout,
    coverage,
    focus_score,
    foreground_mask,
    object_mass,
)
from lit_vit.callbacks._data import class_names
from lit_vit.callbacks.analysis import ProbeAnalysis
from lit_vit.callbacks.base import AttentionCallback, ReportSection
from lit_vit.callbacks.report import markdown_table
from lit_vit.plotting import metric_by_class_figure, per_image_metrics_figure

# Fields of SaliencyMeasures, in table-column order.
_MEASURES = ("focus", "coverage", "object_mass", "lift")


@dataclass(frozen=True)
class SaliencyMeasures:
    """Per-image measures of a batch of saliency maps, each ``(B,)`` float32 on the CPU."""

    focus: Tensor
    coverage: Tensor
    object_mass: Tensor
    lift: Tensor

    @classmethod
    def cat(cls, parts: Sequence[SaliencyMeasures]) -> SaliencyMeasures:
        return cls(*(torch.cat([getattr(part, name) for part in parts]) for name in _MEASURES))

    def select(self, chosen: Tensor) -> SaliencyMeasures:
        return SaliencyMeasures(*(getattr(self, name)[chosen] for name in _MEASURES))

    def values(self, index: int) -> tuple[float, ...]:
        """The measures of image ``index``, in field order."""
        return tuple(float(getattr(self, name)[index]) for name in _MEASURES)

    def means(self) -> dict[str, float]:
        """Mean of each measure; lift is a NaN-mean (NaN when no image has foreground)."""
        return {name: float(getattr(self, name).nanmean()) for name in _MEASURES}


class FocusCoverage(AttentionCallback):
    """How concentrated the rollout map is, and how much of it lies on the object.

    For the rollout map of each probe image (mean head fusion, no discard):
    focus@k, the mass on the ``ceil(k * G)`` most salient of the ``G`` patches
    (uniform: ``ceil(k * G) / G``, one-hot: 1); coverage@m, the fraction of the
    grid needed, most salient first, to hold mass ``m``; object mass, the mass
    on foreground patches (mean raw pixel value >= ``foreground_threshold``),
    and its lift over a uniform map (1.0 = no better than uniform; NaN for an
    image without foreground). Definitions in ``docs/attention.md``.

    At test (where the probe is drawn from the test set) it also measures up to
    ``test_images`` images of the test set, batch by batch (one batch's
    attention and gradients in memory at a time), and reports the rollout's
    means per class; the report's summary quotes these test-set means. There it
    also measures every other explainer (flow, class-token attention, gradient
    rollout, input x gradient) and the controls (random, intensity, edges,
    centre), whose mean lift goes to the report's table of explainers.

    Logs:

    - scalars ``val_attention/focus/mean``, ``val_attention/coverage/mean``,
      ``val_attention/object_mass/mean``, ``val_attention/lift/mean``: means over the
      probe images (lift: over images with foreground; not logged when none has).
    - image ``val_attention/focus_coverage``: focus, coverage and lift of every
      probe image, with the values of a uniform map.
    - at test, the same under ``test_attention/`` for the test probe, and
      scalars ``test_attention/focus/test_mean``,
      ``test_attention/coverage/test_mean``,
      ``test_attention/object_mass/test_mean``,
      ``test_attention/lift/test_mean`` over the test images, and images
      ``test_attention/focus_by_class``, ``test_attention/coverage_by_class``,
      ``test_attention/lift_by_class`` (mean per true class).

    With ``name=...`` every tag gets ``<name>/`` after the root.

    Args:
        k: Fraction of the patches whose mass focus counts, in (0, 1].
        m: Mass that coverage must reach, in (0, 1].
        foreground_threshold: Smallest mean raw pixel value (in [0, 1]) of a
            foreground patch.
        test_images: Test images measured per class at test; ``None`` for the
            whole test set (the dataloader's, not limited by
            ``limit_test_batches``). Under ``fast_dev_run``: the probe's size.
        every_n_epochs, name: See :class:`~lit_vit.callbacks.base.AttentionCallback`.

    Raises:
        ValueError: For ``k`` or ``m`` outside (0, 1], ``foreground_threshold``
            outside [0, 1], or ``test_images`` smaller than 1.

    Example::

        Trainer(callbacks=[FocusCoverage(k=0.1, m=0.5, test_images=None)])
    """

    report_order = 50

    def __init__(
        self,
        k: float = 0.1,
        m: float = 0.5,
        foreground_threshold: float = 0.1,
        test_images: int | None = 1000,
        every_n_epochs: int = 1,
        name: str | None = None,
    ) -> None:
        super().__init__(every_n_epochs, name)
        for name, value in (("k", k), ("m", m)):
            if not 0 < value <= 1:
                raise ValueError(f"FocusCoverage: {name}={value} must be in (0, 1].")
        if not 0 <= foreground_threshold <= 1:
            raise ValueError(
                f"FocusCoverage: foreground_threshold={foreground_threshold} must be in [0, 1] "
                "(a mean raw pixel value)."
            )
        if test_images is not None and test_images < 1:
            raise ValueError(
                f"FocusCoverage: test_images={test_images} must be at least 1, or None for the "
                "whole test set."
            )
        self.k = k
        self.m = m
        self.foreground_threshold = foreground_threshold
        self.test_images = test_images

    @property
    def explained_test_images(self) -> int | None:
        return self.test_images

    def charts(self) -> dict[str, list[str]]:
        measures = "|".join(_MEASURES)
        return {self.title("focus, coverage, lift"): [self.tag_pattern(f"({measures})/mean")]}

    def analyze(
        self, trainer: Trainer, pl_module: LightningModule, analysis: ProbeAnalysis
    ) -> None:
        run, probe, layout = analysis.run, analysis.probe, analysis.recording.layout
        probe_values = self.measure(analysis.rollout, probe.pixels, layout)
        self.log_scalars(pl_module, run, _scalars(probe_values, "mean"))
        names = self.class_names(trainer, analysis)
        true_names = [names[label] for label in probe.labels]
        predicted_names = self.predicted_names(trainer, analysis)
        figure = per_image_metrics_figure(
            probe_values, true_names, predicted_names, self._uniform(layout), self.k, self.m
        )
        probe_path = self.log_figure(trainer, run, "focus_coverage", figure)
        if analysis.stage == "test":
            probe_rows = [
                (int(index), true_names[i], predicted_names[i], *probe_values.values(i))
                for i, index in enumerate(probe.indices)
            ]
            self._analyze_test_set(trainer, pl_module, analysis, probe_rows, probe_path)

    def _analyze_test_set(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        analysis: ProbeAnalysis,
        probe_rows: list[tuple],
        probe_path: str,
    ) -> None:
        """Every map's measures on the test images: the rollout's means (scalars, per-class
        figures, the report section) and every map's lift (the trust table)."""
        limit = len(analysis.probe.labels) if analysis.reduced else self.test_images
        every_map, labels = self._measure_test_set(trainer, pl_module, limit)
        test_values = every_map["rollout"]
        self.log_scalars(pl_module, analysis.run, _scalars(test_values, "test_mean"))
        self.probe.trust.add(
            "lift", {name: values.means()["lift"] for name, values in every_map.items()}
        )
        all_names = class_names(trainer, analysis.recording.logits.shape[-1])
        class_paths = []
        for name, label in (
            ("focus", f"focus@{self.k:g}"),
            ("coverage", f"coverage@{self.m:g}"),
            ("lift", "lift on the object"),
        ):
            figure = metric_by_class_figure(
                getattr(test_values, name), labels, all_names, f"Rollout {label} per class", label
            )
            class_paths.append(self.log_figure(trainer, analysis.run, f"{name}_by_class", figure))
        class_rows = []
        for label, name in enumerate(all_names):
            chosen = labels == label
            if chosen.any():
                class_means = test_values.select(chosen).means().values()
                class_rows.append((name, int(chosen.sum()), *class_means))
        uniform = self._uniform(analysis.recording.layout)
        self.report_section = self._section(
            test_values.means(), len(labels), uniform, probe_rows, class_rows,
            [probe_path, *class_paths],
        )  # fmt: skip

    def _section(
        self,
        means: dict[str, float],
        images: int,
        uniform: dict[str, float],
        probe_rows: list[tuple],
        class_rows: list[tuple],
        paths: list[str],
    ) -> ReportSection:
        """The report section: the definitions, the probe's and the classes' tables, the
        figures (``paths``: the probe's, then the per-class ones)."""
        body = "\n\n".join(
            [
                f"Rollout map (mean head fusion, no discard): focus@{self.k:g} is the mass on "
                f"the top {self.k:.0%} of patches (uniform: {uniform['focus']:.3f}), "
                f"coverage@{self.m:g} the fraction of the grid holding mass {self.m:g} (uniform: "
                f"{uniform['coverage']:.3f}), object mass the mass on patches whose mean raw pixel "
                f"value is at least {self.foreground_threshold:g}, lift that mass over the "
                "foreground fraction (1.00 = uniform).",
                "Probe images (index: position in the test dataloader's order):",
                markdown_table(
                    ["index", "class", "predicted", "focus", "coverage", "object mass", "lift"],
                    probe_rows,
                ),
                f"![focus and coverage per probe image]({paths[0]})",
                f"Mean per true class over {images} test images:",
                markdown_table(
                    ["class", "n", "focus", "coverage", "object mass", "lift"], class_rows
                ),
                " ".join(f"![{path[:-4]}]({path})" for path in paths[1:]),
            ]
        )
        summary = (
            f"- Rollout focus@{self.k:.0%}: {means['focus']:.3f} of the mass on the top patches "
            f"(uniform: {uniform['focus']:.3f}); coverage@{self.m:.0%}: "
            f"{means['coverage']:.3f} of the grid; lift on the object {means['lift']:.2f} "
            f"(1.00 = no better than uniform); means over {images} test images."
        )
        return ReportSection(self.title("Focus and coverage"), self.report_order, body, [summary])

    def measure(self, saliency: Tensor, pixels: Tensor, layout: TokenLayout) -> SaliencyMeasures:
        """Focus, coverage, object mass and lift of ``(B, gh, gw)`` saliency maps.

        ``pixels`` are the ``(B, C, H, W)`` raw images in [0, 1] (for the foreground mask).
        """
        saliency = saliency.detach().float().cpu()
        mask = foreground_mask(pixels.detach().cpu(), layout, self.foreground_threshold)
        mass = object_mass(saliency, mask)
        return SaliencyMeasures(
            focus=focus_score(saliency, self.k),
            coverage=coverage(saliency, self.m),
            object_mass=mass.mass,
            lift=mass.lift,
        )

    def _measure_test_set(
        self, trainer: Trainer, pl_module: LightningModule, limit: int | None
    ) -> tuple[dict[str, SaliencyMeasures], Tensor]:
        """Every explainer's and control's measures on the test images, and their labels."""
        batches = self.probe.explained_test_set(trainer, pl_module, limit)
        parts = [
            {name: self.measure(m, batch.pixels, batch.layout) for name, m in batch.maps.items()}
            for batch in batches
        ]
        measures = {name: SaliencyMeasures.cat([part[name] for part in parts]) for name in parts[0]}
        return measures, torch.cat([batch.labels for batch in batches])

    def _uniform(self, layout: TokenLayout) -> dict[str, float]:
        """Focus and coverage of a uniform map: ``ceil(k G) / G`` and ``ceil(m G) / G``."""
        flat = torch.ones(1, layout.num_patches)
        return {
            "focus": float(focus_score(flat, self.k)),
            "coverage": float(coverage(flat, self.m)),
        }


def _scalars(values: SaliencyMeasures, suffix: str) -> dict[str, float]:
    """Scalar tags of the means; lift left out when no image has foreground."""
    means = values.means()
    return {
        f"{name}/{suffix}": value
        for name, value in means.items()
        if not (name == "lift" and math.isnan(value))
    }
