"""Training throughput of ``lit-vit fit`` against a plain PyTorch loop, run by hand.

    python benchmarks/train_throughput.py            # Lightning vs plain loop, ~5 minutes
    python benchmarks/train_throughput.py --sweep    # threads, bf16, compile, ... ~9 minutes

(Times on 2 shared CPU cores at ``nice -n 19``.) What is measured: images per
second of a slice of one training epoch of the default experiment
(``configs/fashion_mnist.yaml``: a 12-layer, 96-wide ViT on 28x28
Fashion-MNIST, batch 128), two ways, on the same data:

* **lightning**: the Trainer as ``lit-vit fit`` builds it, through
  ``LitViTCLI`` with that config (progress bar, TensorBoard logger,
  ``ModelCheckpoint(monitor="val/acc")``, ``LearningRateMonitor``, model
  summary, sanity check), for ``--batches`` training batches and 2
  validation batches in one epoch. The config's attention callbacks are
  left out (``--trainer.callbacks=[]``): they only work at the end of
  validation, outside the steps timed here, and cost about a minute per
  run; ``benchmarks/callback_overhead.py`` measures them;
* **plain**: a ``for`` loop over the same DataLoader with the same batched
  augmentation (crop, flip, the policy, random erasing), Mixup/CutMix with
  the soft-target loss, model, timm's AdamW and warm-up + cosine schedule
  (as ``LitViT`` builds them) and weight EMA update, and nothing else (no
  metrics, no logging).

Throughput is counted from the end of batch ``--warmup`` to the end of the
last batch: data loading, augmentation, forward, backward, optimizer and
scheduler steps, and everything Lightning does per step (the 50-step
TensorBoard log falls inside the default window). Everything else, model
construction, data setup, sanity check, validation, checkpoint writing and
``torch.compile``, is reported apart as the run's fixed cost: its wall time
minus ``batches`` steps at the measured rate ("1st": the first repeat's,
with the cold compile; the Inductor cache is a fresh temporary folder).

Cases alternate within each repeat, in reversed order every other repeat, so
drift from other jobs on the machine hits them alike; "ratio" is the median
over repeats of a case's rate over the first case's rate in the same repeat.

``--sweep`` runs the Lightning side under each setting of :data:`SETTINGS`
(threads, ``bf16-mixed``, ``torch.compile``, DataLoader workers, timm's
fused attention) and the plain loop, with shorter runs. Channels-last input
and ``torch.backends`` flags are left out: the only convolution is the 4x4
patch embedding of a 1-channel image, and without AVX-512-BF16 or AMX there
is no faster fp32 matmul path (``set_float32_matmul_precision("medium")``,
mkldnn off and channels-last stayed within the +-3% noise of a probe).

Absolute numbers depend on what else the machine runs; compare only numbers
from one invocation. The progress bar writes to ``/dev/null``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from _quiet import quiet  # benchmarks/ is on sys.path when run as a script
from lightning.pytorch import Callback, seed_everything
from timm.data.random_erasing import RandomErasing
from timm.layers import set_fused_attn, use_fused_attn
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3

from lit_vit.attention import resize_images
from lit_vit.cli import LitViTCLI
from lit_vit.data import (
    FashionMNISTDataModule,
    apply_policy,
    random_crop,
    random_horizontal_flip,
)
from lit_vit.model import LitViT

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist.yaml"
VAL_BATCHES = 2
TARGET = 0.95


@dataclasses.dataclass(frozen=True)
class Setting:
    """How one run trains: CPU threads, precision, compilation, loading, attention."""

    threads: int = 1
    precision: str = "32-true"
    compile: bool = False
    num_workers: int = 0
    fused_attn: bool = True

    def describe(self) -> str:
        return (
            f"{self.threads} thread{'s' if self.threads > 1 else ''}, {self.precision}, "
            f"{'compiled' if self.compile else 'eager'}, {self.num_workers} workers, "
            f"{'fused' if self.fused_attn else 'explicit'} attention"
        )


DEFAULT = Setting()
SETTINGS = {
    "default": DEFAULT,
    "threads2": dataclasses.replace(DEFAULT, threads=2),
    "bf16": dataclasses.replace(DEFAULT, precision="bf16-mixed"),
    "compile": dataclasses.replace(DEFAULT, compile=True),
    "workers2": dataclasses.replace(DEFAULT, num_workers=2),
    "unfused": dataclasses.replace(DEFAULT, fused_attn=False),
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One measured run.

    ``images_per_s`` is over the whole timed window; ``step_images_per_s`` is
    the batch size over the median step time, which ignores bursts of other
    jobs (and Lightning's every-50-steps log); ``fixed_s`` is the time outside
    the steps.
    """

    images_per_s: float
    step_images_per_s: float
    fixed_s: float

    @classmethod
    def from_step_ends(cls, ends: list[float], warmup: int, batch_size: int, total_s: float) -> Run:
        """``ends[i]``: ``perf_counter()`` at the end of step ``i``; ``total_s``: the run."""
        timed = ends[warmup - 1 :]
        images_per_s = (len(timed) - 1) * batch_size / (timed[-1] - timed[0])
        step_s = statistics.median(end - start for start, end in itertools.pairwise(timed))
        fixed_s = total_s - len(ends) * batch_size / images_per_s
        return cls(images_per_s, batch_size / step_s, fixed_s)


