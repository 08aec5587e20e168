"""Figures of lit_vit.plotting: structure, titles, rendering, files, no pyplot."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.text import Text
from PIL import Image

from lit_vit import plotting
from lit_vit.plotting import _grid

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def images_in(ax) -> int:
    return sum(isinstance(artist, AxesImage) for artist in ax.get_children())


def bars_in(ax) -> int:
    return sum(len(c) for c in ax.containers if isinstance(c, BarContainer))


def make_images(batch: int, channels: int, height: int, width: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch * 100 + channels * 10 + height)
    return torch.rand(batch, channels, height, width, generator=generator)


def assert_renders(fig: Figure) -> torch.Tensor:
    image = plotting.figure_to_image(fig)
    assert image.dtype == torch.uint8
    assert image.dim() == 3 and image.shape[0] == 3 and min(image.shape[1:]) > 50
    assert image.float().std() > 1.0
    return image


def assert_nothing_clipped(fig: Figure) -> None:
    """Every text of the figure (titles, tick and axis labels, legends, cell values) lies inside
    it, and every line inside its axes' limits."""
    FigureCanvasAgg(fig).draw()
    inside = fig.bbox.padded(1)
    for text in fig.findobj(Text):
        if text.get_visible() and text.get_text().strip():
            box = text.get_window_extent()
            assert inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1), text
    for ax in fig.axes:
        low, high = ax.get_ylim()
        for line in ax.lines:
            y = np.asarray(line.get_ydata(), dtype=float)
            y = y[np.isfinite(y)]
            assert y.size == 0 or (min(low, high) <= y.min() and y.max() <= max(low, high))


def mosaic_of(fig: Figure) -> tuple:
    """The one Axes of an image grid figure and its ``(h, w, 3)`` uint8 mosaic."""
    (ax,) = fig.axes
    (image,) = [a for a in fig.artists if isinstance(a, _grid._PastedPixels)]
    pixels = image.pixels  # pasted unresampled under the Axes that places the text
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    return ax, pixels


def column_titles(ax) -> list[str]:
    return [t.get_text() for t in ax.texts if t.get_rotation() == 0]


def row_labels(ax) -> list[tuple[str, str]]:
    return [(t.get_text(), t.get_color()) for t in ax.texts if t.get_rotation() == 90]


def cell(pixels: np.ndarray, row: int, column: int, shape, row_gap=_grid._GAP_PX) -> np.ndarray:
    """Cell ``(row, column)`` of a mosaic of ``shape`` cells: 1-pixel margin, gaps between."""
    height, width = shape
    top, left = 1 + row * (height + row_gap), 1 + column * (width + _grid._GAP_PX)
    return pixels[top : top + height, left : left + width].astype(np.float64) / 255


def colormap(values) -> np.ndarray:
    return colormaps[plotting.MAP_CMAP](np.asarray(values, dtype=np.float64))[..., :3]


def scaled(grid: torch.Tensor) -> torch.Tensor:
    return (grid - grid.min()) / (grid.max() - grid.min())


def expected_overlay(image: torch.Tensor, grid: torch.Tensor) -> np.ndarray:
    """Half the gray image, half the map's colour, the map bilinearly upsampled to the image."""
    weights = torch.tensor([0.299, 0.587, 0.114])[: image.shape[0]] if image.shape[0] == 3 else None
    gray = (image * weights.view(3, 1, 1)).sum(0) if weights is not None else image[0]
    size = tuple(image.shape[-2:])
    up = F.interpolate(scaled(grid)[None, None], size=size, mode="bilinear", align_corners=False)
    return 0.5 * gray.numpy()[..., None] + 0.5 * colormap(up[0, 0].numpy())


