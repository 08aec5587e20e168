"""``attention/report.md``: the test-time sections of all attention callbacks, and a summary."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

# A Markdown image link whose target is a relative path: ![text](target)
IMAGE_LINK = re.compile(r"(!\[[^\]]*\])\((?![a-z]+://|/)([^)]+)\)")


def write_report(figures: Path, callbacks: Sequence) -> Path:
    """Write the sections of ``callbacks`` (those that have one) and a summary.

    Args:
        figures: The test figures' folder (``<log_dir>/attention/test``);
            image links in the sections are relative to it.
        callbacks: Attention callbacks, each with a ``report_section``.

    Returns:
        The report's path, ``figures.parent / "report.md"``, its image links
        rebased onto ``figures``.
    """
    sections = sorted(
        (cb.report_section for cb in callbacks if cb.report_section is not None),
        key=lambda section: section.order,
    )
    facts = {name: value for section in sections for name, value in section.facts.items()}
    parts = ["# Attention analysis report", "", *summary(facts), ""]
    for section in sections:
        parts += [f"## {section.title}", "", section.body.strip(), ""]
    text = IMAGE_LINK.sub(rf"\1({figures.name}/\2)", "\n".join(parts))
    path = figures.parent / "report.md"
    path.write_text(text)
    return path


def summary(facts: dict) -> list[str]:
    """Plain-language statements computed from the sections' numbers."""
    lines = ["## Summary", ""]
    distance = facts.get("relative_distance_by_layer")
    if distance is not None and len(distance) >= 2:
        third = max(1, len(distance) // 3)
        early = sum(distance[:third]) / third
        late = sum(distance[-third:]) / third
        if abs(late - early) < 0.02:
            trend = "about as global as"
        else:
            trend = "more global than" if late > early else "more local than"
        lines.append(
            f"- Mean attention distance, relative to uniform attention: {early:.2f} in the first "
            f"{third} layer(s), {late:.2f} in the last {third}; late layers are {trend} "
            f"early ones (1.00 = as global as uniform)."
        )
    diversity = facts.get("head_diversity_by_layer")
    if diversity is not None and len(diversity) >= 1:
        top = max(range(len(diversity)), key=lambda index: diversity[index])
        low = min(range(len(diversity)), key=lambda index: diversity[index])
        lines.append(
            f"- Heads disagree most in layer {top} (Jensen-Shannon {diversity[top]:.3f}) and "
            f"least in layer {low} ({diversity[low]:.3f})."
        )
    if "focus_mean" in facts:
        lines.append(
            f"- Rollout focus@{facts['focus_k']:.0%}: {facts['focus_mean']:.3f} of the mass on "
            f"the top patches (uniform: {facts['focus_uniform']:.3f}); "
            f"coverage@{facts['coverage_m']:.0%}: {facts['coverage_mean']:.3f} of the grid; "
            f"lift on the object {facts['lift_mean']:.2f} (1.00 = no better than uniform)."
        )
    if "deletion_rollout" in facts:
        lines.append(
            f"- Deleting patches in rollout order drops the predicted class's probability with "
            f"AUC {facts['deletion_rollout']:.3f} against {facts['deletion_random']:.3f} for a "
            "random order (lower is more faithful)."
        )
    if "best_resolution" in facts:
        lines.append(
            f"- Accuracy is highest at {facts['best_resolution']} "
            f"({facts['best_resolution_accuracy']:.3f}); at the training size it is "
            f"{facts['training_resolution_accuracy']:.3f}."
        )
    if len(lines) == 2:
        lines.append("- No analysis callback produced numbers to summarise.")
    return lines


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats with 3 decimals."""

    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
