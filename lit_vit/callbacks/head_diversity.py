"""Head diversity, attention entropy and mean attention distance by depth."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer

from lit_vit.attention import attention_entropy, head_diversity, mean_attention_distance
from lit_vit.callbacks.base import AttentionCallback, ReportSection
from lit_vit.callbacks.probe import ProbeAnalysis
from lit_vit.callbacks.report import markdown_table
from lit_vit.plotting import distance_scatter_figure, layer_bar_figure, layer_head_heatmap_figure


class HeadDiversity(AttentionCallback):
    """Do heads specialise, and are early layers local and late layers global?

    Per layer: head diversity (mean pairwise Jensen-Shannon divergence of the
    heads' query distributions, in [0, 1]); per head: normalised attention
    entropy and mean attention distance, in pixels and relative to uniform
    attention (1.0 = as global as uniform). See ``docs/attention.md``.

    Logs (``LL`` = zero-padded layer):

    - scalar ``attention/head_diversity/layer_LL``
    - scalar ``attention/distance_relative/layer_LL`` (mean over heads)
    - scalar ``attention/entropy/layer_LL`` (mean over heads)
    - image ``attention/head_diversity`` (bars per layer)
    - image ``attention/distance`` (distance vs depth, one dot per head)
    - image ``attention/entropy`` (layers x heads heatmap)

    Args:
        probe_size, every_n_epochs, seed, module: See
            :class:`~lit_vit.callbacks.base.AttentionCallback`.

    Example::

        Trainer(callbacks=[HeadDiversity(every_n_epochs=5)])

    .. code-block:: yaml

        trainer:
          callbacks:
            - class_path: lit_vit.callbacks.HeadDiversity
    """

    report_order = 20

    def analyze(
        self, trainer: Trainer, pl_module: LightningModule, analysis: ProbeAnalysis
    ) -> None:
        attention, layout, stage = (
            analysis.recording.attention,
            analysis.recording.layout,
            analysis.stage,
        )
        diversity = head_diversity(attention, layout).cpu()  # (L,)
        entropy = attention_entropy(attention, layout).normalized.cpu()  # (L, H)
        distance = mean_attention_distance(attention, layout)
        pixels, relative = distance.pixels.cpu(), distance.relative.cpu()  # (L, H) each
        scalars = {}
        for layer in range(len(diversity)):
            scalars[f"attention/head_diversity/layer_{layer:02d}"] = diversity[layer]
            scalars[f"attention/distance_relative/layer_{layer:02d}"] = relative[layer].mean()
            scalars[f"attention/entropy/layer_{layer:02d}"] = entropy[layer].mean()
        self.log_scalars(pl_module, scalars)
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
        paths = {name: self.log_figure(trainer, stage, name, fig) for name, fig in figures.items()}
        if stage == "test":
            self.report_section = self._section(diversity, entropy, pixels, relative, paths)

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
                f"![head diversity]({paths['head_diversity'].name})",
                "Entropy and mean attention distance, averaged over heads:",
                table,
                f"![distance]({paths['distance'].name}) ![relative distance]"
                f"({paths['distance_relative'].name}) ![entropy]({paths['entropy'].name})",
            ]
        )
        facts = {
            "head_diversity_by_layer": [float(value) for value in diversity],
            "relative_distance_by_layer": [float(value) for value in relative.mean(dim=1)],
        }
        return ReportSection(
            "Head diversity, entropy and distance per layer", self.report_order, body, facts
        )
