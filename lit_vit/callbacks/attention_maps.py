"""Class-token attention of every layer on the probe images."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer

from lit_vit.callbacks.analysis import ProbeAnalysis
from lit_vit.callbacks.base import AttentionCallback, ReportSection
from lit_vit.callbacks.report import markdown_table
from lit_vit.plotting import head_maps_figure, layer_maps_figure


class AttentionMaps(AttentionCallback):
    """Where the class token looks, layer by layer ("layers comparison").

    Heads are averaged for the grid of images x layers; chosen layers also get
    one map per head (for the first probe image). Without a class token the
    query is the mean of the patch rows (see ``docs/attention.md``).

    Logs (``LL`` = zero-padded layer):

    - image ``val_attention/layer_maps``: probe images x layers.
    - image ``val_attention/head_maps/layer_LL``: per-head maps of chosen layers.
    - scalar ``val_attention/prefix_mass/layer_LL``: mean attention the query puts
      on prefix tokens (class, distillation, registers) instead of patches.

    At test the same tags under ``test_attention/``; with ``name=...`` every
    tag gets ``<name>/`` after the root.

    Args:
        head_layers: Layers that get per-head figures; ``None`` is first,
            middle and last. Negative indices count from the end.
        every_n_epochs, name: See :class:`~lit_vit.callbacks.base.AttentionCallback`.

    Raises:
        ValueError: At setup, for a layer index outside the model's depth.

    Example::

        Trainer(callbacks=[AttentionMaps(head_layers=[0, -1])])
    """

    report_order = 10

    def __init__(
        self,
        head_layers: list[int] | None = None,
        every_n_epochs: int = 1,
        name: str | None = None,
    ) -> None:
        super().__init__(every_n_epochs, name)
        self.head_layers = head_layers

    def charts(self) -> dict[str, list[str]]:
        return {self.title("prefix mass by layer"): [self.layer_pattern("prefix_mass")]}

    def check_model(self, num_layers: int) -> None:
        for layer in self.head_layers or []:
            if not -num_layers <= layer < num_layers:
                raise ValueError(
                    f"AttentionMaps: head_layers contains {layer} but the model has "
                    f"{num_layers} attention layers; use indices in [0, {num_layers - 1}] "
                    "(or negative ones from the end)."
                )

    def analyze(
        self, trainer: Trainer, pl_module: LightningModule, analysis: ProbeAnalysis
    ) -> None:
        run, probe, rows = analysis.run, analysis.probe, analysis.figure_rows
        maps = analysis.query_maps  # (L, B, H, gh, gw)
        names = self.class_names(trainer, analysis)
        figure = layer_maps_figure(
            probe.pixels[:rows],
            maps[:, :rows].mean(dim=2),
            [names[label] for label in probe.labels[:rows]],
            self.predicted_names(trainer, analysis)[:rows],
        )
        grid_path = self.log_figure(trainer, run, "layer_maps", figure)
        head_paths = [
            self.log_figure(
                trainer,
                run,
                f"head_maps/layer_{layer:02d}",
                head_maps_figure(probe.pixels[0], maps[layer, 0], layer, names[probe.labels[0]]),
            )
            for layer in self._head_layers()
        ]
        prefix_mass = analysis.prefix_mass.mean(dim=(1, 2))  # (L,)
        self.log_scalars(
            pl_module,
            run,
            {f"prefix_mass/layer_{layer:02d}": mass for layer, mass in enumerate(prefix_mass)},
        )
        if analysis.stage == "test":
            self.report_section = self._section(grid_path, head_paths, prefix_mass, rows)

    def _section(
        self, grid_path: str, head_paths: list[str], prefix_mass, rows: int
    ) -> ReportSection:
        table = markdown_table(
            ["layer", "prefix mass"],
            [(layer, float(mass)) for layer, mass in enumerate(prefix_mass)],
        )
        body = "\n\n".join(
            [
                f"Class-token attention of every layer (heads averaged) on the first {rows} "
                "probe images, one row each; each map is scaled to its own range.",
                f"![maps per layer]({grid_path})",
                *(f"![per-head maps]({path})" for path in head_paths),
                "Attention mass the query puts on prefix tokens rather than patches:",
                table,
            ]
        )
        return ReportSection(self.title("Attention maps per layer"), self.report_order, body)

    def _head_layers(self) -> list[int]:
        num_layers = self.probe.num_layers
        layers = self.head_layers
        if layers is None:
            layers = sorted({0, num_layers // 2, num_layers - 1})
        return [layer % num_layers for layer in layers]
