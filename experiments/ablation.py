"""The recipe's ablation: the default config with and without each of its parts, one command.

Each arm trains the default config (``configs/fashion_mnist.yaml``) for the
same short schedule through ``lit-vit fit``, tests its best checkpoint with
``lit-vit test``, and reads the test accuracy and the test probe's relative
mean attention distance per layer (``test_attention/distance_relative/layer_LL``,
1.00 = as global as uniform attention) from the test run's TensorBoard
events. The table goes to a Markdown file with the commands that made it.
Only the probe and ``HeadDiversity`` run (the full report is not needed), so
an arm costs its training and one pass over the test set.

    python experiments/ablation.py --epochs 10 --output docs/ablation.md
    python experiments/ablation.py --arms recipe no_ema -- --trainer.limit_train_batches=0.25
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import date
from pathlib import Path
from unittest import mock

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_vit.cli import main as lit_vit

CONFIG = "configs/fashion_mnist.yaml"
# Each arm: what it takes away from the recipe, as lit-vit options.
ARMS = {
    "recipe": ("the full recipe", []),
    "no_mixup_cutmix": (
        "without Mixup/CutMix",
        ["--model.mixup_alpha=0", "--model.cutmix_alpha=0"],
    ),
    "no_augmentation": (
        "without crop, flip and random erasing",
        ["--data.augment=false", "--data.random_erasing=0"],
    ),
    "no_ema": ("without the weight EMA", ["--model.ema_decay=null"]),
    "timm_pos_embed": (
        "position embedding from timm's init, not sin-cos",
        ["--model.pos_embed_init=timm"],
    ),
    "no_distance_bias": ("without the learnable distance bias", ["--model.distance_bias=false"]),
}
# Only what the table needs: the probe and the measure of distance by depth.
ANALYSIS_CALLBACKS = """\
trainer:
  callbacks:
    - class_path: lit_vit.callbacks.AttentionProbe
      init_args: {size: 8, seed: 0}
    - class_path: lit_vit.callbacks.HeadDiversity
"""


def main(argv: list[str] | None = None) -> Path:
    """Run the arms, write the table; returns its path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="Epochs of every arm.")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=list(ARMS))
    parser.add_argument("--output", default="docs/ablation.md", help="The Markdown table.")
    parser.add_argument("--save_dir", default="logs", help="Runs go to <save_dir>/ablation_*.")
    parser.add_argument("extra", nargs="*", help="After --: more lit-vit options for every arm.")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    save_dir = Path(args.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    callbacks = save_dir / "ablation_callbacks.yaml"
    callbacks.write_text(ANALYSIS_CALLBACKS)
    results, commands = [], []
    for arm in args.arms:
        common = [
            "--config", CONFIG, "--config", str(callbacks),
            f"--trainer.max_epochs={args.epochs}",
            f"--trainer.logger.init_args.save_dir={save_dir}",
            f"--trainer.logger.init_args.name=ablation_{arm}",
            *ARMS[arm][1], *args.extra,
        ]  # fmt: skip
        fit = ["lit-vit", "fit", *common]
        test = ["lit-vit", "test", *common, "--ckpt_path", "best"]
        commands += [shlex.join(fit), shlex.join(test)]
        start = time.perf_counter()
        _run(fit)
        minutes = (time.perf_counter() - start) / 60
        _run(test)
        results.append((arm, minutes, *_test_results(save_dir / f"ablation_{arm}")))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    rerun = shlex.join(["python", "experiments/ablation.py", *argv])
    output.write_text(_markdown(results, commands, args.epochs, rerun))
    print(f"Ablation table: {output}")
    return output


def _run(command: list[str]) -> None:
    """Run a ``lit-vit`` command in this process; a failure stops the ablation (exit 2)."""
    with mock.patch.object(sys, "argv", command):  # as if typed: LightningCLI reads sys.argv too
        lit_vit(command[1:])


def _test_results(runs: Path) -> tuple[float, list[float]]:
    """Test accuracy and per-layer relative distance of the newest test run under ``runs``."""
    latest = max(runs.glob("version_*"), key=lambda path: int(path.name[8:]))
    events = EventAccumulator(str(latest), size_guidance={"scalars": 0})
    events.Reload()
    tags = sorted(
        tag
        for tag in events.Tags()["scalars"]
        if tag.startswith("test_attention/distance_relative/layer_")
    )
    accuracy = events.Scalars("test/acc")[-1].value
    return accuracy, [events.Scalars(tag)[-1].value for tag in tags]


def _markdown(results: list[tuple], commands: list[str], epochs: int, rerun: str) -> str:
    layers = len(results[0][3])
    third = max(1, layers // 3)
    header = ["arm", "", "test acc", f"distance, first {third}", f"distance, last {third}", "fit"]
    rows = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for arm, minutes, accuracy, distance in results:
        first, last = sum(distance[:third]) / third, sum(distance[-third:]) / third
        rows.append(
            f"| {arm} | {ARMS[arm][0]} | {accuracy:.4f} | {first:.3f} | {last:.3f} | "
            f"{minutes:.1f} min |"
        )
    per_layer = ["| arm | " + " | ".join(str(layer) for layer in range(layers)) + " |"]
    per_layer.append("|" + "---|" * (layers + 1))
    for arm, _, _, distance in results:
        per_layer.append(f"| {arm} | " + " | ".join(f"{value:.2f}" for value in distance) + " |")
    return "\n".join(
        [
            "# The recipe's ablation",
            "",
            f"Each arm: `{CONFIG}` for {epochs} epochs with one part of the recipe taken away, "
            "its best checkpoint (by `val/acc`) tested on the test set. Distance: the test "
            "probe's mean attention distance relative to uniform attention (1.00 = as global as "
            "uniform, lower = more local), averaged over heads and the first or last third of "
            f"the layers. Written {date.today().isoformat()}; fit times on the machine that ran "
            "it.",
            "",
            *rows,
            "",
            "Relative attention distance per layer:",
            "",
            *per_layer,
            "",
            f"Rerun it all: `{rerun}`. The commands it ran:",
            "",
            "```bash",
            *commands,
            "```",
            "",
        ]
    )


if __name__ == "__main__":
    main()
