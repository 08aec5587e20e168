"""Evaluate one trained ViT at several input resolutions.

For each size the model is deep-copied and the copy's ViT set to that size the
way its family does it (:meth:`~lit_vit.attention.backends.CaptureBackend.resized_copy`):
timm's ``set_input_size`` (the patch grid updated, the absolute position
embeddings resampled with ``resample_abs_pos_embed``, bicubic, antialiased, the
same as ``dynamic_img_size``), Hugging Face's ``interpolate_pos_encoding``, or
torchvision's ``interpolate_embeddings`` (square sizes). Images are resized
bilinearly (antialiased when shrinking). The caller's model is never modified.

Per size: accuracy over all images; from the attention of a probe batch, the
relative mean attention distance, normalised entropy and effective area per
layer (means over heads), and the focus / coverage of the rollout maps; and the
plain forward time per image. Compare resolutions with the relative distance and
the effective area: unlike pixel distances and normalised entropy they do not
move merely because the same map is sampled on a finer grid.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_vit._arguments import check_counts
from lit_vit.attention.backends import (
    CaptureBackend,
    eval_mode_dtype,
    find_backend,
    model_logits,
)
from lit_vit.attention.capture import AttentionRecorder
from lit_vit.attention.metrics import coverage, focus_score

__all__ = ["ResolutionResult", "check_size", "resize_images", "resolution_sweep"]


@dataclass(frozen=True)
class ResolutionResult:
    """Measures of one model at one input size.

    Attributes:
        image_size: ``(h, w)`` input size in pixels.
        grid_size: ``(gh, gw)`` patch grid at that size.
        accuracy: top-1 accuracy over all images, in [0, 1].
        relative_distance: ``(L,)`` relative mean attention distance per layer
            (mean over heads); 1.0 is as global as uniform attention.
        entropy: ``(L,)`` normalised attention entropy per layer (mean over heads).
        effective_area: ``(L,)`` effective area per layer (mean over heads).
        focus: ``(B',)`` focus@0.1 of the rollout map of each probe image.
        coverage: ``(B',)`` coverage@0.5 of the rollout map of each probe image.
        rollout_maps: ``(B', gh, gw)`` rollout maps of the probe images.
        seconds_per_image: plain forward time per image (fused attention, no
            recorder, eval, ``no_grad``; best of ``timing_repeats`` on the probe batch).

    ``B' = min(B, batch_size)``: the probe batch is the first ``B'`` images.
    """

    image_size: tuple[int, int]
    grid_size: tuple[int, int]
    accuracy: float
    relative_distance: Tensor
    entropy: Tensor
    effective_area: Tensor
    focus: Tensor
    coverage: Tensor
    rollout_maps: Tensor
    seconds_per_image: float


def _as_pair(size: int | Sequence[int], what: str) -> tuple[int, int]:
    """``int`` or ``(h, w)`` -> ``(h, w)`` of positive ints."""
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ValueError(f"{what} must be a positive int or an (h, w) pair, got {size!r}")
    return pair  # type: ignore[return-value]


def check_size(size: int | Sequence[int], patch: tuple[int, int]) -> tuple[int, int]:
    """``size`` as ``(h, w)``, checked to be a multiple of the patch size.

    Raises:
        ValueError: ``size`` is not a positive int or pair, or is off the patch
            grid (the message names the nearest valid sizes).
    """
    pair = _as_pair(size, "size")
    if pair[0] % patch[0] == 0 and pair[1] % patch[1] == 0:
        return pair
    options = []
    for s, p in zip(pair, patch, strict=True):
        below, above = (s // p) * p, (s // p + 1) * p
        options.append([s] if s % p == 0 else [v for v in (below, above) if v > 0])
    if isinstance(size, int) and patch[0] == patch[1]:
        nearest = " or ".join(str(v) for v in options[0])
    else:
        nearest = " or ".join(f"({h}, {w})" for h in options[0] for w in options[1])
    raise ValueError(
        f"size {size!r} is not a multiple of the patch size {patch[0]}x{patch[1]}; "
        f"nearest valid sizes: {nearest}"
    )


def resize_images(images: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bilinear resize of ``(B, C, H, W)`` images, antialiased when any side shrinks.

    Args:
        images: ``(B, C, H, W)`` float images.
        size: the new side (square) or ``(h, w)``.

    Returns:
        ``(B, C, h, w)``; ``images`` itself when it already has that size.
    """
    target = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == target:
        return images
    shrink = target[0] < images.shape[-2] or target[1] < images.shape[-1]
    return F.interpolate(
        images, size=target, mode="bilinear", align_corners=False, antialias=shrink
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolution_sweep(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    sizes: Sequence[int | tuple[int, int]],
    *,
    vit_name: str | None = None,
    batch_size: int = 256,
    timing_repeats: int = 3,
) -> list[ResolutionResult]:
    """Accuracy, attention measures and speed of a trained ViT at several input sizes.

    Args:
        model: a module whose forward maps images to ``(n, num_classes)``
            logits (or a tuple starting with them, or an output with ``.logits``):
            a ViT of timm, Hugging Face or torchvision, or a wrapper containing one.
        images: ``(B, C, H, W)`` images as the model takes them (normalised),
            at any size; they are resized to each size of the sweep.
        labels: ``(B,)`` integer class labels.
        sizes: input sizes, each an int (square) or ``(h, w)``, each a
            multiple of the patch size. The training size may be included: it
            reproduces the unmodified model.
        vit_name: qualified name of the ViT inside ``model`` when there are
            several (see :func:`find_vit`).
        batch_size: images per forward pass for accuracy, and size of the probe
            batch (the first ``batch_size`` images) whose attention is recorded.
            The recording holds ``L * B' * H * N^2`` float32 values: lower
            ``batch_size`` for large sizes.
        timing_repeats: timed repeats of the plain forward; the best is kept.

    Returns:
        One :class:`ResolutionResult` per size, in the order of ``sizes``.

    Raises:
        ValueError: empty batch, ``labels`` not ``(B,)``, empty ``sizes``, a
            size that is not a multiple of the patch size (the message names
            the nearest valid sizes), ``batch_size`` / ``timing_repeats`` < 1,
            or a size the family cannot take (see ``resized_copy``).
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            f"images must be a non-empty (B, C, H, W) batch, got {tuple(images.shape)}"
        )
    if labels.shape != images.shape[:1]:
        raise ValueError(
            f"labels must be (B,) = {tuple(images.shape[:1])}, got {tuple(labels.shape)}"
        )
    check_counts("", batch_size=batch_size, timing_repeats=timing_repeats)
    if len(sizes) == 0:
        raise ValueError("sizes is empty")

    backend = find_backend(model, vit_name)
    patch = backend.layout(backend.input_size()).patch_size
    pairs = [check_size(s, patch) for s in sizes]
    return [
        _at_size(model, backend, images, labels, size, batch_size, timing_repeats) for size in pairs
    ]


def _at_size(
    model: nn.Module,
    backend: CaptureBackend,
    images: Tensor,
    labels: Tensor,
    size: tuple[int, int],
    batch_size: int,
    timing_repeats: int,
) -> ResolutionResult:
    """One size of the sweep: accuracy on every image, attention of the first ``batch_size``,
    the best of ``timing_repeats`` timed forwards of them."""
    resized = backend.resized_copy(model, size).eval()
    device = next(resized.parameters()).device
    # Resized in float32, then in the model's own dtype (bf16, float64, ...).
    x = resize_images(images.detach().to(device), size).to(eval_mode_dtype(resized))
    correct = 0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            pred = model_logits(resized(x[start : start + batch_size])).argmax(dim=-1)
            correct += int((pred == labels[start : start + batch_size].to(pred.device)).sum())
    probe = x[:batch_size]
    recording = AttentionRecorder(resized, vit_name=backend.vit_name or None).record(
        probe, full=False
    )
    reduced = recording.reduced
    distance, entropy, maps = (
        reduced.mean_attention_distance(), reduced.attention_entropy(), reduced.rollout()
    )  # fmt: skip
    best = float("inf")
    with torch.no_grad():
        for _ in range(timing_repeats):
            _sync(device)
            start = time.perf_counter()
            resized(probe)
            _sync(device)
            best = min(best, time.perf_counter() - start)
    return ResolutionResult(
        image_size=size,
        grid_size=recording.layout.grid_size,
        accuracy=correct / x.shape[0],
        relative_distance=distance.relative.mean(dim=-1),
        entropy=entropy.normalized.mean(dim=-1),
        effective_area=entropy.effective_area.mean(dim=-1),
        focus=focus_score(maps, k=0.1),
        coverage=coverage(maps, m=0.5),
        rollout_maps=maps,
        seconds_per_image=best / probe.shape[0],
    )
