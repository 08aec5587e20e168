"""What the attention callbacks add to a training epoch of the default experiment, run by hand.

    python benchmarks/callback_overhead.py           # about 5 minutes on 2 idle CPU cores
    python benchmarks/callback_overhead.py --quick   # a smoke test

What runs: the Trainer exactly as ``lit-vit fit --config configs/fashion_mnist.yaml``
builds it (through ``LitViTCLI``: a 12-layer, 96-wide ViT on 28x28
Fashion-MNIST, batch 128, TensorBoard logger, checkpoints), for one epoch of
``--train-batches`` training and ``--val-batches`` validation batches, in two
variants alternated within every repeat (in reversed order every other repeat,
so drift from other jobs on the machine hits both alike):

* **with**: the config as it is, with its probe and seven attention callbacks;
* **with, resumed**: the same, resumed from a checkpoint written at the end of
  an epoch (untimed): the probe is restored from the checkpoint's indices and
  must still be captured once per validation run;
* **without**: the same with ``--trainer.callbacks=[]``.

How the ratio is computed. The callbacks do their per-epoch work in the
probe's ``on_validation_epoch_end`` (one capture of 8 images, then every
callback's ``analyze``), so their cost per epoch does not grow with the
epoch: it is the wall time of that hook in the "with" run, timed directly.
The first epoch's probe selection (a scan of 4,096 validation images, or of
the checkpoint's positions after a resume) is taken out of it and shown once per
fit, beside ``ResolutionSweep``, whose only work is at fit end (in the probe's
``on_fit_end``). A full epoch of the default config is extrapolated from the
"without" run of the same repeat: the mean time of a training batch (from the
end of the first to the end of the last) times the training batches of an epoch,
plus the same for validation
(429 and 40, read from the data module). The epoch's fixed costs (checkpoint,
start of the validation loop) are left out, which makes the ratio slightly too
high, never too low. ratio = callbacks' cost per epoch / that full epoch, per
repeat; its median is compared with the 1.0% target. As a cross-check, the
measured epoch slices of both variants and their difference are printed: the
difference is the callbacks' cost plus the noise of the training steps.

Where the time goes: the functions the callbacks call are wrapped with timers
where the callbacks look them up (:data:`PIECES`): the probe capture (one
recorded forward with the gradients for two classes), the measures (rollout,
gradient rollout, class-token maps, head diversity, entropy, distance, focus
and coverage, the deletion/insertion forwards of faithfulness), and the
figures (building the matplotlib artists, their one Agg render, one PNG
encoding, sending it to the loggers, writing the same bytes to the file). "other" is the rest
of the hooks (scalar logging, bookkeeping). The first, untimed run (two epochs
of two batches) warms up imports and fonts and profiles the hooks of its second
epoch with cProfile; its top entries by cumulative time are printed last.

The epochs timed are a run's first; three figures grow with the history
(each probe image's rollout strip, the layer-by-epoch and the faithfulness
heatmaps). They are timed alone at 1, 12 and 36 analysed epochs, and their
growth is added to the callbacks' cost to give the ratio at the 36th epoch.

Times are wall times at whatever priority the command runs (``nice -n 19``
beside a training run depresses them all, and unevenly: alternation and
repeats are there for that); compare only numbers of one invocation.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import importlib
import inspect
import io
import logging
import math
import pkgutil
import pstats
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
from _quiet import quiet  # benchmarks/ is on sys.path when run as a script
from lightning.pytorch import Callback, LightningModule, Trainer

import lit_vit.callbacks
from lit_vit.callbacks import AttentionCallback, AttentionProbe
from lit_vit.callbacks.attention_rollout import MAX_EPOCH_COLUMNS
from lit_vit.callbacks.head_diversity import EVOLUTION
from lit_vit.cli import LitViTCLI
from lit_vit.data import FashionMNISTDataModule
from lit_vit.model import LitViT
from lit_vit.plotting import encode_png, evolution_figure, figure_to_image, rollout_evolution_figure

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist.yaml"
TARGET = 0.010
MAPS = ("rollout", "class token", "grad rollout")  # the maps Faithfulness scores per epoch
PROFILE_LINES = 25
PHASES = ("epoch", "fit_end")
# Batches of the warm-up epochs; not 1, which the CLI reads as 1.0: the whole epoch.
WARMUP_BATCHES = (2, 2)

Key = tuple[str, str]
PROBE_SELECTION: Key = ("once per fit", "probe selection (scan of 4,096 val images)")
OTHER: Key = ("other", "scalar logging, bookkeeping")
# (group, piece, "module:attribute" where the callbacks look the function up when calling it)
PIECES = (
    (*PROBE_SELECTION, "lit_vit.callbacks._data:select_probe"),
    (
        "capture",
        "record: forward + gradients of 2 classes",
        "lit_vit.attention:AttentionRecorder.record",
    ),
    ("measures", "rollout", "lit_vit.attention:ReducedAttention.rollout"),
    (
        "measures",
        "gradient rollout (true, predicted class)",
        "lit_vit.attention:ReducedAttention.gradient_rollout",
    ),
    ("measures", "class-token maps", "lit_vit.attention:ReducedAttention.cls_attention"),
    ("measures", "head diversity", "lit_vit.attention:ReducedAttention.head_diversity"),
    ("measures", "entropy", "lit_vit.attention:ReducedAttention.attention_entropy"),
    ("measures", "distance", "lit_vit.attention:ReducedAttention.mean_attention_distance"),
    ("measures", "focus, coverage, object mass", "lit_vit.callbacks:FocusCoverage.measure"),
    (
        "measures",
        "faithfulness: deletion/insertion forwards",
        "lit_vit.callbacks.faithfulness:deletion_insertion_auc",
    ),
    ("measures", "resolution sweep", "lit_vit.callbacks.resolution_sweep:resolution_sweep"),
    ("measures", "CKA between layers", "lit_vit.callbacks.representations:cka_matrix"),
    ("measures", "CKA with previous epoch", "lit_vit.callbacks.representations:layer_cka"),
    ("measures", "logit lens", "lit_vit.callbacks.representations:logit_lens"),
    ("measures", "token norms", "lit_vit.callbacks.representations:token_norms"),
    ("figures", "build (matplotlib artists)", "every *_figure of lit_vit.plotting"),
    ("figures", "render (one Agg draw per figure)", "lit_vit.callbacks.outputs:figure_to_image"),
    (
        "figures",
        "PNG encode (once, for TensorBoard and file)",
        "lit_vit.callbacks.outputs:encode_png",
    ),
    ("figures", "to the loggers (TensorBoard summary)", "lit_vit.callbacks.outputs:log_image"),
    ("figures", "PNG file written", "lit_vit.callbacks.outputs:save_image"),
)


@dataclass(frozen=True)
class Variant:
    """A way to run the fit: with or without the attention callbacks, fresh or resumed."""

    name: str
    callbacks: bool
    resumed: bool = False


class Stopwatch:
    """Wall time accumulated per key by the functions it wraps.

    An ``exclusive`` wrapper counts its own time less that of the wrapped
    functions called inside it (the resolution sweep records attention), so
    that pieces never count twice; the others count everything inside them.
    """

    def __init__(self) -> None:
        self.seconds: defaultdict[Key, float] = defaultdict(float)
        self._inner: list[float] = []  # per open wrapped call: seconds of the ones inside it

    def wrap(self, function: Callable, key: Key, exclusive: bool = False) -> Callable:
        @functools.wraps(function)
        def timed(*args, **kwargs):
            self._inner.append(0.0)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
                inner = self._inner.pop()
                if self._inner:
                    self._inner[-1] += elapsed
                self.seconds[key] += elapsed - inner if exclusive else elapsed

        return timed


class EpochClock(Callback):
    """``perf_counter()`` at the epoch's edges and batch ends, and the stopwatch's
    readings at the epoch's end (what it times later is fit-end work)."""

    def __init__(self, stopwatch: Stopwatch) -> None:
        self.stopwatch = stopwatch
        self.train_ends: list[float] = []
        self.val_ends: list[float] = []
        self.epoch_start = self.epoch_end = 0.0
        self.at_epoch_end: dict[Key, float] = {}

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_ends.append(time.perf_counter())

    def on_validation_batch_end(self, trainer, pl_module, *args) -> None:
        if not trainer.sanity_checking:
            self.val_ends.append(time.perf_counter())

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epoch_end = time.perf_counter()
        self.at_epoch_end = dict(self.stopwatch.seconds)


