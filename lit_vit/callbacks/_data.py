"""The data side of the probe: batches of a stage as the model sees them, and probe selection.

Lightning-aware helpers (they read the trainer's dataloaders and data module)
shared by the probe owner and the callbacks that look past the probe
(faithfulness and focus on the test set, the resolution sweep).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_vit._private import transfer_batch

# Above this many probe images, setup warns about the cost.
LARGE_PROBE = 64

# Scanning more than this many images to balance classes buys nothing for a probe of 8-64.
MAX_SCAN_IMAGES = 4096


def stage_dataloader(trainer: Trainer, stage: str):
    """The first dataloader the trainer uses for ``stage`` (``"val"`` or ``"test"``)."""
    loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
    if loaders is None and trainer.datamodule is not None:
        loaders = (
            trainer.datamodule.val_dataloader()
            if stage == "val"
            else trainer.datamodule.test_dataloader()
        )
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    if isinstance(loaders, dict):
        loaders = next(iter(loaders.values()), None)
    if loaders is None:
        raise ValueError(
            f"the attention probe needs a {stage} dataloader and the trainer has none."
        )
    return loaders


def iterate_batches(trainer: Trainer, pl_module: LightningModule, stage: str, max_images: int):
    """``(images, labels)`` batches of ``stage`` as the model sees them, up to ``max_images``.

    Batches go through the module's and data module's transfer hooks (so a
    resize in ``on_after_batch_transfer`` applies), on the module's device,
    with the trainer marked as evaluating so that no hook augments them
    (``on_fit_end`` runs in the training stage).
    """
    seen = 0
    for batch in stage_dataloader(trainer, stage):
        with _evaluating(trainer, stage):
            batch = transfer_batch(pl_module, batch)
        images, labels = batch[0], batch[1]
        take = min(len(images), max_images - seen)
        yield images[:take], labels[:take]
        seen += take
        if seen >= max_images:
            return


@contextlib.contextmanager
def _evaluating(trainer: Trainer, stage: str) -> Iterator[None]:
    """Mark the trainer as validating or testing for the duration of the block."""
    previous = trainer.state.stage
    trainer.state.stage = RunningStage.VALIDATING if stage == "val" else RunningStage.TESTING
    try:
        yield
    finally:
        trainer.state.stage = previous


def scan(
    trainer: Trainer, pl_module: LightningModule, stage: str, max_images: int
) -> tuple[Tensor, Tensor]:
    """The first ``max_images`` images ``(n, C, H, W)`` and labels ``(n,)`` of ``stage``, on CPU."""
    batches = list(iterate_batches(trainer, pl_module, stage, max_images))
    images = torch.cat([images.detach() for images, _ in batches]).cpu()
    labels = torch.cat([labels for _, labels in batches]).cpu().long()
    return images, labels


def choose_probe(labels: Tensor, size: int, seed: int) -> Tensor:
    """Sorted positions of ``size`` class-balanced entries of ``labels``, chosen with ``seed``.

    Each class gets ``size // classes`` images (the first classes one more when
    it does not divide), drawn with a seeded permutation.
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    return order[balanced_choice(labels[order], size)].sort().values


def balanced_choice(labels: Tensor, size: int) -> Tensor:
    """Positions of ``size`` entries of ``labels``: round-robin over the classes."""
    classes = labels.unique()
    per_class = [torch.nonzero(labels == c).flatten().tolist() for c in classes]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < size:
        for positions in per_class:
            if depth < len(positions) and len(chosen) < size:
                chosen.append(positions[depth])
        depth += 1
    return torch.tensor(chosen)


def to_pixels(trainer: Trainer, images: Tensor) -> Tensor:
    """Normalised images back to raw pixels in [0, 1].

    Uses the data module's ``denormalize`` when it has one, else its
    ``pixel_mean``/``pixel_std``; otherwise scales each image to [0, 1].
    """
    datamodule = trainer.datamodule
    if hasattr(datamodule, "denormalize"):
        pixels = datamodule.denormalize(images)
    elif hasattr(datamodule, "pixel_mean") and hasattr(datamodule, "pixel_std"):
        mean = torch.tensor(datamodule.pixel_mean).view(1, -1, 1, 1)
        std = torch.tensor(datamodule.pixel_std).view(1, -1, 1, 1)
        pixels = images * std + mean
    else:
        low = images.flatten(1).amin(dim=1).view(-1, 1, 1, 1)
        high = images.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
        pixels = (images - low) / (high - low).clamp_min(1e-12)
    return pixels.clamp(0, 1)


def class_names(trainer: Trainer, num_classes: int) -> list[str]:
    """Names of the data's classes: the data module's ``class_names``, else ``"0"``, ``"1"``,
    ... up to ``num_classes``."""
    names = getattr(trainer.datamodule, "class_names", None)
    return list(names) if names else [str(index) for index in range(num_classes)]


