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
import dataclasses
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lit_vit.attention._validate import NonFiniteAttentionError, check_attention
from lit_vit.attention.backends import (
    CaptureBackend,
    eval_mode_dtype,
    find_backend,
    model_logits,
    no_attention_message,
)
from lit_vit.attention.layout import TokenLayout, _unwrap

__all__ = ["AttentionRecorder", "AttentionRecording"]


@dataclass(frozen=True)
class AttentionRecording:
    """What one probe pass saw.

    Attributes:
        logits: ``(B, C)`` model output, detached; ``None`` for a model that
            returns no logits (a backbone), recorded without gradients.
        attention: ``(L, B, H, N, N)`` float32 post-softmax attention (the output
            of ``attn_drop``, i.e. what multiplies ``v``), layers in forward order,
            validated once when recorded: pass ``validate=False`` to the
            toolkit's functions to skip checking it again.
        layout: token layout for the input size that was recorded.
        attention_grads: one ``(L, B, H, N, N)`` float32 tensor per grad target:
            ``d(sum_b logits[b, target_b]) / d attention``.
        targets: one ``(B,)`` long tensor per grad target: the classes used.
    """

    logits: Tensor | None
    attention: Tensor
    layout: TokenLayout
    attention_grads: tuple[Tensor, ...] = ()
    targets: tuple[Tensor, ...] = ()


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
            backend = _with_pattern(model, backend, module_pattern)
        elif not backend.modules:
            raise ValueError(no_attention_message(backend))
        self.backend: CaptureBackend = backend
        self.vit_name, self.vit = backend.vit_name, backend.vit
        self.module_names: list[str] = backend.module_names

    def record(
        self, images: Tensor, grad_targets: Sequence[Tensor | None] = ()
    ) -> AttentionRecording:
        """Run ``model`` once in eval mode and record its attention.

        Args:
            images: ``(B, C, H, W)`` model input (normalised as the model expects).
            grad_targets: one entry per gradient wanted: ``None`` for the
                predicted class, or a ``(B,)`` long tensor of class indices.
                Empty: no gradients, the pass runs under ``torch.no_grad``.

        Returns:
            An :class:`AttentionRecording`; ``layers`` follow the forward order.

        The images are cast to the dtype of the model's parameters (a model
        trained in ``bf16-true`` takes bfloat16); the attention is stored as
        float32 whatever that dtype.

        Raises:
            ValueError: bad images (not 4-D, empty batch, wrong channels, a size
                the model cannot take), bad targets, or captured attention that
                does not match the layout.
            NonFiniteAttentionError: the attention or the logits have NaN or
                inf values (a ``ValueError``; usually a diverged model).
        """
        layout = self._check_images(images)
        grad_targets = tuple(grad_targets)
        batch = images.shape[0]
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
        want_grad = len(grad_targets) > 0
        captured: dict[int, list[Tensor]] = {i: [] for i in range(len(self.backend.modules))}
        order: list[int] = []

        def capture(index: int, attention: Tensor) -> None:
            captured[index].append(attention)
            order.append(index)

        # Gradients need a graph: leave inference mode (Lightning validates under it), clone
        # the input into a normal tensor and make it require grad, so that the attention is
        # in the graph even when every parameter is frozen.
        grad_mode = contextlib.ExitStack()
        if want_grad:
            grad_mode.enter_context(torch.inference_mode(False))
            grad_mode.enter_context(torch.enable_grad())
        else:
            grad_mode.enter_context(torch.no_grad())
        with grad_mode, self._probe_mode(capture):
            x = images.detach().to(eval_mode_dtype(self.vit))
            x = x.clone().requires_grad_(True) if want_grad else x
            with _eager():
                output = _unwrap(self.model)(x)
            logits = model_logits(output)
            if logits is not None and (logits.dim() != 2 or len(logits) != batch):
                logits = None
            if logits is None and want_grad:
                raise ValueError(
                    f"the model must return (B={batch}, num_classes) logits (a tensor, a tuple "
                    "starting with them, or an output with .logits) for attention gradients, "
                    f"got {type(output).__name__}."
                )
            maps = self._collect(captured, order, layout, batch)
            grads, targets = (), ()
            if want_grad:
                grads, targets = self._gradients(logits, maps, grad_targets)
        attention = torch.stack([a.detach().float() for a in maps])
        check_attention(attention, layout)
        if logits is not None and not bool(torch.isfinite(logits).all()):
            raise NonFiniteAttentionError("the model's logits have NaN or inf values.")
        return AttentionRecording(
            logits=None if logits is None else logits.detach(),
            attention=attention,
            layout=layout,
            attention_grads=grads,
            targets=targets,
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

    def _collect(
        self, captured: dict[int, list[Tensor]], order: list[int], layout: TokenLayout, batch: int
    ) -> list[Tensor]:
        names = self.backend.module_names  # in the backend's order, which indexes ``captured``
        counts = {names[i]: len(c) for i, c in captured.items() if len(c) != 1}
        if counts:
            raise ValueError(
                "each attention module must run exactly once per forward pass; calls seen: "
                f"{counts}. Check module_pattern or the model's forward."
            )
        self.module_names = [names[i] for i in order]  # in the order the layers ran
        maps = [captured[i][0] for i in order]
        for name, attn in zip(self.module_names, maps, strict=True):
            n = layout.num_tokens
            if not isinstance(attn, Tensor) or attn.dim() != 4 or attn.shape[0] != batch:
                raise ValueError(
                    f"{name} gave {getattr(attn, 'shape', type(attn))}, expected attention of "
                    f"shape (B={batch}, H, N, N); module_pattern must select attention modules."
                )
            if attn.shape[-2:] != (n, n):
                raise ValueError(
                    f"{name} has attention over {attn.shape[-1]} tokens but the layout has "
                    f"N={n} ({layout.num_prefix_tokens} prefix + {layout.grid_size[0]}x"
                    f"{layout.grid_size[1]} patches)."
                )
        heads = {a.shape[1] for a in maps}
        if len(heads) > 1:
            raise ValueError(f"layers have different head counts {sorted(heads)}; cannot stack.")
        return maps

    def _gradients(
        self, logits: Tensor, maps: list[Tensor], grad_targets: tuple[Tensor | None, ...]
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        classes = logits.shape[1]
        if not all(a.requires_grad for a in maps):
            raise ValueError("the recorded attention is not part of an autograd graph.")
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
        grads = []
        for i, target in enumerate(targets):
            score = logits.gather(1, target[:, None]).sum()
            got = torch.autograd.grad(
                score, maps, retain_graph=i < len(targets) - 1, allow_unused=True
            )
            grads.append(
                torch.stack(
                    [
                        (torch.zeros_like(a) if g is None else g).detach().float()
                        for a, g in zip(maps, got, strict=True)
                    ]
                )
            )
        return tuple(grads), tuple(t.detach() for t in targets)


def _with_pattern(model: nn.Module, backend: CaptureBackend, pattern: str) -> CaptureBackend:
    """``backend`` recording the modules whose qualified names fully match ``pattern``.

    A matched module that has an ``attn_drop`` is read there; any other must
    itself output the ``(B, H, N, N)`` attention probabilities.
    """
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"module_pattern {pattern!r} is not a regex: {err}") from err
    named = [(n, m) for n, m in model.named_modules() if not _is_wrapper(m)]
    chosen = [(n, m) for n, m in named if regex.fullmatch(n)]
    if not chosen:
        raise ValueError(
            f"module_pattern {pattern!r} matches no module name (re.fullmatch); "
            f"attention-like modules: {backend.module_names or 'none'}; a few names: "
            f"{[n for n, _ in named][:12]}."
        )
    return dataclasses.replace(
        backend,
        by_pattern=True,
        module_names=[n for n, _ in chosen],
        modules=[m for _, m in chosen],
    )


def _is_wrapper(module: nn.Module) -> bool:
    return _unwrap(module) is not module


def _eager():
    """Run ``torch.compile``'d submodules eagerly for the probe (hooks and flags then apply)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:  # pragma: no cover - torch < 2.6
        return contextlib.nullcontext()
    return set_stance("force_eager")