@dataclass(frozen=True)
class Run:
    """One measured fit of one epoch.

    ``train_batch_s``, ``val_batch_s``: mean batch times, the first batch left
    out; ``slice_s``: the measured epoch, training epoch start to end;
    ``epoch``, ``fit_end``: the stopwatch's seconds per key during the epoch and
    after it, with :data:`OTHER` added; ``epoch_batches``: training and
    validation batches of a full epoch.
    """

    train_batch_s: float
    val_batch_s: float
    slice_s: float
    epoch: dict[Key, float]
    fit_end: dict[Key, float]
    epoch_batches: tuple[int, int]

    @classmethod
    def from_clock(cls, clock: EpochClock, epoch_batches: tuple[int, int]) -> Run:
        epoch = clock.at_epoch_end
        fit_end = {key: s - epoch.get(key, 0.0) for key, s in clock.stopwatch.seconds.items()}
        return cls(
            train_batch_s=mean_step(clock.train_ends),
            val_batch_s=mean_step(clock.val_ends),
            slice_s=clock.epoch_end - clock.epoch_start,
            epoch=with_other(epoch, epoch.get(PROBE_SELECTION, 0.0)),
            fit_end=with_other(fit_end, 0.0),
            epoch_batches=epoch_batches,
        )

    @property
    def full_epoch_s(self) -> float:
        """An epoch of the default config: all its training and validation batches."""
        train, val = self.epoch_batches
        return train * self.train_batch_s + val * self.val_batch_s

    @property
    def callbacks_epoch_s(self) -> float:
        """The attention callbacks' hooks in the epoch, less the once-per-fit probe selection."""
        return total(self.epoch, "hook") - self.epoch.get(PROBE_SELECTION, 0.0)

    @property
    def fit_end_s(self) -> float:
        return total(self.fit_end, "hook")


