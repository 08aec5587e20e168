"""The real ``lit-vit`` CLI on a tiny ViT and small Fashion-MNIST-format files."""

import csv
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_vit import __version__
from lit_vit.cli import main
from lit_vit.data import CLASS_NAMES
from lit_vit.model import LitViT
from tests.conftest import read_events, run_dirs, tiny_run_args

ROOT = Path(__file__).resolve().parents[1]


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


def test_test_and_predict_from_the_checkpoint(fitted, fake_fashion_mnist, caplog):
    tmp_path, run_dir = fitted
    args = tiny_run_args(
        tmp_path,
        fake_fashion_mnist,
        f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
    )
    main(["test", *args])
    caplog.set_level("INFO")
    main(["predict", *args])
    test_dir, predict_dir = run_dirs(tmp_path / "logs")[-2:]
    assert f"Predictions: {predict_dir / 'predictions.csv'}" in caplog.text
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
    main(["validate", "--config", str(config), "--untrained=true"])
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


def test_python_dash_m_is_the_same_program(monkeypatch, capsys, recwarn):
    # What `python -m lit_vit fit --help` runs, in this process (a new one imports for 9 s).
    monkeypatch.setattr(sys, "argv", ["lit_vit", "fit", "--help"])
    monkeypatch.delitem(sys.modules, "lit_vit.__main__", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("lit_vit", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("usage: lit-vit [options] fit ")
    assert "--model.model_name" in printed.out and "--checkpoint.monitor" in printed.out
    assert printed.err == ""
    assert not [w for w in recwarn if "args parameter" in str(w.message)]


# -- faults and messages (issue: the CLI a user can trust) -------------------------------


def test_fit_says_where_the_logs_are_when_it_starts(tmp_path, fake_fashion_mnist, caplog, capsys):
    caplog.set_level("INFO")
    args = tiny_run_args(
        tmp_path, fake_fashion_mnist, "--trainer.callbacks=[]", "--trainer.enable_progress_bar=true"
    )
    main(["fit", *args])
    captured = capsys.readouterr()
    # stdout is no terminal here: one line per epoch, counted from 1, and no bar.
    lines = [line for line in captured.out.splitlines() if line.startswith("Epoch ")]
    assert [line.split(":")[0] for line in lines] == ["Epoch 1/2", "Epoch 2/2"], captured.out
    assert all("val/acc" in line and "train/loss_epoch" in line for line in lines)
    assert "it/s" not in captured.out + captured.err and "\r" not in captured.out
    (run_dir,) = run_dirs(tmp_path / "logs")
    first = caplog.text.index(f"Logs: {run_dir}")
    assert f"tensorboard --logdir {run_dir.parent}" in caplog.text
    assert first < caplog.text.index("Last checkpoint:"), "said at the start, not only the end"


def test_a_terminal_gets_lightnings_bar_with_the_epoch_out_of_the_total(monkeypatch):
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    from lit_vit.progress import (
        EpochLines,
        EpochProgressBar,
        EpochRichProgressBar,
        console_progress,
    )

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert type(console_progress(TQDMProgressBar())) is EpochProgressBar
    assert type(console_progress(RichProgressBar())) is EpochRichProgressBar
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert type(console_progress(TQDMProgressBar())) is EpochLines


def test_test_refuses_random_weights_and_names_the_latest_checkpoints(
    fitted, fake_fashion_mnist, capsys, caplog
):
    tmp_path, run_dir = fitted
    message = expect_cli_error(["test", *tiny_run_args(tmp_path, fake_fashion_mnist)], capsys)
    assert "without --ckpt_path would use random weights" in message
    assert f"last: {run_dir / 'checkpoints' / 'last.ckpt'}" in message
    assert "best: " in message and "--untrained true" in message and "Traceback" not in message
    caplog.set_level("INFO")
    args = tiny_run_args(tmp_path, fake_fashion_mnist, "--untrained=true", "--trainer.callbacks=[]")
    main(["test", *args])
    assert "test/acc" in caplog.text


def test_best_and_last_resolve_to_the_latest_run_with_them(
    fitted, fake_fashion_mnist, caplog, capsys, recwarn
):
    tmp_path, run_dir = fitted
    caplog.set_level("INFO")
    main(["test", *tiny_run_args(tmp_path, fake_fashion_mnist, "--ckpt_path=best")])
    results = capsys.readouterr().out
    assert "test/acc" in results and "test_attention" not in results, "the result, not buried"
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]
    assert not [w for w in recwarn if "Be aware that when using `ckpt_path`" in str(w.message)]
    (best,) = (run_dir / "checkpoints").glob("epoch*-val_acc*.ckpt")
    assert f"--ckpt_path best: {best}" in caplog.text
    report = run_dirs(tmp_path / "logs")[-1] / "attention" / "report.md"
    assert f"Attention report: {report}" in caplog.text
    # The new run folder is said at the start, before the test runs.
    said = caplog.text.index(f"Logs: {report.parents[1]} (a new run folder")
    assert said < caplog.text.index("Attention report: ")
    assert re.search(r"test/acc \d\.\d{4}, test/loss \d+\.\d{4} on 64 test images", caplog.text)


def test_ckpt_path_last_without_any_run_lists_where_it_looked(tmp_path, fake_fashion_mnist, capsys):
    args = tiny_run_args(tmp_path, fake_fashion_mnist, "--ckpt_path=last")
    message = expect_cli_error(["fit", *args], capsys)
    assert "no run of this config has a last checkpoint" in message
    assert f"{tmp_path / 'logs' / 'smoke'}/version_*/checkpoints/" in message


def test_interrupted_fit_resumes_from_last_at_the_right_epoch_and_step(
    tmp_path, fake_fashion_mnist, monkeypatch
):
    args = tiny_run_args(tmp_path, fake_fashion_mnist, "--trainer.callbacks=[]")

    def interrupt_second_epoch(self):
        if self.current_epoch == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(LitViT, "on_train_epoch_start", interrupt_second_epoch, raising=False)
        with pytest.raises(SystemExit):
            main(["fit", *args])
    main(["fit", *args, "--ckpt_path=last"])
    interrupted, resumed = run_dirs(tmp_path / "logs")
    events = read_events(resumed)
    assert [event.step for event in events.Scalars("train/loss_step")][0] == 4
    assert [int(event.value) for event in events.Scalars("epoch")] == [1, 1, 1, 1, 1, 1]
    assert (interrupted / "checkpoints" / "last.ckpt").is_file()


def test_truncated_checkpoint_is_named(fitted, fake_fashion_mnist, capsys):
    tmp_path, run_dir = fitted
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    args = tiny_run_args(tmp_path, fake_fashion_mnist, f"--ckpt_path={broken}")
    message = expect_cli_error(["test", *args], capsys)
    assert f"--ckpt_path '{broken}' cannot be read: it is empty, truncated" in message
    assert "Traceback" not in message and len(message.splitlines()) == 2


class Payload:
    """A pickled object with code behind it: loading it would run ``__reduce__``'s call."""

    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize("kind", ["empty", "not a checkpoint", "carries code"])
def test_bad_checkpoint_files_are_refused_with_one_line_and_nothing_runs(
    tmp_path, fake_fashion_mnist, capsys, kind
):
    path = tmp_path / "given.ckpt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not a checkpoint":
        path.write_text("epoch,loss\n1,0.5\n")
    else:
        torch.save({"state_dict": {}, "payload": Payload()}, path)
    args = tiny_run_args(tmp_path, fake_fashion_mnist, f"--ckpt_path={path}")
    with pytest.raises(SystemExit) as exit_info:
        main(["test", *args])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and "code ran" not in captured.out
    reason = "carries code" if kind == "carries code" else "cannot be read: it is empty, truncated"
    assert f"--ckpt_path '{path}' {reason}" in captured.err
    assert "Traceback" not in captured.err and len(captured.err.splitlines()) == 2


def test_truncated_data_file_is_named_with_how_to_get_it_again(
    tmp_path, fake_fashion_mnist, capsys
):
    system = tmp_path / "system"
    system.mkdir()
    for path in fake_fashion_mnist.iterdir():
        system.joinpath(path.name).write_bytes(path.read_bytes())
    args = tiny_run_args(tmp_path, system)
    main(["fit", *args, "--trainer.fast_dev_run=true"])  # unpacks the files into data_dir
    raw = tmp_path / "data" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    raw.write_bytes(raw.read_bytes()[:-100])
    message = expect_cli_error(["test", *args, "--untrained=true"], capsys)
    assert f"{raw} has " in message and "the file is truncated or damaged" in message
    assert f"rm {raw}" in message and "apt-get install --reinstall" in message


def test_one_line_errors_for_common_mistakes(tmp_path, fake_fashion_mnist, capsys):
    cases = {
        ("--model.embed_dim=30", "--model.num_heads=4"): (
            "embed_dim=30 is not divisible by num_heads=4",
            "Use num_heads 3 or 5",
        ),
        ("--trainer.accelerator=gpu",): ("gpu", "use --trainer.accelerator cpu"),
    }
    for extra, expected in cases.items():
        message = expect_cli_error(
            ["fit", *tiny_run_args(tmp_path, fake_fashion_mnist, *extra)], capsys
        )
        assert all(part in message for part in expected), message
        assert "Traceback" not in message


def test_two_unnamed_callbacks_of_one_kind_are_refused(tmp_path, fake_fashion_mnist, capsys):
    config = tmp_path / "twins.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: lit_vit.callbacks.HeadDiversity\n"
        "    - class_path: lit_vit.callbacks.HeadDiversity\n"
        "      init_args: {every_n_epochs: 2}\n"
    )
    args = tiny_run_args(tmp_path, fake_fashion_mnist, "--config", str(config))
    message = expect_cli_error(["fit", *args], capsys)
    assert "two HeadDiversity callbacks have no name=" in message
    assert "name: headdiversity_2" in message and "Traceback" not in message


