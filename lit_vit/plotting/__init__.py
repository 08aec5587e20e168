"""Figures of attention maps and attention measures, for TensorBoard and PNG files.

Every function takes torch tensors (CPU or GPU, any float dtype; they are
copied with ``.detach().float().cpu()`` and never modified) and returns a
:class:`matplotlib.figure.Figure` built with matplotlib's object API only:
``matplotlib.pyplot`` is never imported, so no global figure registry exists,
nothing has to be closed and no backend has to be chosen (a figure no longer
referenced is garbage collected). Render a figure once
with :func:`figure_to_image`, then log the pixels with
``logger.experiment.add_image(tag, image, step, dataformats="CHW")`` and write
them with :func:`save_image` (or call ``fig.savefig`` for other formats).

Images are raw pixels in [0, 1], ``(B, C, H, W)`` with ``C = 1`` (shown gray)
or ``C = 3`` (RGB). Maps are patch grids ``(gh, gw)``, upsampled bilinearly to
the image size for overlays (any grid on any image size: a 7x10 grid on a
28x40 image, or a grid that does not divide the image). Overlays draw the map
with the ``inferno`` colormap at alpha 0.5 over the gray image; each map is
scaled to its own minimum and maximum, so colours show where a map is high
relative to itself, not its absolute value. The quantities are defined in
``docs/attention.md``.
"""

from lit_vit.plotting._style import MAP_CMAP
from lit_vit.plotting.charts import (
    distance_scatter_figure,
    layer_bar_figure,
    layer_head_heatmap_figure,
)
from lit_vit.plotting.evolution import evolution_curves_figure, evolution_figure
from lit_vit.plotting.export import encode_png, figure_to_image, save_image
from lit_vit.plotting.layers import layer_curves_figure, similarity_figure
from lit_vit.plotting.mosaics import (
    head_maps_figure,
    layer_maps_figure,
    resolution_figure,
    rollout_evolution_figure,
    rollout_figure,
)
from lit_vit.plotting.relevance import RELEVANCE_CMAP, signed_relevance_figure
from lit_vit.plotting.scores import (
    faithfulness_figure,
    metric_by_class_figure,
    per_image_metrics_figure,
    randomization_figure,
)

__all__ = [
    "MAP_CMAP",
    "RELEVANCE_CMAP",
    "distance_scatter_figure",
    "evolution_curves_figure",
    "evolution_figure",
    "faithfulness_figure",
    "encode_png",
    "figure_to_image",
    "head_maps_figure",
    "layer_bar_figure",
    "layer_curves_figure",
    "layer_head_heatmap_figure",
    "layer_maps_figure",
    "metric_by_class_figure",
    "per_image_metrics_figure",
    "randomization_figure",
    "resolution_figure",
    "rollout_evolution_figure",
    "rollout_figure",
    "save_image",
    "signed_relevance_figure",
    "similarity_figure",
]