def total(seconds: dict[Key, float], *groups: str) -> float:
    return sum(s for (group, _), s in seconds.items() if group in groups)


def with_other(seconds: dict[Key, float], once_per_fit: float) -> dict[Key, float]:
    """``seconds`` and, under :data:`OTHER`, the hooks' time that no piece accounts for."""
    pieces = total(seconds, "capture", "measures", "figures")
    return {**seconds, OTHER: total(seconds, "hook") - once_per_fit - pieces}


def mean_step(ends: list[float]) -> float:
    return (ends[-1] - ends[0]) / (len(ends) - 1)


# -- instrumentation ------------------------------------------------------------------


def resolve(target: str) -> tuple[object, str]:
    """``"module:Class.attribute"`` or ``"module:attribute"`` -> (class or module, attribute)."""
    module, _, attribute = target.partition(":")
    owner, _, name = attribute.rpartition(".")
    return pkgutil.resolve_name(f"{module}:{owner}" if owner else module), name


def figure_builders() -> list[str]:
    """``"module:name"`` of each figure-building function of ``lit_vit.plotting`` where a
    callback module imported it (the builders move between files; this follows them)."""
    modules = [
        importlib.import_module(f"lit_vit.callbacks.{info.name}")
        for info in pkgutil.iter_modules(lit_vit.callbacks.__path__)
    ]
    return [
        f"{module.__name__}:{name}"
        for module in modules
        for name, value in vars(module).items()
        if inspect.isfunction(value)
        and value.__module__.startswith("lit_vit.plotting")
        and name.endswith("_figure")
        and name != "save_figure"
    ]


@contextlib.contextmanager
def timed_pieces(stopwatch: Stopwatch) -> Iterator[None]:
    """Every function of :data:`PIECES` wrapped by the stopwatch where it is looked up."""
    with contextlib.ExitStack() as stack:
        for group, piece, where in PIECES:
            targets = figure_builders() if where.startswith("every") else [where]
            for target in targets:
                owner, name = resolve(target)
                timed = stopwatch.wrap(getattr(owner, name), (group, piece), exclusive=True)
                stack.enter_context(mock.patch.object(owner, name, timed))
        yield


def attention_methods(trainer: Trainer) -> Iterator[tuple[object, str]]:
    """``(callback, method name)``: the probe's working hooks (it dispatches every stage: the
    sweep runs in its ``on_fit_end``), and each analysis callback's ``analyze``."""
    for callback in trainer.callbacks:
        if isinstance(callback, AttentionProbe):
            yield callback, "on_validation_epoch_end"
            yield callback, "on_fit_end"
        elif isinstance(callback, AttentionCallback):
            yield callback, "analyze"


# -- runs -----------------------------------------------------------------------------


