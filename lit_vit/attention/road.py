"""ROAD: remove the most (or least) relevant patches and debias the holes (Rong et al. 2022).

A hole of one constant colour tells the model "something was removed here",
whatever was removed: on dark-background garments, deleting bright patches
first wins under a constant baseline whatever the model does. ROAD fills
every removed pixel by **noisy linear imputation** instead, so the removed
region carries no shape of its own:

- each removed pixel is the weighted mean of its 8 neighbours (1/6 for the 4
  direct ones, 1/12 for the 4 diagonal ones; neighbours outside the image are
  left out and the weights renormalised), solved jointly for all removed pixels
  of an image as one sparse linear system per channel;
- plus Gaussian noise (``sigma``, seeded) on the imputed pixels.

For fractions ``p`` in ``0.1, ..., 0.9`` of the patches, the most relevant
(MoRF) or the least relevant (LeRF) ones are removed, and the probability of
the class predicted on the clean image is recorded. A faithful map gives a
low MoRF curve and a high LeRF curve: the AUCs here are the trapezoidal area
over the fractions divided by their span, so a curve that stays at ``q``
scores ``q``; ``LeRF - MoRF`` is higher for a better map.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve
from torch import Tensor, nn

from lit_vit.attention.faithfulness import _patch_size, checked_maps, classifier_logits

__all__ = ["ROAD_FRACTIONS", "RoadResult", "noisy_linear_imputation", "road"]

ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# (row offset, column offset, weight) of the 8 neighbours of a pixel.
NEIGHBOURS = (
    (-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12),
    (0, -1, 1 / 6), (0, 1, 1 / 6),
    (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12),
)  # fmt: skip
# At most this many images are solved as one block-diagonal system (fewer calls, the same
# solution); a batch is split into at least as many systems as there are threads.
IMAGES_PER_SOLVE = 32


@dataclass(frozen=True)
class RoadResult:
    """ROAD scores of one saliency map on a batch.

    Attributes:
        morf: ``(B,)`` AUC when the most relevant patches go first (lower is better).
        lerf: ``(B,)`` AUC when the least relevant patches go first (higher is better).
        morf_curve: ``(B, P)`` probability of the clean-predicted class per fraction.
        lerf_curve: ``(B, P)`` the same, least relevant first.
        fractions: ``(P,)`` fractions of the patches removed.
        predicted: ``(B,)`` class predicted on the clean images.
    """

    morf: Tensor
    lerf: Tensor
    morf_curve: Tensor
    lerf_curve: Tensor
    fractions: Tensor
    predicted: Tensor


def noisy_linear_imputation(
    images: Tensor, removed: Tensor, sigma: float = 0.01, seed: int = 0
) -> Tensor:
    """Fill the ``removed`` pixels of ``images`` from their neighbours, plus seeded noise.

    Every removed pixel equals the weighted mean of its in-image neighbours
    (weights 1/6 direct, 1/12 diagonal, renormalised over the neighbours
    present), known or removed: one sparse linear system per image and channel,
    solved exactly. Known pixels are returned unchanged.

    Args:
        images: ``(B, C, H, W)`` images.
        removed: ``(B, H, W)`` bool, True where a pixel is removed.
        sigma: Standard deviation of the Gaussian noise added to imputed pixels
            (0: deterministic).
        seed: Seed of the noise (a CPU ``torch.Generator``; the global RNG is not touched).

    Returns:
        ``(B, C, H, W)`` imputed copy, same dtype and device as ``images``.

    Raises:
        ValueError: Shapes that do not match, ``removed`` not boolean, a negative
            ``sigma``, or an image with every pixel removed (nothing to impute from).
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got {_shape(images)}.")
    b, c, h, w = images.shape
    if not isinstance(removed, Tensor) or removed.shape != (b, h, w):
        raise ValueError(f"removed must be (B, H, W) = {(b, h, w)}, got {_shape(removed)}.")
    if removed.dtype != torch.bool:
        raise ValueError(f"removed must be a bool tensor, got {removed.dtype}.")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}.")
    if bool(removed.flatten(1).all(dim=1).any()):
        raise ValueError("removed covers every pixel of an image: nothing to impute it from.")
    mask = removed.cpu().numpy()
    values = images.detach().cpu().double().numpy()  # (B, C, H, W)
    # SuperLU releases the GIL: the systems are solved on torch's intra-op threads.
    threads = max(1, min(torch.get_num_threads(), b))
    step = min(IMAGES_PER_SOLVE, math.ceil(b / threads))
    parts = [slice(start, start + step) for start in range(0, b, step)]
    with ThreadPoolExecutor(threads) as pool:
        filled = np.concatenate(list(pool.map(lambda p: _impute(values[p], mask[p]), parts)))
    out = torch.from_numpy(filled)
    if sigma > 0:
        noise = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
        out = torch.where(torch.from_numpy(mask)[:, None], out + sigma * noise, out)
    return out.to(images.device, images.dtype)


