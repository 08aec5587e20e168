"""``lit-vit``: the LightningCLI for training, testing and probing ViTs.

``lit-vit fit --config configs/fashion_mnist.yaml`` trains;
``lit-vit test --config configs/fashion_mnist.yaml --ckpt_path best`` tests
the best checkpoint of the latest run of that config. Every run writes to its
own ``logs/<name>/version_<n>/``, so no run can overwrite another's
checkpoints, figures or logs.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ActionConfigFile, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.cli import (
    ArgsType,
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
)
from lightning.pytorch.utilities import rank_zero_info

from lit_vit import __version__
from lit_vit._private import parser_options, subcommand_parser
from lit_vit.analyze import analyze
from lit_vit.callbacks import PredictionWriter
from lit_vit.callbacks.analysis import check_distinct_names
from lit_vit.callbacks.finite_checkpoint import FiniteModelCheckpoint, finite_weights
from lit_vit.config_files import check_config_file, config_files
from lit_vit.data import FashionMNISTDataModule
from lit_vit.interrupts import Terminated, stop_on_sigterm
from lit_vit.model import LitViT
from lit_vit.progress import console_progress, quiet_lightning
from lit_vit.runs import RunFolders, check_checkpoint_matches

SUBCOMMANDS_WITH_CKPT = ("fit", "validate", "test", "predict")
EVALUATING = ("validate", "test", "predict")
DESCRIPTION = (
    "lit-vit: train a ViT and watch what it attends to (LightningCLI). "
    "`lit-vit analyze --help`: the attention report of a checkpoint or of any timm or "
    "Hugging Face ViT, without training."
)


class LitViTArgumentParser(LightningArgumentParser):
    """Lightning's parser with one-line errors that suggest the closest option, and no
    abbreviations (a misspelt key is an error, not a guess)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get("LIT_VIT_DEBUG"):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        hint = closest_option(message, parser)
        sys.stderr.write(f"lit-vit: error: {message}{hint}\n")
        sys.stderr.write("(`lit-vit <subcommand> --help` lists every option)\n")
        raise SystemExit(2)


def closest_option(message: str, parser: LightningArgumentParser) -> str:
    """`` Did you mean 'trainer.max_epochs'?`` for an unknown option named in ``message``."""
    match = re.search(r"option '([^']+)'", message) or re.search(r"--([\w.]+)", message)
    if match is None:
        return ""
    options = parser_options(parser)
    close = difflib.get_close_matches(match.group(1), sorted(options), n=1, cutoff=0.6)
    return f". Did you mean '{close[0]}'?" if close else ""