@pytest.mark.parametrize(
    ("channels", "height", "width", "grid", "layers", "shape"),
    [
        (1, 28, 40, (7, 10), 3, (84, 120)),  # enlarged 3x: 125 px / 40
        (3, 28, 28, (7, 7), 2, (112, 112)),
        (1, 30, 30, (7, 7), 1, (120, 120)),
    ],
)
def test_layer_maps_figure(channels, height, width, grid, layers, shape):
    images = make_images(2, channels, height, width)
    maps = torch.rand(layers, 2, *grid)
    fig = plotting.layer_maps_figure(images, maps, ["Coat", "Bag"], ["Coat", "Shirt"])
    assert isinstance(fig, Figure)
    ax, pixels = mosaic_of(fig)
    gap = _grid._GAP_PX
    assert pixels.shape[:2] == (2 * shape[0] + gap + 2, (1 + layers) * (shape[1] + gap) - gap + 2)
    assert column_titles(ax) == ["image"] + [f"layer {i}" for i in range(layers)]
    assert row_labels(ax) == [
        ("true: Coat\npred: Coat", "black"),
        ("true: Bag\npred: Shirt", _grid._WRONG_COLOR),
    ]
    factor = shape[0] // height
    for row in range(2):
        # First column: the image itself, each pixel a factor x factor block.
        shown = cell(pixels, row, 0, shape)[::factor, ::factor]
        assert np.abs(shown - images[row].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
        # The others: each layer's map over the gray image.
        for layer in range(layers):
            overlay = cell(pixels, row, 1 + layer, shape)[::factor, ::factor]
            reference = expected_overlay(images[row], maps[layer, row])
            assert np.abs(overlay - reference).max() <= 1 / 255
    rendered = assert_renders(fig).permute(1, 2, 0).numpy()
    # Pasted pixel for pixel where the row labels and title leave room for it.
    top, left = _grid._TOP_PX, _grid._LEFT_PX
    first_cell = (slice(1, 1 + shape[0]), slice(1, 1 + shape[1]))
    placed = rendered[top:, left:][first_cell]
    assert np.array_equal(placed, pixels[first_cell])


def test_layer_maps_one_layer_no_names():
    fig = plotting.layer_maps_figure(make_images(1, 1, 28, 28), torch.rand(1, 1, 7, 7))
    ax, pixels = mosaic_of(fig)
    assert pixels.shape[:2] == (112 + 2, 2 * 112 + _grid._GAP_PX + 2)
    assert row_labels(ax) == []


def test_layer_maps_shrinks_large_images():
    fig = plotting.layer_maps_figure(make_images(1, 3, 224, 224), torch.rand(2, 1, 14, 14))
    _, pixels = mosaic_of(fig)
    assert pixels.shape[:2] == (125 + 2, 3 * (125 + _grid._GAP_PX) - _grid._GAP_PX + 2)


def test_layer_maps_rejects_mismatched_batch():
    with pytest.raises(ValueError, match="B = 2"):
        plotting.layer_maps_figure(make_images(2, 1, 28, 28), torch.rand(3, 4, 7, 7))
    with pytest.raises(ValueError, match="channels"):
        plotting.layer_maps_figure(make_images(2, 2, 28, 28), torch.rand(3, 2, 7, 7))
    with pytest.raises(ValueError, match="class_names"):
        plotting.layer_maps_figure(make_images(2, 1, 28, 28), torch.rand(3, 2, 7, 7), ["a"])


@pytest.mark.parametrize(("heads", "rows"), [(1, 1), (3, 1), (12, 2)])
def test_head_maps_figure(heads, rows):
    image = make_images(1, 3, 28, 40)[0]
    maps = torch.rand(heads, 7, 10)
    fig = plotting.head_maps_figure(image, maps, layer=4, class_name="Sneaker")
    ax, pixels = mosaic_of(fig)
    columns = min(1 + heads, _grid.MAX_COLUMNS)
    row_gap = _grid._GAP_PX + (_grid._TITLE_PX if rows > 1 else 0)
    assert pixels.shape[:2] == (
        rows * (84 + row_gap) - row_gap + 2,
        columns * (120 + _grid._GAP_PX) - _grid._GAP_PX + 2,
    )
    assert column_titles(ax) == ["Sneaker"] + [f"head {h}" for h in range(heads)]
    last = divmod(heads, columns)  # the cell of the last head
    overlay = cell(pixels, *last, (84, 120), row_gap)[::3, ::3]
    assert np.abs(overlay - expected_overlay(image, maps[-1])).max() <= 1 / 255
    if rows > 1:  # cells after the last head stay empty
        assert (cell(pixels, rows - 1, columns - 1, (84, 120), row_gap) == 1).all()
    title = fig.get_suptitle()
    assert "layer 4" in title and "Sneaker" in title
    rendered = assert_renders(fig).numpy()
    if rows > 1:  # the second row's titles are drawn over the pasted grid, not hidden by it
        band_top = _grid._TOP_PX + 1 + 84 + _grid._GAP_PX
        band = rendered[:, band_top : band_top + _grid._TITLE_PX, _grid._LEFT_PX :]
        assert band.min() < 100


def test_rollout_figure():
    images = make_images(3, 1, 28, 40)
    maps = {
        "rollout": torch.rand(3, 7, 10),
        "grad rollout (true)": torch.rand(3, 7, 10),
        "grad rollout (pred)": torch.rand(3, 7, 10),
    }
    fig = plotting.rollout_figure(images, maps, ["Coat", "Bag", "Dress"])
    ax, pixels = mosaic_of(fig)
    assert pixels.shape[1] == 7 * (120 + _grid._GAP_PX) - _grid._GAP_PX + 2
    titles = column_titles(ax)
    assert titles[:2] == ["image", "rollout"] and titles[5] == "grad rollout (pred)"
    assert titles[6] == "grad rollout (pred)\non image"
    assert row_labels(ax) == [("Coat", "black"), ("Bag", "black"), ("Dress", "black")]
    predicted = plotting.rollout_figure(images, maps, ["Coat", "Bag", "Dress"], ["Coat"] * 3)
    labels = row_labels(predicted.axes[0])
    assert labels[0] == ("true: Coat\npred: Coat", "black")
    assert labels[1][0] == "true: Bag\npred: Coat" and labels[1][1] != "black"  # wrong: red
    for row in range(3):
        for index, grid in enumerate(maps.values()):
            # The map alone: one 12x12 block per patch, lined up with the image.
            alone = cell(pixels, row, 1 + 2 * index, (84, 120))
            blocks = alone[6::12, 6::12]
            assert np.abs(blocks - colormap(scaled(grid[row]).numpy())).max() <= 1 / 255
            assert (alone[:12, :12] == alone[0, 0]).all()
            overlay = cell(pixels, row, 2 + 2 * index, (84, 120))[::3, ::3]
            assert np.abs(overlay - expected_overlay(images[row], grid[row])).max() <= 1 / 255
    assert_renders(fig)


def test_rollout_figure_rejects_bad_maps():
    with pytest.raises(ValueError, match="rollout"):
        plotting.rollout_figure(make_images(2, 1, 28, 28), {"rollout": torch.rand(3, 7, 7)})
    with pytest.raises(ValueError, match="at least one"):
        plotting.rollout_figure(make_images(2, 1, 28, 28), {})


def test_resolution_figure():
    sizes = {"20x20": (20, 5), "28x28": (28, 7), "28x40": (28, 0)}
    images, maps = {}, {}
    for label, (side, grid) in sizes.items():
        if label == "28x40":
            images[label], maps[label] = make_images(2, 1, 28, 40), torch.rand(2, 7, 10)
        else:
            images[label], maps[label] = make_images(2, 1, side, side), torch.rand(2, grid, grid)
    fig = plotting.resolution_figure(images, maps, ["Pullover", "Sandal"])
    ax, pixels = mosaic_of(fig)
    # Every size in the first size's cell: 20x20 enlarged 6x.
    gap = _grid._GAP_PX
    assert pixels.shape[:2] == (2 * (120 + gap) - gap + 2, 3 * (120 + gap) - gap + 2)
    assert column_titles(ax) == ["20x20 (5x5 grid)", "28x28 (7x7 grid)", "28x40 (7x10 grid)"]
    assert row_labels(ax) == [("Pullover", "black"), ("Sandal", "black")]
    first = cell(pixels, 1, 0, (120, 120))[::6, ::6]
    assert np.abs(first - expected_overlay(images["20x20"][1], maps["20x20"][1])).max() <= 1 / 255
    assert_renders(fig)
    with pytest.raises(ValueError, match="same keys"):
        plotting.resolution_figure(images, {"20x20": maps["20x20"]})


@pytest.mark.parametrize("layers", [1, 6, 20])
def test_layer_bar_figure(layers):
    values = torch.linspace(0.1, 0.9, layers)
    fig = plotting.layer_bar_figure(values, "Head diversity per layer", "JS divergence (bits)")
    (ax,) = fig.axes
    assert bars_in(ax) == layers
    texts = [t.get_text() for t in ax.texts]
    assert f"{values[0].item():.3f}" in texts and len(texts) == layers
    assert ax.get_title() == "Head diversity per layer"
    assert ax.get_ylabel() == "JS divergence (bits)" and ax.get_xlabel() == "layer"
    assert_renders(fig)


@pytest.mark.parametrize(("heads", "reference"), [(1, None), (3, 1.0), (12, 1.0)])
def test_distance_scatter_figure(heads, reference):
    distance = torch.rand(4, heads) * 20
    fig = plotting.distance_scatter_figure(distance, reference=reference)
    (ax,) = fig.axes
    assert len(ax.collections) == heads  # one scatter per head
    assert all(len(c.get_offsets()) == 4 for c in ax.collections)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:heads] == [f"head {h}" for h in range(heads)]
    assert "mean over heads" in labels
    assert ("uniform" in labels) == (reference is not None)
    assert ax.get_ylabel() == "mean attention distance (px)"
    assert ax.get_title() == "Mean attention distance per head"
    assert_renders(fig)


