"""FocusCoverage through the real CLI on a tiny ViT: fit one epoch, then test its checkpoint.

Every logged number is recomputed with :mod:`lit_vit.attention` on the same
images, taken from the checkpoint's callback state (validation probe) or from
the raw test files (test probe and test set).
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.datasets import FashionMNIST

from lit_vit.attention import (
    AttentionRecorder,
    TokenLayout,
    coverage,
    focus_score,
    foreground_mask,
    object_mass,
    rollout,
)
from lit_vit.callbacks.focus_coverage import FocusCoverage, _scalars
from lit_vit.data import CLASS_NAMES, PIXEL_MEAN, PIXEL_STD
from tests.callbacks.conftest import FOCUS_K, FOCUS_M, FOCUS_TEST_IMAGES, PROBE_SIZE
from tests.conftest import checkpoint_probe, read_events

TEST_IMAGES, K, M = FOCUS_TEST_IMAGES, FOCUS_K, FOCUS_M
MEASURES = ("focus", "coverage", "object_mass", "lift")
PNG_NAMES = ("focus_coverage", "focus_by_class", "coverage_by_class", "lift_by_class")


@pytest.fixture(scope="module")
def runs(attention_run):
    return attention_run


def recompute(model, images: torch.Tensor, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four per-image measures of the rollout map, straight from the toolkit."""
    recording = AttentionRecorder(model).record(images)
    maps = rollout(recording.attention, recording.layout)
    mass = object_mass(maps, foreground_mask(pixels, recording.layout, 0.1))
    return {
        "focus": focus_score(maps, K),
        "coverage": coverage(maps, M),
        "object_mass": mass.mass,
        "lift": mass.lift,
    }


