"""How each ViT family is found, laid out and made to show its attention.

A capture backend knows one family: which module is the ViT, where its
attention modules are (found by module type, not by attribute paths), its
token layout, and how to make each attention module hand over the
probabilities that multiply the values, in the model's own graph (so that
gradients are the real ones), for one pass only:

- timm (``VisionTransformer`` and every family with its ``Attention`` path:
  EVA, DeiT, BEiT, ...): the explicit path (``fused_attn = False``), read at
  the output of ``attn_drop``;
- Hugging Face transformers (ViT, DeiT, DINOv2 with and without registers, and
  any model built on their attention modules): the eager attention
  implementation (``set_attn_implementation("eager")``), whose attention
  modules return the probabilities they multiply with the values;
- torchvision ``VisionTransformer``: each ``nn.MultiheadAttention`` runs an
  explicit forward (the same computation as its own, with the probabilities
  kept) instead of ``need_weights=False``.

Everything changed is recorded and restored when the pass ends, whatever
happens. Hierarchical and windowed models (Swin and the like) have no global
token grid and are refused with a message that says so. Each family also
changes its input size its own way (:meth:`CaptureBackend.resized_copy`), for
the resolution sweep.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_vit._private import attention_implementation, compiled_original, packed_qkv
from lit_vit.attention.layout import TokenLayout, _is_vit, _unwrap, find_vit

__all__ = ["CaptureBackend", "find_backend", "no_attention_message"]

# Called with (layer index in module order, (B, H, N, N) attention) during the pass.
Capture = Callable[[int, Tensor], None]

try:  # timm's standard attention; look-alikes are duck-typed below
    from timm.layers import Attention as _TimmAttention
except ImportError:  # pragma: no cover
    _TimmAttention = ()

# Class names of attention without a global token grid: windows over a hierarchy of grids.
WINDOWED = ("WindowAttention", "SwinAttention", "SwinSelfAttention", "Swinv2Attention")


@dataclass
class CaptureBackend:
    """One ViT family's way to find, lay out and record attention.

    Attributes:
        family: ``"timm"``, ``"huggingface"`` or ``"torchvision"``.
        vit_name: Qualified name of the ViT in the model (``""``: the model).
        vit: The ViT module.
        module_names: Qualified names (in the model) of its attention modules.
        modules: The attention modules, in module order.
        by_pattern: The modules were chosen by the user's name pattern: each is read
            at its ``attn_drop`` or its own output, as timm's are.
    """

    family: str
    vit_name: str
    vit: nn.Module
    module_names: list[str]
    modules: list[nn.Module]
    by_pattern: bool = False

    def layout(self, image_size: tuple[int, int]) -> TokenLayout:
        """Token layout for inputs of ``image_size`` pixels."""
        if self.family == "timm":
            return TokenLayout.from_model(self.vit, image_size)
        if self.family == "huggingface":
            return _huggingface_layout(self.vit, image_size)
        return _torchvision_layout(self.vit, image_size)

    def input_size(self) -> tuple[int, int]:
        """``(h, w)`` pixels the ViT was built for (its position embedding's grid)."""
        if self.family == "timm":
            return tuple(int(s) for s in self.vit.patch_embed.img_size)
        if self.family == "huggingface":
            size = self.vit.config.image_size
            return (size, size) if isinstance(size, int) else tuple(size)
        return (int(self.vit.image_size), int(self.vit.image_size))

    def resized_copy(self, model: nn.Module, size: tuple[int, int]) -> nn.Module:
        """A deep copy of ``model`` whose ViT takes ``size`` inputs, position embeddings
        resampled to the new grid the family's own way; ``model`` is not modified.

        timm: ``set_input_size`` (bicubic ``resample_abs_pos_embed``). Hugging Face:
        the embeddings always run with ``interpolate_pos_encoding=True`` (bicubic, as in
        ``model(pixels, interpolate_pos_encoding=True)``). torchvision: square sizes,
        ``interpolate_embeddings`` (bicubic), the model's ``image_size`` updated.

        Raises:
            ValueError: A non-square size for torchvision, or a Hugging Face model
                whose embeddings cannot interpolate.
        """
        copied = copy.deepcopy(model)
        vit = copied.get_submodule(self.vit_name) if self.vit_name else copied
        if self.family == "timm":
            vit.set_input_size(img_size=size)
        elif self.family == "huggingface":
            _interpolate_huggingface(vit)
        else:
            _resize_torchvision(vit, size)
        return copied

    def in_channels(self) -> int | None:
        """Input channels the patch embedding takes (``None``: unknown)."""
        conv = next((m for m in self.vit.modules() if isinstance(m, nn.Conv2d)), None)
        return None if conv is None else conv.in_channels

    @contextlib.contextmanager
    def capturing(self, capture: Capture) -> Iterator[None]:
        """For the duration of the block, every attention module passes its probabilities to
        ``capture``; everything changed is restored afterwards."""
        with contextlib.ExitStack() as restore:
            if self.family == "timm" or self.by_pattern:
                _capture_timm(self.modules, capture, restore)
            elif self.family == "huggingface":
                _capture_huggingface(self.vit, self.modules, capture, restore)
            else:
                _capture_torchvision(self.modules, capture, restore)
            yield


def find_backend(model: nn.Module, vit_name: str | None = None) -> CaptureBackend:
    """The capture backend of the ViT inside ``model``, found by module type.

    Args:
        model: The model, a wrapper of it (e.g. a LightningModule) or the ViT.
        vit_name: Qualified name of the ViT when ``model`` holds several.

    Raises:
        ValueError: A windowed model (Swin and the like), no ViT of a known family,
            or several and no ``vit_name``. A ViT without attention modules of a
            known kind gets a backend without modules (see
            :func:`no_attention_message`).
    """
    named = dict(model.named_modules())
    windowed = sorted({type(m).__name__ for m in named.values()} & set(WINDOWED))
    if windowed:
        raise ValueError(
            f"{type(_unwrap(model)).__name__} uses windowed attention ({', '.join(windowed)}): "
            "each window attends within itself over a hierarchy of grids, so there is no global "
            "token grid for class-token maps, rollout or distances. lit-vit analyses ViTs with "
            "global attention (timm, Hugging Face, torchvision ViTs)."
        )
    candidates = [(n, m) for n, m in named.items() if _family(m) is not None]
    # The outermost of nested ones (ViTForImageClassification holds ViTModel).
    candidates = [(n, m) for n, m in candidates if not any(_inside(n, o) for o, _ in candidates)]
    if vit_name is not None:
        if vit_name not in named:
            raise ValueError(
                f"find_vit: no submodule named {vit_name!r}; ViT-like modules found: "
                f"{[n for n, _ in candidates] or 'none'}."
            )
        target = _unwrap(named[vit_name])
        if _family(target) is None:
            raise ValueError(
                f"find_vit: {vit_name!r} is a {type(target).__name__}, not a ViT lit-vit knows "
                f"(timm, Hugging Face or torchvision); ViT-like modules found: "
                f"{[n for n, _ in candidates] or 'none'}."
            )
        candidates = [(vit_name, target)]
    if not candidates:
        name, vit = find_vit(model)  # raises the timm-oriented message listing module types
        candidates = [(name, vit)]
    if len(candidates) > 1:
        raise ValueError(
            f"find_vit: several ViTs found: {[n for n, _ in candidates]}; pass name= to pick one."
        )
    name, vit = candidates[0]
    family = _family(vit)
    prefix = f"{name}." if name else ""
    chosen = [
        (f"{prefix}{n}" if n else name, m)
        for n, m in vit.named_modules()
        if _is_attention(m, family)
    ]
    return CaptureBackend(
        family=family,
        vit_name=name,
        vit=vit,
        module_names=[n for n, _ in chosen],
        modules=[m for _, m in chosen],
    )


def no_attention_message(backend: CaptureBackend) -> str:
    """Why ``backend`` found no attention module, naming what it did find."""
    kinds = sorted({type(m).__name__ for m in backend.vit.modules()})
    if backend.family == "timm":
        return (
            "no attention modules found (timm Attention, or a module with `qkv`, `attn_drop` "
            f"and `fused_attn`); module types in the model: {kinds}. Pass module_pattern= "
            "with a regex for the attention modules' names."
        )
    attention = [kind for kind in kinds if "ttention" in kind]
    return (
        f"found a {backend.family} ViT ({type(backend.vit).__name__}) but none of its "
        f"attention modules is of a kind lit-vit can read; attention module types found: "
        f"{attention or 'none'}. {_versions_hint(backend.family)}"
    )


# -- family detection ------------------------------------------------------------------


def _inside(name: str, other: str) -> bool:
    """Whether module ``name`` lies inside module ``other`` (``""`` is the root)."""
    return name != other and (other == "" or name.startswith(f"{other}."))


def _family(module: nn.Module) -> str | None:
    module_path = type(module).__module__
    if module_path.startswith("transformers.") and hasattr(module, "set_attn_implementation"):
        return "huggingface" if _huggingface_embeddings(module) is not None else None
    if module_path.startswith("torchvision.models.vision_transformer") and hasattr(
        module, "class_token"
    ):
        return "torchvision"
    if _is_vit(module) and compiled_original(module) is None:
        return "timm"
    return None


def _is_attention(module: nn.Module, family: str) -> bool:
    if family == "timm":
        if _TimmAttention and isinstance(module, _TimmAttention):
            return True
        return (
            hasattr(module, "fused_attn")
            and isinstance(getattr(module, "attn_drop", None), nn.Module)
            and (hasattr(module, "qkv") or hasattr(module, "q_proj"))
        )
    if family == "huggingface":
        return all(hasattr(module, name) for name in ("q_proj", "k_proj", "v_proj", "config"))
    return isinstance(module, nn.MultiheadAttention)


def _versions_hint(family: str) -> str:
    if family == "huggingface":
        import transformers

        return (
            f"transformers {transformers.__version__} is installed; lit-vit reads the attention "
            "modules of transformers >= 5 (q_proj, k_proj, v_proj and an attention interface)."
        )
    return "lit-vit reads torchvision's nn.MultiheadAttention."


# -- timm --------------------------------------------------------------------------------


def _capture_timm(modules: list[nn.Module], capture: Capture, restore: contextlib.ExitStack):
    for index, module in enumerate(modules):
        if hasattr(module, "fused_attn"):
            restore.callback(setattr, module, "fused_attn", module.fused_attn)
            module.fused_attn = False
        drop = getattr(module, "attn_drop", None)
        target = drop if isinstance(drop, nn.Module) else module
        handle = target.register_forward_hook(lambda _m, _i, out, index=index: capture(index, out))
        restore.callback(handle.remove)


# -- Hugging Face ------------------------------------------------------------------------


def _huggingface_embeddings(model: nn.Module) -> nn.Module | None:
    """The embeddings module (the one with ``patch_embeddings``) of a Hugging Face ViT."""
    return next((m for m in model.modules() if hasattr(m, "patch_embeddings")), None)


def _huggingface_layout(model: nn.Module, image_size: tuple[int, int]) -> TokenLayout:
    embeddings = _huggingface_embeddings(model)
    patch = embeddings.patch_embeddings.patch_size
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    prefix = sum(
        getattr(embeddings, name).shape[1]
        for name in ("cls_token", "distillation_token", "register_tokens")
        if isinstance(getattr(embeddings, name, None), Tensor)
    )
    height, width = image_size
    return TokenLayout(
        num_prefix_tokens=prefix,
        has_class_token=isinstance(getattr(embeddings, "cls_token", None), Tensor),
        grid_size=(height // patch[0], width // patch[1]),
        patch_size=patch,
    )


def _interpolate_huggingface(vit: nn.Module) -> None:
    """Make the embeddings of ``vit`` interpolate their position encoding at every size."""
    embeddings = _huggingface_embeddings(vit)
    forward = embeddings.forward
    if "interpolate_pos_encoding" not in inspect.signature(forward).parameters:
        if hasattr(embeddings, "interpolate_pos_encoding"):
            return  # DINOv2's embeddings always interpolate
        raise ValueError(
            f"{type(embeddings).__name__} cannot interpolate its position encoding, so "
            f"{type(vit).__name__} runs at its own size only; leave the sweep out for it."
        )

    def interpolating(*args, **kwargs):
        # The model passes interpolate_pos_encoding=False explicitly: override it.
        return forward(*args, **{**kwargs, "interpolate_pos_encoding": True})

    embeddings.forward = interpolating


def _capture_huggingface(
    model: nn.Module, modules: list[nn.Module], capture: Capture, restore: contextlib.ExitStack
):
    previous = attention_implementation(model.config)
    if previous != "eager":
        model.set_attn_implementation("eager")
        restore.callback(model.set_attn_implementation, previous)
    for index, module in enumerate(modules):
        # The eager attention returns (output, probabilities): the probabilities it multiplied
        # with the values, so their gradient is the model's own.
        handle = module.register_forward_hook(
            lambda _m, _i, out, index=index: capture(index, out[1])
        )
        restore.callback(handle.remove)


# -- torchvision -------------------------------------------------------------------------


def _torchvision_layout(model: nn.Module, image_size: tuple[int, int]) -> TokenLayout:
    patch = int(model.patch_size)
    height, width = image_size
    return TokenLayout(
        num_prefix_tokens=1,
        has_class_token=True,
        grid_size=(height // patch, width // patch),
        patch_size=(patch, patch),
    )


def _resize_torchvision(vit: nn.Module, size: tuple[int, int]) -> None:
    """Set a torchvision ViT to square ``size`` inputs, its position embedding resampled."""
    from torchvision.models.vision_transformer import interpolate_embeddings

    if size[0] != size[1]:
        raise ValueError(
            f"torchvision's VisionTransformer takes square images only, not {size[0]}x{size[1]}."
        )
    state = {"encoder.pos_embedding": vit.encoder.pos_embedding.detach()}
    resized = interpolate_embeddings(size[0], vit.patch_size, state)["encoder.pos_embedding"]
    vit.encoder.pos_embedding = nn.Parameter(resized)
    vit.image_size = size[0]


def _capture_torchvision(modules: list[nn.Module], capture: Capture, restore: contextlib.ExitStack):
    for index, module in enumerate(modules):
        unsupported = [
            name
            for name, value in (
                ("separate q/k/v projections", not packed_qkv(module)),
                ("bias_k/bias_v", module.bias_k is not None),
                ("add_zero_attn", module.add_zero_attn),
                ("batch_first=False", not module.batch_first),
            )
            if value
        ]
        if unsupported:
            raise ValueError(
                f"nn.MultiheadAttention with {', '.join(unsupported)} is not the kind "
                "torchvision's VisionTransformer uses; lit-vit cannot read its attention."
            )
        module.forward = _explicit_forward(module, lambda attn, index=index: capture(index, attn))
        restore.callback(delattr, module, "forward")


def _explicit_forward(module: nn.MultiheadAttention, capture: Callable[[Tensor], None]):
    """``nn.MultiheadAttention``'s self-attention, computed with its probabilities kept.

    The same computation as its own forward in eval mode (batch first, packed
    in-projection, no masks): ``softmax(q k^T / sqrt(d)) v`` per head, then the
    out-projection; the ``(B, H, N, N)`` probabilities go to ``capture``.
    """

    def forward(query: Tensor, key: Tensor, value: Tensor, *args, **kwargs):
        if not (query is key is value):
            raise ValueError("lit-vit reads self-attention only (query, key and value the same).")
        batch, tokens, width = query.shape
        heads = module.num_heads
        qkv = F.linear(query, module.in_proj_weight, module.in_proj_bias)  # (B, N, 3 D)
        q, k, v = qkv.view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) / math.sqrt(width // heads)).softmax(dim=-1)
        if module.training and module.dropout > 0:
            attention = F.dropout(attention, module.dropout)
        capture(attention)
        out = (attention @ v).transpose(1, 2).reshape(batch, tokens, width)  # (B, N, D)
        return module.out_proj(out), None

    return forward


def model_logits(output: object) -> Tensor | None:
    """Logits from any family's output: a tensor, a tuple starting with one, or an object with
    ``.logits`` (Hugging Face's ``ImageClassifierOutput``); ``None`` for a backbone output."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0] if output[0].dim() == 2 else None
    return None


def eval_mode_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's parameters (float32 when it has none)."""
    floating = (p.dtype for p in model.parameters() if p.dtype.is_floating_point)
    return next(floating, torch.float32)
