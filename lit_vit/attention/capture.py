"""Record the attention matrices of a timm-style ViT, and their gradients, in one forward pass.

timm's ``Attention`` runs fused scaled-dot-product attention, so the attention
matrix never exists in memory. For the probe pass only, the recorder switches
each attention module to its explicit path (``fused_attn = False``: softmax,
then ``attn_drop``, then ``attn @ v``) and reads the output of ``attn_drop`` with
a forward hook: that tensor is the one the model multiplies with ``v``, so its
gradient is the gradient of the real graph. Flags, hooks and train/eval modes
are restored afterwards, whatever happens.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lit_vit.attention._validate import NonFiniteAttentionError, check_attention
from lit_vit.attention.layout import TokenLayout, _unwrap, find_vit

__all__ = ["AttentionRecorder", "AttentionRecording"]

try:  # timm's standard attention; anything with the same explicit path is duck-typed below
    from timm.layers import Attention as _TimmAttention
except ImportError:  # pragma: no cover
    _TimmAttention = ()


@dataclass(frozen=True)
class AttentionRecording:
    """What one probe pass saw.

    Attributes:
        logits: ``(B, C)`` model output, detached.
        attention: ``(L, B, H, N, N)`` float32 post-softmax attention (the output
            of ``attn_drop``, i.e. what multiplies ``v``), layers in forward order,
            validated once when recorded: pass ``validate=False`` to the
            toolkit's functions to skip checking it again.
        layout: token layout for the input size that was recorded.
        attention_grads: one ``(L, B, H, N, N)`` float32 tensor per grad target:
            ``d(sum_b logits[b, target_b]) / d attention``.
        targets: one ``(B,)`` long tensor per grad target: the classes used.
    """

    logits: Tensor
    attention: Tensor
    layout: TokenLayout
    attention_grads: tuple[Tensor, ...] = ()
    targets: tuple[Tensor, ...] = ()


def _is_attention(module: nn.Module) -> bool:
    """timm ``Attention`` or any module with the same explicit softmax -> attn_drop path."""
    if _TimmAttention and isinstance(module, _TimmAttention):
        return True
    return (
        hasattr(module, "fused_attn")
        and isinstance(getattr(module, "attn_drop", None), nn.Module)
        and (hasattr(module, "qkv") or hasattr(module, "q_proj"))
    )


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
            self.vit_name, self.vit = find_vit(model, vit_name)
        except ValueError as err:
            raise ValueError(
                "AttentionRecorder needs the timm-style ViT inside the model to know the token "
                f"layout (prefix tokens, patch grid). {err}"
            ) from err
        named = [(n, m) for n, m in model.named_modules() if not _is_wrapper(m)]
        if module_pattern is not None:
            try:
                regex = re.compile(module_pattern)
            except re.error as err:
                raise ValueError(
                    f"module_pattern {module_pattern!r} is not a regex: {err}"
                ) from err
            chosen = [(n, m) for n, m in named if regex.fullmatch(n)]
            if not chosen:
                candidates = [n for n, m in named if _is_attention(m)]
                raise ValueError(
                    f"module_pattern {module_pattern!r} matches no module name (re.fullmatch); "
                    f"attention-like modules: {candidates or 'none'}; a few names: "
                    f"{[n for n, _ in named][:12]}."
                )
        else:
            prefix = f"{self.vit_name}." if self.vit_name else ""
            chosen = [(n, m) for n, m in named if n.startswith(prefix) and _is_attention(m)]
            if not chosen:
                kinds = sorted({type(m).__name__ for _, m in named})
                raise ValueError(
                    "no attention modules found (timm Attention, or a module with `qkv`, "
                    f"`attn_drop` and `fused_attn`); module types in the model: {kinds}. "
                    "Pass module_pattern= with a regex for the attention modules' names."
                )
        self.module_names: list[str] = [n for n, _ in chosen]
        self._modules: list[nn.Module] = [m for _, m in chosen]

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
        captured: dict[int, list[Tensor]] = {i: [] for i in range(len(self._modules))}
        order: list[int] = []

        def make_hook(index: int):
            def hook(_module: nn.Module, _inputs: object, output: Tensor) -> None:
                captured[index].append(output)
                order.append(index)

            return hook

        # Gradients need a graph: leave inference mode (Lightning validates under it), clone
        # the input into a normal tensor and make it require grad, so that the attention is
        # in the graph even when every parameter is frozen.
        grad_mode = contextlib.ExitStack()
        if want_grad:
            grad_mode.enter_context(torch.inference_mode(False))
            grad_mode.enter_context(torch.enable_grad())
        else:
            grad_mode.enter_context(torch.no_grad())
        with grad_mode, self._probe_mode(make_hook):
            x = images.detach().to(self._dtype())
            x = x.clone().requires_grad_(True) if want_grad else x
            with _eager():
                output = _unwrap(self.model)(x)
            logits = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(logits, Tensor) or logits.dim() != 2 or len(logits) != batch:
                raise ValueError(
                    f"the model must return (B={batch}, num_classes) logits (or a tuple "
                    f"starting with them), got {getattr(logits, 'shape', type(logits))}."
                )
            maps = self._collect(captured, order, layout, batch)
            grads, targets = (), ()
            if want_grad:
                grads, targets = self._gradients(logits, maps, grad_targets)
        attention = torch.stack([a.detach().float() for a in maps])
        check_attention(attention, layout)
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteAttentionError("the model's logits have NaN or inf values.")
        return AttentionRecording(
            logits=logits.detach(),
            attention=attention,
            layout=layout,
            attention_grads=grads,
            targets=targets,
        )

    # -- helpers -------------------------------------------------------------------------

    def _dtype(self) -> torch.dtype:
        """The floating dtype of the ViT's parameters (float32 when it has none)."""
        floating = (p.dtype for p in self.vit.parameters() if p.dtype.is_floating_point)
        return next(floating, torch.float32)

    def _check_images(self, images: object) -> TokenLayout:
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}.")
        if not images.dtype.is_floating_point:
            raise ValueError(f"images must be a floating point tensor, got {images.dtype}.")
        if images.shape[0] == 0:
            raise ValueError(f"images is an empty batch: shape {tuple(images.shape)}.")
        proj = getattr(self.vit.patch_embed, "proj", None)
        expected = getattr(proj, "in_channels", None)
        if isinstance(expected, int) and images.shape[1] != expected:
            raise ValueError(
                f"images have {images.shape[1]} channels but the model's patch embedding takes "
                f"{expected} (in_chans={expected}); convert the images or build the model "
                f"with in_chans={images.shape[1]}."
            )
        return TokenLayout.from_model(self.vit, (int(images.shape[2]), int(images.shape[3])))

    @contextlib.contextmanager
    def _probe_mode(self, make_hook) -> Iterator[None]:
        """Eval mode, explicit attention path and hooks; everything undone on exit."""
        modes = [(m, m.training) for m in self.model.modules()]
        flags: list[tuple[nn.Module, bool]] = []
        handles = []
        try:
            self.model.eval()
            for index, module in enumerate(self._modules):
                if hasattr(module, "fused_attn"):
                    flags.append((module, module.fused_attn))
                    module.fused_attn = False
                drop = getattr(module, "attn_drop", None)
                target = drop if isinstance(drop, nn.Module) else module
                handles.append(target.register_forward_hook(make_hook(index)))
            yield
        finally:
            for handle in handles:
                handle.remove()
            for module, flag in flags:
                module.fused_attn = flag
            for module, training in modes:
                module.training = training

    def _collect(
        self, captured: dict[int, list[Tensor]], order: list[int], layout: TokenLayout, batch: int
    ) -> list[Tensor]:
        counts = {self.module_names[i]: len(c) for i, c in captured.items() if len(c) != 1}
        if counts:
            raise ValueError(
                "each attention module must run exactly once per forward pass; calls seen: "
                f"{counts}. Check module_pattern or the model's forward."
            )
        if order != sorted(order):  # keep names in the order the layers ran
            self.module_names = [self.module_names[i] for i in order]
            self._modules = [self._modules[i] for i in order]
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


def _is_wrapper(module: nn.Module) -> bool:
    return _unwrap(module) is not module


def _eager():
    """Run ``torch.compile``'d submodules eagerly for the probe (hooks and flags then apply)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:  # pragma: no cover - torch < 2.6
        return contextlib.nullcontext()
    return set_stance("force_eager")