def test_misspelt_config_key_suggests_the_closest(tmp_path, fake_fashion_mnist, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("trainer:\n  max_epoch: 3\n")
    args = tiny_run_args(tmp_path, fake_fashion_mnist, "--config", str(config))
    message = expect_cli_error(["fit", *args], capsys)
    assert "Did you mean 'trainer.max_epochs'?" in message
    assert len(message.splitlines()) <= 3, message
    args = tiny_run_args(tmp_path, fake_fashion_mnist, "--trainer.max_epoch=3")
    assert "Did you mean 'trainer.max_epochs'?" in expect_cli_error(["fit", *args], capsys)


def test_without_a_logger_figures_and_checkpoints_go_to_a_fresh_folder(
    tmp_path, fake_fashion_mnist, monkeypatch, caplog
):
    monkeypatch.chdir(tmp_path)
    caplog.set_level("INFO")
    args = tiny_run_args(
        tmp_path, fake_fashion_mnist, "--trainer.logger=false", "--trainer.max_epochs=1"
    )
    args[args.index("configs/smoke.yaml")] = str(ROOT / "configs" / "smoke.yaml")
    main(["fit", *args])
    main(["fit", *args])
    for run in (tmp_path / "logs" / "unlogged" / f"version_{n}" for n in (0, 1)):
        assert (run / "attention" / "epoch_000" / "rollout.png").is_file()
        assert (run / "checkpoints" / "last.ckpt").is_file()
    assert caplog.text.count("No logger (--trainer.logger false)") == 2


def test_version_and_help_say_lit_vit(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"lit-vit {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: lit-vit ")
    assert "Lightning Trainer command line tool" not in help_text


def test_print_config_with_a_checkpoint_shows_its_architecture(fitted, fake_fashion_mnist, capsys):
    tmp_path, run_dir = fitted
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    args = tiny_run_args(
        tmp_path, fake_fashion_mnist, "--model.embed_dim=64", f"--ckpt_path={ckpt}"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["test", *args, "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "embed_dim: 32" in printed and "embed_dim: 64" not in printed


def test_long_schedule_config_composes_with_the_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                "configs/fashion_mnist.yaml",
                "--config",
                "configs/fashion_mnist_long.yaml",
                "--print_config",
            ]
        )
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "max_epochs: 200" in printed and "precision: bf16-mixed" in printed
    assert "cutmix_alpha: 1.0" in printed, "the default recipe underneath"


def test_version_answers_before_importing_lightning_and_the_console_shows_no_tips(caplog, capsys):
    import logging

    from lightning.pytorch import Trainer

    from lit_vit.progress import quiet_lightning

    for command in ([sys.executable, "-m", "lit_vit"], [Path(sys.executable).with_name("lit-vit")]):
        result = subprocess.run(
            [*command, "--version"], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0 and result.stdout.strip() == f"lit-vit {__version__}"
        assert result.stderr == ""
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.argv = ['lit-vit', '--version']; import lit_vit.__main__ as m; "
            "m.main(); print(sorted(n for n in ('lightning', 'torch') if n in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imported.stdout.splitlines() == [f"lit-vit {__version__}", "[]"], imported.stderr
    with pytest.raises(SystemExit, match="0"):
        main(["--version"])  # the CLI's own --version, in-process
    assert capsys.readouterr().out.strip() == f"lit-vit {__version__}"
    quiet_lightning()
    with caplog.at_level(logging.INFO):
        Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert "GPU available" in caplog.text and "Tip" not in caplog.text


def test_a_fit_that_trains_nothing_says_why_and_exits_2(fitted, fake_fashion_mnist, capsys):
    tmp_path, run_dir = fitted
    finished = run_dir / "checkpoints" / "last.ckpt"  # already at max_epochs
    args = tiny_run_args(tmp_path, fake_fashion_mnist, f"--ckpt_path={finished}")
    message = expect_cli_error(["fit", *args], capsys)
    assert f"fit trained nothing: --ckpt_path '{finished}' already reached" in message
    assert "--trainer.max_epochs=2" in message and "Best checkpoint" not in message
    args = tiny_run_args(tmp_path, fake_fashion_mnist, "--data.batch_size=100000")
    message = expect_cli_error(["fit", *args], capsys)
    assert "fit trained nothing: no training batch ran (--data.batch_size=100000" in message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"- a\n- b\n", "holds a list, not a mapping of options"),
        (b"\xe3\x81\xff\xfe binary", "is not a text file"),
        (b"trainer: [\n", "is not valid YAML at line 2"),
    ],
)
def test_a_config_file_that_is_no_mapping_of_options_is_named(tmp_path, capsys, content, message):
    config = tmp_path / "bad.yaml"
    config.write_bytes(content)
    for args in (["fit", "--config", str(config)], ["analyze", f"--config={config}"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert f"--config '{config}' {message}" in error and "Traceback" not in error


def test_a_diverged_model_is_never_the_best_checkpoint(tmp_path, fake_fashion_mnist, capsys):
    args = tiny_run_args(tmp_path, fake_fashion_mnist, "--trainer.callbacks=[]", "--model.lr=1e6")
    message = expect_cli_error(["fit", *args], capsys)
    assert "fit diverged" in message and "Lower --model.lr" in message
    (run_dir,) = run_dirs(tmp_path / "logs")
    checkpoints = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["last.ckpt"], "no best: every validated model had NaN weights"
