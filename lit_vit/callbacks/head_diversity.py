"""Head diversity, attention entropy and mean attention distance by depth."""

from __future__ import annotations

import math

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from lit_vit.attention import bootstrap_interval, compare
from lit_vit.callbacks.analysis import ProbeAnalysis
from lit_vit.callbacks.base import HistoryCallback, ReportSection
from lit_vit.callbacks.report import markdown_table
from lit_vit.plotting import (
    distance_scatter_figure,
    evolution_figure,
    layer_bar_figure,
    layer_head_heatmap_figure,
)

# Measures whose per-layer history is kept, and the range of their colour scale.
# Colour scale of each measure's evolution panel, ``None`` for the data's end. Shares and ratios
# start at 0, so a 3% change looks like one; prefix mass (often under 0.05) up to its maximum.
EVOLUTION = {
    "head diversity": (0.0, 1.0),
    "entropy": (0.0, 1.0),
    "relative distance": (0.0, None),
    "prefix mass": (0.0, None),
}


class HeadDiversity(HistoryCallback):
    """Do heads specialise, and are early layers local and late layers global?

    Per layer: head diversity (mean pairwise Jensen-Shannon divergence of the
    heads' query distributions, in [0, 1]); per head: normalised attention
    entropy and mean attention distance, in pixels and relative to uniform
    attention (1.0 = as global as uniform). See ``docs/attention.md``.

    Logs (``LL`` = zero-padded layer):

    - scalar ``val_attention/head_diversity/layer_LL``
    - scalar ``val_attention/distance_relative/layer_LL`` (mean over heads)
    - scalar ``val_attention/entropy/layer_LL`` (mean over heads)
    - image ``val_attention/head_diversity`` (bars per layer)
    - image ``val_attention/distance`` (distance vs depth, one dot per head)
    - image ``val_attention/entropy`` (layers x heads heatmap)
    - image ``val_attention/evolution``: head diversity, entropy, relative
      distance and the class token's mass on prefix tokens per layer at every
      analysed epoch so far (layers x epochs heatmaps); the history is kept
      in the checkpoint, so a resumed run continues it.

    At test the same tags under ``test_attention/``; with ``name=...`` every
    tag gets ``<name>/`` after the root.

    Args:
        every_n_epochs, name: See :class:`~lit_vit.callbacks.base.AttentionCallback`.

    Example::

        Trainer(callbacks=[HeadDiversity(every_n_epochs=5)])
    """

    report_order = 20

    def __init__(self, every_n_epochs: int = 1, name: str | None = None) -> None:
        super().__init__(every_n_epochs, name)
        # Per analysed validation run: its epoch and each measure's per-layer means.
        self.history: dict[str, list] = {"epoch": [], **{m: [] for m in EVOLUTION}}

    def charts(self) -> dict[str, list[str]]:
        return {
            self.title(f"{title} by layer"): [self.layer_pattern(key)]
            for key, title in (
                ("head_diversity", "head diversity"),
                ("entropy", "entropy"),
                ("distance_relative", "relative distance"),
            )
        }

    def restored_history(self, history: dict[str, list]) -> dict[str, list]:
        epochs = history.get("epoch", [])
        # A measure the checkpoint's version did not keep: no values for its epochs (blank).
        return {"epoch": list(epochs)} | {
            measure: list(history.get(measure, [[]] * len(epochs))) for measure in EVOLUTION
        }

    def analyze(
        self, trainer: Trainer, pl_module: LightningModule, analysis: ProbeAnalysis
    ) -> None:
        reduced = analysis.recording.reduced
        diversity = reduced.head_diversity().cpu()  # (L,)
        entropy = analysis.entropy  # (L, H)
        distance = reduced.mean_attention_distance()
        pixels, relative = distance.pixels.cpu(), distance.relative.cpu()  # (L, H) each
        scalars = {}
        for layer in range(len(diversity)):
            scalars[f"head_diversity/layer_{layer:02d}"] = diversity[layer]
            scalars[f"distance_relative/layer_{layer:02d}"] = relative[layer].mean()
            scalars[f"entropy/layer_{layer:02d}"] = entropy[layer].mean()
        self.log_scalars(pl_module, analysis.run, scalars)
        if analysis.stage == "val":
            means = {
                "head diversity": diversity,
                "entropy": entropy.mean(dim=1),
                "relative distance": relative.mean(dim=1),
                "prefix mass": analysis.prefix_mass.mean(dim=(1, 2)),  # (L, B, H) -> (L,)
            }
            self.history["epoch"].append(trainer.current_epoch)
            for measure, values in means.items():
                self.history[measure].append([float(value) for value in values])
        figures = {
            "head_diversity": layer_bar_figure(
                diversity, "Head diversity per layer", "mean pairwise JS divergence"
            ),
            "distance": distance_scatter_figure(pixels, "mean attention distance (px)"),
            "distance_relative": distance_scatter_figure(
                relative, "relative attention distance", reference=1.0
            ),
            "entropy": layer_head_heatmap_figure(
                entropy, "Attention entropy per head", "normalised entropy", vmin=0.0, vmax=1.0
            ),
        }
        if self.history["epoch"]:
            figures["evolution"] = self._evolution_figure()
        paths = {
            key: self.log_figure(trainer, analysis.run, key, figure)
            for key, figure in figures.items()
        }
        if analysis.stage == "test":
            # (L, B, H) per image: pixels over the uniform distance of each layer and head.
            per_image = reduced.distances.cpu() / (pixels / relative)[:, None, :]
            self.report_section = self._section(diversity, entropy, pixels, relative, paths)
            self.report_section.summary[0:0] = [_distance_statement(per_image)]

    def _evolution_figure(self):
        """Layers x epochs heatmaps of the history."""
        blank = [math.nan] * len(self.history["head diversity"][-1])
        measures = {
            measure: torch.tensor([values or blank for values in self.history[measure]]).T
            for measure in EVOLUTION
        }  # (L, E) each
        return evolution_figure(self.history["epoch"], measures, EVOLUTION)

    def _section(self, diversity, entropy, pixels, relative, paths) -> ReportSection:
        listing = "\n".join(
            f"- Layer {layer}: {float(value):.3f}" for layer, value in enumerate(diversity)
        )
        rows = [
            (
                layer,
                float(diversity[layer]),
                float(entropy[layer].mean()),
                float(pixels[layer].mean()),
                float(relative[layer].mean()),
            )
            for layer in range(len(diversity))
        ]
        table = markdown_table(
            ["layer", "head diversity", "entropy", "distance (px)", "distance / uniform"], rows
        )
        body = "\n\n".join(
            [
                "Head diversity per layer (mean pairwise Jensen-Shannon divergence, log base 2):",
                listing,
                f"![head diversity]({paths['head_diversity']})",
                "Entropy and mean attention distance, averaged over heads:",
                table,
                f"![distance]({paths['distance']}) ![relative distance]"
                f"({paths['distance_relative']}) ![entropy]({paths['entropy']})",
                *(
                    [
                        f"How they moved during training (epochs {self.history['epoch'][0]} to "
                        f"{self.history['epoch'][-1]}, from the checkpoint's history):",
                        f"![evolution]({paths['evolution']})",
                    ]
                    if "evolution" in paths
                    else []
                ),
            ]
        )
        return ReportSection(
            self.title("Head diversity, entropy and distance per layer"),
            self.report_order,
            body,
            [_diversity_statement([float(value) for value in diversity])],
        )


