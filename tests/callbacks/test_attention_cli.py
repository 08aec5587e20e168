"""All attention callbacks through the real CLI: tags, steps, PNGs, report, checkpoint, resume."""

from __future__ import annotations

import pickle
import re
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from lit_vit import __version__
from lit_vit.attention import AttentionRecorder, cls_attention, head_diversity, resize_images
from lit_vit.callbacks import AttentionRollout
from lit_vit.callbacks.attention_rollout import _spread, thumbnails
from lit_vit.cli import main
from tests.callbacks.conftest import EPOCHS, PROBE_SIZE
from tests.conftest import (
    checkpoint_probe,
    custom_scalars_lines,
    hparams_rows,
    read_events,
    run_dirs,
)

IMAGE_TAGS = [
    "evolution",
    "rollout_evolution",
    "rollout_max/rollout_evolution",
    "faithfulness_evolution",
    "layer_maps",
    "head_maps/layer_00",
    "head_maps/layer_01",
    "rollout",
    "rollout_max/rollout",
    "head_diversity",
    "distance",
    "entropy",
    "focus_coverage",
    "faithfulness",
    "cka",
    "layers",
    "representation_evolution",
]
SCALAR_TAGS = [
    "head_diversity/layer_00",
    "head_diversity/layer_01",
    "distance_relative/layer_01",
    "entropy/layer_00",
    "prefix_mass/layer_01",
    "focus/mean",
    "coverage/mean",
    "faithfulness/deletion_rollout",
    "logit_lens/accuracy/layer_01",
    "logit_lens/true_probability/layer_00",
    "token_norms/high_norm_share/layer_01",
    "token_norms/sink_rate/layer_00",
]


def test_each_validation_run_logs_every_tag_at_the_step_of_its_val_metrics(attention_run):
    events = read_events(attention_run.fit_dir)
    val_steps = [event.step for event in events.Scalars("val/acc")]
    assert len(val_steps) == EPOCHS
    for tag in IMAGE_TAGS:
        steps = [event.step for event in events.Images(f"val_attention/{tag}")]
        assert steps == val_steps, f"val_attention/{tag} at steps {steps}, val/acc at {val_steps}"
    for tag in SCALAR_TAGS:
        steps = [event.step for event in events.Scalars(f"val_attention/{tag}")]
        assert steps == val_steps, f"val_attention/{tag} at steps {steps}, val/acc at {val_steps}"
    # Each layer against itself one analysed run before: from the second run on.
    steps = [event.step for event in events.Scalars("val_attention/cka_previous/layer_01")]
    assert steps == val_steps[1:]
    for epoch in range(EPOCHS):
        folder = attention_run.fit_dir / "attention" / f"epoch_{epoch:03d}"
        assert (folder / "rollout.png").stat().st_size > 1000
        assert (folder / "rollout_max" / "rollout.png").is_file(), "named instance's own file"
        # TensorBoard shows the very picture of the file, encoded once.
        shown = events.Images("val_attention/rollout")[epoch]
        assert shown.encoded_image_string == (folder / "rollout.png").read_bytes()
        assert (shown.width, shown.height) == Image.open(folder / "rollout.png").size


def test_hparams_has_one_row_per_fit_that_its_test_fills(attention_run):
    rows = hparams_rows(attention_run.tmp_path / "logs")
    fit_name = attention_run.fit_dir.relative_to(attention_run.tmp_path / "logs").as_posix()
    assert list(rows) == [fit_name], "one row: fit and test of a model share it"
    (row,) = rows.values()
    assert row["model_name"] == "vit_tiny_patch16_224"
    assert row["data.batch_size"] == 32
    assert not [column for column in row if column.startswith("_") or "hp_metric" in column]
    fit_events = read_events(attention_run.fit_dir)
    assert row["val/acc"] == pytest.approx(fit_events.Scalars("val/acc")[-1].value)
    test_events = read_events(attention_run.test_dir)
    assert row["test/acc"] == pytest.approx(test_events.Scalars("test/acc")[-1].value)
    for stage, events in (("val", fit_events), ("test", test_events)):
        layer_0 = events.Scalars(f"{stage}_attention/distance_relative/layer_00")[-1].value
        first_third = row[f"hparams/{stage}_distance_relative_first_layers"]
        assert first_third == pytest.approx(layer_0), "2 layers: the first third is layer 0"
        for measure in ("head_diversity_last_layers", "focus_mean", "lift_mean"):
            assert f"hparams/{stage}_{measure}" in row, sorted(row)