def predicted_class_names(trainer: Trainer, num_classes: int) -> list[str]:
    """Names of the model's ``num_classes`` outputs: the data module's ``model_class_names``
    when it has them, else the data's when the model has as many classes, else
    ``"class 0"``, ``"class 1"``, ... (a model trained on other, unnamed classes)."""
    model_names = getattr(trainer.datamodule, "model_class_names", None)
    if model_names and len(model_names) == num_classes:
        return list(model_names)
    names = class_names(trainer, num_classes)
    return names if len(names) == num_classes else [f"class {i}" for i in range(num_classes)]


@dataclass(frozen=True)
class Probe:
    """Probe images, kept on the CPU.

    Attributes:
        images: ``(B, C, H, W)`` as the model takes them (normalised).
        labels: ``(B,)`` int64 true classes.
        pixels: ``(B, C, H, W)`` raw pixel values in [0, 1], for figures and
            foreground masks.
        indices: ``(B,)`` positions of the images in the dataloader's order.
    """

    images: Tensor
    labels: Tensor
    pixels: Tensor
    indices: Tensor

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the images' float32 bytes (16 hex digits): the same probe, or not."""
        data = self.images.detach().float().contiguous().numpy().tobytes()
        return hashlib.sha256(data).hexdigest()[:16]


def check_probe_size(
    trainer: Trainer, stage: str, size: int, num_layers: int, figure_rows: int
) -> None:
    """Refuse a probe of ``size`` images larger than the split it is drawn from; warn about the
    cost of a large one.

    Raises:
        ValueError: Naming the split's size and the fix.
    """
    split = "val" if stage in ("fit", "validate") else "test"
    dataset = getattr(trainer.datamodule, f"{split}_dataset", None)
    if dataset is not None and len(dataset) < size:
        raise ValueError(
            f"AttentionProbe: size={size} but the {split} set has only {len(dataset)} images; "
            f"use size <= {len(dataset)}."
        )
    if size > LARGE_PROBE:
        rank_zero_warn(
            f"AttentionProbe: size={size} probe images. Each analysed run records "
            f"(L={num_layers}, B={size}, H, N, N) attention and its gradients, and the "
            "faithfulness callback runs about 70 masked forward passes per image; "
            f"above {LARGE_PROBE} images this costs seconds to minutes and gigabytes per "
            f"epoch. Image grids show the first {figure_rows} (figure_rows)."
        )


class ProbeSelection:
    """The probe of each split, selected once; the validation probe's checkpoint state is
    its dataset positions and a fingerprint of its pixels, never the images.

    Args:
        size: Number of probe images.
        seed: Seed of the selection.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self._probes: dict[str, Probe] = {}
        self._restored: dict | None = None  # a checkpoint's state, until the probe is drawn

    def get(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> Probe:
        """The probe of ``"val"`` (also used at fit end) or ``"test"``."""
        split = "test" if stage == "test" else "val"
        if split not in self._probes:
            restored = self._restored if split == "val" else None
            self._probes[split] = select_probe(
                trainer, pl_module, split, self.size, self.seed, restored
            )
        return self._probes[split]

    def forget(self) -> None:
        """Select anew (another trainer, maybe other data)."""
        self._probes = {}

    def state_dict(self) -> dict:
        probe = self._probes.get("val")
        if probe is None:
            return dict(self._restored or {})
        return {
            "size": self.size,
            "seed": self.seed,
            "indices": probe.indices.tolist(),
            "fingerprint": probe.fingerprint,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = dict(state_dict) if state_dict else None
        self._probes.pop("val", None)


def select_probe(
    trainer: Trainer,
    pl_module: LightningModule,
    split: str,
    size: int,
    seed: int,
    restored: dict | None = None,
) -> Probe:
    """``size`` class-balanced images of ``split`` drawn with ``seed``, or the ``restored``
    probe of a checkpoint (its positions and fingerprint) when the data still holds it.

    Raises:
        ValueError: The split has fewer than ``size`` images.
    """
    if restored and restored.get("size") == size and restored.get("seed") == seed:
        indices = torch.tensor(restored["indices"])
        images, labels = scan(trainer, pl_module, split, int(indices.max()) + 1)
        probe = _probe(trainer, images, labels, indices)
        if probe.fingerprint == restored["fingerprint"]:
            return probe
        rank_zero_warn(
            "AttentionProbe: the checkpoint's probe images differ from the images at the "
            "same positions of the validation set now (another split or data?); selecting "
            "a new probe."
        )
    images, labels = scan(trainer, pl_module, split, max(MAX_SCAN_IMAGES, size))
    if len(images) < size:
        raise ValueError(
            f"AttentionProbe: size={size} but the {split} set has only {len(images)} "
            f"images; use size <= {len(images)}."
        )
    return _probe(trainer, images, labels, choose_probe(labels, size, seed))


def _probe(trainer: Trainer, images: Tensor, labels: Tensor, indices: Tensor) -> Probe:
    chosen = images[indices]
    return Probe(
        images=chosen,
        labels=labels[indices],
        pixels=to_pixels(trainer, chosen.float()),
        indices=indices,
    )
