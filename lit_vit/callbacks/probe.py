"""The probe: a fixed, class-balanced set of images, and one captured pass over it.

However many attention callbacks a trainer has, they share the probe images
and the captured forward of each epoch: :func:`shared_analysis` computes it
for the first callback that asks and hands the same object to the others.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.states import RunningStage
from torch import Tensor

from lit_vit.attention import (
    AttentionRecorder,
    AttentionRecording,
    cls_attention,
    gradient_rollout,
    rollout,
)

# Scanning more than this many images to balance classes buys nothing for a probe of 8-64.
MAX_SCAN_IMAGES = 4096


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

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "images": self.images,
            "labels": self.labels,
            "pixels": self.pixels,
            "indices": self.indices,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> Probe:
        return cls(**{key: state[key] for key in ("images", "labels", "pixels", "indices")})


@dataclass
class ProbeAnalysis:
    """One captured pass over the probe, with the maps several callbacks use.

    Attributes:
        probe: The probe images.
        recording: Attention of every layer and its gradients for the
            predicted (``attention_grads[0]``) and true (``[1]``) classes.
        stage: ``"val"`` or ``"test"``.
    """

    probe: Probe
    recording: AttentionRecording
    stage: str
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def predictions(self) -> Tensor:
        """``(B,)`` predicted classes."""
        return self.recording.logits.argmax(dim=-1).cpu()

    @cached_property
    def rollout(self) -> Tensor:
        """``(B, gh, gw)`` attention rollout (mean fusion, no discard)."""
        return rollout(self.recording.attention, self.recording.layout).cpu()

    @cached_property
    def grad_rollout_predicted(self) -> Tensor:
        """``(B, gh, gw)`` gradient rollout for the predicted class."""
        return self._grad_rollout(0)

    @cached_property
    def grad_rollout_true(self) -> Tensor:
        """``(B, gh, gw)`` gradient rollout for the true class."""
        return self._grad_rollout(1)

    @cached_property
    def query_maps(self) -> Tensor:
        """``(L, B, H, gh, gw)`` class-token (query) attention per layer and head."""
        return cls_attention(self.recording.attention, self.recording.layout).maps.cpu()

    def _grad_rollout(self, index: int) -> Tensor:
        recording = self.recording
        maps = gradient_rollout(
            recording.attention, recording.attention_grads[index], recording.layout
        )
        return maps.cpu()


@dataclass(frozen=True)
class ProbeSettings:
    """What makes two callbacks' probes the same."""

    size: int
    seed: int
    module: str | None


# Per trainer: the probe of each (stage, settings) and the latest analysis.
_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ANALYSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def shared_probe(
    trainer: Trainer, pl_module: LightningModule, stage: str, settings: ProbeSettings
) -> Probe:
    """The probe of ``stage`` for these settings, selected once per trainer."""
    probes = _PROBES.setdefault(trainer, {})
    key = (stage, settings.size, settings.seed)
    if key not in probes:
        probes[key] = select_probe(trainer, pl_module, stage, settings.size, settings.seed)
    return probes[key]


def register_probe(trainer: Trainer, stage: str, settings: ProbeSettings, probe: Probe) -> None:
    """Use ``probe`` (e.g. restored from a checkpoint) for these settings."""
    _PROBES.setdefault(trainer, {})[(stage, settings.size, settings.seed)] = probe


def shared_analysis(
    trainer: Trainer, pl_module: LightningModule, stage: str, settings: ProbeSettings, probe: Probe
) -> ProbeAnalysis:
    """The captured probe pass of this step, computed once for all callbacks.

    Only the latest analysis per trainer is kept, so memory stays flat.
    """
    key = (stage, trainer.current_epoch, trainer.global_step, settings, id(probe))
    cached = _ANALYSES.get(trainer)
    if cached is not None and cached[0] == key:
        return cached[1]
    recorder = AttentionRecorder(pl_module, vit_name=settings.module)
    images = probe.images.to(pl_module.device)
    labels = probe.labels.to(pl_module.device)
    recording = recorder.record(images, grad_targets=[None, labels])
    analysis = ProbeAnalysis(probe=probe, recording=recording, stage=stage)
    _ANALYSES[trainer] = (key, analysis)
    return analysis


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
            batch = pl_module._apply_batch_transfer_handler(batch)
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


def select_probe(
    trainer: Trainer, pl_module: LightningModule, stage: str, size: int, seed: int
) -> Probe:
    """``size`` images of ``stage``, class-balanced, chosen with ``seed``.

    Scans up to :data:`MAX_SCAN_IMAGES` images; each class gets
    ``size // classes`` images (the first classes one more when it does not
    divide), drawn with a seeded permutation.

    Raises:
        ValueError: When the dataloader has fewer than ``size`` images.
    """
    batches = list(iterate_batches(trainer, pl_module, stage, max(MAX_SCAN_IMAGES, size)))
    images = torch.cat([images for images, _ in batches]).cpu()
    labels = torch.cat([labels for _, labels in batches]).cpu().long()
    if len(images) < size:
        raise ValueError(
            f"probe_size={size} but the {stage} set has only {len(images)} images; "
            f"use probe_size <= {len(images)}."
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    chosen = balanced_choice(labels[order], size)
    indices = order[chosen].sort().values
    return Probe(
        images=images[indices],
        labels=labels[indices],
        pixels=to_pixels(trainer, images[indices]),
        indices=indices,
    )


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
    """The data module's ``class_names``, else ``"0"``, ``"1"``, ..."""
    names = getattr(trainer.datamodule, "class_names", None)
    return list(names) if names else [str(index) for index in range(num_classes)]
