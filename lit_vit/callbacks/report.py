"""``attention/report.md``, assembled from the sections the attention callbacks render."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lit_vit.attention import CONTROLS, EXPLAINERS

# A Markdown image link whose target is a relative path: ![text](target)
# The columns of the table of explainers, in this order (others after them).
TRUST_COLUMNS = (
    "deletion AUC",
    "insertion AUC",
    "lift",
    "Spearman after full randomisation",
    "random-logit Spearman",
    "sanity checks",
)
IMAGE_LINK = re.compile(r"(!\[[^\]]*\])\((?![a-z]+://|/)([^)]+)\)")


@dataclass
class ReportSection:
    """A callback's part of ``attention/report.md``.

    Attributes:
        title: Section heading.
        order: Position in the report (lower first).
        body: Markdown; figure links relative to the test figures' folder.
        summary: Plain-language statements, computed from the numbers, for
            the report's summary at the top.
    """

    title: str
    order: int
    body: str
    summary: list[str] = field(default_factory=list)


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


def explainer_table(scores: dict[str, dict[str, float | str]]) -> ReportSection:
    """The report's answer to "which explainer can I trust here?".

    Args:
        scores: column -> row -> value, as the callbacks added them (rows are
            explainers and controls; a column a callback did not fill shows "-").
    """
    order = {column: index for index, column in enumerate(TRUST_COLUMNS)}
    scores = dict(sorted(scores.items(), key=lambda item: order.get(item[0], len(order))))
    rows = [name for name in (*EXPLAINERS, *CONTROLS) if any(name in c for c in scores.values())]
    table = markdown_table(
        ["map", *scores], [(row, *(c.get(row, "-") for c in scores.values())) for row in rows]
    )
    body = "\n\n".join(
        [
            "Every explainer beside the controls, maps that know nothing about the model. An "
            "explainer is worth reading where it beats every control on faithfulness (lower "
            "deletion, higher insertion AUC) and falls towards 0 once the model is randomised.",
            table,
        ]
    )
    return ReportSection("Which explainer can I trust here?", 5, body, _trust_summary(scores))


def _trust_summary(scores: dict[str, dict[str, float | str]]) -> list[str]:
    deletion, insertion = scores.get("deletion AUC", {}), scores.get("insertion AUC", {})
    controls = [name for name in CONTROLS if name in deletion and name in insertion]
    lines = []
    if controls:
        beating = [
            name
            for name in EXPLAINERS
            if name in deletion
            and deletion[name] < min(deletion[c] for c in controls)
            and insertion[name] > max(insertion[c] for c in controls)
        ]
        lines.append(
            "- Beat every control on faithfulness: "
            + (", ".join(beating) if beating else "none")
            + f" (controls: {', '.join(controls)})."
        )
    verdicts = scores.get("sanity checks", {})
    if verdicts:
        passing = [name for name in EXPLAINERS if verdicts.get(name) == "passes"]
        lines.append(
            "- Pass the sanity checks: " + (", ".join(passing) if passing else "none") + "."
        )
    return lines


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats with 3 decimals."""

    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
