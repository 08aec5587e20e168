"""Every faithfulness metric of several maps on one batch: the evidence a verdict needs.

A map is "worth reading" only when it beats every control on every metric of
:data:`~lit_vit.attention.FAITHFULNESS_METRICS`, so :func:`faithfulness_battery`
scores each map on all seven, on the same images: deletion and insertion AUC
with the background baseline, deletion AUC with the blurred baseline, ROAD's
MoRF and LeRF AUCs and their difference, and SaCo. The ``random`` control is a
random map for ROAD and SaCo, and for deletion and insertion the random patch
order they draw themselves (the same images, the same seed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from lit_vit.attention.faithfulness import FaithfulnessResult, deletion_insertion_auc
from lit_vit.attention.layout import TokenLayout
from lit_vit.attention.road import road
from lit_vit.attention.saco import saco

__all__ = ["SACO_GROUPS", "Battery", "faithfulness_battery"]

# SaCo's number of patch groups (Wu et al. 2024).
SACO_GROUPS = 10


@dataclass(frozen=True)
class Battery:
    """The seven metrics of every map on one batch.

    Attributes:
        background: map -> deletion and insertion with the background baseline, curves
            and the random order's fields included (for figures).
        scores: metric -> map (``random`` included) -> ``(B,)`` per-image score.
    """

    background: dict[str, FaithfulnessResult]
    scores: dict[str, dict[str, Tensor]]


def faithfulness_battery(
    model: nn.Module,
    images: Tensor,
    maps: Mapping[str, Tensor],
    random_map: Tensor,
    layout: TokenLayout,
    *,
    steps: int = 16,
    seed: int = 0,
    max_batch: int = 512,
) -> Battery:
    """Score ``maps`` and the ``random`` control on every faithfulness metric.

    Args:
        model: maps ``(n, C, H, W)`` images to ``(n, K)`` logits.
        images: ``(B, C, H, W)`` images as the model takes them.
        maps: name -> ``(B, gh, gw)`` saliency (larger = more salient); not ``random``.
        random_map: ``(B, gh, gw)`` random saliency, scored as ``random`` by ROAD and SaCo.
        layout: the images' token layout.
        steps: intervals of the deletion and insertion curves.
        seed: seed of the random order (deletion, insertion) and of ROAD's noise.
        max_batch: largest number of perturbed images in one forward pass.

    Raises:
        ValueError: as :func:`deletion_insertion_auc`, :func:`road` and :func:`saco`.
    """
    on_device = {name: values.to(images.device) for name, values in maps.items()}
    common = {"steps": steps, "max_batch": max_batch, "seed": seed}
    background = deletion_insertion_auc(model, images, on_device, layout, **common)
    blurred = deletion_insertion_auc(
        model, images, on_device, layout, baseline="blur", insertion=False, **common
    )
    scored = {**on_device, "random": random_map.to(images.device)}
    removed = road(model, images, scored, layout, seed=seed, max_batch=max_batch)
    groups = min(SACO_GROUPS, layout.num_patches)  # tiny grids: one patch each
    coefficients = saco(model, images, scored, layout, groups=groups, max_batch=max_batch)
    scores: dict[str, dict[str, Tensor]] = {}
    for name in scored:
        for metric, values in {
            "deletion AUC (background)": _auc(background, name, "deletion"),
            "insertion AUC (background)": _auc(background, name, "insertion"),
            "deletion AUC (blurred)": _auc(blurred, name, "deletion"),
            "ROAD MoRF": removed[name].morf,
            "ROAD LeRF": removed[name].lerf,
            "ROAD LeRF - MoRF": removed[name].lerf - removed[name].morf,
            "SaCo": coefficients[name],
        }.items():
            scores.setdefault(metric, {})[name] = values
    return Battery(background=background, scores=scores)


def _auc(results: dict[str, FaithfulnessResult], name: str, kind: str) -> Tensor:
    """``(B,)`` deletion or insertion AUC of map ``name``, or of the shared random order."""
    if name == "random":
        return getattr(next(iter(results.values())), f"random_{kind}")
    return getattr(results[name], kind)
