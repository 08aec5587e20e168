"""Accuracy and attention of the trained model at several input resolutions."""

from __future__ import annotations

import copy

import torch
from lightning.pytorch import LightningModule, Trainer

from lit_vit._arguments import check_counts
from lit_vit.attention import ResolutionResult, check_size, resize_images, resolution_sweep
from lit_vit.callbacks._data import class_names, iterate_batches
from lit_vit.callbacks.analysis import ProbeAnalysis
from lit_vit.callbacks.base import AttentionCallback, ReportSection
from lit_vit.callbacks.report import markdown_table
from lit_vit.plotting import resolution_figure

# Images whose attention is recorded per size (distance, entropy, focus, coverage) and timed:
# the recording holds L * B * H * N^2 floats, and N grows with the square of the size.
MEASURE_BATCH = 32

TABLE_HEADER = [
    "size",
    "grid",
    "tokens",
    "accuracy",
    "rel. distance (first layer)",
    "rel. distance (last layer)",
    "entropy (mean)",
    "effective area",
    "focus",
    "coverage",
    "ms per image",
]

INTERPOLATION_NOTE = (
    "Every size runs the same weights: the learned position embeddings are resampled "
    "bicubically from the training grid to the new one (timm's `set_input_size`, Hugging "
    "Face's `interpolate_pos_encoding`, torchvision's `interpolate_embeddings`), so the model "
    "meets other "
    "grids only through that interpolation, and the drop in accuracy away from the training "
    "size shows how far it carries. Compare attention across sizes with the relative distance "
    "and the effective area, which do not change merely because the grid is finer."
)


