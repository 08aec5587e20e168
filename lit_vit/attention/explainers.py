"""Every explainer lit-vit compares, from one recorded pass.

Rollout, attention flow and class-token attention (last layer, heads
averaged) are class-agnostic; gradient rollout, input x gradient and CP-LRP
explain one class (default: the predicted one). CP-LRP's signed patch
relevance is compared like the others through its positive part (the
evidence for the class), renormalised to sum 1. :data:`EXPLAINERS` is their order in
figures and tables; :data:`~lit_vit.attention.controls.CONTROLS` the maps
that know nothing about the model, to beat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from lit_vit.attention._validate import renormalize
from lit_vit.attention.backends import CaptureBackend
from lit_vit.attention.capture import AttentionRecorder
from lit_vit.attention.controls import input_x_gradient
from lit_vit.attention.layout import TokenLayout
from lit_vit.attention.lrp import cp_lrp, patch_relevance

__all__ = ["CLASS_SPECIFIC", "EXPLAINERS", "cp_lrp_map", "explain", "positive_patch_map"]

EXPLAINERS = ("rollout", "flow", "class token", "grad rollout", "input x gradient", "cp-lrp")
CLASS_SPECIFIC = ("grad rollout", "input x gradient", "cp-lrp")


def explain(
    recorder: AttentionRecorder,
    images: Tensor,
    targets: Tensor | None = None,
    methods: Sequence[str] = EXPLAINERS,
) -> dict[str, Tensor]:
    """The maps of the explainers ``methods`` of ``images``: one recorded pass with gradients,
    and input x gradient and CP-LRP when asked for.

    Args:
        recorder: The recorder of the model to explain.
        images: ``(B, C, H, W)`` images as the model takes them.
        targets: ``(B,)`` classes the class-specific explainers explain; ``None``
            for the predicted ones.
        methods: Names from :data:`EXPLAINERS` (leave out ``"flow"``, a maximum flow per
            patch and image, on large grids).

    Returns:
        ``methods`` -> ``(B, gh, gw)`` float32 maps on the CPU, each summing to 1, in
        :data:`EXPLAINERS` order.
    """
    recording = recorder.record(images, grad_targets=[targets], full=False)
    reduced, layout = recording.reduced, recording.layout
    target = recording.targets[0]
    makers: dict[str, Callable[[], Tensor]] = {
        "rollout": reduced.rollout,
        "flow": reduced.attention_flow,
        "class token": lambda: reduced.cls_attention().maps[-1].mean(dim=1),
        "grad rollout": reduced.gradient_rollout,
        "input x gradient": lambda: input_x_gradient(recorder.model, images, layout, target),
        "cp-lrp": lambda: cp_lrp_map(recorder.model, images, target, recorder.backend, layout),
    }
    return {name: makers[name]().detach().float().cpu() for name in EXPLAINERS if name in methods}


def cp_lrp_map(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    backend: CaptureBackend,
    layout: TokenLayout,
) -> Tensor:
    """CP-LRP as a map to compare: ``(B, gh, gw)`` positive patch relevance, sum 1 (uniform
    where no patch has positive relevance)."""
    return positive_patch_map(cp_lrp(model, images, targets, backend=backend), layout.patch_size)


def positive_patch_map(relevance: Tensor, patch_size: tuple[int, int]) -> Tensor:
    """``(B, H, W)`` signed pixel relevance to the ``(B, gh, gw)`` map compared with the others:
    the positive part of each patch's summed relevance, renormalised to sum 1."""
    patches = patch_relevance(relevance, patch_size)
    return renormalize(patches.clamp_min(0).flatten(1)).reshape(patches.shape)
