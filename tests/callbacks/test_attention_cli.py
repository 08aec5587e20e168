"""All attention callbacks through the real CLI: event tags, PNGs, report, resume."""

from __future__ import annotations

import pytest
import torch

from lit_vit.attention import AttentionRecorder, cls_attention, head_diversity
from lit_vit.callbacks.probe import Probe
from lit_vit.cli import main
from lit_vit.model import LitViT
from tests.conftest import read_events, run_dirs, tiny_run_args

IMAGE_TAGS = [
    "attention/layer_maps",
    "attention/head_maps/layer_00",
    "attention/head_maps/layer_01",
    "attention/rollout",
    "attention/head_diversity",
    "attention/distance",
    "attention/entropy",
]
SCALAR_TAGS = [
    "attention/head_diversity/layer_00",
    "attention/head_diversity/layer_01",
    "attention/distance_relative/layer_01",
    "attention/entropy/layer_00",
    "attention/prefix_mass/layer_01",
    "attention/focus/mean",
    "attention/coverage/mean",
    "attention/faithfulness/deletion_rollout",
]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, fake_fashion_mnist):
    """``fit`` for 2 epochs then ``test``, with the callbacks of configs/smoke.yaml."""
    tmp_path = tmp_path_factory.mktemp("attention_cli")
    args = tiny_run_args(
        tmp_path, fake_fashion_mnist, "--trainer.max_epochs=2", "--checkpoint.save_top_k=-1"
    )
    main(["fit", *args])
    (fit_dir,) = run_dirs(tmp_path / "logs")
    main(["test", *args, f"--ckpt_path={fit_dir / 'checkpoints' / 'last.ckpt'}"])
    test_dir = run_dirs(tmp_path / "logs")[-1]
    return tmp_path, fit_dir, test_dir


def test_every_epoch_logs_each_image_and_scalar_tag(fitted):
    _, fit_dir, _ = fitted
    events = read_events(fit_dir)
    for tag in IMAGE_TAGS:
        steps = {event.step for event in events.Images(tag)}
        assert len(steps) == 2, f"{tag} logged at steps {steps}, expected one per epoch"
    scalars = set(events.Tags()["scalars"])
    missing = [tag for tag in SCALAR_TAGS if tag not in scalars]
    assert not missing, f"missing scalar tags {missing}"
    for epoch in ("epoch_000", "epoch_001"):
        assert (fit_dir / "attention" / epoch / "rollout.png").stat().st_size > 1000


def probe_and_model(fit_dir):
    """The probe saved in a run's last checkpoint, and the model restored from it."""
    path = fit_dir / "checkpoints" / "last.ckpt"
    callbacks = torch.load(path, weights_only=False)["callbacks"]
    (state,) = [state for key, state in callbacks.items() if key.startswith("HeadDiversity")]
    model = LitViT.load_from_checkpoint(path, map_location="cpu")
    return Probe.from_state_dict(state["probe"]), model.eval()


def test_logged_numbers_match_the_toolkit_on_the_same_probe(fitted):
    _, fit_dir, _ = fitted
    probe, model = probe_and_model(fit_dir)
    assert len(probe.labels) == 8 and len(set(probe.labels.tolist())) == 8, (
        "probe not class-balanced"
    )
    recording = AttentionRecorder(model).record(probe.images)
    diversity = head_diversity(recording.attention, recording.layout)
    prefix = cls_attention(recording.attention, recording.layout).prefix_mass.mean(dim=(1, 2))
    events = read_events(fit_dir)
    for layer in range(2):
        logged = events.Scalars(f"attention/head_diversity/layer_{layer:02d}")[-1].value
        assert logged == pytest.approx(float(diversity[layer]), abs=1e-5)
        logged = events.Scalars(f"attention/prefix_mass/layer_{layer:02d}")[-1].value
        assert logged == pytest.approx(float(prefix[layer]), abs=1e-5)


def test_report_has_every_section_with_the_numbers(fitted):
    _, _, test_dir = fitted
    report = (test_dir / "attention" / "report.md").read_text()
    for heading in (
        "## Summary",
        "## Attention maps per layer",
        "## Head diversity, entropy and distance per layer",
        "## Effect of input resolution",
        "## Attention rollout",
        "## Focus and coverage",
        "## Faithfulness (deletion / insertion)",
    ):
        assert heading in report, f"report lacks {heading!r}"
    assert "- Layer 0: " in report and "- Layer 1: " in report
    for link in ("layer_maps.png", "rollout.png", "head_diversity.png", "resolution.png"):
        assert f"](test/{link})" in report and (test_dir / "attention" / "test" / link).is_file()
    events = read_events(test_dir)
    logged = events.Scalars("attention/head_diversity/layer_00")[-1].value
    assert f"- Layer 0: {logged:.3f}" in report


def test_resume_continues_at_the_right_step_with_the_same_probe(fitted, fake_fashion_mnist):
    tmp_path, fit_dir, _ = fitted
    first_epoch = next((fit_dir / "checkpoints").glob("epoch000-*.ckpt"))
    args = tiny_run_args(tmp_path, fake_fashion_mnist, "--trainer.max_epochs=2")
    main(["fit", *args, f"--ckpt_path={first_epoch}"])
    resumed = run_dirs(tmp_path / "logs")[-1]
    original, again = read_events(fit_dir), read_events(resumed)
    tag = "attention/rollout"
    assert [e.step for e in again.Images(tag)] == [original.Images(tag)[-1].step]
    first_probe, _ = probe_and_model(fit_dir)
    resumed_probe, _ = probe_and_model(resumed)
    torch.testing.assert_close(resumed_probe.images, first_probe.images)
    assert torch.equal(resumed_probe.indices, first_probe.indices)
