"""Where each token of a timm-style ViT sits: prefix tokens, then a row-major patch grid."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lit_vit._private import unwrap_compiled

__all__ = ["TokenLayout", "is_timm_style"]


def is_timm_style(module: nn.Module) -> bool:
    """A timm-style ViT: a module with a ``patch_embed`` submodule and an int
    ``num_prefix_tokens`` (what :meth:`TokenLayout.from_model` reads)."""
    return isinstance(getattr(module, "patch_embed", None), nn.Module) and isinstance(
        getattr(module, "num_prefix_tokens", None), int
    )


def _pair(value: int | tuple[int, ...] | list[int], name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"{name} must be a pair of ints (height, width), got {value!r}.")
    if value[0] <= 0 or value[1] <= 0:
        raise ValueError(f"{name} must be positive, got {tuple(value)}.")
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class TokenLayout:
    """Token order of a ViT for one input size: ``N = P + G`` tokens.

    The first ``P`` tokens are prefix tokens in timm order (class token if any,
    then distillation token if any, then register tokens); the last
    ``G = gh * gw`` tokens are patches in row-major order over the patch grid.

    Args:
        num_prefix_tokens: ``P``, may be 0.
        has_class_token: whether token 0 is a class token (needs ``P >= 1``).
        grid_size: ``(gh, gw)`` patches per column and per row.
        patch_size: ``(ph, pw)`` patch size in input pixels.

    Raises:
        ValueError: ``P < 0``, a class token without prefix tokens, or a
            non-positive grid or patch size.
    """

    num_prefix_tokens: int
    has_class_token: bool
    grid_size: tuple[int, int]
    patch_size: tuple[int, int]

    def __post_init__(self) -> None:
        p = self.num_prefix_tokens
        if not isinstance(p, int) or isinstance(p, bool) or p < 0:
            raise ValueError(f"num_prefix_tokens must be an int >= 0, got {p!r}.")
        if self.has_class_token and p < 1:
            raise ValueError(
                "has_class_token=True needs num_prefix_tokens >= 1 (the class token is a "
                f"prefix token), got num_prefix_tokens={p}."
            )
        object.__setattr__(self, "has_class_token", bool(self.has_class_token))
        object.__setattr__(self, "grid_size", _pair(self.grid_size, "grid_size"))
        object.__setattr__(self, "patch_size", _pair(self.patch_size, "patch_size"))

    @property
    def num_patches(self) -> int:
        """``G = gh * gw``, the number of patch tokens."""
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_tokens(self) -> int:
        """``N = P + G``, the sequence length seen by attention."""
        return self.num_prefix_tokens + self.num_patches

    def patch_centers(self, device: torch.device | str | None = None) -> Tensor:
        """Centre of each patch in input pixels.

        Returns:
            ``(G, 2)`` float32, ``(y, x)`` per patch in row-major order; patch
            ``(r, c)`` has centre ``((r + 0.5) * ph, (c + 0.5) * pw)``.
        """
        (gh, gw), (ph, pw) = self.grid_size, self.patch_size
        ys = (torch.arange(gh, device=device, dtype=torch.float32) + 0.5) * ph
        xs = (torch.arange(gw, device=device, dtype=torch.float32) + 0.5) * pw
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([grid_y.reshape(-1), grid_x.reshape(-1)], dim=-1)

    def patch_distances(self, device: torch.device | str | None = None) -> Tensor:
        """``(G, G)`` float32 pixel distances between the :meth:`patch_centers`."""
        centers = self.patch_centers(device=device).double()
        return torch.cdist(centers[None], centers[None])[0].float()

    @classmethod
    def from_model(cls, vit: nn.Module, image_size: tuple[int, int]) -> TokenLayout:
        """Layout of a timm-style ViT for inputs of ``image_size`` pixels.

        Reads ``vit.num_prefix_tokens``, ``vit.cls_token`` and
        ``vit.patch_embed`` (``patch_size``, ``dynamic_feat_size`` when present,
        ``img_size``/``strict_img_size``/``dynamic_img_pad`` to check the size).

        Args:
            vit: a timm-style ViT (see :func:`find_vit`).
            image_size: ``(H, W)`` of the input in pixels.

        Raises:
            ValueError: the model is not ViT-like, or it cannot take inputs of
                this size (the message says the sizes and how to fix it).
        """
        vit = unwrap_compiled(vit)
        if not is_timm_style(vit):
            raise ValueError(
                f"{type(vit).__name__} is not a timm-style ViT (needs `patch_embed` and "
                "`num_prefix_tokens`); use find_vit(model) to locate the ViT inside a model."
            )
        if not isinstance(image_size, int):
            image_size = tuple(image_size)
        height, width = _pair(image_size, "image_size")
        embed = vit.patch_embed
        patch = _pair(embed.patch_size, "patch_embed.patch_size")
        _check_image_size(embed, (height, width), patch)
        if hasattr(embed, "dynamic_feat_size"):
            grid = tuple(int(g) for g in embed.dynamic_feat_size((height, width)))
        else:
            grid = (height // patch[0], width // patch[1])
        return cls(
            num_prefix_tokens=int(vit.num_prefix_tokens),
            has_class_token=getattr(vit, "cls_token", None) is not None,
            grid_size=grid,
            patch_size=patch,
        )


def _check_image_size(embed: nn.Module, size: tuple[int, int], patch: tuple[int, int]) -> None:
    """Fail early, with a fix, where timm's patch embedding would assert."""
    (height, width), (ph, pw) = size, patch
    fixed = getattr(embed, "img_size", None)
    strict = getattr(embed, "strict_img_size", False)
    pad = getattr(embed, "dynamic_img_pad", False)
    if fixed is not None and strict and tuple(fixed) != (height, width):
        raise ValueError(
            f"images are {height}x{width} pixels but the model takes exactly "
            f"{fixed[0]}x{fixed[1]} (patch size {ph}x{pw}, strict_img_size=True). Resize "
            f"the images to {fixed[0]}x{fixed[1]}, or create the model with "
            "dynamic_img_size=True to accept any multiple of the patch size."
        )
    if not strict and not pad and (height % ph or width % pw):
        near_h, near_w = max(ph, round(height / ph) * ph), max(pw, round(width / pw) * pw)
        raise ValueError(
            f"images are {height}x{width} pixels, not a multiple of the patch size "
            f"{ph}x{pw}. Resize them to a multiple (e.g. {near_h}x{near_w}), or create "
            "the model with dynamic_img_pad=True."
        )
