"""Figures of lit_vit.plotting: structure, titles, rendering, files, no pyplot."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from PIL import Image

from lit_vit import plotting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def images_in(ax) -> int:
    return sum(isinstance(artist, AxesImage) for artist in ax.get_children())


def image_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if images_in(ax)]


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


@pytest.mark.parametrize(
    ("channels", "height", "width", "grid", "layers"),
    [(1, 28, 40, (7, 10), 3), (3, 28, 28, (7, 7), 2), (1, 30, 30, (7, 7), 1)],
)
def test_layer_maps_figure(channels, height, width, grid, layers):
    images = make_images(2, channels, height, width)
    maps = torch.rand(layers, 2, *grid)
    fig = plotting.layer_maps_figure(images, maps, ["Coat", "Bag"], ["Coat", "Shirt"])
    assert isinstance(fig, Figure)
    axes = image_axes(fig)
    assert len(fig.axes) == len(axes) == 2 * (1 + layers)
    # First column: the image alone; the others: gray image + map.
    assert [images_in(ax) for ax in axes[: 1 + layers]] == [1] + [2] * layers
    overlay = axes[1].get_images()[1].get_array()
    assert overlay.shape == (height, width)  # upsampled to the image size
    assert axes[0].get_images()[0].get_array().shape[:2] == (height, width)
    assert [axes[i].get_title() for i in range(1 + layers)] == ["image"] + [
        f"layer {i}" for i in range(layers)
    ]
    assert "Coat" in axes[0].get_ylabel() and "pred: Coat" in axes[0].get_ylabel()
    assert "true: Bag" in axes[1 + layers].get_ylabel()
    assert "pred: Shirt" in axes[1 + layers].get_ylabel()
    assert_renders(fig)


def test_layer_maps_one_layer_no_names():
    fig = plotting.layer_maps_figure(make_images(1, 1, 28, 28), torch.rand(1, 1, 7, 7))
    assert len(image_axes(fig)) == 2
    assert fig.axes[0].get_ylabel() == ""


def test_layer_maps_rejects_mismatched_batch():
    with pytest.raises(ValueError, match="B = 2"):
        plotting.layer_maps_figure(make_images(2, 1, 28, 28), torch.rand(3, 4, 7, 7))
    with pytest.raises(ValueError, match="channels"):
        plotting.layer_maps_figure(make_images(2, 2, 28, 28), torch.rand(3, 2, 7, 7))
    with pytest.raises(ValueError, match="class_names"):
        plotting.layer_maps_figure(make_images(2, 1, 28, 28), torch.rand(3, 2, 7, 7), ["a"])


@pytest.mark.parametrize("heads", [1, 3, 12])
def test_head_maps_figure(heads):
    fig = plotting.head_maps_figure(
        make_images(1, 3, 28, 40)[0], torch.rand(heads, 7, 10), layer=4, class_name="Sneaker"
    )
    axes = image_axes(fig)
    assert len(fig.axes) == len(axes) == 1 + heads
    assert [ax.get_title() for ax in axes[1:]] == [f"head {h}" for h in range(heads)]
    title = fig.get_suptitle()
    assert "layer 4" in title and "Sneaker" in title
    assert_renders(fig)


def test_rollout_figure():
    images = make_images(3, 1, 28, 40)
    maps = {
        "rollout": torch.rand(3, 7, 10),
        "grad rollout (true)": torch.rand(3, 7, 10),
        "grad rollout (pred)": torch.rand(3, 7, 10),
    }
    fig = plotting.rollout_figure(images, maps, ["Coat", "Bag", "Dress"])
    axes = image_axes(fig)
    assert len(fig.axes) == len(axes) == 3 * 7
    # image | map | overlay | map | overlay | map | overlay
    assert [images_in(ax) for ax in axes[:7]] == [1, 1, 2, 1, 2, 1, 2]
    titles = [ax.get_title() for ax in axes[:7]]
    assert titles[0] == "image" and titles[1] == "rollout" and "grad rollout (pred)" in titles[5]
    assert [axes[7 * r].get_ylabel() for r in range(3)] == ["Coat", "Bag", "Dress"]
    # The map alone is drawn in the image's coordinates, so it lines up with the overlay.
    assert axes[1].get_images()[0].get_extent() == [-0.5, 39.5, 27.5, -0.5]
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
    axes = image_axes(fig)
    assert len(fig.axes) == len(axes) == 2 * 3
    assert all(images_in(ax) == 2 for ax in axes)
    assert [ax.get_title() for ax in axes[:3]] == [
        "20x20 (5x5 grid)",
        "28x28 (7x7 grid)",
        "28x40 (7x10 grid)",
    ]
    assert axes[0].get_ylabel() == "Pullover" and axes[3].get_ylabel() == "Sandal"
    assert axes[0].get_images()[1].get_array().shape == (20, 20)
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
    assert len(image_axes(fig)) == 3
    assert plotting.layer_bar_figure(maps[:, 0, 0, 0], "t", "y").axes


def test_constant_map_is_drawn_mid_scale():
    fig = plotting.rollout_figure(make_images(1, 1, 28, 28), {"uniform": torch.ones(1, 7, 7)})
    alone = image_axes(fig)[1].get_images()[0].get_array()
    assert float(alone.min()) == float(alone.max()) == 0.5


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
