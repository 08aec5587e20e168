"""Conservative propagation LRP (CP-LRP): which pixels carry the evidence for a class.

Attention maps say where the tokens look; CP-LRP (Ali et al. 2022, the
attention rule of AttnLRP, Achtibat et al. 2024) follows what each token's
*value* contributes to the logit ``f_c``. It is gradient x input on a model
whose backward pass is changed in three places, and whose forward is not:

- **attention**: the softmax probabilities ``A`` are constants in ``A @ V``, so
  relevance flows through the values only (no gradient into ``q`` or ``k``);
- **LayerNorm / RMSNorm**: the normaliser (std or rms) is a constant; the
  centring and the affine part stay linear;
- **element-wise activations** (GELU, SiLU, ...): the identity rule, each one
  passes ``act(x) / x`` of its input as a constant factor (``act'(0)`` at 0).

Linear layers, convolutions and additions keep their gradient (LRP-0; biases
absorb their share). With those rules the model is, around its input, a
product of constant matrices, so for a model with no biases, no position
embedding and no prefix token ``sum(x * dF_c/dx) = f_c`` (conservation).

Every rule is a forward hook that returns a tensor with the *value* of the
module's own output and the gradient of the rule
(``value.detach() + (rule - rule.detach())``), so the forward result during
the pass is the model's own; attention is read where the capture backends read
it (:mod:`lit_vit.attention.backends`) and its gradient is cut there. Hooks,
flags, attention implementations and modes are restored afterwards, also when
the pass raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_vit.attention.backends import (
    CaptureBackend,
    eval_mode_dtype,
    find_backend,
    model_logits,
)

__all__ = ["conservative_backward", "cp_lrp", "patch_relevance"]

# Element-wise activations with act(0) = 0, by class name: torch's, timm's and Hugging Face's.
IDENTITY_RULE_ACTIVATIONS = frozenset(
    {
        "GELU",
        "SiLU",
        "Mish",
        "ReLU",
        "LeakyReLU",
        "ELU",
        "Hardswish",
        "GELUTanh",
        "QuickGELU",
        "GELUActivation",
        "NewGELUActivation",
        "FastGELUActivation",
        "QuickGELUActivation",
        "PytorchGELUTanh",
        "SiLUActivation",
        "AccurateGELUActivation",
    }
)
# Norms whose normaliser is held constant: (class name -> which statistic is centred).
NORMS = {"LayerNorm": True, "RMSNorm": False, "RmsNorm": False}


def cp_lrp(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    backend: CaptureBackend | None = None,
) -> Tensor:
    """CP-LRP pixel relevance of ``images`` for the logits of ``targets``.

    One forward and one backward pass in eval mode (modes restored), with
    gradients even under ``torch.inference_mode``.

    Args:
        model: A ViT of any family the capture supports (timm, Hugging Face,
            torchvision), or a module holding one (a LightningModule), that
            returns ``(B, K)`` logits (or an output carrying them).
        images: ``(B, C, H, W)`` images as the model takes them (normalised).
        targets: ``(B,)`` class indices whose pre-softmax logit is explained.
        backend: The model's capture backend (found by module type when ``None``).

    Returns:
        ``(B, H, W)`` float32 signed relevance at the input, summed over the
        channels, not renormalised (positive = evidence for the target class).

    Raises:
        ValueError: ``images`` not ``(B, C, H, W)``, ``targets`` not ``(B,)`` class
            indices of the model's output, a model that returns no logits, or a
            model without a ViT of a known family.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"cp_lrp: images must be a non-empty (B, C, H, W) batch, got {shape}.")
    if not isinstance(targets, Tensor) or targets.shape != (len(images),):
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(
            f"cp_lrp: targets must be (B,) = ({len(images)},) class indices, got {shape}."
        )
    backend = backend or find_backend(model)
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            x = images.detach().to(eval_mode_dtype(model)).clone().requires_grad_(True)
            with conservative_backward(model, backend):
                logits = model_logits(model(x))
            if logits is None or logits.dim() != 2:
                raise ValueError("cp_lrp needs a model that returns (B, K) logits.")
            classes = logits.shape[1]
            index = targets.to(logits.device, torch.long).clone().view(-1, 1)
            if bool((index < 0).any() | (index >= classes).any()):
                raise ValueError(
                    f"cp_lrp: targets must be class indices in [0, {classes}), got "
                    f"{targets.tolist()}."
                )
            (gradient,) = torch.autograd.grad(logits.gather(1, index).sum(), x)
    finally:
        for module, training in modes:
            module.training = training
    return (x.detach().float() * gradient.float()).sum(dim=1)