def raw_test_split(data_dir) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised images, pixels in [0, 1] and labels of the test files, in file order.

    The pixels are the normalised images mapped back, as the callback gets them:
    a patch of the files whose mean is exactly the 0.1 threshold (16 bytes
    summing to 408) can fall on either side after the float round trip.
    """
    split = FashionMNIST(str(data_dir), train=False, download=False)
    images = (split.data[:, None].float() / 255 - PIXEL_MEAN) / PIXEL_STD
    return images, (images * PIXEL_STD + PIXEL_MEAN).clamp(0, 1), split.targets.long()


def scalar(run_dir, tag: str) -> float:
    """The last value of ``tag`` (the last epoch's, or the test's)."""
    return read_events(run_dir).Scalars(tag)[-1].value


def table(section: str, first_header: str) -> list[list[str]]:
    """Body rows of the Markdown table in ``section`` whose header starts with ``first_header``."""
    for block in section.split("\n\n"):
        lines = block.strip().splitlines()
        if lines and lines[0].startswith(f"| {first_header} |"):
            return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    raise AssertionError(f"no table starting with {first_header!r} in:\n{section}")


def test_validation_scalars_match_the_toolkit_on_the_checkpoint_probe(runs):
    probe = checkpoint_probe(runs.checkpoint, runs.data_dir)
    assert len(probe.labels) == PROBE_SIZE and probe.labels.unique().numel() == PROBE_SIZE
    torch.testing.assert_close(probe.pixels, (probe.images * PIXEL_STD + PIXEL_MEAN).clamp(0, 1))
    expected = recompute(runs.model, probe.images, probe.pixels)
    for name in MEASURES:
        logged = scalar(runs.fit_dir, f"val_attention/{name}/mean")
        assert logged == pytest.approx(float(expected[name].nanmean()), abs=1e-5), name
    assert (runs.fit_dir / "attention" / "epoch_001" / "focus_coverage.png").is_file()
    assert "val_attention/focus_coverage" in read_events(runs.fit_dir).Tags()["images"]


def test_test_probe_table_lists_each_probe_image_with_its_class(runs):
    images, pixels, labels = raw_test_split(runs.data_dir)
    section = runs.report.split("## Focus and coverage")[1].split("\n## ")[0]
    rows = table(section, "index")
    assert len(rows) == PROBE_SIZE
    indices = [int(row[0]) for row in rows]
    assert [row[1] for row in rows] == [CLASS_NAMES[labels[i]] for i in indices]
    assert len({row[1] for row in rows}) == PROBE_SIZE  # class-balanced
    with torch.no_grad():
        predicted = runs.model(images[indices]).argmax(dim=-1)
    assert [row[2] for row in rows] == [CLASS_NAMES[c] for c in predicted]
    expected = recompute(runs.model, images[indices], pixels[indices])
    for position, row in enumerate(rows):
        for column, name in enumerate(MEASURES, start=3):
            assert float(row[column]) == pytest.approx(float(expected[name][position]), abs=6e-4), (
                row,
                name,
            )
    for name in MEASURES:
        logged = scalar(runs.test_dir, f"test_attention/{name}/mean")
        assert logged == pytest.approx(float(expected[name].nanmean()), abs=1e-5), name


def test_test_set_means_per_class_and_figures(runs):
    images, pixels, labels = raw_test_split(runs.data_dir)
    images, pixels, labels = images[:TEST_IMAGES], pixels[:TEST_IMAGES], labels[:TEST_IMAGES]
    expected = recompute(runs.model, images, pixels)
    for name in MEASURES:
        logged = scalar(runs.test_dir, f"test_attention/{name}/test_mean")
        assert logged == pytest.approx(float(expected[name].nanmean()), abs=1e-5), name

    section = runs.report.split("## Focus and coverage")[1].split("\n## ")[0]
    rows = table(section, "class")
    seen = labels.unique().tolist()
    assert [row[0] for row in rows] == [CLASS_NAMES[c] for c in seen]
    for row, label in zip(rows, seen, strict=True):
        chosen = labels == label
        assert int(row[1]) == int(chosen.sum())
        for column, name in enumerate(MEASURES, start=2):
            mean = float(expected[name][chosen].nanmean())
            assert float(row[column]) == pytest.approx(mean, abs=6e-4), (row, name)
    assert f"over {TEST_IMAGES} test images" in section

    uniform = math.ceil(K * 49) / 49  # 7x7 grid of 4x4 patches
    assert f"Rollout focus@{K:.0%}: {float(expected['focus'].mean()):.3f}" in runs.report
    assert f"(uniform: {uniform:.3f})" in runs.report
    folder = runs.test_dir / "attention" / "test"
    assert all((folder / f"{name}.png").is_file() for name in PNG_NAMES)
    images_logged = read_events(runs.test_dir).Tags()["images"]
    assert {f"test_attention/{name}" for name in PNG_NAMES} <= set(images_logged)


def test_lift_is_left_out_when_no_image_has_foreground():
    layout = TokenLayout(1, True, (2, 2), (4, 4))
    callback = FocusCoverage(foreground_threshold=1.0)
    maps = torch.tensor([[[0.7, 0.1], [0.1, 0.1]], [[0.25, 0.25], [0.25, 0.25]]])
    values = callback.measure(maps, torch.full((2, 1, 8, 8), 0.5), layout)
    assert torch.isnan(values.lift).all() and values.object_mass.tolist() == [0.0, 0.0]
    torch.testing.assert_close(values.focus, torch.tensor([0.7, 0.25]))
    means = values.means()
    assert math.isnan(means["lift"]) and means["focus"] == pytest.approx(0.475)
    assert set(_scalars(values, "mean")) == {"focus/mean", "coverage/mean", "object_mass/mean"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0.0}, "k=0.0 must be in (0, 1]"),
        ({"k": 1.5}, "k=1.5 must be in (0, 1]"),
        ({"m": -0.1}, "m=-0.1 must be in (0, 1]"),
        ({"foreground_threshold": 2.0}, "foreground_threshold=2.0 must be in [0, 1]"),
        ({"test_images": 0}, "test_images=0 must be at least 1, or None"),
        ({"every_n_epochs": 0}, "every_n_epochs=0 must be at least 1"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError) as error:
        FocusCoverage(**kwargs)
    assert message in str(error.value)


def test_lift_of_every_map_goes_to_the_table_of_explainers(runs):
    trust = runs.report.split("## Which explainer can I trust here?\n")[1].split("\n## ")[0]
    lines = [line for line in trust.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {
        cells[0]: cells
        for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])
    }
    column = header.index("lift")
    logged = scalar(runs.test_dir, "test_attention/lift/test_mean")
    assert float(rows["rollout"][column]) == pytest.approx(logged, abs=6e-4)
    for name in ("flow", "input x gradient", "intensity", "edges", "centre", "random"):
        assert float(rows[name][column]) > 0, name