def _impute(values: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Solve the imputation of ``(M, C, H, W)`` ``values`` at ``(M, H, W)`` ``removed`` pixels
    as one block-diagonal sparse system with ``C`` right-hand sides."""
    m, c, h, w = values.shape
    unknown = np.flatnonzero(removed)  # flat (M, H, W) positions of the removed pixels
    number = np.full(removed.size, -1)
    number[unknown] = np.arange(len(unknown))
    image, row, col = np.unravel_index(unknown, (m, h, w))
    flat_values = values.transpose(0, 2, 3, 1).reshape(-1, c)  # (M H W, C)
    diagonal = np.zeros(len(unknown))
    rhs = np.zeros((len(unknown), c))
    rows, cols, weights = [], [], []
    for dr, dc, weight in NEIGHBOURS:
        r, q = row + dr, col + dc
        inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
        diagonal[inside] += weight
        who = np.flatnonzero(inside)
        neighbour = (image[who] * h + r[who]) * w + q[who]
        other = number[neighbour]
        known = other < 0
        rhs[who[known]] += weight * flat_values[neighbour[known]]
        rows.append(who[~known])
        cols.append(other[~known])
        weights.append(np.full(int((~known).sum()), -weight))
    size = len(unknown)
    rows.append(np.arange(size))
    cols.append(np.arange(size))
    weights.append(diagonal)
    system = coo_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), (size, size)
    ).tocsc()
    solution = spsolve(system, rhs).reshape(size, c)
    flat_values = flat_values.copy()
    flat_values[unknown] = solution
    return flat_values.reshape(m, h, w, c).transpose(0, 3, 1, 2)


def road(
    model: nn.Module,
    images: Tensor,
    saliency: Tensor | Mapping[str, Tensor],
    patch_size,
    *,
    fractions: Sequence[float] = ROAD_FRACTIONS,
    sigma: float = 0.01,
    seed: int = 0,
    max_batch: int = 512,
) -> RoadResult | dict[str, RoadResult]:
    """ROAD MoRF and LeRF curves and AUCs of saliency maps.

    At fraction ``p`` the ``round(p * G)`` most (MoRF) or least (LeRF) salient
    patches (ties by patch index; at most ``G - 1``, so one patch is left to impute
    from on tiny grids) are removed and imputed with
    :func:`noisy_linear_imputation`; the model follows the probability of the
    class it predicts on the clean image.

    Args:
        model: maps ``(n, C, H, W)`` images to ``(n, K)`` logits; run in eval mode
            without gradients, modes restored.
        images: ``(B, C, H, W)`` images as the model takes them.
        saliency: ``(B, gh, gw)`` map (larger = more salient), or names -> maps.
        patch_size: ``(ph, pw)``, an int, or a ``TokenLayout``.
        fractions: Fractions of the patches removed, each in (0, 1), increasing.
        sigma: Noise of the imputation (0: deterministic).
        seed: Seed of the noise: image ``b`` uses ``seed + b``, the same noise for every map.
        max_batch: Largest number of imputed images in one forward pass.

    Returns:
        A :class:`RoadResult`, or for a mapping a dict of them under the same names.

    Raises:
        ValueError: Bad shapes or fractions, a saliency map with NaN or inf values,
            or a model that returns no ``(n, K)`` logits.
    """
    ph, pw = _patch_size(patch_size)
    maps, grid = checked_maps(images, saliency, (ph, pw))
    fractions = [float(p) for p in fractions]
    if not fractions or any(not 0 < p < 1 for p in fractions) or fractions != sorted(fractions):
        raise ValueError(f"fractions must be increasing values in (0, 1), got {fractions}")
    b, _, h, w = images.shape
    num_patches = grid[0] * grid[1]
    # round(p G), at most G - 1: a patch always stays to impute from (tiny grids).
    counts = torch.tensor([min(int(p * num_patches + 0.5), num_patches - 1) for p in fractions])

    # removed[s, k, b, p]: (G,) patches removed for map s, order k (MoRF, LeRF), fraction p.
    removed = []
    for values in maps.values():
        flat = values.detach().float().cpu().reshape(b, num_patches)
        for descending in (True, False):
            order = torch.argsort(flat, dim=1, descending=descending, stable=True)
            ranks = torch.empty_like(order).scatter_(
                1, order, torch.arange(num_patches).expand(b, -1)
            )
            removed.append(ranks[:, None, :] < counts[None, :, None])  # (B, P, G)
    patches = torch.stack(removed).view(len(maps) * 2, b, len(fractions), *grid)
    holes = patches.transpose(0, 1).reshape(b, -1, *grid)  # (B, S 2 P, gh, gw)
    holes = holes.repeat_interleave(ph, dim=-2).repeat_interleave(pw, dim=-1)  # (B, S 2 P, H, W)
    clean, _ = classifier_logits(model, [images])
    predicted = clean.argmax(dim=-1)  # (B,)

    def imputed_copies():
        # Image by image, so memory stays at one image's copies. Image b's noise comes from
        # seed + b and is the same for every map at each fraction and order: maps are compared
        # on the same noise (a paired design), and a map scores alike alone or with others.
        per_map = 2 * len(fractions)
        for index, image in enumerate(images.detach()):
            removed = holes[index]  # (S 2 P, H, W)
            copies = image[None].expand(len(removed), -1, -1, -1)
            filled = noisy_linear_imputation(copies, removed, sigma=0)
            generator = torch.Generator().manual_seed(seed + index)
            noise = torch.randn((per_map, *image.shape), generator=generator).to(filled)
            noise = noise.repeat(len(maps), 1, 1, 1) * removed[:, None].to(filled.dtype)
            yield from (filled + sigma * noise).split(max_batch)

    logits, _ = classifier_logits(model, imputed_copies())
    probability = logits.softmax(dim=-1).view(b, len(maps), 2, len(fractions), -1)
    index = predicted.view(b, 1, 1, 1, 1).expand(*probability.shape[:-1], 1)
    curves = probability.gather(-1, index).squeeze(-1).permute(1, 2, 0, 3)  # (S, 2, B, P)
    x = torch.tensor(fractions, device=curves.device)
    span = x[-1] - x[0] if len(fractions) > 1 else torch.tensor(1.0)
    aucs = torch.trapezoid(curves, x=x, dim=-1) / span if len(fractions) > 1 else curves[..., 0]
    results = {
        name: RoadResult(
            morf=aucs[s, 0],
            lerf=aucs[s, 1],
            morf_curve=curves[s, 0],
            lerf_curve=curves[s, 1],
            fractions=x,
            predicted=predicted,
        )
        for s, name in enumerate(maps)
    }
    return results if isinstance(saliency, Mapping) else results["saliency"]


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