class SaveConfigToRunFolder(SaveConfigCallback):
    """Lightning's config saving, also for a logger that keeps no files of its own (MLflow
    with a database store, whose ``save_dir`` is None): its config goes to the run's
    ``default_root_dir``."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved or trainer.log_dir is not None:
            super().setup(trainer, pl_module, stage)
            return
        if trainer.is_global_zero:
            folder = Path(trainer.default_root_dir)
            folder.mkdir(parents=True, exist_ok=True)
            self.parser.save(
                self.config,
                folder / self.config_filename,
                skip_none=False,
                overwrite=self.overwrite,
                multifile=self.multifile,
            )
        self.already_saved = True


class LitViTCLI(LightningCLI):
    """LightningCLI with the data's shape linked into the model, checkpoints that are
    always kept (best by ``val/acc`` and last), ``last``/``best`` checkpoints found in
    the latest run of the config, and messages that say where things are."""

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        kwargs.setdefault("prog", "lit-vit")
        kwargs.setdefault("description", DESCRIPTION)
        parser = super().init_parser(**kwargs)
        parser.add_argument("--version", action="version", version=f"lit-vit {__version__}")
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.in_chans", apply_on="instantiate")
        parser.link_arguments("data.img_size", "model.img_size")
        # Own argument groups, so a config's trainer.callbacks list cannot drop them.
        parser.add_lightning_class_args(FiniteModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch{epoch:03d}-val_acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_argument(
            "--untrained",
            type=bool,
            default=False,
            help="validate, test or predict without --ckpt_path: the model as initialised "
            "(random weights unless model.pretrained), on purpose.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """``--print_config`` with ``--ckpt_path`` prints the architecture of the checkpoint."""
        argv = list(sys.argv[1:] if args is None else args)
        printing = [arg for arg in argv if arg.split("=")[0] == "--print_config"]
        if not printing or not any(arg.split("=")[0] == "--ckpt_path" for arg in argv):
            return super().parse_arguments(parser, args)
        super().parse_arguments(parser, [arg for arg in argv if arg not in printing])
        self._parse_ckpt_path()
        subcommand = self.config.subcommand
        print(subcommand_parser(self, subcommand).dump(self.config[subcommand]), end="")
        raise SystemExit(0)

    def _parse_ckpt_path(self) -> None:
        """Resolve ``last``/``best``, then read the checkpoint's hyperparameters (Lightning)."""
        subcommand = self.config.get("subcommand")
        if subcommand not in SUBCOMMANDS_WITH_CKPT:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path in ("last", "best"):
            config.ckpt_path = str(self._run_folders(config).latest_checkpoint(ckpt_path))
            rank_zero_info(f"--ckpt_path {ckpt_path}: {config.ckpt_path}")
        elif ckpt_path and ckpt_path != "hpc" and not Path(ckpt_path).is_file():
            raise FileNotFoundError(
                f"--ckpt_path '{ckpt_path}' does not exist. Use --ckpt_path best or last for the "
                "latest run of this config, or a path under logs/<name>/version_<n>/checkpoints/."
            )
        try:
            super()._parse_ckpt_path()
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"--ckpt_path '{config.ckpt_path}' carries code: its pickle holds objects other "
                "than tensors and plain containers, and lit-vit loads checkpoints with "
                "weights_only=True, so nothing in it was run. Use a checkpoint lit-vit or "
                "Lightning wrote, from a source you trust."
            ) from error
        # What torch's unpickler raises for bytes that are no pickle at all, besides I/O errors.
        except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as error:
            first_line = (str(error).splitlines() or [type(error).__name__])[0]
            raise ValueError(
                f"--ckpt_path '{config.ckpt_path}' cannot be read: it is empty, truncated or not "
                f"a checkpoint ({first_line}). Use another checkpoint of the run (e.g. "
                "--ckpt_path last), or train again."
            ) from error

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if trainer.get("fast_dev_run"):
            # Lightning's ModelCheckpoint still writes last.ckpt at train end under fast_dev_run.
            config.checkpoint.save_last = False
        elif trainer.get("logger") is False and trainer.get("default_root_dir") is None:
            trainer.default_root_dir = str(RunFolders("logs", "unlogged").next_version())
            rank_zero_info(
                "No logger (--trainer.logger false): scalars are not recorded; checkpoints, "
                f"figures and the report go to {trainer.default_root_dir}."
            )
        elif _keeps_no_files(trainer.get("logger")) and trainer.get("default_root_dir") is None:
            trainer.default_root_dir = str(RunFolders("logs", "mlflow").next_version())
            rank_zero_info(
                "MLflow's database store keeps no files: checkpoints, figures and the report "
                f"go to {trainer.default_root_dir}."
            )
        if self.subcommand in EVALUATING:
            self._refuse_untrained(config)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, once lit-vit has checked its analysis callbacks' names (before
        Lightning's own error about stateful twins, which names no fix)."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        check_distinct_names(config.trainer.get("callbacks") or [])
        return super().instantiate_trainer(**kwargs)

    def after_instantiate_classes(self) -> None:
        callbacks = self.trainer.callbacks
        for index, callback in enumerate(callbacks):
            if type(callback) in (TQDMProgressBar, RichProgressBar):  # Lightning's defaults
                callbacks[index] = console_progress(callback)
        unused = []
        if self.subcommand in EVALUATING:
            # Nothing to save; restoring it from the checkpoint only warns that its folder moved.
            unused.append(ModelCheckpoint)
        if not self.trainer.loggers:
            unused.append(LearningRateMonitor)  # it refuses a trainer without a logger
        self.trainer.callbacks = [cb for cb in callbacks if not isinstance(cb, tuple(unused))]
        ckpt_path = self._ckpt_path()
        if ckpt_path and Path(ckpt_path).is_file():
            check_checkpoint_matches(ckpt_path, self.model)

    def before_fit(self) -> None:
        log_dir = self.trainer.log_dir  # on every rank: under DDP a collective
        if self.trainer.loggers and log_dir and not self.trainer.fast_dev_run:
            rank_zero_info(
                f"Logs: {log_dir}\nWatch it: tensorboard --logdir {Path(log_dir).parent} "
                "--samples_per_plugin images=500"
            )

    def before_test(self) -> None:
        self._say_where_logs_go()

    def before_validate(self) -> None:
        self._say_where_logs_go()

    def before_predict(self) -> None:
        self._say_where_logs_go()

    def _say_where_logs_go(self) -> None:
        """At the start of an evaluating command: its own new run folder, said before it runs."""
        log_dir = self.trainer.log_dir  # on every rank: under DDP a collective
        if log_dir and not self.trainer.fast_dev_run:
            rank_zero_info(
                f"Logs: {log_dir} (a new run folder; the checkpoint's is left as it was)"
            )

    def after_fit(self) -> None:
        log_dir = self.trainer.log_dir  # on every rank: under DDP a collective
        self._refuse_a_fit_that_trained_nothing()
        checkpoint = self.trainer.checkpoint_callback
        if checkpoint is None or not self.trainer.is_global_zero:
            return
        if checkpoint.monitor and not checkpoint.best_model_path and not finite_weights(self.model):
            raise ValueError(
                f"fit diverged: no validation ran on a model with finite weights, so there is "
                f"no best checkpoint ({checkpoint.monitor}); last.ckpt holds the diverged model. "
                "Lower --model.lr (or raise --model.warmup_epochs) and fit again."
            )
        rank_zero_info(f"Best checkpoint ({checkpoint.monitor}): {checkpoint.best_model_path}")
        rank_zero_info(f"Last checkpoint: {checkpoint.last_model_path}")
        rank_zero_info(f"Logs: {log_dir}")

    def _refuse_a_fit_that_trained_nothing(self) -> None:
        """A fit whose global step did not move trained nothing: say why, exit non-zero, and
        print no checkpoint as this run's."""
        ckpt_path = self._ckpt_path()
        start = 0
        if ckpt_path and Path(ckpt_path).is_file():
            start = torch.load(ckpt_path, map_location="cpu", weights_only=True).get(
                "global_step", 0
            )
        if self.trainer.global_step > start or self.trainer.fast_dev_run:
            return
        if start:
            raise ValueError(
                f"fit trained nothing: --ckpt_path '{ckpt_path}' already reached "
                f"--trainer.max_epochs={self.trainer.max_epochs} (global step {start}). Raise "
                "--trainer.max_epochs to train on, or test that checkpoint with lit-vit test."
            )
        batch_size = getattr(self.datamodule, "batch_size", None)
        raise ValueError(
            "fit trained nothing: no training batch ran"
            + (
                f" (--data.batch_size={batch_size} leaves no full batch of the training set; "
                "incomplete batches are dropped). Use a smaller --data.batch_size."
                if batch_size
                else "."
            )
        )

    def after_test(self) -> None:
        log_dir = self.trainer.log_dir  # on every rank: under DDP a collective
        metrics = self.trainer.callback_metrics
        if not self.trainer.is_global_zero or "test/acc" not in metrics:
            return
        report = Path(log_dir or self.trainer.default_root_dir) / "attention" / "report.md"
        rank_zero_info(
            f"test/acc {float(metrics['test/acc']):.4f}, test/loss "
            f"{float(metrics['test/loss']):.4f} on {self.model.test_images:,} test images"
            + (f"\nAttention report: {report}" if report.is_file() else "")
        )

    def after_predict(self) -> None:
        log_dir = self.trainer.log_dir  # on every rank: under DDP a collective
        writers = [cb for cb in self.trainer.callbacks if isinstance(cb, PredictionWriter)]
        if self.trainer.is_global_zero and writers:
            folder = Path(log_dir or self.trainer.default_root_dir)
            rank_zero_info(f"Predictions: {folder / writers[0].filename}")

    def _ckpt_path(self) -> str | None:
        if self.subcommand not in SUBCOMMANDS_WITH_CKPT:
            return None
        return self.config[self.subcommand].get("ckpt_path")

    def _run_folders(self, config) -> RunFolders:
        """Where runs of this config are: the logger's ``save_dir/name``."""
        logger = config.trainer.get("logger")
        init_args = logger.get("init_args", {}) if hasattr(logger, "get") else {}
        save_dir = init_args.get("save_dir") or config.trainer.get("default_root_dir") or "."
        return RunFolders(save_dir, init_args.get("name") or "lightning_logs")

    def _refuse_untrained(self, config) -> None:
        if config.get("ckpt_path") or config.model.get("pretrained") or config.get("untrained"):
            return
        found = self._run_folders(config).describe_latest()
        raise ValueError(
            f"`lit-vit {self.subcommand}` without --ckpt_path would use random weights. "
            f"{found} Pass --ckpt_path best (or last, or a path); or --untrained true to "
            "evaluate the untrained model on purpose."
        )


