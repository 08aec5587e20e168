"""Finding the ViT inside any model, and its family's backend: one finder for every family."""

from __future__ import annotations

from torch import nn

from lit_vit._private import unwrap_compiled
from lit_vit.attention.backends.base import CaptureBackend
from lit_vit.attention.backends.hugging_face import HuggingFaceBackend
from lit_vit.attention.backends.timm_vit import TimmBackend
from lit_vit.attention.backends.torchvision_vit import TorchvisionBackend

__all__ = ["BACKENDS", "find_backend", "find_vit"]

# The families, asked in this order (a Hugging Face or torchvision ViT may look timm-like).
BACKENDS: tuple[type[CaptureBackend], ...] = (HuggingFaceBackend, TorchvisionBackend, TimmBackend)
# Class names of attention without a global token grid: windows over a hierarchy of grids.
WINDOWED = ("WindowAttention", "SwinAttention", "SwinSelfAttention", "Swinv2Attention")


def find_vit(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """The ViT inside any model, of any family lit-vit knows (timm-style, Hugging Face,
    torchvision): :func:`find_backend`'s ``(vit_name, vit)``.

    ``torch.compile`` wrappers are looked through (``_orig_mod``), so the module
    returned always runs eagerly.

    Args:
        model: The model, a wrapper of it (e.g. a LightningModule) or the ViT.
        name: Qualified name of the ViT inside ``model`` (as in
            ``model.named_modules()``); needed when there are several.

    Returns:
        ``(qualified_name, vit)``; the name is ``""`` for ``model`` itself.

    Raises:
        ValueError: As :func:`find_backend`; the message lists the candidates.
    """
    backend = find_backend(model, name)
    return backend.vit_name, backend.vit


def find_backend(model: nn.Module, vit_name: str | None = None) -> CaptureBackend:
    """The capture backend of the ViT inside ``model``, found by module type.

    Args:
        model: The model, a wrapper of it (e.g. a LightningModule) or the ViT.
        vit_name: Qualified name of the ViT when ``model`` holds several.

    Raises:
        ValueError: A windowed model (Swin and the like), no ViT of a known family,
            ``vit_name`` not found or not such a ViT, or several and no ``vit_name``.
            A ViT without attention modules of a known kind gets a backend without
            modules (see :meth:`CaptureBackend.no_attention_message`).
    """
    named = dict(model.named_modules())
    _refuse_windowed(model, named)
    candidates = [(n, m) for n, m in named.items() if _family(m) is not None]
    # The outermost of nested ones (ViTForImageClassification holds ViTModel).
    candidates = [(n, m) for n, m in candidates if not any(_inside(n, o) for o, _ in candidates)]
    if vit_name is not None:
        candidates = [_named_vit(named, vit_name, candidates)]
    if not candidates:
        kinds = sorted({type(m).__name__ for m in named.values()})
        raise ValueError(
            f"find_vit: no ViT lit-vit knows (a timm-style module with `patch_embed` and "
            f"`num_prefix_tokens`, a Hugging Face or a torchvision ViT) in "
            f"{type(model).__name__}; module types found: {kinds}."
        )
    if len(candidates) > 1:
        raise ValueError(
            f"find_vit: several ViTs found: {[n for n, _ in candidates]}; pass name= to pick one."
        )
    name, vit = candidates[0]
    family = _family(vit)
    prefix = f"{name}." if name else ""
    chosen = [
        (f"{prefix}{n}" if n else name, m) for n, m in vit.named_modules() if family.is_attention(m)
    ]
    return family(
        vit_name=name,
        vit=vit,
        module_names=[n for n, _ in chosen],
        modules=[m for _, m in chosen],
    )


def _family(module: nn.Module) -> type[CaptureBackend] | None:
    return next((backend for backend in BACKENDS if backend.claims(module)), None)


def _refuse_windowed(model: nn.Module, named: dict[str, nn.Module]) -> None:
    windowed = sorted({type(m).__name__ for m in named.values()} & set(WINDOWED))
    if windowed:
        raise ValueError(
            f"{type(unwrap_compiled(model)).__name__} uses windowed attention "
            f"({', '.join(windowed)}): "
            "each window attends within itself over a hierarchy of grids, so there is no global "
            "token grid for class-token maps, rollout or distances. lit-vit analyses ViTs with "
            "global attention (timm, Hugging Face, torchvision ViTs)."
        )


def _named_vit(
    named: dict[str, nn.Module], vit_name: str, candidates: list
) -> tuple[str, nn.Module]:
    """The ViT named ``vit_name``, checked, with its name (a compiled one's eager module's)."""
    found = [n for n, _ in candidates] or "none"
    if vit_name not in named:
        raise ValueError(
            f"find_vit: no submodule named {vit_name!r}; ViT-like modules found: {found}."
        )
    target = unwrap_compiled(named[vit_name])
    if _family(target) is None:
        raise ValueError(
            f"find_vit: {vit_name!r} is a {type(target).__name__}, not a ViT lit-vit knows "
            f"(timm, Hugging Face or torchvision); ViT-like modules found: {found}."
        )
    return next(n for n, m in named.items() if m is target), target


def _inside(name: str, other: str) -> bool:
    """Whether module ``name`` lies inside module ``other`` (``""`` is the root)."""
    return name != other and (other == "" or name.startswith(f"{other}."))
