"""Verdicts a reviewer accepts: bootstrap intervals over images, and comparisons stated only
where the interval excludes equality (or the threshold).

A mean over a few hundred images has an error bar; a table that says "rollout
beats intensity" because 0.301 < 0.304 says nothing. Every number a verdict
rests on is therefore a per-image score, and:

- :func:`bootstrap_interval` gives its mean with a seeded percentile bootstrap
  95% interval over images (the same resampled image sets for every score of a
  call, so paired differences are resampled together);
- :func:`compare` calls map ``a`` better (or worse) than ``b`` only when the
  interval of the mean paired difference excludes 0, else "not distinguishable";
- :func:`threshold_verdict` says "passes" (below the threshold) or "fails" only
  when the interval excludes the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "FAITHFULNESS_METRICS",
    "INDISTINGUISHABLE",
    "Interval",
    "bootstrap_interval",
    "compare",
    "threshold_verdict",
]

RESAMPLES = 2000
# The faithfulness metrics a verdict needs an explainer to win, -> whether higher is better.
FAITHFULNESS_METRICS = {
    "deletion AUC (background)": False,
    "insertion AUC (background)": True,
    "deletion AUC (blurred)": False,
    "ROAD MoRF": False,
    "ROAD LeRF": True,
    "ROAD LeRF - MoRF": True,
    "SaCo": True,
}
INDISTINGUISHABLE = "not distinguishable"
Comparison = Literal["better", "worse", "not distinguishable"]


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` images and its bootstrap interval ``[low, high]``."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_interval(
    values: Tensor, *, level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> Interval:
    """Mean of ``(n,)`` per-image ``values`` with its percentile bootstrap interval.

    Args:
        values: ``(n,)`` finite per-image scores, ``n >= 1``.
        level: Coverage of the interval.
        resamples: Number of bootstrap resamples of the images (with replacement).
        seed: Seed of the resampling (a CPU ``torch.Generator``): the same seed and ``n``
            draw the same image sets, so scores of the same images are resampled alike.

    Raises:
        ValueError: ``values`` not a non-empty 1-D tensor, or with NaN or inf.
    """
    values = _check_values(values)
    n = len(values)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n, (resamples, n), generator=generator)
    means = values[draws].mean(dim=1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=means.dtype))
    return Interval(float(values.mean()), float(low), float(high), n)


def compare(
    a: Tensor, b: Tensor, *, higher_is_better: bool, seed: int = 0
) -> tuple[Comparison, Interval]:
    """Is map ``a`` better than ``b`` on the same images? Paired, by the mean difference.

    Args:
        a, b: ``(n,)`` per-image scores of two maps on the same images.
        higher_is_better: Direction of the score.
        seed: Seed of the bootstrap.

    Returns:
        ``"better"`` / ``"worse"`` where the interval of ``mean(a - b)`` excludes 0,
        else ``"not distinguishable"``; and that interval.
    """
    if a.shape != b.shape:
        raise ValueError(f"compare needs scores of the same images, got {a.shape} and {b.shape}.")
    interval = bootstrap_interval(a.double() - b.double(), seed=seed)
    if interval.low > 0 or interval.high < 0:
        ahead = interval.low > 0
        return ("better" if ahead == higher_is_better else "worse"), interval
    return INDISTINGUISHABLE, interval


def threshold_verdict(
    values: Tensor, threshold: float, *, seed: int = 0
) -> tuple[Literal["passes", "fails", "not distinguishable"], Interval]:
    """ "passes" where the interval of the mean lies below ``threshold``, "fails" above it."""
    interval = bootstrap_interval(values, seed=seed)
    if interval.high < threshold:
        return "passes", interval
    if interval.low > threshold:
        return "fails", interval
    return INDISTINGUISHABLE, interval


def _check_values(values: object) -> Tensor:
    if not isinstance(values, Tensor) or values.dim() != 1 or len(values) == 0:
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"per-image scores must be a non-empty (n,) tensor, got {shape}.")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("per-image scores have NaN or inf values; an interval needs finite ones.")
    return values.detach().double().cpu()