def _keeps_no_files(logger) -> bool:
    """Whether the configured ``logger`` is MLflow with a tracking store other than files."""
    if not isinstance(logger, dict | Namespace) or "MLFlowLogger" not in str(
        logger.get("class_path")
    ):
        return False
    uri = (logger.get("init_args") or {}).get("tracking_uri") or ""
    return bool(uri) and not uri.startswith("file:")


def main(args: ArgsType = None) -> None:
    """The CLI of ``lit-vit`` and ``python -m lit_vit`` (:mod:`lit_vit.__main__`).

    Errors caused by the user's input or environment (bad values; missing or
    broken files, data or weights; an accelerator this machine lacks:
    ``ValueError``, ``OSError``, Lightning's ``MisconfigurationException``)
    print one clear message and exit with status 2; ``LIT_VIT_DEBUG=1`` shows
    the traceback. SIGTERM stops every command but ``fit`` as Ctrl-C does (status 1;
    ``fit`` stops at the next batch, Lightning's way).
    """
    argv = list(sys.argv[1:] if args is None else args)
    quiet_lightning()
    stops = stop_on_sigterm() if argv[:1] != ["fit"] else contextlib.nullcontext()
    try:
        for path in config_files(argv):
            check_config_file(path)
        if argv[:1] == ["analyze"]:
            with stops:
                analyze_main(argv[1:])
            return
        with stops:
            _run_lightning_cli(args)
    except Terminated:  # outside Lightning's loops, which exit with status 1 themselves
        print("lit-vit: stopped by SIGTERM", file=sys.stderr)
        raise SystemExit(1) from None
    except (ValueError, OSError, MisconfigurationException) as error:
        if os.environ.get("LIT_VIT_DEBUG"):
            raise
        hint = ""
        if isinstance(error, MisconfigurationException) and re.search(
            "gpu|cuda|mps|tpu|accelerator|backend", str(error), re.IGNORECASE
        ):
            option = "--accelerator" if argv[:1] == ["analyze"] else "--trainer.accelerator"
            hint = f" This machine lacks it: use {option} cpu (or auto)."
        print(
            f"lit-vit: error: {error}{hint}\n(set LIT_VIT_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


def _run_lightning_cli(args: ArgsType) -> None:
    """Lightning's CLI of :class:`LitViT` on Fashion-MNIST (``fit``, ``test``, ...)."""
    LitViTCLI(
        LitViT,
        FashionMNISTDataModule,
        parser_class=LitViTArgumentParser,
        save_config_callback=SaveConfigToRunFolder,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "logs", "name": "lit_vit"},
            },
        },
        # None: LightningCLI reads sys.argv itself (given both, it warns on every command).
        args=args,
    )


def analyze_main(args: list[str]) -> None:
    """``lit-vit analyze``: :func:`lit_vit.analyze.analyze` from the command line or a YAML
    ``--config``."""
    parser = LitViTArgumentParser(
        prog="lit-vit analyze",
        description=(
            "The full attention report of a lit-vit checkpoint or a timm or Hugging Face "
            "model, on Fashion-MNIST or an image folder, without training. E.g. "
            "lit-vit analyze --ckpt_path logs/fashion_mnist/version_0/checkpoints/last.ckpt; "
            "lit-vit analyze --model vit_small_patch16_224 --data photos/"
        ),
    )
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML of these options.")
    parser.add_function_arguments(analyze)
    config = parser.parse_args(args)
    analyze(**{key: value for key, value in config.items() if key != "config"})