class ResolutionSweep(AttentionCallback):
    """How accuracy and attention change when the input size changes.

    Not a per-epoch analysis: once at the end of fit (on validation images)
    and once at test (on test images; skipped under ``fast_dev_run``), a
    copy of the model is evaluated at each size: the images are resized
    (bilinear, antialiased when shrinking) and the position embeddings are
    resampled to the new grid (see :func:`~lit_vit.attention.resolution_sweep`
    and ``docs/attention.md``). Accuracy uses up to ``images`` images; the
    attention measures and the timing use the first 32 of them; the figure
    shows the rollout maps of the first ``figure_images`` probe images (the
    probe of :class:`~lit_vit.callbacks.probe.AttentionProbe`).

    Logs (``SxS`` = the size, zero-padded to 3 digits so tags sort: ``020x020``;
    ``val_attention/`` at fit end, ``test_attention/`` at test):

    - image ``val_attention/resolution``: probe images x sizes, rollout overlays.
    - text ``val_attention/resolution/table``: size, grid, tokens, accuracy,
      relative distance (first and last layer), entropy and effective area
      (means over layers and heads), focus and coverage of the rollout (means
      over images) and milliseconds per image; also written to
      ``attention/fit_end/resolution/table.md`` and ``attention/test/...``.
    - at test only (Lightning allows no ``log`` in ``on_fit_end``), scalars
      ``test_attention/resolution/accuracy_SxS``,
      ``test_attention/resolution/distance_relative_SxS`` (mean over layers),
      ``test_attention/resolution/focus_SxS`` (mean over images) and
      ``test_attention/resolution/ms_per_image_SxS``.

    Args:
        sizes: Square input sizes, multiples of the patch size. ``None``: from
            the training size ``S`` and the patch size ``p``, ``S - 2p``,
            ``S - p``, ``S``, ``S + p``, ``S + 2p`` and ``2S``, keeping those of
            at least ``2p``. The training size is added when missing: it is
            the report's reference.
        images: Images of the validation set (fit end) or test set (test)
            whose accuracy is measured, at most.
        figure_images: Probe images shown in the figure (at most the probe's).
        name: See :class:`~lit_vit.callbacks.base.AttentionCallback`.

    Raises:
        ValueError: For non-positive or repeated sizes, ``images < 1``,
            ``figure_images < 1``, or at setup for a
            size that is not a multiple of the patch size (the message names
            the nearest valid sizes), or non-square sizes for torchvision.

    Example::

        Trainer(callbacks=[ResolutionSweep(sizes=[20, 28, 36, 56], images=1024)])
    """

    report_order = 30
    stages = frozenset({"fit_end", "test"})
    on_reduced_runs = False  # fast_dev_run: skipped

    def __init__(
        self,
        sizes: list[int] | None = None,
        images: int = 512,
        figure_images: int = 4,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if sizes is not None:
            if not sizes or any(size < 1 for size in sizes):
                raise ValueError(
                    f"ResolutionSweep: sizes={sizes} must be a non-empty list of positive ints."
                )
            repeated = sorted({size for size in sizes if sizes.count(size) > 1})
            if repeated:
                raise ValueError(
                    f"ResolutionSweep: sizes={sizes} repeats {repeated}; list each size once."
                )
        check_counts("ResolutionSweep", images=images, figure_images=figure_images)
        self.sizes = sizes
        self.images = images
        self.figure_images = figure_images
        self.training_size: tuple[int, int] | None = None
        self._pairs: list[tuple[int, int]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, sizes=self.sizes)

    # -- Lightning hooks --------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        backend = self.probe.recorder.backend
        self.training_size = backend.input_size()
        patch_size = backend.layout(self.training_size).patch_size
        self._pairs = self._resolve_sizes(patch_size, backend.square_inputs)

    def analyze(
        self, trainer: Trainer, pl_module: LightningModule, analysis: ProbeAnalysis
    ) -> None:
        """Evaluate every size on the images of the run's stage; log, and at test report."""
        run = analysis.run
        split = "test" if run.stage == "test" else "val"
        self.progress(run, f"{len(self._pairs)} input sizes on up to {self.images:,} test images")
        batches = list(iterate_batches(trainer, pl_module, split, self.images))
        images = torch.cat([images for images, _ in batches])
        labels = torch.cat([labels for _, labels in batches]).long()
        model = _on_accelerator(trainer, pl_module)
        vit_name = self.probe.recorder.vit_name
        results = resolution_sweep(
            model, images, labels, self._pairs, vit_name=vit_name, batch_size=MEASURE_BATCH
        )
        probe = self.probe.probe(trainer, pl_module, split)
        shown = min(self.figure_images, len(probe.labels))
        # The figure's maps: the measures above are of the swept images, not the probe's.
        shown_results = resolution_sweep(
            model,
            probe.images[:shown],
            probe.labels[:shown],
            self._pairs,
            vit_name=vit_name,
            timing_repeats=1,
        )
        names = class_names(trainer, int(labels.max()) + 1)
        figure = resolution_figure(
            {
                _label(r.image_size): resize_images(probe.pixels[:shown], r.image_size)
                for r in results
            },
            {
                _label(r.image_size): s.rollout_maps
                for r, s in zip(results, shown_results, strict=True)
            },
            [names[label] for label in probe.labels[:shown]],
        )
        figure_path = self.log_figure(trainer, run, "resolution", figure)
        backend = self.probe.recorder.backend
        prefix = backend.layout(backend.input_size()).num_prefix_tokens
        table = self._table(results, prefix)
        self.probe.outputs.log_text(
            trainer,
            run,
            self.key("resolution/table"),
            f"# Effect of input resolution ({len(images)} {split} images)\n\n{table}",
        )
        if run.stage == "test":
            self.log_scalars(pl_module, run, self._scalars(results))
            self.report_section = self._section(results, len(images), figure_path, table)

    def _scalars(self, results: list[ResolutionResult]) -> dict[str, float]:
        scalars = {}
        for result in results:
            tag = "{:03d}x{:03d}".format(*result.image_size)
            scalars[f"resolution/accuracy_{tag}"] = result.accuracy
            scalars[f"resolution/distance_relative_{tag}"] = float(result.relative_distance.mean())
            scalars[f"resolution/focus_{tag}"] = float(result.focus.mean())
            scalars[f"resolution/ms_per_image_{tag}"] = 1000 * result.seconds_per_image
        return scalars

    def _table(self, results: list[ResolutionResult], num_prefix_tokens: int) -> str:
        rows = []
        for result in results:
            grid = result.grid_size
            training = " (training)" if result.image_size == self.training_size else ""
            rows.append(
                (
                    _label(result.image_size) + training,
                    f"{grid[0]}x{grid[1]}",
                    num_prefix_tokens + grid[0] * grid[1],
                    result.accuracy,
                    float(result.relative_distance[0]),
                    float(result.relative_distance[-1]),
                    float(result.entropy.mean()),
                    float(result.effective_area.mean()),
                    float(result.focus.mean()),
                    float(result.coverage.mean()),
                    1000 * result.seconds_per_image,
                )
            )
        return markdown_table(TABLE_HEADER, rows)

    def _section(
        self, results: list[ResolutionResult], count: int, figure_path: str, table: str
    ) -> ReportSection:
        training = next(r for r in results if r.image_size == self.training_size)
        area = self.training_size[0] * self.training_size[1]
        # Ties go to the size nearest the training size.
        best = max(
            results, key=lambda r: (r.accuracy, -abs(r.image_size[0] * r.image_size[1] - area))
        )
        body = "\n\n".join(
            [
                f"Accuracy on {count} test images and attention of the first "
                f"{min(count, MEASURE_BATCH)} at each input size; the figure shows the rollout "
                "of the same probe images at every size (each map scaled to its own range).",
                f"![rollout by input size]({figure_path})",
                table,
                INTERPOLATION_NOTE,
            ]
        )
        summary = (
            f"- Accuracy is highest at {_label(best.image_size)} ({best.accuracy:.3f}); at the "
            f"training size it is {training.accuracy:.3f} ({count} test images)."
        )
        return ReportSection(
            self.title("Effect of input resolution"), self.report_order, body, [summary]
        )

    def _resolve_sizes(self, patch: tuple[int, int], square_inputs: bool) -> list[tuple[int, int]]:
        """The ``(height, width)`` sizes to sweep, the training size among them."""
        pairs = self._listed_sizes(patch)
        if square_inputs and any(h != w for h, w in pairs):
            raise ValueError(
                f"ResolutionSweep: torchvision's VisionTransformer takes square images only; "
                f"sizes {self.sizes} give {pairs}. List square sizes (ints)."
            )
        return pairs

    def _listed_sizes(self, patch: tuple[int, int]) -> list[tuple[int, int]]:
        height, width = self.training_size
        if self.sizes is None:
            offsets = [(height + k * patch[0], width + k * patch[1]) for k in (-2, -1, 0, 1, 2)]
            candidates = [*offsets, (2 * height, 2 * width)]
            return sorted(
                {(h, w) for h, w in candidates if h >= 2 * patch[0] and w >= 2 * patch[1]}
            )
        for size in self.sizes:
            try:
                check_size(size, patch)
            except ValueError as error:
                raise ValueError(f"ResolutionSweep: sizes={self.sizes}: {error}") from None
        pairs = [(size, size) for size in self.sizes]
        return pairs if self.training_size in pairs else sorted([*pairs, self.training_size])


def _label(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _on_accelerator(trainer: Trainer, pl_module: LightningModule) -> LightningModule:
    """The module on the trainer's device: Lightning moves it to the CPU before ``on_fit_end``."""
    device = trainer.strategy.root_device
    return pl_module if pl_module.device == device else copy.deepcopy(pl_module).to(device)