def patch_relevance(relevance: Tensor, patch_size: tuple[int, int]) -> Tensor:
    """Pixel relevance ``(B, H, W)`` summed within each ``(ph, pw)`` patch: ``(B, gh, gw)``."""
    ph, pw = patch_size
    return F.avg_pool2d(relevance[:, None], (ph, pw)).squeeze(1) * (ph * pw)


@contextlib.contextmanager
def conservative_backward(model: nn.Module, backend: CaptureBackend) -> Iterator[None]:
    """Within the block, ``model``'s backward follows the CP-LRP rules; its forward is unchanged.

    Args:
        model: The model that runs in the block.
        backend: Its capture backend, which hands over each attention module's
            probabilities (their gradient is cut).
    """
    with contextlib.ExitStack() as restore:
        for module in model.modules():
            rule = _rule_of(module)
            if rule is not None:
                restore.callback(module.register_forward_hook(rule).remove)
        with backend.capturing(_constant_attention):
            yield


def _rule_of(module: nn.Module):
    """The forward hook of ``module``'s CP-LRP rule, or ``None`` (gradient kept)."""
    name = type(module).__name__
    if isinstance(module, nn.LayerNorm) or name in NORMS:  # RMSNorm by name: torch >= 2.4
        return _constant_normaliser
    if name in IDENTITY_RULE_ACTIVATIONS:
        return _identity_rule
    return None


def _constant_attention(_layer: int, attention: Tensor) -> None:
    """Cut the gradient of the ``(B, H, N, N)`` probabilities that multiply the values."""
    if attention.requires_grad:
        attention.register_hook(torch.zeros_like)


def _with_gradient_of(value: Tensor, rule: Tensor) -> Tensor:
    """``value`` in the forward, ``rule``'s gradient in the backward (exactly ``value``)."""
    return value.detach() + (rule - rule.detach())


def _constant_normaliser(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
    """LayerNorm ``(x - mean) / std * w + b`` or RMSNorm ``x / rms * w`` with std/rms constant."""
    x = inputs[0]
    shape = getattr(module, "normalized_shape", None) or (x.shape[-1],)
    dims = tuple(range(-len(shape), 0))
    eps = getattr(module, "eps", None)
    eps = getattr(module, "variance_epsilon", None) if eps is None else eps
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    centred = _is_layer_norm(module)
    if centred:
        x = x - x.mean(dim=dims, keepdim=True)
    scale = (x.float().pow(2).mean(dim=dims, keepdim=True) + eps).rsqrt().to(x.dtype)
    linear = x * scale.detach()
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if isinstance(weight, Tensor):
        linear = linear * weight
    if isinstance(bias, Tensor):
        linear = linear + bias
    return _with_gradient_of(output, linear.to(output.dtype))


def _is_layer_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or NORMS.get(type(module).__name__, False)


def _identity_rule(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
    """``x * (act(x) / x).detach()``, with ``act'(0)`` where ``x == 0``."""
    x = inputs[0]
    zero = x == 0
    ratio = output / torch.where(zero, torch.ones_like(x), x)
    if bool(zero.any()):
        ratio = torch.where(zero, _slope_at_zero(module, x), ratio)
    return _with_gradient_of(output, x * ratio.detach())


def _slope_at_zero(module: nn.Module, like: Tensor) -> Tensor:
    """``act'(0)`` of the activation ``module`` (its ``forward``, so no hook runs)."""
    with torch.enable_grad():
        zero = torch.zeros((), dtype=like.dtype, device=like.device, requires_grad=True)
        (slope,) = torch.autograd.grad(module.forward(zero), zero)
    return slope