def test_one_capture_per_validation_run_with_only_the_gradients_asked_for(attention_run):
    # Rollout asks for the true and predicted classes, Faithfulness for the predicted one.
    # After the validation runs, the fit-end sanity checks record with at most one target.
    captures = attention_run.fit_captures
    assert captures[:EPOCHS] == [2] * EPOCHS and captures.count(2) == EPOCHS, captures
    assert not any(attention_run.fit_captures_full), "the probe records reduced attention"


def test_tensorboard_gets_a_chart_per_measure_and_the_report(attention_run):
    from tensorboard.plugins.custom_scalar import layout_pb2

    events = read_events(attention_run.fit_dir)
    (config,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    (category,) = layout.category
    charts = {chart.title: list(chart.multiline.tag) for chart in category.chart}
    assert charts["entropy by layer"] == [r"^val_attention/entropy$"]
    assert charts["prefix mass by layer"] == [r"^val_attention/prefix_mass$"]
    assert charts["deletion AUC"] == ["val_attention/faithfulness/deletion_.*"]


def test_custom_scalars_draw_each_layer_as_a_run_of_its_own(attention_run):
    events = read_events(attention_run.fit_dir)
    for series in ("entropy", "head_diversity", "distance_relative", "prefix_mass"):
        lines = custom_scalars_lines(attention_run.fit_dir, rf"^val_attention/{series}$")
        # A run per layer, so a colour and an entry in the runs list per layer; the main
        # run's per-layer tags are not drawn again.
        assert sorted(lines) == ["layer_00", "layer_01"]
        for layer, run in enumerate(sorted(lines)):
            (points,) = lines[run].values()
            flat = events.Scalars(f"val_attention/{series}/layer_{layer:02d}")
            assert len(points) == len(flat) >= 2  # every analysed epoch
            assert [step for step, _ in points] == [event.step for event in flat]
            assert [value for _, value in points] == pytest.approx([e.value for e in flat])


def test_text_tab_report_names_each_figure_by_its_images_tag(attention_run):
    import numpy as np
    from tensorboard.plugins.text import text_plugin

    events = read_events(attention_run.test_dir)
    (summary,) = events.Tensors("test_attention/report/text_summary")
    markdown = summary.tensor_proto.string_val[0].decode()
    html = text_plugin.text_array_to_html(np.array(markdown.encode()), enable_markdown=True)
    assert "<img" not in html and ".png" not in markdown, "TensorBoard serves no files"
    named = re.findall(r"in the Images tab as `([^`]+)`", markdown)
    assert "test_attention/rollout" in named and "test_attention/faithfulness" in named
    assert set(named) <= set(events.Tags()["images"]), set(named) - set(events.Tags()["images"])
    assert len(named) == attention_run.report.count("](test/"), "every figure of the report"


def test_training_metrics_come_before_the_attention_tags_in_tensorboard(attention_run):
    # TensorBoard sorts tags (and the groups of its Scalars and Time Series tabs) by name.
    tags = sorted(read_events(attention_run.fit_dir).Tags()["scalars"])
    first_attention = min(i for i, tag in enumerate(tags) if tag.startswith("val_attention/"))
    assert {"train/loss_epoch", "val/acc", "val/loss"} <= set(tags[:first_attention]), tags
    assert all(tag.startswith("val_attention/") for tag in tags[first_attention:]), tags


def test_test_time_tags_never_land_on_the_validation_charts(attention_run):
    events = read_events(attention_run.test_dir)
    tags = set(events.Tags()["images"]) | set(events.Tags()["scalars"])
    assert not [tag for tag in tags if tag.startswith("val_attention/")]
    assert {f"test_attention/{tag}" for tag in IMAGE_TAGS} <= tags
    assert {f"test_attention/{tag}" for tag in SCALAR_TAGS} <= tags


def test_logged_numbers_match_the_toolkit_on_the_checkpoint_probe(attention_run):
    probe = checkpoint_probe(attention_run.checkpoint, attention_run.data_dir)
    assert len(probe.labels) == PROBE_SIZE and probe.labels.unique().numel() == PROBE_SIZE
    recording = AttentionRecorder(attention_run.model).record(probe.images)
    diversity = head_diversity(recording.attention, recording.layout)
    prefix = cls_attention(recording.attention, recording.layout).prefix_mass.mean(dim=(1, 2))
    events = read_events(attention_run.fit_dir)
    for layer in range(2):
        logged = events.Scalars(f"val_attention/head_diversity/layer_{layer:02d}")[-1].value
        assert logged == pytest.approx(float(diversity[layer]), abs=1e-5)
        logged = events.Scalars(f"val_attention/prefix_mass/layer_{layer:02d}")[-1].value
        assert logged == pytest.approx(float(prefix[layer]), abs=1e-5)


def test_probe_state_is_small_and_holds_no_images(attention_run):
    state = torch.load(attention_run.checkpoint, weights_only=False)["callbacks"]
    probe_state = state["AttentionProbe"]
    assert set(probe_state) == {"size", "seed", "indices", "fingerprint"}
    assert len(pickle.dumps(probe_state)) < 10_000
    assert not [key for key in state if "AttentionMaps" in key], "no images anywhere else"
    (history,) = [value["history"] for key, value in state.items() if "HeadDiversity" in key]
    assert history["epoch"] == [0, 1] and len(history["entropy"][0]) == 2  # 2 layers
    assert len(pickle.dumps(history)) < 10_000
    strips = [value["history"] for key, value in state.items() if "AttentionRollout" in key]
    for strip in strips:  # the rollout strip's maps and thumbnails of the images it shows
        assert strip["pixels"].dtype == torch.uint8 and strip["pixels"].shape == (6, 1, 28, 28)
        assert len(pickle.dumps(strip)) < 20_000


def test_the_rollout_strip_keeps_thumbnails_whatever_the_image_size():
    pixels = torch.rand(2, 3, 224, 160)
    small = thumbnails(pixels, 64)
    assert small.dtype == torch.uint8 and small.shape == (2, 3, 64, 46)
    expected = resize_images(pixels, (64, 46)).clamp(0, 1).mul(255).round()
    assert torch.equal(small, expected.to(torch.uint8))
    assert torch.equal(
        thumbnails(pixels[..., :28, :28], 64),
        pixels[..., :28, :28].mul(255).round().to(torch.uint8),
    )


def test_report_has_a_header_and_every_section_with_the_numbers(attention_run):
    report = attention_run.report
    header = report.split("## Summary")[0]
    assert f"- Checkpoint: `{attention_run.checkpoint}` (epoch {EPOCHS - 1}, global step" in header
    assert re.search(r"- Test accuracy: \d\.\d{4} on 64 test images of 160\n", header)
    assert "- Model: vit_tiny_patch16_224: 2 layers, width 32, 2 heads, patch 4x4" in header
    assert "images 28x28" in header and "parameters" in header
    assert "- Data: FashionMNISTDataModule (test 160 images)" in header
    assert f"lit-vit {__version__}" in header
    for heading in (
        "## Summary",
        "## Attention maps per layer",
        "## Head diversity, entropy and distance per layer",
        "## Effect of input resolution",
        "## Attention rollout",
        "## Attention rollout (rollout_max)",
        "## Focus and coverage",
        "## Faithfulness",
        "## What the layers compute",
    ):
        assert f"{heading}\n" in report, f"report lacks {heading!r}"
    assert re.search(r"- The class is readable \(logit-lens accuracy within 5 points", report)
    assert "| layer | logit-lens accuracy | true-class probability |" in report
    assert "- Layer 0: " in report and "- Layer 1: " in report
    links = ("layer_maps.png", "rollout.png", "rollout_max/rollout.png", "resolution.png")
    evolutions = (
        "evolution.png",
        "rollout_evolution.png",
        "faithfulness_evolution.png",
        "representation_evolution.png",
        "cka.png",
        "patch_norms.png",
    )
    for link in (*links, *evolutions):
        assert f"](test/{link})" in report
        assert (attention_run.test_dir / "attention" / "test" / link).is_file()
    logged = read_events(attention_run.test_dir).Scalars("test_attention/head_diversity/layer_00")[
        -1
    ]
    assert f"- Layer 0: {logged.value:.3f}" in report


def test_the_rollout_strip_spreads_its_epochs_evenly():
    assert _spread(3, 10) == [0, 1, 2]
    assert _spread(36, 10) == [0, 4, 8, 12, 16, 19, 23, 27, 31, 35]
    assert _spread(11, 10) == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]