def build_cli(
    log_dir: str, callbacks: bool, epochs: int, batches: tuple[int, int], data_dir: str
) -> LitViTCLI:
    args = [
        f"--config={CONFIG}",
        f"--trainer.max_epochs={epochs}",
        f"--trainer.limit_train_batches={batches[0]}",
        f"--trainer.limit_val_batches={batches[1]}",
        f"--trainer.logger.init_args.save_dir={log_dir}",
        f"--data.data_dir={data_dir}",
    ]
    if not callbacks:
        args.append("--trainer.callbacks=[]")
    return LitViTCLI(
        LitViT, FashionMNISTDataModule, save_config_kwargs={"overwrite": True}, args=args, run=False
    )


def checkpoint_after_one_epoch(log_dir: str, batches: tuple[int, int], data_dir: str) -> str:
    """The ``last.ckpt`` of an untimed one-epoch fit with the callbacks, to resume from."""
    with quiet():
        cli = build_cli(log_dir, True, 1, batches, data_dir)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.trainer.checkpoint_callback.last_model_path


def measured_fit(
    variant: Variant, batches: tuple[int, int], data_dir: str, resume_from: str | None
) -> Run:
    """One epoch of ``batches`` (training, validation), the pieces and hooks timed."""
    stopwatch = Stopwatch()
    clock = EpochClock(stopwatch)
    with quiet(), tempfile.TemporaryDirectory() as log_dir:
        epochs = 2 if variant.resumed else 1  # resumed: the checkpoint ends epoch 0
        cli = build_cli(log_dir, variant.callbacks, epochs, batches, data_dir)
        for callback, method in attention_methods(cli.trainer):
            key = ("analyze" if method == "analyze" else "hook", type(callback).__name__)
            setattr(callback, method, stopwatch.wrap(getattr(callback, method), key))
        cli.trainer.callbacks.append(clock)
        ckpt_path = resume_from if variant.resumed else None
        with timed_pieces(stopwatch):
            cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
        data = cli.datamodule
        epoch_batches = (len(data.train_dataloader()), len(data.val_dataloader()))
    return Run.from_clock(clock, epoch_batches)


def profiled_warmup(data_dir: str) -> str:
    """Two short epochs, the second epoch's hooks under cProfile; its top entries."""
    profiler = cProfile.Profile()

    def profiled(hook: Callable) -> Callable:
        @functools.wraps(hook)
        def run(trainer: Trainer, pl_module: LightningModule) -> None:
            if trainer.current_epoch == 0:  # cold: imports, fonts, probe selection
                return hook(trainer, pl_module)
            with profiler:
                return hook(trainer, pl_module)

        return run

    with quiet(), tempfile.TemporaryDirectory() as log_dir:
        cli = build_cli(log_dir, True, 2, WARMUP_BATCHES, data_dir)
        for callback, method in attention_methods(cli.trainer):
            if method == "on_validation_epoch_end":
                setattr(callback, method, profiled(getattr(callback, method)))
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    report = io.StringIO()
    stats = pstats.Stats(profiler, stream=report).strip_dirs()
    stats.sort_stats("cumulative").print_stats(PROFILE_LINES)
    return report.getvalue()


def interleaved(
    variants: list[Variant], repeats: int, batches: tuple[int, int], data_dir: str
) -> dict[str, list[Run]]:
    """Every variant once per repeat, in reversed order every other repeat."""
    runs: dict[str, list[Run]] = {variant.name: [] for variant in variants}
    with tempfile.TemporaryDirectory() as resume_dir:
        resume_from = checkpoint_after_one_epoch(resume_dir, batches, data_dir)
        for repeat in range(repeats):
            for variant in variants if repeat % 2 == 0 else variants[::-1]:
                run = measured_fit(variant, batches, data_dir, resume_from)
                runs[variant.name].append(run)
                print_run(repeat, variant, run)
    return runs


def print_run(repeat: int, variant: Variant, run: Run) -> None:
    line = (
        f"  repeat {repeat + 1}: {variant.name:<15} train {run.train_batch_s:.3f} s/batch, "
        f"val {run.val_batch_s:.3f} s/batch, slice {run.slice_s:6.1f} s"
    )
    if variant.callbacks:
        line += f", callbacks {run.callbacks_epoch_s:5.2f} s/epoch, fit end {run.fit_end_s:5.1f} s"
    print(line, flush=True)


# -- report ---------------------------------------------------------------------------


def spread(values: list[float], digits: int, scale: float = 1.0, unit: str = "") -> str:
    """``median (min-max)``."""
    low, mid, high = (scale * v for v in (min(values), statistics.median(values), max(values)))
    return f"{mid:.{digits}f}{unit} ({low:.{digits}f}-{high:.{digits}f})"


