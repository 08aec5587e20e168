"""Class-token attention of every layer on the probe images."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer

from lit_vit.attention import cls_attention
from lit_vit.callbacks.base import AttentionCallback, ReportSection
from lit_vit.callbacks.probe import ProbeAnalysis
from lit_vit.callbacks.report import markdown_table
from lit_vit.plotting import head_maps_figure, layer_maps_figure


class AttentionMaps(AttentionCallback):
    """Where the class token looks, layer by layer ("layers comparison").

    Heads are averaged for the grid of images x layers; chosen layers also get
    one map per head (for the first probe image). Without a class token the
    query is the mean of the patch rows (see ``docs/attention.md``).

    Logs (``LL`` = zero-padded layer):

    - image ``attention/layer_maps``: probe images x layers.
    - image ``attention/head_maps/layer_LL``: per-head maps of chosen layers.
    - scalar ``attention/prefix_mass/layer_LL``: mean attention the query puts
      on prefix tokens (class, distillation, registers) instead of patches.

    Args:
        head_layers: Layers that get per-head figures; ``None`` is first,
            middle and last. Negative indices count from the end.
        probe_size, every_n_epochs, seed, module: See
            :class:`~lit_vit.callbacks.base.AttentionCallback`.

    Raises:
        ValueError: At setup, for a layer index outside the model's depth.

    Example::

        Trainer(callbacks=[AttentionMaps(head_layers=[0, -1])])

    .. code-block:: yaml

        trainer:
          callbacks:
            - class_path: lit_vit.callbacks.AttentionMaps
              init_args: {probe_size: 8, head_layers: [0, 11]}
    """

    report_order = 10

    def __init__(
        self,
        head_layers: list[int] | None = None,
        probe_size: int = 8,
        every_n_epochs: int = 1,
        seed: int = 0,
        module: str | None = None,
    ) -> None:
        super().__init__(probe_size, every_n_epochs, seed, module)
        self.head_layers = head_layers

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
        stage, probe = analysis.stage, analysis.probe
        query = cls_attention(analysis.recording.attention, analysis.recording.layout)
        maps = query.maps.cpu()  # (L, B, H, gh, gw)
        names = self.class_names(trainer, analysis)
        figure = layer_maps_figure(
            probe.pixels,
            maps.mean(dim=2),
            [names[label] for label in probe.labels],
            [names[label] for label in analysis.predictions],
        )
        grid_path = self.log_figure(trainer, stage, "layer_maps", figure)
        head_paths = []
        for layer in self._head_layers():
            figure = head_maps_figure(
                probe.pixels[0], maps[layer, 0], layer, names[probe.labels[0]]
            )
            head_paths.append(
                self.log_figure(trainer, stage, f"head_maps/layer_{layer:02d}", figure)
            )
        prefix_mass = query.prefix_mass.mean(dim=(1, 2)).cpu()  # (L,)
        self.log_scalars(
            pl_module,
            {
                f"attention/prefix_mass/layer_{layer:02d}": mass
                for layer, mass in enumerate(prefix_mass)
            },
        )
        if stage == "test":
            rows = [(layer, float(mass)) for layer, mass in enumerate(prefix_mass)]
            body = "\n\n".join(
                [
                    "Class-token attention of every layer (heads averaged), one row per probe "
                    "image; each map is scaled to its own range.",
                    f"![maps per layer]({grid_path.name})",
                    *(
                        f"![per-head maps]({path.relative_to(grid_path.parent)})"
                        for path in head_paths
                    ),
                    "Attention mass the query puts on prefix tokens rather than patches:",
                    markdown_table(["layer", "prefix mass"], rows),
                ]
            )
            self.report_section = ReportSection("Attention maps per layer", self.report_order, body)

    def _head_layers(self) -> list[int]:
        layers = self.head_layers
        if layers is None:
            layers = sorted({0, self.num_layers // 2, self.num_layers - 1})
        return [layer % self.num_layers for layer in layers]