def test_a_restored_rollout_history_of_another_probe_is_dropped_with_a_warning():
    # A resume with another probe size: 2 maps per epoch restored, 3 now.
    rollout = AttentionRollout()
    rollout.load_state_dict(
        {
            "history": {
                "epoch": [0, 1],
                "maps": [torch.rand(2, 7, 7)] * 2,
                "pixels": torch.zeros(2, 1, 7, 7, dtype=torch.uint8),
                "labels": torch.tensor([3, 5]),
            }
        }
    )
    probe = SimpleNamespace(pixels=torch.rand(3, 1, 28, 28), labels=torch.tensor([0, 1, 2]))
    with pytest.warns(UserWarning, match=r"history holds maps of shape \(2, 7, 7\)"):
        rollout._remember(2, SimpleNamespace(probe=probe), torch.rand(3, 7, 7))
    assert rollout.history["epoch"] == [2] and len(rollout.history["maps"]) == 1
    assert rollout.history["labels"].tolist() == [0, 1, 2]


def test_resume_uses_the_same_probe_and_one_capture_per_run(attention_run, monkeypatch):
    first_epoch = next((attention_run.fit_dir / "checkpoints").glob("epoch000-*.ckpt"))
    captures = []
    record = AttentionRecorder.record

    def counting(self, images, grad_targets=(), **options):
        if len(images) == PROBE_SIZE:
            captures.append(len(grad_targets))
        return record(self, images, grad_targets, **options)

    monkeypatch.setattr(AttentionRecorder, "record", counting)
    main(["fit", *attention_run.args, f"--ckpt_path={first_epoch}"])
    resumed = run_dirs(attention_run.tmp_path / "logs")[-1]
    original, again = read_events(attention_run.fit_dir), read_events(resumed)
    for tag in ("val_attention/rollout", "val_attention/rollout_max/rollout"):
        assert [e.step for e in again.Images(tag)] == [original.Images(tag)[-1].step]
    assert captures.count(2) == 1, "a resumed run captures once per validation run"
    assert captures[0] == 2, "(then the fit-end sanity checks record with at most one target)"
    states = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    histories = {key: value["history"] for key, value in states.items() if "history" in value}
    kinds = sorted(key.split("{")[0] for key in histories)
    assert kinds == [
        "AttentionRollout",
        "AttentionRollout",
        "Faithfulness",
        "HeadDiversity",
        "LayerRepresentations",
    ]
    for key, history in histories.items():
        assert history["epoch"] == [0, 1], f"{key}: the evolution goes on from before the resume"
    # The figures too: the resumed run's strip of epoch 1 shows epochs 0 and 1, like the
    # uninterrupted run's, not epoch 1 alone.
    strip = ("attention", "epoch_001", "rollout_evolution.png")
    resumed_strip = Image.open(resumed.joinpath(*strip)).size
    assert resumed_strip == Image.open(attention_run.fit_dir.joinpath(*strip)).size
    first_strip = attention_run.fit_dir / "attention" / "epoch_000" / "rollout_evolution.png"
    assert resumed_strip[0] > Image.open(first_strip).size[0]
    first = checkpoint_probe(first_epoch, attention_run.data_dir)
    after = checkpoint_probe(resumed / "checkpoints" / "last.ckpt", attention_run.data_dir)
    assert torch.equal(after.indices, first.indices)
    torch.testing.assert_close(after.images, first.images)
