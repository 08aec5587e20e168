"""Where a ``lit-vit test`` or ``lit-vit analyze`` run with the full report spends its time,
run by hand.

    python benchmarks/test_time_share.py logs/fashion_mnist/version_0/checkpoints/last.ckpt \\
        -- --data.data_dir=data
    python benchmarks/test_time_share.py --analyze 16 -- --model vit_tiny_patch16_224 \\
        --pretrained false

With ``--analyze N`` it runs ``lit-vit analyze`` on a folder of the first ``N``
Fashion-MNIST test images as PNGs in class folders (written to a temporary
folder; resized to the model's input size by analyze) with the options after ``--``.

Runs ``lit-vit test --config configs/fashion_mnist.yaml --ckpt_path <ckpt>`` in this
process with timers around each attention callback's test-time work (its ``analyze``)
and around the probe's one explanation
of the test images shared by Faithfulness, FocusCoverage and SanityChecks (attention flow,
gradients, input x gradient, CP-LRP, controls), and inside Faithfulness around ROAD and SaCo,
and prints each as a share of the whole run's wall time. The
rest is the test loop itself (the model over the test set), loading and writing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from unittest import mock

import lit_vit.attention.battery as battery
import lit_vit.attention.explainers as explainers
import lit_vit.callbacks.probe as probe_module
from lit_vit.callbacks import (
    AttentionMaps,
    AttentionRollout,
    Faithfulness,
    FocusCoverage,
    HeadDiversity,
    LayerRepresentations,
    ResolutionSweep,
    SanityChecks,
)
from lit_vit.cli import main as lit_vit

# (class, method): the timed work, named as printed.
TIMED = {
    "probe: explain the test images once (flow, gradients, controls)": (
        probe_module,  # the name the probe calls
        "explain_test_set",
    ),
    "AttentionMaps": (AttentionMaps, "analyze"),
    "AttentionRollout": (AttentionRollout, "analyze"),
    "HeadDiversity": (HeadDiversity, "analyze"),
    "LayerRepresentations": (LayerRepresentations, "analyze"),
    "FocusCoverage (without the shared explanation)": (FocusCoverage, "analyze"),
    "CP-LRP, wherever maps are explained (probe, sanity checks)": (explainers, "cp_lrp_map"),
    "Faithfulness (deletion / insertion, background and blurred)": (Faithfulness, "analyze"),
    "Faithfulness: ROAD (imputation and forwards)": (battery, "road"),
    "Faithfulness: SaCo": (battery, "saco"),
    "ResolutionSweep": (ResolutionSweep, "analyze"),
    "SanityChecks (cascading randomisation, random logit)": (SanityChecks, "analyze"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="For lit-vit test.")
    parser.add_argument("--config", default="configs/fashion_mnist.yaml")
    parser.add_argument("--analyze", type=int, metavar="N", help="Analyze N test images.")
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.extra = argv[cut + 1 :]  # more lit-vit options
    timer = ExclusiveTimer()
    if args.analyze:
        folder = Path(tempfile.mkdtemp(prefix="lit_vit_images_"))
        write_image_folder(folder, args.analyze)
        command = ["analyze", "--data", str(folder), "--save_dir", str(folder / "logs")]
        command += args.extra
    elif args.checkpoint:
        command = ["test", "--config", args.config, "--ckpt_path", args.checkpoint, *args.extra]
    else:
        parser.error("give a checkpoint (lit-vit test) or --analyze N")
    start = time.perf_counter()
    with contextlib.ExitStack() as patches:
        for name, (cls, method) in TIMED.items():
            patches.enter_context(
                mock.patch.object(cls, method, timer.wrap(getattr(cls, method), name))
            )
        lit_vit(command)
    total = time.perf_counter() - start
    print(f"\nlit-vit {' '.join(command)}: {total:.1f} s wall")
    print(f"{'work':<66} {'s':>7} {'share':>6}")
    for name in TIMED:
        print(f"{name:<66} {timer.spent[name]:>7.1f} {timer.spent[name] / total:>6.1%}")
    rest = total - sum(timer.spent.values())
    label = "the rest: the test loop over the test set, loading, writing"
    print(f"{label:<66} {rest:>7.1f} {rest / total:>6.1%}")


def write_image_folder(folder: Path, count: int) -> None:
    """The first ``count`` Fashion-MNIST test images as ``folder/<class>/<index>.png``."""
    from torchvision.datasets import FashionMNIST

    from lit_vit.data import CLASS_NAMES, FashionMNISTDataModule

    data = FashionMNISTDataModule()
    data.prepare_data()
    test = FashionMNIST(str(data.data_dir), train=False)
    for index in range(count):
        image, label = test[index]
        path = folder / CLASS_NAMES[label].replace("/", "_") / f"{index}.png"  # T-shirt_top
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)


class ExclusiveTimer:
    """Wall time per name, exclusive: time spent in a nested timed call counts for it only."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self._nested: list[float] = []  # per open call, the time of the timed calls inside it

    def wrap(self, function, name: str):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            self._nested.append(0.0)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self.spent[name] += elapsed - self._nested.pop()
                if self._nested:
                    self._nested[-1] += elapsed

        return timed


if __name__ == "__main__":
    main()
