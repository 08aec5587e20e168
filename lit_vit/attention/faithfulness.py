"""Deletion / insertion AUC of a patch saliency map (Petsiuk et al., BMVC 2018).

Patch level: patches are ordered by decreasing saliency; for the fractions
``0, 1/T, ..., 1`` of the ``G`` patches, the most salient ones are replaced by a
baseline (deletion) or revealed on an all-baseline image (insertion), and the
softmax probability of the class predicted on the clean image is recorded. The
score is the trapezoidal area under that curve over the fraction axis, both end
points included. A good saliency map gives a *low* deletion AUC (the evidence
goes first) and a *high* insertion AUC (the evidence comes first). Both are
always computed beside the same AUC for a random patch order (seeded): a number
means something only next to that reference.

Several saliency maps of the same images can be scored in one call: they share
the random order, its curves and the clean-image prediction, so ``S`` maps
cost ``2 (S + 1)`` curves per image instead of ``4 S``. All masked copies
(orders x deletion / insertion x ``T + 1`` fractions x ``B`` images) are
described by one boolean patch mask; the pixel images are built from it chunk by
chunk, each chunk of at most ``max_batch`` images one forward pass. The predicted
class comes from the fraction-0 deletion copies (the clean images), so no extra
forward pass is needed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, overload

import torch
from torch import Tensor, nn

from lit_vit.attention.backends import eval_mode_dtype, model_logits

if TYPE_CHECKING:
    from typing_extensions import TypedDict, Unpack

    from lit_vit.attention.layout import TokenLayout

    class _AucOptions(TypedDict, total=False):
        """The keyword arguments of :func:`deletion_insertion_auc`, for its overloads."""

        steps: int
        baseline: float | Literal["blur"] | None
        insertion: bool
        max_batch: int
        seed: int


__all__ = ["FaithfulnessResult", "classifier_logits", "deletion_insertion_auc", "gaussian_blur"]


@dataclass(frozen=True)
class FaithfulnessResult:
    """Deletion / insertion scores of a batch of saliency maps.

    Attributes:
        deletion: ``(B,)`` AUC of the deletion curve in the saliency order (lower is better).
        insertion: ``(B,)`` AUC of the insertion curve in the saliency order (higher is better).
        random_deletion: ``(B,)`` deletion AUC for a random patch order (seeded).
        random_insertion: ``(B,)`` insertion AUC for the same random order.
        fractions: ``(T + 1,)`` nominal fractions ``0, 1/T, ..., 1`` (the x axis of the AUC).
        deletion_curve: ``(B, T + 1)`` softmax probability of the clean-predicted class.
        insertion_curve: ``(B, T + 1)`` same, insertion.
        random_deletion_curve: ``(B, T + 1)`` deletion curve of the random order.
        random_insertion_curve: ``(B, T + 1)`` insertion curve of the random order.
        predicted: ``(B,)`` class predicted on the clean images (the class whose
            probability the curves follow).
        baseline: ``(B,)`` baseline value used for each image (NaN for the blurred one).
        forward_passes: number of model forward calls of the call that made it
            (shared by all the maps scored together).
    """

    deletion: Tensor
    insertion: Tensor
    random_deletion: Tensor
    random_insertion: Tensor
    fractions: Tensor
    deletion_curve: Tensor
    insertion_curve: Tensor
    forward_passes: int
    random_deletion_curve: Tensor
    random_insertion_curve: Tensor
    predicted: Tensor
    baseline: Tensor

    @classmethod
    def cat(cls, parts: Sequence[FaithfulnessResult]) -> FaithfulnessResult:
        """The results of several batches as one: per-image fields concatenated on the CPU,
        forward passes summed."""
        shared = ("fractions", "forward_passes")
        names = [field.name for field in dataclasses.fields(cls) if field.name not in shared]
        return cls(
            **{name: torch.cat([getattr(part, name).cpu() for part in parts]) for name in names},
            fractions=parts[0].fractions.cpu(),
            forward_passes=sum(part.forward_passes for part in parts),
        )


def _patch_size(patch_size: int | tuple[int, int] | TokenLayout) -> tuple[int, int]:
    """Normalise ``patch_size`` (an int, an ``(ph, pw)`` pair or a layout) to a pair."""
    if hasattr(patch_size, "patch_size"):  # a TokenLayout
        patch_size = patch_size.patch_size
    if isinstance(patch_size, int):
        patch_size = (patch_size, patch_size)
    try:
        ph, pw = (int(p) for p in patch_size)
    except (TypeError, ValueError):
        raise ValueError(
            f"patch_size must be an int, a (ph, pw) pair or a TokenLayout, got {patch_size!r}"
        ) from None
    if ph < 1 or pw < 1:
        raise ValueError(f"patch_size must be positive, got {(ph, pw)}")
    return ph, pw


def _counts(steps: int, num_patches: int) -> Tensor:
    """Number of patches moved at each fraction: ``round(t / T * G)``, halves rounded up.

    Integer arithmetic, so the end points are exactly 0 and ``G``.

    Returns:
        ``(T + 1,)`` int64.
    """
    t = torch.arange(steps + 1)
    return (2 * t * num_patches + steps) // (2 * steps)


@overload
def deletion_insertion_auc(
    model: nn.Module,
    images: Tensor,
    saliency: Tensor,
    patch_size: int | tuple[int, int] | TokenLayout,
    **options: Unpack[_AucOptions],
) -> FaithfulnessResult: ...


@overload
def deletion_insertion_auc(
    model: nn.Module,
    images: Tensor,
    saliency: Mapping[str, Tensor],
    patch_size: int | tuple[int, int] | TokenLayout,
    **options: Unpack[_AucOptions],
) -> dict[str, FaithfulnessResult]: ...


def deletion_insertion_auc(
    model: nn.Module,
    images: Tensor,
    saliency: Tensor | Mapping[str, Tensor],
    patch_size: int | tuple[int, int] | TokenLayout,
    *,
    steps: int = 16,
    baseline: float | Literal["blur"] | None = None,
    insertion: bool = True,
    max_batch: int = 512,
    seed: int = 0,
) -> FaithfulnessResult | dict[str, FaithfulnessResult]:
    """Deletion and insertion AUC of saliency maps, beside a random-order reference.

    At step ``t`` of ``T = steps`` the ``round(t / T * G)`` first patches of the
    order (ties in the saliency broken by patch index) are replaced by the
    baseline (deletion) or are the only ones kept on an all-baseline image
    (insertion). The curves follow the softmax probability of the class the
    model predicts on the clean image. Deletion at fraction 1 and insertion at
    fraction 0 are both the all-baseline image; deletion at 0 and insertion at 1
    are the clean image.

    The model runs in eval mode under ``torch.inference_mode()``; the training flag of
    every submodule is restored afterwards. Inputs are not modified.

    Args:
        model: maps ``(n, C, H, W)`` images to ``(n, num_classes)`` logits (or to
            a tuple starting with them).
        images: ``(B, C, H, W)`` images exactly as the model takes them (normalised).
        saliency: ``(B, gh, gw)`` saliency over the patch grid, with
            ``gh * ph == H`` and ``gw * pw == W``; larger means more salient. Or
            a mapping of names to such maps, scored together against one random
            order (cheaper than one call per map, same numbers).
        patch_size: ``(ph, pw)``, an int, or a ``TokenLayout`` (its ``patch_size``).
        steps: number ``T`` of intervals on the fraction axis; ``T + 1`` points.
        baseline: what removed pixels become. ``None`` (default): per image, the
            minimum of the normalised image (its background value); a number: that
            value; ``"blur"``: the image blurred with a Gaussian of ``sigma`` = the
            patch size (:func:`gaussian_blur`), so a removed patch keeps the
            image's coarse shape and brightness instead of becoming a hole.
        insertion: ``False`` runs the deletion curves only (half the forward
            passes); the insertion fields are then NaN.
        max_batch: largest number of images in one forward pass.
        seed: seed of the random patch order (a CPU ``torch.Generator``; the
            global RNG is not touched).

    Returns:
        A :class:`FaithfulnessResult`, or for a mapping a dict of them under the
        same names (their random-order fields are equal). Of the
        ``2 * (S + 1) * B * (T + 1)`` masked copies for ``S`` maps (half without
        insertion), each
        distinct one runs once (the clean and all-baseline images end every
        curve): ``forward_passes`` is ``ceil(distinct / max_batch)``.

    Raises:
        ValueError: ``images`` is not a non-empty 4-D batch, a saliency map
            does not match the batch size or the patch grid of the images,
            the mapping is empty, ``steps`` or ``max_batch`` is smaller than
            1, a saliency map has NaN or inf values, or the model does not
            return ``(n, num_classes)`` logits.
    """
    ph, pw = _patch_size(patch_size)
    _check_arguments(baseline, steps, max_batch)
    maps, grid = checked_maps(images, saliency, (ph, pw))
    b = len(images)
    num_patches = grid[0] * grid[1]
    device = images.device

    base, fill = _removed_pixels(images, baseline, (ph, pw))
    ranks = _patch_ranks(maps, num_patches, seed, device)  # (S+1, B, G): random order last

    # moved[o, b, t, j]: patch j is among the first counts[t] of order o.
    counts = _counts(steps, num_patches).to(device)
    moved = ranks[:, :, None, :] < counts[None, None, :, None]  # (S+1, B, T+1, G)
    # keep[o, k, b, t, j]: patch j shows the image (True) or the baseline (False);
    # k = 0 deletion keeps the non-moved patches, k = 1 insertion the moved ones.
    directions = 2 if insertion else 1
    keep = torch.stack([~moved, moved], dim=1)[:, :directions]  # (S+1, D, B, T+1, G)
    keep = keep.reshape(-1, *grid)  # (D (S+1) B (T+1), gh, gw)
    image_index = torch.arange(b, device=device).repeat_interleave(steps + 1)
    image_index = image_index.repeat(keep.shape[0] // len(image_index))

    # Many copies are the same input: the clean and the all-baseline image of every curve's
    # ends, and the first steps of orders that agree. Each distinct one runs once.
    copies = torch.cat([image_index[:, None], keep.flatten(1).long()], dim=1)  # (M, 1 + G)
    distinct, copy_of = torch.unique(copies, dim=0, return_inverse=True)
    logits, forward_passes = _masked_logits(
        model, images, distinct[:, 1:].bool().view(-1, *grid), distinct[:, 0], fill, (ph, pw),
        max_batch,
    )  # fmt: skip
    logits = logits[copy_of].view(len(ranks), directions, b, steps + 1, -1)  # (S+1, D, B, T+1, K)
    predicted = logits[0, 0, :, 0].argmax(dim=-1)  # deletion at fraction 0 = clean image
    index = predicted.view(1, 1, b, 1, 1).expand(*logits.shape[:-1], 1)
    curves = logits.softmax(dim=-1).gather(-1, index).squeeze(-1)  # (S+1, D, B, T+1)
    if not insertion:
        curves = torch.cat([curves, torch.full_like(curves, math.nan)], dim=1)  # (S+1, 2, B, T+1)
    fractions = torch.arange(steps + 1, dtype=torch.float32, device=curves.device) / steps
    aucs = torch.trapezoid(curves, x=fractions, dim=-1)  # (S+1, 2, B)

    results = {
        name: FaithfulnessResult(
            deletion=aucs[o, 0],
            insertion=aucs[o, 1],
            random_deletion=aucs[-1, 0],
            random_insertion=aucs[-1, 1],
            fractions=fractions,
            deletion_curve=curves[o, 0],
            insertion_curve=curves[o, 1],
            forward_passes=forward_passes,
            random_deletion_curve=curves[-1, 0],
            random_insertion_curve=curves[-1, 1],
            predicted=predicted,
            baseline=base.float(),
        )
        for o, name in enumerate(maps)
    }
    return results if isinstance(saliency, Mapping) else results["saliency"]


def _check_arguments(baseline: object, steps: object, max_batch: object) -> None:
    if not (baseline is None or baseline == "blur" or isinstance(baseline, int | float)):
        raise ValueError(f"baseline must be None, a number or 'blur', got {baseline!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")


def _removed_pixels(
    images: Tensor, baseline: float | str | None, patch: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """The ``(B,)`` baseline value of each image (NaN for ``"blur"``) and the pixels a removed
    patch takes: ``(B, C, H, W)`` blurred images, or ``(B, 1, 1, 1)`` for a constant."""
    b, device = len(images), images.device
    if baseline == "blur":
        base = torch.full((b,), math.nan, device=device)
        return base, gaussian_blur(images.detach(), sigma=float(max(patch)))
    if baseline is None:
        base = images.detach().amin(dim=(1, 2, 3))
    else:
        base = torch.full((b,), float(baseline), dtype=images.dtype, device=device)
    return base, base.view(-1, 1, 1, 1)


def _patch_ranks(
    maps: Mapping[str, Tensor], num_patches: int, seed: int, device: torch.device
) -> Tensor:
    """``(S + 1, B, G)`` rank of each patch in each map's order (most salient first, ties by
    patch index), then in a random order drawn with ``seed``, on ``device``."""
    b = next(iter(maps.values())).shape[0]
    saliency_orders = [
        torch.argsort(
            values.detach().reshape(b, num_patches).float(), dim=1, descending=True, stable=True
        ).to(device)
        for values in maps.values()
    ]
    generator = torch.Generator().manual_seed(seed)
    random_order = torch.rand(b, num_patches, generator=generator).argsort(dim=1).to(device)
    orders = torch.stack([*saliency_orders, random_order])  # order[o, b, k] = patch at k
    positions = torch.arange(num_patches, device=device).expand_as(orders)
    return torch.empty_like(orders).scatter_(2, orders, positions)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """``(B, C, H, W)`` images blurred with a Gaussian of ``sigma`` pixels (torchvision's
    ``gaussian_blur``: kernel ``2 * ceil(3 sigma) + 1``, at most what the image size allows,
    reflected borders)."""
    from torchvision.transforms.v2.functional import gaussian_blur as blur

    largest = 2 * (min(images.shape[-2:]) - 1) - 1  # reflect padding needs radius < size
    kernel = min(2 * math.ceil(3 * sigma) + 1, max(largest, 1))
    return blur(images, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def checked_maps(
    images: Tensor, saliency: Tensor | Mapping[str, Tensor], patch: tuple[int, int]
) -> tuple[dict[str, Tensor], tuple[int, int]]:
    """Check a batch of images and its saliency maps once, for every perturbation metric.

    Args:
        images: ``(B, C, H, W)`` images, ``B >= 1``, ``H`` and ``W`` multiples of the patch.
        saliency: A ``(B, gh, gw)`` map, or names -> such maps.
        patch: ``(ph, pw)``.

    Returns:
        The maps by name (a single map is named ``"saliency"``) and the grid ``(gh, gw)``.

    Raises:
        ValueError: Any of the above not so, an empty mapping, or a map with NaN or inf.
    """
    ph, pw = patch
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be (B, C, H, W), got shape {shape}")
    b, _, h, w = images.shape
    if b == 0:
        raise ValueError("images is an empty batch (B = 0)")
    if h % ph or w % pw:
        raise ValueError(f"image size {(h, w)} is not a multiple of the patch size {(ph, pw)}")
    grid = (h // ph, w // pw)
    maps = dict(saliency) if isinstance(saliency, Mapping) else {"saliency": saliency}
    if not maps:
        raise ValueError("saliency is an empty mapping; pass at least one (B, gh, gw) map")
    for name, values in maps.items():
        _check_saliency(values, name, (b, *grid), images.shape, (ph, pw))
    return maps, grid


def _check_saliency(
    saliency: object,
    name: str,
    expected: tuple[int, int, int],
    image_shape: torch.Size,
    patch: tuple[int, int],
) -> None:
    """Raise unless ``saliency`` is a finite ``(B, gh, gw)`` Tensor."""
    if not isinstance(saliency, Tensor) or saliency.shape != expected:
        got = tuple(saliency.shape) if isinstance(saliency, Tensor) else type(saliency).__name__
        raise ValueError(
            f"{name} must be (B, gh, gw) = {expected} for images {tuple(image_shape)} "
            f"and patch size {patch}, got {got}"
        )
    if not bool(torch.isfinite(saliency).all()):
        raise ValueError(f"{name} has NaN or inf values; its order would be undefined")


def _masked_logits(
    model: nn.Module,
    images: Tensor,
    keep: Tensor,
    image_index: Tensor,
    fill: Tensor,
    patch: tuple[int, int],
    max_batch: int,
) -> tuple[Tensor, int]:
    """Logits of every masked copy, ``max_batch`` copies per forward pass.

    Args:
        model: the classifier; put in eval mode for the passes, modes restored.
        images: ``(B, C, H, W)`` clean images.
        keep: ``(M, gh, gw)`` bool, patch shows the image (True) or the baseline.
        image_index: ``(M,)`` which image each copy is made of.
        fill: ``(B, C, H, W)`` (or broadcastable) baseline pixels of each image.
        patch: ``(ph, pw)``.
        max_batch: most copies per pass.

    Returns:
        ``(M, K)`` float32 logits and the number of forward passes.
    """
    ph, pw = patch

    def copies() -> Iterator[Tensor]:
        for start in range(0, keep.shape[0], max_batch):
            idx = image_index[start : start + max_batch]
            mask = keep[start : start + max_batch]
            mask = mask.repeat_interleave(ph, dim=1).repeat_interleave(pw, dim=2)
            yield torch.where(mask[:, None], images[idx], fill[idx].to(images.dtype))

    return classifier_logits(model, copies())


def classifier_logits(model: nn.Module, batches: Iterable[Tensor]) -> tuple[Tensor, int]:
    """Logits of every image of ``batches``, one forward pass per batch, without gradients.

    The model runs in eval mode; the training flag of every submodule is restored.

    Args:
        model: maps ``(n, C, H, W)`` images to ``(n, K)`` logits (or an output carrying them).
        batches: ``(n, C, H, W)`` batches of images as the model takes them (cast to the
            dtype of the model's parameters: a bf16 or float64 model gets its own).

    Returns:
        ``(M, K)`` float32 logits of all ``M`` images, in order, and the number of passes.

    Raises:
        ValueError: The model does not return ``(n, K)`` logits.
    """
    chunks: list[Tensor] = []
    modes = [(m, m.training) for m in model.modules()]
    dtype = eval_mode_dtype(model)  # masked copies are built in the images' dtype
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                output = model(batch.to(dtype))
                out = model_logits(output)
                if out is None:
                    out = output
                if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != len(batch):
                    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(
                        f"model must return (n, num_classes) logits for n = {len(batch)} "
                        f"images, got {got}"
                    )
                chunks.append(out.detach().float())
    finally:
        for module, training in modes:
            module.train(training)
    return torch.cat(chunks), len(chunks)
