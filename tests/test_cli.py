"""The real ``lit-vit`` CLI on a tiny ViT and small Fashion-MNIST-format files."""

import csv
import re
import subprocess
import sys

import pytest
import torch

from lit_vit.cli import main
from lit_vit.data import CLASS_NAMES
from tests.conftest import read_events, run_dirs, tiny_run_args


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, fake_fashion_mnist):
    """One ``lit-vit fit`` run: its tmp folder and run directory."""
    tmp_path = tmp_path_factory.mktemp("cli")
    main(["fit", *tiny_run_args(tmp_path, fake_fashion_mnist)])
    (run_dir,) = run_dirs(tmp_path / "logs")
    return tmp_path, run_dir


def test_fit_keeps_best_and_last_checkpoints_and_logs(fitted, capsys):
    _, run_dir = fitted
    checkpoints = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints
    best = [
        name for name in checkpoints if re.fullmatch(r"epoch00[01]-val_acc\d\.\d{4}\.ckpt", name)
    ]
    assert len(best) == 1, checkpoints
    assert (run_dir / "config.yaml").is_file()
    scalars = set(read_events(run_dir).Tags()["scalars"])
    expected = {"train/loss_step", "train/loss_epoch", "train/acc", "val/loss", "val/acc"}
    assert expected <= scalars
    assert any(tag.startswith("lr-AdamW") for tag in scalars)


def test_test_and_predict_from_the_checkpoint(fitted, fake_fashion_mnist):
    tmp_path, run_dir = fitted
    args = tiny_run_args(
        tmp_path, fake_fashion_mnist, f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    )
    main(["test", *args])
    main(["predict", *args])
    test_dir, predict_dir = run_dirs(tmp_path / "logs")[-2:]
    accuracy = read_events(test_dir).Scalars("test/acc")
    assert len(accuracy) == 1 and 0.0 <= accuracy[0].value <= 1.0
    assert "test/loss" in read_events(test_dir).Tags()["scalars"]
    with (predict_dir / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 32
    assert all(row["class_name"] == CLASS_NAMES[int(row["prediction"])] for row in rows)
    assert all(0.0 < float(row["probability"]) <= 1.0 for row in rows)


def test_print_config_is_reusable(fitted, fake_fashion_mnist, capsys):
    tmp_path, _ = fitted
    with pytest.raises(SystemExit):
        main(["fit", *tiny_run_args(tmp_path, fake_fashion_mnist), "--print_config"])
    printed = capsys.readouterr().out
    assert "embed_dim: 32" in printed and "checkpoint:" in printed
    config = tmp_path / "printed.yaml"
    config.write_text(printed)
    before = len(run_dirs(tmp_path / "logs"))
    main(["validate", "--config", str(config)])
    assert len(run_dirs(tmp_path / "logs")) == before + 1


def expect_cli_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_missing_checkpoint(fitted, fake_fashion_mnist, capsys):
    tmp_path, _ = fitted
    args = tiny_run_args(tmp_path, fake_fashion_mnist, f"--ckpt_path={tmp_path / 'nope.ckpt'}")
    message = expect_cli_error(["test", *args], capsys)
    assert "nope.ckpt' does not exist" in message and "Traceback" not in message


def test_checkpoint_of_another_shape_leaves_earlier_runs_alone(fitted, fake_fashion_mnist, capsys):
    tmp_path, run_dir = fitted
    before = {path: path.stat().st_mtime_ns for path in run_dir.rglob("*") if path.is_file()}
    # Lightning takes the architecture from a checkpoint's hyperparameters; one without
    # them (saved by other code) must still be caught before loading.
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    del checkpoint["hyper_parameters"]
    ckpt = tmp_path / "foreign.ckpt"
    torch.save(checkpoint, ckpt)
    args = tiny_run_args(tmp_path, fake_fashion_mnist, f"--ckpt_path={ckpt}", "--model.depth=3")
    message = expect_cli_error(["test", *args], capsys)
    assert "belongs to another model shape" in message
    assert "vit.blocks.2.norm1.weight: missing from the checkpoint" in message
    after = {path: path.stat().st_mtime_ns for path in run_dir.rglob("*") if path.is_file()}
    assert after == before


def test_unknown_model_and_bad_image_size(fitted, fake_fashion_mnist, capsys):
    tmp_path, _ = fitted
    args = tiny_run_args(tmp_path, fake_fashion_mnist, "--model.model_name=vit_tiny_patch16")
    assert "Close names: vit_tiny_patch16_384, vit_tiny_patch16_224" in expect_cli_error(
        ["fit", *args], capsys
    )
    args = tiny_run_args(tmp_path, fake_fashion_mnist, "--data.img_size=30")
    assert "img_size=30 is not a multiple of patch_size=4" in expect_cli_error(
        ["fit", *args], capsys
    )


def test_pretrained_config_path_with_a_tiny_width(tmp_path, fake_fashion_mnist):
    args = tiny_run_args(tmp_path, fake_fashion_mnist)
    args[1] = "configs/fashion_mnist_pretrained.yaml"
    main(
        [
            "fit",
            *args,
            "--model.pretrained=false",
            "--data.img_size=32",
            "--model.patch_size=16",
            "--trainer.precision=32-true",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1",
        ]
    )
    (run_dir,) = run_dirs(tmp_path / "logs")
    assert "fashion_mnist_pretrained" in str(run_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_python_dash_m_is_the_same_program():
    result = subprocess.run(
        [sys.executable, "-m", "lit_vit", "fit", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    assert "--model.model_name" in result.stdout and "--checkpoint.monitor" in result.stdout
