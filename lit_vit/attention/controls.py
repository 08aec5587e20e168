"""Maps that know nothing about the model, and a non-attention explainer to compare with.

An explainer worth showing beats every control, not only a random order:
garments fill most of a Fashion-MNIST image, so a map of the image's own
brightness may point at "the object" as well as attention does. Each control
is a ``(B, gh, gw)`` map over the patches, renormalised to sum 1:

- **random**: i.i.d. uniform values per patch, seeded per image (image ``b``
  uses seed ``seed + b``);
- **intensity**: the mean raw pixel value of each patch (pixels in [0, 1]);
- **edges**: the mean Sobel gradient magnitude of the raw image (channels
  averaged, borders replicated) in each patch;
- **centre**: a Gaussian centred on the grid, ``sigma = max(gh, gw) / 4``
  patches.

:func:`input_x_gradient` is the explainer: the gradient of the target logit
with respect to the input, times the input, summed over the channels and the
pixels of each patch, absolute value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_vit.attention._validate import renormalize
from lit_vit.attention.backends import eval_mode_dtype, model_logits
from lit_vit.attention.layout import TokenLayout

__all__ = ["CONTROLS", "centre_control", "controls", "input_x_gradient"]

CONTROLS = ("random", "intensity", "edges", "centre")
# Sobel's horizontal derivative; its transpose is the vertical one.
SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def controls(pixels: Tensor, layout: TokenLayout, seed: int = 0) -> dict[str, Tensor]:
    """Every control map of ``pixels``.

    Args:
        pixels: ``(B, C, H, W)`` raw images in [0, 1], ``H = gh * ph``, ``W = gw * pw``.
        layout: the model's token layout for this size.
        seed: image ``b``'s random map uses seed ``seed + b``.

    Returns:
        ``{"random", "intensity", "edges", "centre"}`` -> ``(B, gh, gw)`` float32, each
        map non-negative and summing to 1.

    Raises:
        ValueError: ``pixels`` not ``(B, C, gh * ph, gw * pw)``.
    """
    pixels = _check_pixels(pixels, layout)
    return {
        "random": _random_control(len(pixels), layout, seed),
        "intensity": _per_patch(pixels.mean(dim=1, keepdim=True), layout),
        "edges": _per_patch(_sobel_magnitude(pixels.mean(dim=1, keepdim=True)), layout),
        "centre": centre_control(layout).expand(len(pixels), -1, -1).clone(),
    }


def centre_control(layout: TokenLayout) -> Tensor:
    """``(1, gh, gw)`` Gaussian centred on the grid, ``sigma = max(gh, gw) / 4``, sum 1."""
    gh, gw = layout.grid_size
    sigma = max(gh, gw) / 4
    rows = torch.arange(gh, dtype=torch.float32) - (gh - 1) / 2
    cols = torch.arange(gw, dtype=torch.float32) - (gw - 1) / 2
    squared = rows[:, None] ** 2 + cols[None, :] ** 2
    return renormalize(torch.exp(-squared / (2 * sigma**2)).flatten())[None].reshape(1, gh, gw)


def input_x_gradient(
    model: nn.Module, images: Tensor, layout: TokenLayout, targets: Tensor | None = None
) -> Tensor:
    """Input x gradient per patch: ``|sum over channels and patch pixels of x * d logit_c / dx|``.

    The model runs once in eval mode (its modes restored afterwards), with
    gradients even under ``torch.inference_mode``.

    Args:
        model: maps ``(B, C, H, W)`` images to ``(B, K)`` logits (or an output with
            ``.logits``, or a tuple starting with them).
        images: ``(B, C, gh * ph, gw * pw)`` images as the model takes them.
        layout: the model's token layout for this size.
        targets: ``(B,)`` classes; ``None`` for the predicted ones.

    Returns:
        ``(B, gh, gw)`` float32, non-negative, sums to 1 (uniform where it is all 0).

    Raises:
        ValueError: bad image shape, or a model that returns no logits.
    """
    _check_pixels(images, layout, name="images")
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            x = images.detach().to(eval_mode_dtype(model)).clone().requires_grad_(True)
            logits = model_logits(model(x))
            if logits is None:
                raise ValueError("input_x_gradient needs a model that returns (B, K) logits.")
            if targets is None:
                targets = logits.detach().argmax(dim=-1)
            # A clone outside inference mode: an index made under it cannot enter autograd.
            index = targets.to(logits.device, torch.long).clone().view(-1, 1)
            score = logits.gather(1, index).sum()
            (gradient,) = torch.autograd.grad(score, x)
    finally:
        for module, training in modes:
            module.training = training
    product = (gradient * x.detach()).float().sum(dim=1, keepdim=True)  # (B, 1, H, W)
    ph, pw = layout.patch_size
    per_patch = F.avg_pool2d(product, (ph, pw)) * (ph * pw)  # sums over each patch
    return renormalize(per_patch.abs().flatten(1)).reshape(-1, *layout.grid_size)


def _check_pixels(pixels: Tensor, layout: TokenLayout, name: str = "pixels") -> Tensor:
    (gh, gw), (ph, pw) = layout.grid_size, layout.patch_size
    if (
        not isinstance(pixels, Tensor)
        or pixels.dim() != 4
        or pixels.shape[-2:]
        != (
            gh * ph,
            gw * pw,
        )
    ):
        shape = tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__
        raise ValueError(
            f"{name} must be (B, C, {gh * ph}, {gw * pw}) for a {gh}x{gw} grid of {ph}x{pw} "
            f"patches, got {shape}."
        )
    return pixels.float()


def _per_patch(values: Tensor, layout: TokenLayout) -> Tensor:
    """``(B, 1, H, W)`` -> ``(B, gh, gw)`` patch means, renormalised to sum 1."""
    means = F.avg_pool2d(values, layout.patch_size)
    return renormalize(means.flatten(1)).reshape(-1, *layout.grid_size)


def _sobel_magnitude(gray: Tensor) -> Tensor:
    """``(B, 1, H, W)`` -> ``(B, 1, H, W)`` Sobel gradient magnitude, borders replicated."""
    kernels = torch.stack([SOBEL, SOBEL.T])[:, None].to(gray)  # (2, 1, 3, 3)
    gradients = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)
    return gradients.pow(2).sum(dim=1, keepdim=True).sqrt()


def _random_control(batch: int, layout: TokenLayout, seed: int) -> Tensor:
    maps = [
        torch.rand(layout.num_patches, generator=torch.Generator().manual_seed(seed + image))
        for image in range(batch)
    ]
    return renormalize(torch.stack(maps)).reshape(batch, *layout.grid_size)
