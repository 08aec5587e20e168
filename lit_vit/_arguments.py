"""Argument checks shared by the toolkit's functions and the callbacks' constructors."""

from __future__ import annotations


def check_counts(owner: str, /, **counts: int | None) -> None:
    """Raise for a count below 1; ``None`` (all, or the default) passes.

    Args:
        owner: What takes the arguments, for the message (``"Faithfulness"``), or ``""``.
        counts: The arguments by name.

    Raises:
        ValueError: Naming the first count below 1, e.g. ``"Faithfulness: steps=0 must be
            at least 1."``
    """
    for name, value in counts.items():
        if value is not None and value < 1:
            prefix = f"{owner}: " if owner else ""
            raise ValueError(f"{prefix}{name}={value} must be at least 1.")