def _distance_statement(relative: Tensor) -> str:
    """Early against late layers' relative distance, ``(L, B, H)`` per image and head, with
    bootstrap intervals over the images; "more global" only where the interval of the
    paired difference excludes 0. Empty for fewer than 2 layers."""
    layers, images = relative.shape[:2]
    if layers < 2:
        return ""
    third = max(1, layers // 3)
    early = relative[:third].mean(dim=(0, 2))  # (B,)
    late = relative[-third:].mean(dim=(0, 2))
    verdict, difference = compare(late, early, higher_is_better=True)
    trend = {
        "better": "more global than early ones",
        "worse": "more local than early ones",
    }.get(verdict, f"not distinguishable from early ones on {images} images")
    return (
        f"- Mean attention distance, relative to uniform attention (1.00 = as global as "
        f"uniform): {bootstrap_interval(early)} in the first {third} layer(s), "
        f"{bootstrap_interval(late)} in the last {third} (means over the {images} probe "
        f"images, 95% intervals); late layers are {trend} (difference {difference})."
    )


def _diversity_statement(diversity: list[float]) -> str:
    top = max(range(len(diversity)), key=lambda index: diversity[index])
    low = min(range(len(diversity)), key=lambda index: diversity[index])
    return (
        f"- Heads disagree most in layer {top} (Jensen-Shannon {diversity[top]:.3f}) and "
        f"least in layer {low} ({diversity[low]:.3f})."
    )