class StepClock(Callback):
    """Records ``perf_counter()`` at the end of every training batch."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())


@contextlib.contextmanager
def configured(setting: Setting):
    """Apply the setting's thread count and attention kind; restore them afterwards."""
    threads, fused = torch.get_num_threads(), use_fused_attn()
    torch.set_num_threads(setting.threads)
    set_fused_attn(setting.fused_attn)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        set_fused_attn(fused)


def lightning_run(setting: Setting, batches: int, warmup: int, data_dir: str) -> Run:
    """One ``lit-vit fit`` of ``batches`` training batches, built by the project's CLI."""
    clock = StepClock()
    start = time.perf_counter()
    with configured(setting), quiet(), tempfile.TemporaryDirectory() as log_dir:
        cli = LitViTCLI(
            LitViT,
            FashionMNISTDataModule,
            save_config_kwargs={"overwrite": True},
            args=[
                f"--config={CONFIG}",
                "--trainer.callbacks=[]",
                "--trainer.max_epochs=1",
                f"--trainer.limit_train_batches={batches}",
                f"--trainer.limit_val_batches={VAL_BATCHES}",
                f"--trainer.precision={setting.precision}",
                f"--trainer.logger.init_args.save_dir={log_dir}",
                f"--data.data_dir={data_dir}",
                f"--data.num_workers={setting.num_workers}",
            ],
            run=False,
        )
        if setting.compile:
            cli.model.vit.compile()
        cli.trainer.callbacks.append(clock)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        batch_size = cli.datamodule.batch_size
    return Run.from_step_ends(clock.ends, warmup, batch_size, time.perf_counter() - start)