@pytest.mark.parametrize(("layers", "heads", "texts"), [(4, 3, 12), (1, 1, 1), (20, 12, 0)])
def test_layer_head_heatmap_figure(layers, heads, texts):
    values = torch.rand(layers, heads)
    fig = plotting.layer_head_heatmap_figure(values, "Attention entropy", "entropy", 0, 1)
    heat, colorbar = fig.axes
    assert images_in(heat) == 1 and heat.get_images()[0].get_array().shape == (layers, heads)
    assert len(heat.texts) == texts
    if texts:
        assert heat.texts[0].get_text() == f"{values[0, 0].item():.2f}"
    assert heat.get_images()[0].get_clim() == (0, 1)
    assert colorbar.get_ylabel() == "entropy" and heat.get_title() == "Attention entropy"
    assert_renders(fig)


def test_faithfulness_figure():
    fractions = torch.linspace(0, 1, 5)
    down = torch.linspace(1, 0, 5).expand(4, 5)
    up = torch.linspace(0, 1, 5).expand(4, 5)
    curves = {
        "deletion: rollout": down,
        "deletion: random": torch.full((4, 5), 0.5),
        "insertion: rollout": up,
        "insertion: random": torch.full((4, 5), 0.25),
    }
    fig = plotting.faithfulness_figure(fractions, curves)
    deletion, insertion = fig.axes
    assert "deletion" in deletion.get_title() and "insertion" in insertion.get_title()
    assert len(deletion.lines) == len(insertion.lines) == 2
    labels = [t.get_text() for t in deletion.get_legend().get_texts()]
    assert labels == ["rollout (AUC 0.500)", "random (AUC 0.500)"]
    labels = [t.get_text() for t in insertion.get_legend().get_texts()]
    assert labels == ["rollout (AUC 0.500)", "random (AUC 0.250)"]
    assert deletion.get_xlabel() == "fraction of patches"
    assert deletion.get_ylabel() == "probability of predicted class"
    # Same method, same colour in both panels.
    assert deletion.lines[0].get_color() == insertion.lines[0].get_color()
    assert_renders(fig)

    only_deletion = plotting.faithfulness_figure(fractions, {"deletion: rollout": down})
    assert len(only_deletion.axes) == 1
    with pytest.raises(ValueError, match="deletion' or 'insertion"):
        plotting.faithfulness_figure(fractions, {"rollout": down})
    with pytest.raises(ValueError, match="T \\+ 1 = 5"):
        plotting.faithfulness_figure(fractions, {"deletion: x": torch.rand(4, 6)})


