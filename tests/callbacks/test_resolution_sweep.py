"""ResolutionSweep through the real CLI: fit (sweep at fit end), then test from the checkpoint."""

from __future__ import annotations

import pytest
import torch

from lit_vit.attention import resolution_sweep
from lit_vit.callbacks.resolution_sweep import MEASURE_BATCH, ResolutionSweep
from lit_vit.cli import main
from lit_vit.data import FashionMNISTDataModule
from tests.callbacks.conftest import EPOCHS, SWEEP_IMAGES, SWEEP_SIZES, TRAIN_BATCHES
from tests.conftest import read_events, tiny_run_args

SIZES, IMAGES = SWEEP_SIZES, SWEEP_IMAGES
TAGS = ["020x020", "028x028", "036x036"]


def callbacks_config(tmp_path, sizes) -> str:
    path = tmp_path / f"resolution_{'_'.join(map(str, sizes))}.yaml"
    path.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: lit_vit.callbacks.resolution_sweep.ResolutionSweep\n"
        f"      init_args: {{sizes: {sizes}, images: {IMAGES}, figure_images: 2}}\n"
    )
    return str(path)


@pytest.fixture(scope="module")
def runs(attention_run):
    return attention_run


def table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_fit_end_writes_figure_and_table_once(runs):
    fit_dir = runs.fit_dir
    folder = fit_dir / "attention" / "fit_end"
    assert (folder / "resolution.png").is_file()
    rows = table_rows((folder / "resolution" / "table.md").read_text())
    assert [row[:3] for row in rows] == [
        ["20x20", "5x5", "26"],
        ["28x28 (training)", "7x7", "50"],
        ["36x36", "9x9", "82"],
    ]
    assert all(0.0 <= float(row[3]) <= 1.0 for row in rows)
    assert not list((fit_dir / "attention").glob("epoch_*/resolution*")), "nothing per epoch"
    events = read_events(fit_dir)
    # The 64 swept images are the 2 validation batches behind the last val/acc, unaugmented:
    # only the training batches went through the random crop.
    assert float(rows[1][3]) == pytest.approx(events.Scalars("val/acc")[-1].value, abs=5e-4)
    assert runs.augmented_batches == EPOCHS * TRAIN_BATCHES
    assert [event.step for event in events.Images("val_attention/resolution")] == [
        events.Scalars("val/acc")[-1].step
    ]
    assert any(tag.startswith("val_attention/resolution/table") for tag in events.Tags()["tensors"])
    assert not any(tag.startswith("val_attention/resolution/") for tag in events.Tags()["scalars"])


def test_test_scalars_match_an_independent_sweep(runs, fake_fashion_mnist):
    scalars = read_events(runs.test_dir)
    logged = {
        tag.removeprefix("test_attention/"): scalars.Scalars(tag)[0].value
        for tag in scalars.Tags()["scalars"]
    }
    for metric in ("accuracy", "distance_relative", "focus", "ms_per_image"):
        assert {f"resolution/{metric}_{tag}" for tag in TAGS} <= set(logged)

    data = FashionMNISTDataModule(data_dir=str(runs.data_dir), system_dir=str(fake_fashion_mnist))
    data.setup("test")
    images, labels = (tensor[:IMAGES] for tensor in data.test_dataset.tensors)
    model = runs.model
    results = resolution_sweep(
        model, images, labels, SIZES, batch_size=MEASURE_BATCH, timing_repeats=1
    )
    for tag, result in zip(TAGS, results, strict=True):
        assert 0.0 <= result.accuracy <= 1.0
        assert logged[f"resolution/accuracy_{tag}"] == pytest.approx(result.accuracy)
        distance = logged[f"resolution/distance_relative_{tag}"]
        assert distance == pytest.approx(float(result.relative_distance.mean()), abs=1e-5)
        focus = logged[f"resolution/focus_{tag}"]
        assert focus == pytest.approx(float(result.focus.mean()), abs=1e-5)
        assert logged[f"resolution/ms_per_image_{tag}"] > 0
    with torch.no_grad():
        plain = (model(images).argmax(dim=-1) == labels).float().mean().item()
    assert logged["resolution/accuracy_028x028"] == pytest.approx(plain)


def test_report_section_lists_the_sizes(runs):
    test_dir = runs.test_dir
    report = runs.report
    section = report.split("## Effect of input resolution", 1)[1].split("\n## ")[0]
    assert "![rollout by input size](test/resolution.png)" in section
    assert "position embeddings" in section
    assert [row[0] for row in table_rows(section)] == ["20x20", "28x28 (training)", "36x36"]
    assert "Accuracy is highest at" in report and "at the training size it is" in report
    assert f"Accuracy on {IMAGES} test images" in section
    assert (test_dir / "attention" / "test" / "resolution.png").is_file()


def test_size_off_the_patch_grid_fails_at_setup(tmp_path, fake_fashion_mnist, capsys):
    config = callbacks_config(tmp_path, [20, 30])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_run_args(tmp_path, fake_fashion_mnist, "--config", config)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "size 30 is not a multiple of the patch size 4x4" in message
    assert "28 or 32" in message and "Traceback" not in message
    assert not list((tmp_path / "logs").rglob("*.ckpt")), "it fails before training"


def test_default_sizes_around_the_training_size():
    callback = ResolutionSweep()
    callback.training_size = (28, 28)
    assert callback._resolve_sizes((4, 4), square_inputs=True) == [
        (20, 20),
        (24, 24),
        (28, 28),
        (32, 32),
        (36, 36),
        (56, 56),
    ]
    callback.training_size = (8, 8)
    assert callback._resolve_sizes((4, 4), square_inputs=True) == [(8, 8), (12, 12), (16, 16)]
    callback = ResolutionSweep(sizes=[36, 20])
    callback.training_size = (28, 28)
    assert callback._resolve_sizes((4, 4), square_inputs=True) == [(20, 20), (28, 28), (36, 36)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sizes": [28, 28]}, r"repeats \[28\]"),
        ({"sizes": [0]}, "positive"),
        ({"images": 0}, "images=0"),
        ({"figure_images": 0}, r"figure_images=0 must be at least 1"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResolutionSweep(**kwargs)