def load_config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def plain_run(setting: Setting, batches: int, warmup: int, data_dir: str) -> Run:
    """The same training steps as a plain PyTorch loop."""
    config = load_config()
    hp, data_hp = config["model"], config["data"]
    start = time.perf_counter()
    with configured(setting):
        seed_everything(config["seed_everything"], verbose=False)
        data = FashionMNISTDataModule(
            **{**data_hp, "data_dir": data_dir, "num_workers": setting.num_workers}
        )
        data.prepare_data()
        data.setup("fit")
        model = LitViT(**hp, img_size=data.img_size).train()
        if setting.compile:
            model.vit.compile()
        # timm's optimizer and scheduler, as LitViT.configure_optimizers builds them.
        optimizer = create_optimizer_v2(
            model.vit, opt="adamw", lr=hp["lr"], weight_decay=hp["weight_decay"]
        )
        warmup_steps = min(batches - 1, round(hp["warmup_epochs"] * batches))
        scheduler = CosineLRScheduler(
            optimizer,
            t_initial=max(1, batches - warmup_steps),
            lr_min=hp["lr"] * model.hparams.min_lr_ratio,
            warmup_t=warmup_steps,
            warmup_lr_init=hp["lr"] / max(1, warmup_steps + 1),
            warmup_prefix=True,
            t_in_epochs=False,
        )
        # The recipe's extra work, with the same timm objects LitViT uses.
        erase = None
        if data.random_erasing:
            erase = RandomErasing(data.random_erasing, mode="pixel", device="cpu")
        ema = None
        if hp.get("ema_decay") is not None:
            ema = ModelEmaV3(model.vit, decay=hp["ema_decay"], use_warmup=True)
        bf16 = setting.precision == "bf16-mixed"
        ends = []
        for step, (images, labels) in enumerate(itertools.islice(data.train_dataloader(), batches)):
            images = random_horizontal_flip(random_crop(images, data.crop_padding))
            if data.policy is not None:
                images = apply_policy(images, data.policy)
            if erase is not None:
                images = erase(images)
            images = resize_images(images, data.img_size)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if model.mixup is None:
                    loss = model.criterion(model.vit(images), labels)
                else:
                    images, targets = model.mixup(images, labels)
                    loss = model.mixed_criterion(model.vit(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step_update(num_updates=step + 1)
            if ema is not None:
                ema.update(model.vit, step=step)
            ends.append(time.perf_counter())
    return Run.from_step_ends(ends, warmup, data.batch_size, time.perf_counter() - start)


HARNESSES = {"lightning": lightning_run, "plain": plain_run}


def interleaved(
    cases: list[tuple[str, str, Setting]], repeats: int, batches: int, warmup: int, data_dir: str
) -> dict[str, list[Run]]:
    """Run every ``(label, harness, setting)`` once per repeat, in ABBA order."""
    runs: dict[str, list[Run]] = {label: [] for label, _, _ in cases}
    for repeat in range(repeats):
        order = cases if repeat % 2 == 0 else cases[::-1]
        for label, harness, setting in order:
            run = HARNESSES[harness](setting, batches, warmup, data_dir)
            runs[label].append(run)
            rates = (
                f"{run.images_per_s:6.1f} images/s, {run.step_images_per_s:6.1f} at the median step"
            )
            print(f"  repeat {repeat + 1}: {label:<12} {rates}", flush=True)
    return runs


def paired_ratios(runs: dict[str, list[Run]], label: str, reference: str, rate: str) -> list[float]:
    """``rate`` of ``label`` over that of ``reference`` in the same repeat, per repeat."""
    pairs = zip(runs[label], runs[reference], strict=True)
    return [getattr(run, rate) / getattr(ref, rate) for run, ref in pairs]


def spread(values: list[float], digits: int) -> str:
    """``median (min-max)``."""
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def print_table(runs: dict[str, list[Run]], cases: list[tuple[str, str, Setting]]) -> None:
    """One row per case: both rates and their ratios to the first case, fixed costs."""
    reference = cases[0][0]
    head = (
        f"{'case':<12} {'images/s':>19} {'ratio':>21} {'step images/s':>19} "
        f"{'step ratio':>21} {'fixed s':>7} {'1st':>6}  setting"
    )
    print(head)
    print("-" * len(head))
    for label, harness, setting in cases:
        columns = []
        for rate in ("images_per_s", "step_images_per_s"):
            columns.append(spread([getattr(run, rate) for run in runs[label]], 1))
            columns.append(spread(paired_ratios(runs, label, reference, rate), 3))
        fixed = statistics.median(run.fixed_s for run in runs[label])
        print(
            f"{label:<12} {columns[0]:>19} {columns[1]:>21} {columns[2]:>19} {columns[3]:>21} "
            f"{fixed:7.1f} {runs[label][0].fixed_s:6.1f}  {harness}: {setting.describe()}"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, help="training batches per run (52; --sweep: 8)")
    parser.add_argument("--warmup", type=int, default=2, help="first batches not timed (2)")
    parser.add_argument("--repeats", type=int, help="runs of each case (3; --sweep: 2)")
    parser.add_argument("--threads", type=int, help="override the setting's torch thread count")
    parser.add_argument(
        "--config", choices=SETTINGS, default="default", help="setting of both runs (not --sweep)"
    )
    parser.add_argument("--sweep", action="store_true", help="compare every setting in one table")
    parser.add_argument("--data-dir", default="/tmp/bench_data", help="FashionMNIST data folder")
    args = parser.parse_args()
    if args.batches is None:
        args.batches = 8 if args.sweep else 52
    if args.repeats is None:
        args.repeats = 2 if args.sweep else 3
    if not 1 <= args.warmup < args.batches:
        parser.error(f"--warmup={args.warmup} must be between 1 and --batches - 1.")
    return args


def main() -> None:
    args = parse_args()
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.sweep:
        cases = [(name, "lightning", setting) for name, setting in SETTINGS.items()]
        cases.append(("plain loop", "plain", DEFAULT))
    else:
        setting = SETTINGS[args.config]
        if args.threads:
            setting = dataclasses.replace(setting, threads=args.threads)
        cases = [("plain loop", "plain", setting), ("lit-vit fit", "lightning", setting)]
    batch_size = load_config()["data"]["batch_size"]
    print(
        f"{CONFIG.name}: {args.batches} batches of {batch_size} per run, rate over the last "
        f"{args.batches - args.warmup}, {args.repeats} repeats; torch {torch.__version__}"
    )
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        runs = interleaved(cases, args.repeats, args.batches, args.warmup, args.data_dir)
    print()
    print_table(runs, cases)
    if not args.sweep:
        print()
        for rate in ("images_per_s", "step_images_per_s"):
            ratio = statistics.median(paired_ratios(runs, cases[1][0], cases[0][0], rate))
            verdict = "met" if ratio >= TARGET else "NOT met"
            print(f"lightning / plain ({rate}) = {ratio:.3f}: target >= {TARGET} {verdict}")


if __name__ == "__main__":
    main()
