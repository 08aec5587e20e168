"""The callbacks on LightningModules written here, around other timm ViTs."""

from __future__ import annotations

import resource
import warnings
from pathlib import Path

import pytest
import timm
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_vit.attention import capture
from lit_vit.callbacks import (
    AttentionCallback,
    AttentionMaps,
    AttentionProbe,
    AttentionRollout,
    Faithfulness,
    FocusCoverage,
    HeadDiversity,
    ResolutionSweep,
    SanityChecks,
)
from tests.conftest import read_events


class Classifier(LightningModule):
    """Any timm ViT (or module holding ViTs) as a LightningModule of our own."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images):
        return self.network(images)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return nn.functional.cross_entropy(self(images), labels)

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.log("val_loss", nn.functional.cross_entropy(self(images), labels))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class TwoViTs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.student = tiny_vit("vit_tiny_patch16_224")
        self.teacher = tiny_vit("vit_tiny_patch16_224")

    def forward(self, images):
        return self.student(images) + self.teacher(images).detach()


def tiny_vit(name: str, **kwargs) -> nn.Module:
    size = kwargs.pop("img_size", 32)
    return timm.create_model(
        name, pretrained=False, img_size=size, patch_size=8, in_chans=3, embed_dim=32,
        depth=2, num_heads=2, num_classes=4, **kwargs,
    )  # fmt: skip


def loaders(size: tuple[int, int] = (32, 32), count: int = 32):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, 3, *size, generator=generator)
    labels = torch.arange(count) % 4
    dataset = TensorDataset(images, labels)
    return DataLoader(dataset, batch_size=8), DataLoader(dataset, batch_size=8)


def fit(module, callbacks, tmp_path, logger=None, size=(32, 32), epochs=1):
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=logger if logger is not None else TensorBoardLogger(tmp_path, name="run"),
        callbacks=callbacks,
        limit_train_batches=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, *loaders(size))
    return trainer


@pytest.mark.parametrize(
    ("name", "kwargs", "prefix"),
    [
        ("deit_tiny_distilled_patch16_224", {}, 2),
        ("vit_tiny_patch16_224", {"reg_tokens": 4, "class_token": False, "global_pool": "avg"}, 4),
        ("vit_tiny_patch16_224", {"img_size": (32, 48)}, 1),
    ],
    ids=["distilled", "registers_no_class_token", "non_square"],
)
def test_other_vits_in_our_own_module(tmp_path, name, kwargs, prefix):
    size = kwargs.get("img_size", (32, 32))
    network = tiny_vit(name, **kwargs)
    assert network.num_prefix_tokens == prefix
    callbacks = [AttentionProbe(size=4), AttentionMaps(), AttentionRollout(), HeadDiversity()]
    trainer = fit(Classifier(network), callbacks, tmp_path, size=size)
    events = read_events(trainer.log_dir)
    assert {"val_attention/layer_maps", "val_attention/rollout"} <= set(events.Tags()["images"])
    assert "val_attention/head_diversity/layer_01" in events.Tags()["scalars"]


def test_analysis_callbacks_alone_get_a_default_probe(tmp_path, monkeypatch):
    calls = []
    original = capture.AttentionRecorder.record

    def counting(self, images, grad_targets=(), **options):
        calls.append((len(images), len(grad_targets)))
        return original(self, images, grad_targets, **options)

    monkeypatch.setattr(capture.AttentionRecorder, "record", counting)
    trainer = fit(
        Classifier(tiny_vit("vit_tiny_patch16_224")), [AttentionMaps()], tmp_path, epochs=2
    )
    (probe,) = [cb for cb in trainer.callbacks if isinstance(cb, AttentionProbe)]
    assert probe.size == 8
    assert calls == [(8, 0), (8, 0)], "one capture per epoch, no gradients for AttentionMaps"


def test_module_argument_picks_one_of_several_vits(tmp_path):
    module = Classifier(TwoViTs())
    with pytest.raises(ValueError, match="network.student.*network.teacher|several"):
        fit(module, [AttentionMaps()], tmp_path)
    with pytest.raises(ValueError, match="network.pupil.*network.student"):
        fit(module, [AttentionProbe(module="network.pupil"), AttentionMaps()], tmp_path)
    probe = AttentionProbe(size=4, module="network.teacher")
    trainer = fit(module, [probe, AttentionMaps()], tmp_path)
    assert "val_attention/layer_maps" in read_events(trainer.log_dir).Tags()["images"]


def test_model_without_attention_is_refused_at_setup(tmp_path):
    network = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))
    with pytest.raises(ValueError, match="patch_embed|ViT") as error:
        fit(Classifier(network), [HeadDiversity()], tmp_path)
    assert "Linear" in str(error.value) or "Sequential" in str(error.value)


def test_bad_arguments_fail_at_setup(tmp_path):
    module = Classifier(tiny_vit("vit_tiny_patch16_224"))
    with pytest.raises(
        ValueError, match="head_layers contains 5 but the model has 2 attention layers"
    ):
        fit(module, [AttentionMaps(head_layers=[5])], tmp_path)
    with pytest.raises(ValueError, match="size=64 but the val set has only 32 images"):
        fit(module, [AttentionProbe(size=64), AttentionMaps()], tmp_path)
    with pytest.raises(ValueError, match="discard_ratio=1.0 must be in"):
        AttentionRollout(discard_ratio=1.0)
    with pytest.raises(ValueError, match=r"head_fusion='median' must be one of \('mean'"):
        AttentionRollout(head_fusion="median")
    with pytest.raises(ValueError, match="two AttentionMaps callbacks have no name="):
        fit(module, [AttentionMaps(), AttentionMaps(head_layers=[0])], tmp_path)
    # Callbacks with checkpoint state (the evolution's history): Lightning refuses the twins
    # when the Trainer is made, naming the callback (the CLI says it first, with the fix).
    with pytest.raises(
        RuntimeError, match="more than one stateful callback of type `AttentionRoll"
    ):
        fit(module, [AttentionRollout(), AttentionRollout(head_fusion="max")], tmp_path)
    with pytest.raises(ValueError, match="size=0 must be at least 1"):
        AttentionProbe(size=0)


def test_without_tensorboard_scalars_still_logged_and_figures_saved(tmp_path):
    logger = CSVLogger(tmp_path, name="csv")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(
            Classifier(tiny_vit("vit_tiny_patch16_224")),
            [AttentionProbe(size=4), AttentionMaps(), HeadDiversity()],
            tmp_path,
            logger=logger,
            epochs=2,
        )
    assert not [w for w in caught if "TensorBoard" in str(w.message)], "not a warning"
    metrics = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    assert "val_attention/head_diversity/layer_00" in metrics
    assert (tmp_path / "csv" / "version_0" / "attention" / "epoch_001" / "layer_maps.png").is_file()
    assert trainer.current_epoch == 2


def test_memory_stays_flat_over_many_epochs(tmp_path, monkeypatch):
    module = Classifier(tiny_vit("vit_tiny_patch16_224"))
    probe = AttentionProbe(size=4)
    callbacks = [AttentionMaps(), AttentionRollout(), HeadDiversity()]
    trainer = fit(module, [probe, *callbacks], tmp_path)
    # Outside a loop Lightning has no result collection for pl_module.log.
    monkeypatch.setattr(AttentionCallback, "log_scalars", lambda self, *args: None)

    def six_epochs() -> int:
        for epoch in range(6):
            trainer.fit_loop.epoch_progress.current.completed = epoch  # a new folder each call
            probe._dispatch(trainer, module, "val")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB

    warm = six_epochs()
    after = six_epochs()
    assert after - warm < 50 * 1024, f"peak memory grew by {(after - warm) / 1024:.1f} MiB"


def hugging_face_vit() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=4,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config)


def torchvision_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=4,
    )  # fmt: skip


class HuggingFaceClassifier(Classifier):
    """A user's module around a Hugging Face model: its forward returns the model's output."""

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return nn.functional.cross_entropy(self(images).logits, labels)

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.log("val_loss", nn.functional.cross_entropy(self(images).logits, labels))

    def test_step(self, batch, batch_idx):
        self.validation_step(batch, batch_idx)


class TorchvisionClassifier(Classifier):
    def test_step(self, batch, batch_idx):
        self.validation_step(batch, batch_idx)


@pytest.mark.parametrize(
    ("make_module", "family"),
    [
        (lambda: HuggingFaceClassifier(hugging_face_vit()), "huggingface"),
        (lambda: TorchvisionClassifier(torchvision_vit()), "torchvision"),
    ],
    ids=["huggingface", "torchvision"],
)
def test_callbacks_on_other_families_write_figures_and_the_report(tmp_path, make_module, family):
    module = make_module()
    callbacks = [
        AttentionProbe(size=4),
        AttentionMaps(),
        AttentionRollout(),
        HeadDiversity(),
        FocusCoverage(test_images=8),
        Faithfulness(test_images=8),
        ResolutionSweep(sizes=[24, 32, 48], images=8),
        SanityChecks(),
    ]
    trainer = fit(module, callbacks, tmp_path, epochs=2)
    assert callbacks[0].recorder.backend.family == family
    trainer.test(module, dataloaders=loaders()[1])
    run_dir = Path(trainer.log_dir)
    for name in (
        "layer_maps",
        "rollout",
        "head_diversity",
        "focus_coverage",
        "faithfulness",
        "cp_lrp",
    ):
        assert (run_dir / "attention" / "epoch_001" / f"{name}.png").is_file(), name
    report = (run_dir / "attention" / "report.md").read_text()
    assert "## Attention rollout" in report and "## Faithfulness\n" in report
    assert "2 layers, width 32, 2 heads, patch 8x8, images 32x32" in report
    # The sweep resized the family's own way: a row per size, the training size marked.
    assert (run_dir / "attention" / "test" / "resolution.png").is_file()
    for row in ("| 24x24 | 3x3 |", "| 32x32 (training) | 4x4 |", "| 48x48 | 6x6 |"):
        assert row in report, row
