"""The probe owner under the conditions a user meets: precisions, divergence, several
validation runs per epoch, fast_dev_run, sharded strategies."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy
from torch.utils.data import DataLoader, TensorDataset

from lit_vit.attention import EXPLAINERS
from lit_vit.callbacks import (
    AttentionMaps,
    AttentionProbe,
    AttentionRollout,
    Faithfulness,
    FocusCoverage,
    HeadDiversity,
)
from lit_vit.callbacks import explained as explained_module
from lit_vit.cli import main
from lit_vit.model import LitViT
from tests.conftest import read_events, tiny_run_args


def tiny_model(**kwargs) -> LitViT:
    return LitViT(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, **kwargs)


def loaders(count: int = 64):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, 1, 28, 28, generator=generator)
    dataset = TensorDataset(images, torch.arange(count) % 10)
    return DataLoader(dataset, batch_size=8), DataLoader(dataset, batch_size=8)


def fit(tmp_path, callbacks, epochs=1, model=None, **trainer_kwargs) -> Trainer:
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp_path, name="run"),
        callbacks=callbacks,
        limit_train_batches=4,
        limit_val_batches=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        **{"enable_checkpointing": False, **trainer_kwargs},
    )
    trainer.fit(model or tiny_model(), *loaders())
    return trainer


@pytest.mark.parametrize("precision", ["bf16-true", "16-mixed", "64-true"])
def test_probe_works_in_every_precision(tmp_path, precision):
    callbacks = [AttentionProbe(size=4), AttentionMaps(), AttentionRollout(), HeadDiversity()]
    trainer = fit(tmp_path, callbacks, precision=precision)
    folder = tmp_path / "run" / "version_0" / "attention" / "epoch_000"
    assert (folder / "rollout.png").is_file() and (folder / "layer_maps.png").is_file()
    assert "val_attention/head_diversity/layer_01" in trainer.callback_metrics


def test_two_validation_runs_per_epoch_get_their_own_folders_and_steps(tmp_path):
    fit(tmp_path, [AttentionProbe(size=4), AttentionMaps()], val_check_interval=0.5)
    run_dir = tmp_path / "run" / "version_0"
    folders = sorted(path.name for path in (run_dir / "attention").iterdir())
    assert folders == ["epoch_000_step_0000001", "epoch_000_step_0000003"]
    events = read_events(run_dir)
    steps = [event.step for event in events.Images("val_attention/layer_maps")]
    assert steps == [event.step for event in events.Scalars("val/acc")] == [1, 3]


class PoisonAfterFirstEpoch(Callback):
    """Make the weights NaN after the first training epoch, as a diverged run would."""

    def on_train_epoch_end(self, trainer, pl_module):
        with torch.no_grad():
            pl_module.vit.patch_embed.proj.weight.fill_(float("nan"))


def test_a_diverged_run_warns_once_and_keeps_checkpointing(tmp_path):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, save_last=True)
    callbacks = [
        AttentionProbe(size=4),
        AttentionMaps(),
        AttentionRollout(),
        Faithfulness(),
        PoisonAfterFirstEpoch(),
        checkpoints,
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(tmp_path, callbacks, epochs=3, enable_checkpointing=True)
    messages = [str(w.message) for w in caught if "AttentionProbe" in str(w.message)]
    assert len(messages) == 1, messages
    assert "at epoch 1" in messages[0] and "lower the learning rate" in messages[0]
    assert "AttentionMaps, AttentionRollout, Faithfulness" in messages[0]
    assert trainer.current_epoch == 3
    assert sorted(path.name for path in (tmp_path / "ckpt").glob("epoch=*.ckpt")) == [
        "epoch=0-step=4.ckpt",
        "epoch=1-step=8.ckpt",
        "epoch=2-step=12.ckpt",
    ]
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()


def test_fast_dev_run_writes_nothing_in_the_working_directory(
    tmp_path, fake_fashion_mnist, monkeypatch, caplog
):
    args = tiny_run_args(tmp_path, fake_fashion_mnist, "--trainer.fast_dev_run=true")
    args[args.index("configs/smoke.yaml")] = str(Path("configs/smoke.yaml").resolve())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    caplog.set_level("INFO")
    main(["fit", *args])
    main(["test", *args, "--untrained=true"])
    assert sorted(os.listdir(work)) == []
    # One message per run, not one per callback.
    assert caplog.text.count("fast_dev_run, so the attention callbacks run") == 2


def test_sharded_strategies_are_refused_at_setup():
    # Lightning's FSDP does not run on CPU: a trainer holding its strategy object suffices.
    trainer = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(ValueError, match="strategy FSDPStrategy shards the model's parameters"):
        AttentionProbe().setup(trainer, tiny_model(), "fit")


def test_test_images_are_explained_once_for_every_callback_that_reads_them(tmp_path, monkeypatch):
    explained = []
    original = explained_module.explain

    def counting_explain(recorder, images, targets=None, methods=EXPLAINERS):
        explained.append(len(images))
        return original(recorder, images, targets, methods)

    monkeypatch.setattr(explained_module, "explain", counting_explain)
    callbacks = [
        AttentionProbe(size=4),
        Faithfulness(test_images=12, steps=4),
        FocusCoverage(test_images=20),
    ]
    trainer = fit(tmp_path, callbacks)
    explained.clear()
    trainer.test(trainer.lightning_module, loaders()[1], verbose=False)
    # The probe's own capture records without explain(); the test set is explained once,
    # for the 20 images FocusCoverage reads (Faithfulness reads the first 12 of them), its
    # first image alone (to say how long the rest takes).
    assert explained == [1, 7, 8, 4]
    assert callbacks[0]._explained._batches is None, "the maps are not kept past the test"
    report = (tmp_path / "run" / "version_0" / "attention" / "report.md").read_text()
    assert "over 20 test images" in report and "12 test images" in report


@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed", "16-mixed"])
def test_every_callback_fits_and_tests_in_reduced_precision_through_the_cli(
    tmp_path, fake_fashion_mnist, precision
):
    # Every attention callback, on few test images (the dtype is the point, not the volume):
    # Faithfulness feeds masked, imputed and perturbed copies, CP-LRP and input x gradient
    # their inputs, in the model's dtype.
    args = tiny_run_args(
        tmp_path,
        fake_fashion_mnist,
        f"--trainer.precision={precision}",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        flow=True,
    )
    main(["fit", *args])
    (checkpoint,) = (tmp_path / "logs").glob("*/version_0/checkpoints/last.ckpt")
    main(["test", *args, f"--ckpt_path={checkpoint}"])
    report = next((tmp_path / "logs").glob("*/version_1/attention/report.md")).read_text()
    assert "## Faithfulness" in report and "## Sanity checks" in report
    assert "| flow |" in report, "every explainer, attention flow too"
    assert (checkpoint.parents[1] / "attention" / "epoch_000" / "cp_lrp.png").is_file()


def test_an_unknown_explainer_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"explainers=\['flo'\] names \['flo'\]; choose from"):
        AttentionProbe(explainers=["flo"])
    assert AttentionProbe(explainers=["cp-lrp", "rollout"]).explainers == ("rollout", "cp-lrp")