def test_evolution_figure_by_layer_and_by_named_rows():
    epochs = [0, 2, 4]
    values = torch.arange(6.0).view(2, 3) / 10  # (L=2, E=3)
    fig = plotting.evolution_figure(epochs, {"entropy": values}, {"entropy": (0.0, 1.0)})
    heat = fig.axes[0]
    torch.testing.assert_close(torch.from_numpy(heat.get_images()[0].get_array().data), values)
    assert [t.get_text() for t in heat.get_xticklabels()] == ["0", "2", "4"]
    assert heat.get_ylabel() == "layer" and heat.get_images()[0].get_clim() == (0, 1)
    assert_renders(fig)
    assert_nothing_clipped(fig)

    aucs = {"deletion AUC": torch.rand(3, 3), "insertion AUC": torch.rand(3, 3)}
    methods = ["rollout", "class token", "random"]
    fig = plotting.evolution_figure(epochs, aucs, {}, rows=methods, row_title="map", title="T")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == list(aucs)
    assert [t.get_text() for t in panels[0].get_yticklabels()] == methods
    assert panels[0].get_ylabel() == "map" and fig.get_suptitle() == "T"
    with pytest.raises(ValueError, match=r"\(R, E\)"):
        plotting.evolution_figure(epochs, {"x": torch.rand(3)}, {})