def median_of(runs: list[Run], value: Callable[[Run], float]) -> float:
    return statistics.median(value(run) for run in runs)


def paired(runs: list[Run], without: list[Run], value: Callable[[Run, Run], float]) -> list[float]:
    """``value(run, run without callbacks)`` of each repeat."""
    return [value(run, reference) for run, reference in zip(runs, without, strict=True)]


def ratio(run: Run, without: Run) -> float:
    return run.callbacks_epoch_s / without.full_epoch_s


def print_summary(runs: dict[str, list[Run]], batches: tuple[int, int]) -> None:
    """Batch times, slices, the extrapolated epoch, the callbacks' cost and the ratio."""
    without = runs.pop("without")
    train, val = without[0].epoch_batches
    columns = {"without": without, **runs}
    rows = [
        ("train batch, s", 3, lambda run: run.train_batch_s),
        ("val batch, s", 3, lambda run: run.val_batch_s),
        (f"measured slice: {batches[0]} + {batches[1]} batches, s", 1, lambda run: run.slice_s),
        (f"full epoch, extrapolated: {train} + {val} batches, s", 1, lambda run: run.full_epoch_s),
    ]
    print(f"{'median (min-max) over repeats':<46}" + "".join(f"{name:>22}" for name in columns))
    for label, digits, value in rows:
        cells = [spread([value(run) for run in column], digits) for column in columns.values()]
        print(f"{label:<46}" + "".join(f"{cell:>22}" for cell in cells))
    paired_rows = [
        ("callbacks per epoch (timed hooks), s", lambda run, _: run.callbacks_epoch_s, 2, 1, ""),
        ("  cross-check: slice - slice without, s", lambda r, o: r.slice_s - o.slice_s, 1, 1, ""),
        ("ratio: callbacks / full epoch without", ratio, 2, 100, "%"),
    ]
    for label, value, digits, scale, unit in paired_rows:
        cells = [
            spread(paired(column, without, value), digits, scale, unit) for column in runs.values()
        ]
        print(f"{label:<46}{'':>22}" + "".join(f"{cell:>22}" for cell in cells))
    print()
    for name, column in runs.items():
        share = statistics.median(paired(column, without, ratio))
        verdict = "met" if share <= TARGET else "NOT met"
        print(
            f"{name}: the callbacks add {share:.2%} to an epoch; target <= {TARGET:.1%} {verdict}"
        )
    epoch = median_of(without, lambda run: run.full_epoch_s)
    probe = median_of(runs["with"], lambda run: run.epoch.get(PROBE_SELECTION, 0.0))
    sweep = median_of(runs["with"], lambda run: run.fit_end_s)
    print(
        f"once per fit: probe selection {probe:.2f} s (1st epoch) + ResolutionSweep at fit end "
        f"{sweep:.1f} s = {(probe + sweep) / epoch:.1%} of one epoch"
    )


def evolution_figures_seconds(epochs: int, layers: int = 12, images: int = 8) -> float:
    """Best of 3: build, render and encode the three figures that grow with the history
    (rollout strip, layer and faithfulness evolution) at ``epochs`` analysed epochs, as the
    callbacks draw them (the strip shows at most ``MAX_EPOCH_COLUMNS`` epochs)."""
    generator = torch.Generator().manual_seed(0)
    probe = torch.rand(images, 1, 28, 28, generator=generator)
    analysed = list(range(epochs))
    columns = min(epochs, MAX_EPOCH_COLUMNS)
    shown = analysed[:columns]
    measures = {name: torch.rand(layers, epochs, generator=generator) for name in EVOLUTION}
    aucs = {f"{kind} AUC": torch.rand(3, epochs, generator=generator) for kind in ("a", "b")}
    figures = (
        lambda: rollout_evolution_figure(probe, torch.rand(columns, images, 7, 7), shown),
        lambda: evolution_figure(analysed, measures, EVOLUTION),
        lambda: evolution_figure(analysed, aucs, dict.fromkeys(aucs, (0.0, 1.0)), rows=MAPS),
    )
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for make in figures:
            encode_png(figure_to_image(make()))
        best = min(best, time.perf_counter() - start)
    return best


