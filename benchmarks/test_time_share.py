"""Where a ``lit-vit test`` run with the full report spends its time, run by hand.

    python benchmarks/test_time_share.py logs/fashion_mnist/version_0/checkpoints/last.ckpt \\
        -- --data.data_dir=data

Runs ``lit-vit test --config configs/fashion_mnist.yaml --ckpt_path <ckpt>`` in this
process with timers around each attention callback's test-time work (its ``analyze``,
``SanityChecks.check``, ``ResolutionSweep.sweep``) and around the probe's one explanation
of the test images shared by Faithfulness, FocusCoverage and SanityChecks (attention flow,
gradients, input x gradient, CP-LRP, controls), and inside Faithfulness around ROAD and SaCo,
and prints each as a share of the whole run's wall time. The
rest is the test loop itself (the model over the test set), loading and writing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from collections import defaultdict
from unittest import mock

import lit_vit.attention.explainers as explainers
import lit_vit.callbacks.faithfulness as faithfulness
from lit_vit.callbacks import (
    AttentionMaps,
    AttentionRollout,
    Faithfulness,
    FocusCoverage,
    HeadDiversity,
    ResolutionSweep,
    SanityChecks,
)
from lit_vit.callbacks.probe import AttentionProbe
from lit_vit.cli import main as lit_vit

# (class, method): the timed work, named as printed.
TIMED = {
    "probe: explain the test images once (flow, gradients, controls)": (
        AttentionProbe,
        "_explain_test_set",
    ),
    "AttentionMaps": (AttentionMaps, "analyze"),
    "AttentionRollout": (AttentionRollout, "analyze"),
    "HeadDiversity": (HeadDiversity, "analyze"),
    "FocusCoverage (without the shared explanation)": (FocusCoverage, "analyze"),
    "CP-LRP, wherever maps are explained (probe, sanity checks)": (explainers, "cp_lrp_map"),
    "Faithfulness (deletion / insertion, background and blurred)": (Faithfulness, "analyze"),
    "Faithfulness: ROAD (imputation and forwards)": (faithfulness, "road"),
    "Faithfulness: SaCo": (faithfulness, "saco"),
    "ResolutionSweep": (ResolutionSweep, "sweep"),
    "SanityChecks (cascading randomisation, random logit)": (SanityChecks, "check"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--config", default="configs/fashion_mnist.yaml")
    parser.add_argument("extra", nargs="*", help="After --: more lit-vit test options.")
    args = parser.parse_args(argv)
    timer = ExclusiveTimer()
    command = ["test", "--config", args.config, "--ckpt_path", args.checkpoint, *args.extra]
    start = time.perf_counter()
    with contextlib.ExitStack() as patches:
        for name, (cls, method) in TIMED.items():
            patches.enter_context(
                mock.patch.object(cls, method, timer.wrap(getattr(cls, method), name))
            )
        lit_vit(command)
    total = time.perf_counter() - start
    print(f"\nlit-vit test {args.checkpoint}: {total:.1f} s wall")
    print(f"{'work':<66} {'s':>7} {'share':>6}")
    for name in TIMED:
        print(f"{name:<66} {timer.spent[name]:>7.1f} {timer.spent[name] / total:>6.1%}")
    rest = total - sum(timer.spent.values())
    label = "the rest: the test loop over the test set, loading, writing"
    print(f"{label:<66} {rest:>7.1f} {rest / total:>6.1%}")


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