def test_evolution_panels_have_their_own_scale_and_few_cells_show_their_values():
    epochs = [0, 1, 2, 3]
    prefix = torch.tensor([[0.01, 0.02, 0.03, 0.025], [0.0, 0.005, 0.01, 0.012]])  # (L, E)
    distance = torch.tensor([[0.97, 1.0, 1.03, 1.01], [0.5, 0.6, 0.7, 0.8]])
    ranges = {"prefix mass": (0.0, None), "relative distance": (0.0, None)}
    fig = plotting.evolution_figure(
        epochs, {"prefix mass": prefix, "relative distance": distance}, ranges
    )
    mass, relative = fig.axes[:2]  # the panels, then their colorbars
    assert mass.get_images()[0].get_clim() == pytest.approx((0.0, 0.03))  # not 0-1: not black
    assert relative.get_images()[0].get_clim() == pytest.approx((0.0, 1.03))  # 3% looks small
    assert [t.get_text() for t in mass.texts][:3] == ["0.01", "0.02", "0.03"]
    assert len(relative.texts) == 8
    assert_nothing_clipped(fig)
    many = plotting.evolution_figure(list(range(36)), {"x": torch.rand(6, 36)}, {})
    assert not many.axes[0].texts  # 216 cells: colours only


def test_evolution_curves_figure_draws_a_line_per_row_on_the_data_range():
    epochs = [0, 2, 4, 6]
    deletion = torch.tensor([[0.30, 0.28, 0.25, 0.22], [0.35, 0.36, 0.36, 0.37]])  # (M, E)
    insertion = torch.tensor([[0.5, 0.55, 0.6, 0.62], [float("nan"), 0.4, 0.41, 0.4]])
    fig = plotting.evolution_curves_figure(
        epochs,
        {"deletion AUC": deletion, "insertion AUC": insertion},
        ["rollout", "random"],
        {"deletion AUC": "lower is better"},
        "Faithfulness",
    )
    left, right = fig.axes
    assert [ax.get_title() for ax in (left, right)] == ["deletion AUC", "insertion AUC"]
    assert left.get_ylabel() == "lower is better" and right.get_ylabel() == "insertion AUC"
    assert len(left.lines) == len(right.lines) == 2
    np.testing.assert_allclose(left.lines[0].get_ydata(), deletion[0].numpy())
    assert left.lines[1].get_color() == right.lines[1].get_color()
    low, high = left.get_ylim()
    assert 0.15 < low < 0.22 and 0.37 < high < 0.45  # the AUCs' range, not 0-1
    labels = [t.get_text() for t in right.get_legend().get_texts()]
    assert labels == ["rollout", "random"] and fig.get_suptitle() == "Faithfulness"
    assert_renders(fig)
    assert_nothing_clipped(fig)
    with pytest.raises(ValueError, match="rows names 3"):
        plotting.evolution_curves_figure(epochs, {"x": deletion}, ["a", "b", "c"], {}, "T")


def test_randomization_figure_keeps_its_labels_and_lines_in_view():
    labels = ["trained", "head", *(f"block {i}" for i in range(11, -1, -1)), "embeddings"]
    correlations = {
        "rollout": torch.linspace(1, -0.6, len(labels)),
        "cp-lrp": torch.linspace(1, 0.2, len(labels)),
    }
    fig = plotting.randomization_figure(labels, correlations, threshold=0.5)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert ax.get_ylim()[0] <= -0.65 and ax.get_ylim()[1] == pytest.approx(1.05)
    assert ax.get_xlabel() == "randomised cumulatively, from the top"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(correlations)
    assert_nothing_clipped(fig)


