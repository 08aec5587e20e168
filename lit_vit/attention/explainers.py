"""Every explainer lit-vit compares, from one recorded pass.

Rollout, attention flow and class-token attention (last layer, heads
averaged) are class-agnostic; gradient rollout and input x gradient explain
one class (default: the predicted one). :data:`EXPLAINERS` is their order in
figures and tables; :data:`~lit_vit.attention.controls.CONTROLS` the maps
that know nothing about the model, to beat.
"""

from __future__ import annotations

from torch import Tensor

from lit_vit.attention.capture import AttentionRecorder
from lit_vit.attention.controls import input_x_gradient

__all__ = ["CLASS_SPECIFIC", "EXPLAINERS", "explain"]

EXPLAINERS = ("rollout", "flow", "class token", "grad rollout", "input x gradient")
CLASS_SPECIFIC = ("grad rollout", "input x gradient")


def explain(
    recorder: AttentionRecorder, images: Tensor, targets: Tensor | None = None
) -> dict[str, Tensor]:
    """Every explainer's map of ``images``: one recorded pass with gradients, and input x
    gradient.

    Args:
        recorder: The recorder of the model to explain.
        images: ``(B, C, H, W)`` images as the model takes them.
        targets: ``(B,)`` classes the class-specific explainers explain; ``None``
            for the predicted ones.

    Returns:
        :data:`EXPLAINERS` -> ``(B, gh, gw)`` float32 maps on the CPU, each summing to 1.
    """
    recording = recorder.record(images, grad_targets=[targets], full=False)
    reduced = recording.reduced
    maps = {
        "rollout": reduced.rollout(),
        "flow": reduced.attention_flow(),
        "class token": reduced.cls_attention().maps[-1].mean(dim=1),
        "grad rollout": reduced.gradient_rollout(),
        "input x gradient": input_x_gradient(
            recorder.model, images, recording.layout, recording.targets[0]
        ),
    }
    return {name: values.detach().float().cpu() for name, values in maps.items()}