def print_history_growth(runs: dict[str, list[Run]], lengths=(1, 12, 36)) -> None:
    """The evolution figures at longer histories, and the ratio they make at the longest."""
    seconds = {epochs: evolution_figures_seconds(epochs) for epochs in lengths}
    growth = seconds[lengths[-1]] - seconds[lengths[0]]
    callbacks = median_of(runs["with"], lambda run: run.callbacks_epoch_s)
    epoch = median_of(runs["without"], lambda run: run.full_epoch_s)
    timings = ", ".join(f"{epochs}: {value:.3f} s" for epochs, value in seconds.items())
    print(f"evolution figures by analysed epochs (build, render, PNG): {timings}")
    share = (callbacks + growth) / epoch
    verdict = "met" if share <= TARGET else "NOT met"
    print(
        f"at analysed epoch {lengths[-1]}: {callbacks:.2f} + {growth:.2f} s = {share:.2%} of an "
        f"epoch; target <= {TARGET:.1%} {verdict}"
    )


def print_breakdown(runs: list[Run]) -> None:
    """Median seconds of every piece per epoch and at fit end, and of each ``analyze``."""
    keys = [*dict.fromkeys((group, piece) for group, piece, _ in PIECES), OTHER]
    keys.remove(PROBE_SELECTION)
    cost = median_of(runs, lambda run: run.callbacks_epoch_s)
    print(f"{'group':<9} {'piece':<42} {'per epoch, s':>12} {'share':>7} {'fit end, s':>10}")
    for group, piece in keys:
        epoch, fit_end = (seconds_of(runs, phase, (group, piece)) for phase in PHASES)
        print(f"{group:<9} {piece:<42} {epoch:12.3f} {epoch / cost:7.1%} {fit_end:10.3f}")
    fit_end = median_of(runs, lambda run: run.fit_end_s)
    label = "(medians: the pieces need not add up)"
    print(f"{'total':<9} {label:<42} {cost:12.3f} {'':>7} {fit_end:10.3f}")
    print()
    names = [name for group, name in runs[0].epoch | runs[0].fit_end if group == "analyze"]
    analyze = [
        f"{name} {sum(seconds_of(runs, phase, ('analyze', name)) for phase in PHASES):.2f}"
        for name in dict.fromkeys(names)
    ]
    print("analyze() per callback, s (shared maps are computed in the first that asks):")
    print("  " + ", ".join(analyze))


def seconds_of(runs: list[Run], phase: str, key: Key) -> float:
    """Median of the stopwatch's seconds for ``key`` in ``phase`` (``"epoch"`` or ``"fit_end"``)."""
    return statistics.median(getattr(run, phase).get(key, 0.0) for run in runs)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--train-batches", type=int, help="training batches per run (20; --quick: 3)"
    )
    parser.add_argument(
        "--val-batches", type=int, help="validation batches per run (5; --quick: 2)"
    )
    parser.add_argument("--repeats", type=int, help="runs of each variant (3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="a short smoke test")
    parser.add_argument(
        "--history-only", action="store_true", help="only time the figures that grow with epochs"
    )
    parser.add_argument("--data-dir", default="/tmp/bench_data", help="FashionMNIST data folder")
    args = parser.parse_args()
    defaults = {"train_batches": (20, 3), "val_batches": (5, 2), "repeats": (3, 1)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    for name in ("train_batches", "val_batches"):
        if getattr(args, name) < 2:
            parser.error(
                f"--{name.replace('_', '-')} must be at least 2: the first batch is not timed."
            )
    return args


def main() -> None:
    args = parse_args()
    if args.history_only:
        timings = {epochs: evolution_figures_seconds(epochs) for epochs in (1, 12, 36)}
        print("evolution figures by analysed epochs (build, render, PNG):", timings)
        return
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    batches = (args.train_batches, args.val_batches)
    variants = [
        Variant("without", False),
        Variant("with", True),
        Variant("with, resumed", True, resumed=True),
    ]
    print(
        f"{CONFIG.name}: 1 epoch of {batches[0]} train + {batches[1]} val batches per run, "
        f"{args.repeats} repeats, variants alternated; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print("  warm-up run: 2 short epochs, untimed; the 2nd epoch's hooks profiled", flush=True)
    profile = profiled_warmup(args.data_dir)
    runs = interleaved(variants, args.repeats, batches, args.data_dir)
    print()
    print_summary(dict(runs), batches)
    print_history_growth(runs)
    print()
    print_breakdown(runs["with"])
    print()
    print(
        f"cProfile of the callbacks' hooks in the warm-up's 2nd epoch, top {PROFILE_LINES} "
        "by cumulative time:"
    )
    print(profile)


if __name__ == "__main__":
    main()