def test_rollout_evolution_figure():
    images = make_images(2, 1, 28, 28)
    maps = torch.rand(3, 2, 7, 7)  # (E, B, gh, gw)
    fig = plotting.rollout_evolution_figure(images, maps, [0, 5, 9], ["Coat", "Bag"])
    ax, pixels = mosaic_of(fig)
    assert column_titles(ax) == ["image", "epoch 0", "epoch 5", "epoch 9"]
    assert row_labels(ax) == [("Coat", "black"), ("Bag", "black")]
    shape = (112, 112)
    overlay = cell(pixels, 1, 3, shape)[::4, ::4]  # image 1 at the third epoch
    assert np.abs(overlay - expected_overlay(images[1], maps[2, 1])).max() <= 1 / 255
    assert_renders(fig)
    with pytest.raises(ValueError, match="E = 2 epochs and B = 2 images"):
        plotting.rollout_evolution_figure(images, maps, [0, 5])


def test_metric_by_class_figure():
    values = torch.tensor([1.0, 3.0, 2.0, float("nan"), 5.0])
    labels = torch.tensor([0, 0, 1, 1, 3])
    names = ["T-shirt", "Trouser", "Pullover", "Dress"]
    fig = plotting.metric_by_class_figure(values, labels, names, "Lift per class", "lift")
    (ax,) = fig.axes
    assert bars_in(ax) == 3  # Pullover has no image
    heights = [bar.get_height() for c in ax.containers for bar in c]
    assert heights == pytest.approx([2.0, 2.0, 5.0])  # the NaN is left out
    texts = [t.get_text() for t in ax.texts]
    assert "2.00\nn=2" in texts and "2.00\nn=1" in texts and "n=0" in texts
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert ax.get_title() == "Lift per class" and ax.get_ylabel() == "lift"
    assert_renders(fig)
    with pytest.raises(ValueError, match="labels must lie in"):
        plotting.metric_by_class_figure(values, labels, names[:2], "t", "y")


def test_metric_by_class_figure_of_many_classes_shows_those_with_images():
    names = [f"class {index}" for index in range(1000)]  # e.g. ImageNet's
    labels = torch.tensor([7, 7, 412])
    fig = plotting.metric_by_class_figure(torch.tensor([1.0, 2.0, 4.0]), labels, names, "t", "y")
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["class 7", "class 412"]
    assert [bar.get_height() for c in ax.containers for bar in c] == pytest.approx([1.5, 4.0])
    assert fig.get_size_inches()[0] < 5 and "n=0" not in [t.get_text() for t in ax.texts]


def test_inputs_are_not_modified():
    images = make_images(2, 1, 28, 40)
    maps = torch.rand(3, 2, 7, 10) * 1e-3
    values = torch.tensor([0.5, float("nan")])
    copies = [t.clone() for t in (images, maps, values)]
    plotting.layer_maps_figure(images, maps)
    plotting.rollout_figure(images, {"rollout": maps[0]})
    plotting.head_maps_figure(images[0], maps[:, 0], layer=0)
    plotting.resolution_figure({"a": images}, {"a": maps[0]})
    plotting.layer_head_heatmap_figure(maps[:, 0, 0], "t", "c")
    plotting.metric_by_class_figure(values, torch.tensor([0, 1]), ["a", "b"], "t", "y")
    for before, after in zip(copies, (images, maps, values), strict=True):
        assert _same(before, after)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def test_accepts_low_precision_tensors_with_grad():
    images = make_images(1, 1, 28, 28).half()
    maps = torch.rand(2, 1, 7, 7, dtype=torch.bfloat16, requires_grad=True)
    fig = plotting.layer_maps_figure(images, maps)
    assert mosaic_of(fig)[1].shape[1] == 3 * (112 + _grid._GAP_PX) - _grid._GAP_PX + 2
    assert plotting.layer_bar_figure(maps[:, 0, 0, 0], "t", "y").axes


