"""``attention/report.md``, assembled from the sections the attention callbacks render."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

# A Markdown image link whose target is a relative path: ![text](target)
IMAGE_LINK = re.compile(r"(!\[[^\]]*\])\((?![a-z]+://|/)([^)]+)\)")


def write_report(path: Path, header: Sequence[str], sections: Sequence) -> Path:
    """Write ``attention/report.md``: a header, the sections' summaries, then the sections.

    Only orders and concatenates: each callback renders its own
    :class:`~lit_vit.callbacks.base.ReportSection`.

    Args:
        path: The report's path, ``<log_dir>/attention/report.md``; the test
            figures are in ``path.parent / "test"``, and the sections' relative
            image links are rebased onto that folder.
        header: Markdown lines about the run (checkpoint, model, data, ...).
        sections: Report sections, in any order (sorted by ``order``).

    Returns:
        ``path``.
    """
    sections = sorted(sections, key=lambda section: section.order)
    summary = [line for section in sections for line in section.summary]
    parts = ["# Attention analysis report", "", *header, "", "## Summary", ""]
    parts += summary or ["- No analysis callback produced numbers to summarise."]
    parts.append("")
    for section in sections:
        parts += [f"## {section.title}", "", section.body.strip(), ""]
    text = IMAGE_LINK.sub(r"\1(test/\2)", "\n".join(parts))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats with 3 decimals."""

    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
