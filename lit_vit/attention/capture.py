"""Record the attention matrices of a ViT, and their gradients, in one forward pass.

Fused attention kernels never materialise the attention matrix, so for the
probe pass only, the recorder asks the ViT's family backend
(:mod:`lit_vit.attention.backends`: timm, Hugging Face transformers,
torchvision) to make every attention module hand over the probabilities that
multiply the values. Those tensors are the ones in the model's graph, so their
gradients are the gradients of the real forward. Flags, hooks, attention
implementations and train/eval modes are restored afterwards, whatever happens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lit_vit._private import unwrap_compiled
from lit_vit.attention._layers import CapturedLayers
from lit_vit.attention._validate import NonFiniteAttentionError
from lit_vit.attention.backends import (
    CaptureBackend,
    eval_mode_dtype,
    find_backend,
    model_logits,
    with_pattern,
)
from lit_vit.attention.blocks import block_modules
from lit_vit.attention.layout import TokenLayout
from lit_vit.attention.propagation import HEAD_FUSIONS, check_head_fusions
from lit_vit.attention.reduced import ReducedAttention
from lit_vit.attention.reduction import stack_layers

__all__ = ["AttentionRecorder", "AttentionRecording"]


@dataclass(frozen=True)
class AttentionRecording:
    """What one probe pass saw.

    Attributes:
        logits: ``(B, C)`` model output, detached; ``None`` for a model that
            returns no logits (a backbone), recorded without gradients.
        reduced: The attention reduced to what every analysis reads (query rows,
            head-fused matrices, distances, gradient products; see
            :class:`~lit_vit.attention.ReducedAttention`), validated when recorded.
        layout: token layout for the input size that was recorded.
        attention: ``(L, B, H, N, N)`` float32 post-softmax attention (the output
            of ``attn_drop``, i.e. what multiplies ``v``), layers in forward order,
            validated once when recorded: pass ``validate=False`` to the
            toolkit's functions to skip checking it again. ``None`` unless
            recorded with ``full=True``.
        attention_grads: with ``full=True``, one ``(L, B, H, N, N)`` float32 tensor
            per grad target: ``d(sum_b logits[b, target_b]) / d attention``.
        targets: one ``(B,)`` long tensor per grad target: the classes used.
        hidden_states: ``(L, B, N, D)`` float32 output of each block (the block around
            each attention module), recorded with ``hidden_states=True``; else ``None``.
    """

    logits: Tensor | None
    reduced: ReducedAttention
    layout: TokenLayout
    attention: Tensor | None = None
    attention_grads: tuple[Tensor, ...] = ()
    targets: tuple[Tensor, ...] = ()
    hidden_states: Tensor | None = None


class AttentionRecorder:
    """Capture per-layer attention (and optionally its gradient) of a ViT.

    Args:
        model: any module containing one timm-style ViT (the ViT itself, a
            wrapper such as a LightningModule, or a ``torch.compile``'d model;
            the probe pass runs eagerly).
        module_pattern: regex that the qualified names of the attention
            modules must fully match (``re.fullmatch``), e.g.
            ``r"model\\.blocks\\.\\d+\\.attn"``. Without it, timm ``Attention``
            modules (and look-alikes with ``qkv``, ``attn_drop`` and
            ``fused_attn``) inside the ViT are used. A matched module that has an
            ``attn_drop`` is read there; any other matched module must itself
            output the ``(B, H, N, N)`` attention probabilities.
        vit_name: qualified name of the ViT when ``model`` holds several.

    Attributes:
        module_names: qualified names of the recorded modules, in the order the
            layers ran in the latest :meth:`record` (layer ``l`` of the
            recording is ``module_names[l]``).
        vit_name, vit: the ViT the layout is read from (see :func:`find_vit`).

    Raises:
        ValueError: no ViT, or no attention module found (the message lists the
            module types present and suggests ``module_pattern=``).

    Example::

        recorder = AttentionRecorder(model)
        rec = recorder.record(images, grad_targets=[None])
        maps = gradient_rollout(rec.attention, rec.attention_grads[0], rec.layout)
    """

    def __init__(
        self, model: nn.Module, module_pattern: str | None = None, *, vit_name: str | None = None
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        self.model = model
        try:
            backend = find_backend(model, vit_name)
        except ValueError as err:
            raise ValueError(
                "AttentionRecorder needs the ViT inside the model to know the token layout "
                f"(prefix tokens, patch grid). {err}"
            ) from err
        if module_pattern is not None:
            backend = with_pattern(model, backend, module_pattern)
        elif not backend.modules:
            raise ValueError(backend.no_attention_message())
        self.backend: CaptureBackend = backend
        self.vit_name, self.vit = backend.vit_name, backend.vit
        self.module_names: list[str] = backend.module_names
        self._block_modules: list[nn.Module] | None = None

    def record(
        self,
        images: Tensor,
        grad_targets: Sequence[Tensor | None] = (),
        *,
        full: bool = True,
        head_fusions: Sequence[str] = ("mean",),
        hidden_states: bool = False,
    ) -> AttentionRecording:
        """Run ``model`` once in eval mode and record its attention.

        Each layer's attention is validated and reduced as it is produced
        (:class:`~lit_vit.attention.ReducedAttention`); with ``full=False`` it is
        then dropped, so the recording holds at most ``1/H`` of the full
        ``(L, B, H, N, N)`` tensor, and the gradients are reduced the same way
        during the backward pass.

        Args:
            images: ``(B, C, H, W)`` model input (normalised as the model expects).
            grad_targets: one entry per gradient wanted: ``None`` for the
                predicted class, or a ``(B,)`` long tensor of class indices.
                Empty: no gradients, the pass runs under ``torch.no_grad``.
            full: keep the full attention (and gradients) as well.
            head_fusions: the head fusions (``"mean"``, ``"max"``, ``"min"``) of
                the fused matrices that rollout and flow read.
            hidden_states: also record every block's output, in the same pass.

        Returns:
            An :class:`AttentionRecording`; ``layers`` follow the forward order.

        The images are cast to the dtype of the model's parameters (a model
        trained in ``bf16-true`` takes bfloat16); the attention is stored as
        float32 whatever that dtype.

        Raises:
            ValueError: bad images (not 4-D, empty batch, wrong channels, a size
                the model cannot take), bad targets or head fusions, or captured
                attention that does not match the layout.
            NonFiniteAttentionError: the attention or the logits have NaN or
                inf values (a ``ValueError``; usually a diverged model).
        """
        layout = self._check_images(images)
        grad_targets, head_fusions = tuple(grad_targets), tuple(dict.fromkeys(head_fusions))
        batch = images.shape[0]
        _check_targets(grad_targets, batch, head_fusions)
        want_grad = len(grad_targets) > 0
        layers = CapturedLayers(
            self.backend.module_names, layout, batch, head_fusions, keep=full or want_grad
        )

        # Gradients need a graph: leave inference mode (Lightning validates under it), clone
        # the input into a normal tensor and make it require grad, so that the attention is
        # in the graph even when every parameter is frozen.
        grad_mode = contextlib.ExitStack()
        if want_grad:
            grad_mode.enter_context(torch.inference_mode(False))
            grad_mode.enter_context(torch.enable_grad())
        else:
            grad_mode.enter_context(torch.no_grad())
        outputs: list[Tensor] = []
        recording_blocks = (
            self._recording_blocks(outputs) if hidden_states else contextlib.nullcontext()
        )
        with grad_mode, self._probe_mode(layers.capture), recording_blocks:
            x = images.detach().to(eval_mode_dtype(self.vit))
            x = x.clone().requires_grad_(True) if want_grad else x
            with _eager():
                output = unwrap_compiled(self.model)(x)
            logits = model_logits(output)
            if logits is not None and (logits.dim() != 2 or len(logits) != batch):
                logits = None
            if logits is None and want_grad:
                raise ValueError(
                    f"the model must return (B={batch}, num_classes) logits (a tensor, a tuple "
                    "starting with them, or an output with .logits) for attention gradients, "
                    f"got {type(output).__name__}."
                )
            layers.finish()
            self.module_names = layers.names
            products, grads, targets = (), (), ()
            if want_grad:
                targets = self._targets(logits, grad_targets)
                products, grads = layers.gradients(logits, targets, x, full)
        if logits is not None and not bool(torch.isfinite(logits).all()):
            raise NonFiniteAttentionError("the model's logits have NaN or inf values.")
        return AttentionRecording(
            logits=None if logits is None else logits.detach(),
            reduced=stack_layers(layers.reductions, layout, products),
            layout=layout,
            attention=torch.stack([a.detach().float() for a in layers.kept]) if full else None,
            attention_grads=grads,
            targets=tuple(t.detach() for t in targets),
            hidden_states=torch.stack(outputs) if hidden_states else None,
        )

    # -- helpers -------------------------------------------------------------------------

    def _check_images(self, images: object) -> TokenLayout:
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}.")
        if not images.dtype.is_floating_point:
            raise ValueError(f"images must be a floating point tensor, got {images.dtype}.")
        if images.shape[0] == 0:
            raise ValueError(f"images is an empty batch: shape {tuple(images.shape)}.")
        expected = self.backend.in_channels()
        if isinstance(expected, int) and images.shape[1] != expected:
            raise ValueError(
                f"images have {images.shape[1]} channels but the model's patch embedding takes "
                f"{expected} (in_chans={expected}); convert the images or build the model "
                f"with in_chans={images.shape[1]}."
            )
        return self.backend.layout((int(images.shape[2]), int(images.shape[3])))

    @contextlib.contextmanager
    def _recording_blocks(self, outputs: list[Tensor]) -> Iterator[None]:
        """Append each block's ``(B, N, D)`` output (detached float32) to ``outputs``."""

        def keep(module: nn.Module, args: tuple, output: Tensor | tuple) -> None:
            tokens = output[0] if isinstance(output, tuple) else output
            outputs.append(tokens.detach().float())

        handles = [block.register_forward_hook(keep) for block in self._blocks()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _blocks(self) -> list[nn.Module]:
        if self._block_modules is None:
            self._block_modules = block_modules(self.model, self.backend)
        return self._block_modules

    @contextlib.contextmanager
    def _probe_mode(self, capture) -> Iterator[None]:
        """Eval mode and the backend's capture; everything undone on exit."""
        modes = [(m, m.training) for m in self.model.modules()]
        try:
            self.model.eval()
            with self.backend.capturing(capture):
                yield
        finally:
            for module, training in modes:
                module.training = training

    @staticmethod
    def _targets(logits: Tensor, grad_targets: tuple[Tensor | None, ...]) -> list[Tensor]:
        """The ``(B,)`` class of every gradient target (``None``: the predicted one)."""
        classes = logits.shape[1]
        targets = []
        for i, target in enumerate(grad_targets):
            if target is None:
                target = logits.detach().argmax(dim=-1)
            # A clone outside inference mode: targets made under it cannot enter autograd.
            target = target.to(device=logits.device, dtype=torch.long).clone()
            if bool(((target < 0) | (target >= classes)).any()):
                raise ValueError(
                    f"grad_targets[{i}] has class indices outside [0, {classes}): "
                    f"{target.tolist()}."
                )
            targets.append(target)
        return targets


def _check_targets(
    grad_targets: tuple[Tensor | None, ...], batch: int, head_fusions: tuple[str, ...]
) -> None:
    """Refuse gradient targets that are not ``None`` or ``(B,)`` class indices, and unknown or
    no head fusions."""
    for i, target in enumerate(grad_targets):
        if target is not None and (
            not isinstance(target, Tensor)
            or target.shape != (batch,)
            or target.dtype.is_floating_point
            or target.dtype == torch.bool
        ):
            raise ValueError(
                f"grad_targets[{i}] must be None or a (B={batch},) integer tensor of class "
                f"indices, got {getattr(target, 'shape', target)!r} "
                f"{getattr(target, 'dtype', '')}."
            )
    check_head_fusions(head_fusions)
    if not head_fusions:
        raise ValueError(f"head_fusions must name at least one of {HEAD_FUSIONS}, got none.")


def _eager():
    """Run ``torch.compile``'d submodules eagerly for the probe (hooks and flags then apply)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:  # pragma: no cover - torch < 2.6
        return contextlib.nullcontext()
    return set_stance("force_eager")