def test_constant_map_is_drawn_mid_scale():
    fig = plotting.rollout_figure(make_images(1, 1, 28, 28), {"uniform": torch.ones(1, 7, 7)})
    alone = cell(mosaic_of(fig)[1], 0, 1, (112, 112))
    assert np.abs(alone - colormap([0.5])[0]).max() <= 0.5 / 255 + 1e-6


def test_save_image_writes_the_rendered_pixels(tmp_path):
    fig = plotting.layer_bar_figure(torch.rand(3), "title", "value")
    image = plotting.figure_to_image(fig)
    path = plotting.save_image(image, tmp_path / "new" / "nested" / "bars.png")
    assert path == tmp_path / "new" / "nested" / "bars.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) < 100_000
    with Image.open(path) as saved:
        assert torch.equal(torch.from_numpy(np.array(saved.convert("RGB"))).permute(2, 0, 1), image)
    bare = plotting.save_image(image, tmp_path / "other" / "bars")
    assert bare.suffix == ".png" and bare.read_bytes().startswith(PNG_MAGIC)


def test_a_failed_write_leaves_no_partial_png_and_the_old_one_whole(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    path = tmp_path / "figure.png"
    old = plotting.encode_png(torch.zeros(3, 8, 8, dtype=torch.uint8))
    plotting.save_image(old, path)
    write_bytes = Path.write_bytes

    def disk_full(self, data):
        write_bytes(self, data[: len(data) // 2])  # what fits, then the error
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(OSError, match="No space left"):
        plotting.save_image(torch.full((3, 8, 8), 255, dtype=torch.uint8), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]
    assert path.read_bytes() == old


def test_pyplot_is_never_imported(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        import torch
        from lit_vit import plotting
        fig = plotting.layer_maps_figure(torch.rand(1, 1, 28, 28), torch.rand(2, 1, 7, 7))
        plotting.figure_to_image(fig)
        plotting.save_image(plotting.figure_to_image(fig), {str(tmp_path / "fig.png")!r})
        plotting.faithfulness_figure(torch.linspace(0, 1, 3), {{"deletion: a": torch.rand(2, 3)}})
        assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "fig.png").read_bytes().startswith(PNG_MAGIC)


def test_signed_relevance_is_centred_on_zero_per_panel_with_titles_clear_of_the_title():
    from lit_vit.plotting import signed_relevance_figure

    relevance = torch.randn(3, 28, 28, generator=torch.Generator().manual_seed(0))
    relevance[1] *= 5
    figure = signed_relevance_figure(torch.rand(3, 1, 28, 28), relevance, ["a\nb"] * 3)
    panels = [ax for ax in figure.axes if ax.get_images()][3:6]  # the relevance row
    for panel, values in zip(panels, relevance, strict=True):
        low, high = panel.get_images()[0].get_clim()
        assert low == -high == pytest.approx(-float(values.abs().max()))
    assert panels[0].get_images()[0].get_cmap().name == "RdBu_r"
    figure.canvas.draw()
    title = figure._suptitle.get_window_extent()
    top_titles = [ax.title.get_window_extent() for ax in figure.axes[:3]]
    assert all(box.y1 < title.y0 for box in top_titles)  # nothing under the figure's title
    with pytest.raises(ValueError, match="titles must name each of the 3 images"):
        signed_relevance_figure(torch.rand(3, 1, 28, 28), relevance, ["a"])


def test_figures_render_text_unhinted_and_leave_the_users_settings_alone():
    import matplotlib

    def chart() -> Figure:
        return plotting.layer_bar_figure(torch.tensor([0.2, 0.5, 0.3]), "Head diversity", "JS")

    def drawn(settings: dict) -> np.ndarray:
        canvas = FigureCanvasAgg(chart())
        with matplotlib.rc_context(settings):
            canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3]

    with matplotlib.rc_context({"text.hinting": "auto"}):
        rendered = plotting.figure_to_image(chart()).permute(1, 2, 0).numpy()
        assert matplotlib.rcParams["text.hinting"] == "auto"
    np.testing.assert_array_equal(rendered, drawn({"text.hinting": "none"}))
    assert not np.array_equal(rendered, drawn({"text.hinting": "auto"})), "hinting shows"
