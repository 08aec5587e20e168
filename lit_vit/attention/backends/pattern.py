"""The fourth backend: attention modules chosen by the user's name pattern, on any family's ViT."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

from torch import nn

from lit_vit._private import unwrap_compiled
from lit_vit.attention.backends.base import (
    Capture,
    CaptureBackend,
    Readout,
    capture_at_attn_drop,
)
from lit_vit.attention.layout import TokenLayout

__all__ = ["PatternBackend", "with_pattern"]


@dataclass
class PatternBackend(CaptureBackend):
    """The modules whose qualified names fully match the user's ``module_pattern``, each read
    at its ``attn_drop`` (or at its own output, which must then be the ``(B, H, N, N)``
    probabilities), as timm's are. Everything else (layout, input size, resizing, readout)
    is the family's: the ViT was found by :func:`~lit_vit.attention.backends.find_backend`.

    Attributes:
        found: The backend of the ViT's family.
    """

    found: CaptureBackend

    @classmethod
    def claims(cls, module: nn.Module) -> bool:
        return False  # chosen by the user's pattern, never by module type

    @property
    def family(self) -> str:  # type: ignore[override]
        return self.found.family

    @property
    def square_inputs(self) -> bool:  # type: ignore[override]
        return self.found.square_inputs

    def layout(self, image_size: tuple[int, int]) -> TokenLayout:
        return self.found.layout(image_size)

    def input_size(self) -> tuple[int, int]:
        return self.found.input_size()

    def resize(self, vit: nn.Module, size: tuple[int, int]) -> None:
        self.found.resize(vit, size)

    def readout(self) -> Readout:
        return self.found.readout()

    def capture_modules(self, capture: Capture, restore: contextlib.ExitStack) -> None:
        capture_at_attn_drop(self.modules, capture, restore)


def with_pattern(model: nn.Module, found: CaptureBackend, pattern: str) -> PatternBackend:
    """A :class:`PatternBackend` recording the modules of ``model`` whose qualified names
    fully match ``pattern``, on the ViT ``found``.

    Raises:
        ValueError: ``pattern`` is no regex, or matches no module name (the message lists
            the family's attention modules and a few names).
    """
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"module_pattern {pattern!r} is not a regex: {err}") from err
    named = [(n, m) for n, m in model.named_modules() if unwrap_compiled(m) is m]
    chosen = [(n, m) for n, m in named if regex.fullmatch(n)]
    if not chosen:
        raise ValueError(
            f"module_pattern {pattern!r} matches no module name (re.fullmatch); "
            f"attention-like modules: {found.module_names or 'none'}; a few names: "
            f"{[n for n, _ in named][:12]}."
        )
    return PatternBackend(
        vit_name=found.vit_name,
        vit=found.vit,
        module_names=[n for n, _ in chosen],
        modules=[m for _, m in chosen],
        found=found,
    )
