"""The test images explained once per test run: every explainer's and control's map.

Explaining is the expensive part of the test-time analysis (a pass with
gradients, attention flow, input x gradient, CP-LRP), so the probe does it
once per test run for as many images as its most demanding consumer asks
for, and every consumer (Faithfulness, FocusCoverage, SanityChecks) reads its
share. The first image is explained alone, to say how long the rest will take.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lit_vit.attention import AttentionRecorder, TokenLayout, controls, explain
from lit_vit.callbacks._data import iterate_batches, to_pixels

__all__ = ["ExplainedBatch", "duration", "exceeds", "explain_test_set"]


@dataclass(frozen=True)
class ExplainedBatch:
    """One test batch with the map of every explainer and control.

    Attributes:
        index: Position of the batch in the test dataloader.
        images: ``(B, C, H, W)`` as the model takes them, on the model's device.
        labels: ``(B,)`` int64 true classes, on the CPU.
        pixels: ``(B, C, H, W)`` raw values in [0, 1], on the CPU.
        layout: The images' token layout.
        maps: The probe's explainers (:data:`~lit_vit.attention.EXPLAINERS`) and
            :data:`~lit_vit.attention.CONTROLS` -> ``(B, gh, gw)`` float32 maps on
            the CPU, each summing to 1.
    """

    index: int
    images: Tensor
    labels: Tensor
    pixels: Tensor
    layout: TokenLayout
    maps: dict[str, Tensor]

    def head(self, count: int) -> ExplainedBatch:
        """The first ``count`` images of the batch."""
        return ExplainedBatch(
            index=self.index,
            images=self.images[:count],
            labels=self.labels[:count],
            pixels=self.pixels[:count],
            layout=self.layout,
            maps={name: saliency[:count] for name, saliency in self.maps.items()},
        )


class ExplainedTestSet:
    """A test run's explained images: explained once, for as many images as the most demanding
    consumer declares, and shared by all."""

    def __init__(self) -> None:
        self._covered: int | None = None  # images the explanation was asked for (None: all)
        self._batches: list[ExplainedBatch] | None = None

    def clear(self) -> None:
        """Forget the images and their maps (not kept past a test run)."""
        self._batches = None

    def first(
        self,
        limit: int | None,
        wanted: Sequence[int | None],
        explain: Callable[[int | None], list[ExplainedBatch]],
    ) -> list[ExplainedBatch]:
        """The first ``limit`` explained images (``None``: all), batch by batch.

        Args:
            limit: Images this consumer reads.
            wanted: What every consumer declares it reads (``None``: all).
            explain: Explains the first ``n`` test images (``None``: all); called once, or
                again when ``limit`` goes beyond what was explained.
        """
        if self._batches is None or exceeds(limit, self._covered):
            most = None if None in wanted or limit is None else max([limit, *wanted])
            self._covered, self._batches = most, explain(most)
        batches, remaining = [], sys.maxsize if limit is None else limit
        for batch in self._batches:
            if remaining <= 0:
                break
            batches.append(batch.head(remaining))
            remaining -= len(batch.labels)
        return batches


def explain_test_set(
    trainer: Trainer,
    pl_module: LightningModule,
    recorder: AttentionRecorder,
    explainers: Sequence[str],
    seed: int,
    limit: int | None,
    total: int,
) -> list[ExplainedBatch]:
    """The first ``limit`` test images (``None``: all) explained, batch by batch.

    Args:
        trainer, pl_module: The test run.
        recorder: The probe's recorder of the model.
        explainers: The explainers to compute (:data:`~lit_vit.attention.EXPLAINERS`).
        seed: Seed of the controls (``seed + batch index``).
        limit: Images to explain (``None``: the whole test set).
        total: How many that is, for the console.
    """
    rank_zero_info(
        f"AttentionProbe: explaining {total:,} test images once for the report "
        f"({', '.join(explainers)}, and the controls)"
    )
    batches = []
    for index, (images, labels) in enumerate(
        iterate_batches(trainer, pl_module, "test", sys.maxsize if limit is None else limit)
    ):
        layout = recorder.backend.layout(tuple(images.shape[-2:]))
        pixels = to_pixels(trainer, images.detach().float().cpu())
        if index == 0:
            maps = _explain_estimating(recorder, images, explainers, total)
        else:
            maps = explain(recorder, images, methods=explainers)
        maps |= controls(pixels, layout, seed + index)
        labels = labels.cpu().long()
        batches.append(ExplainedBatch(index, images.detach(), labels, pixels, layout, maps))
    return batches


def _explain_estimating(
    recorder: AttentionRecorder, images: Tensor, explainers: Sequence[str], total: int
) -> dict[str, Tensor]:
    """The explainers' maps of ``(B, C, H, W)`` images, the first image alone, to say how
    long all ``total`` will take."""
    start = time.perf_counter()
    first = explain(recorder, images[:1], methods=explainers)
    seconds = time.perf_counter() - start
    rank_zero_info(f"AttentionProbe: {seconds:.2f} s per image, about {duration(seconds * total)}")
    if len(images) == 1:
        return first
    rest = explain(recorder, images[1:], methods=explainers)
    return {name: torch.cat([first[name], rest[name]]) for name in first}


def duration(seconds: float) -> str:
    """``"40 s"``, ``"3 min"``."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def exceeds(limit: int | None, covered: int | None) -> bool:
    """Whether ``limit`` images (``None``: all) go beyond the ``covered`` ones."""
    if covered is None:
        return False
    return limit is None or limit > covered
