"""``attention/report.md``, assembled from the sections the attention callbacks render."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn

from lit_vit.attention import (
    CONTROLS,
    EXPLAINERS,
    FAITHFULNESS_METRICS,
    TokenLayout,
    bootstrap_interval,
    compare,
)

# A Markdown image link whose target is a relative path: ![text](target)
# The columns of the table of explainers, in this order (others after them).
# The sanity callback's verdict columns: "passes", "fails", "not distinguishable" or "n/a".
SANITY_VERDICTS = ("randomisation check", "random-logit check")
TRUST_COLUMNS = (
    *FAITHFULNESS_METRICS,
    "lift",
    "Spearman after full randomisation",
    "random-logit Spearman",
    *SANITY_VERDICTS,
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


class TrustScores:
    """The test run's scores of every explainer and control, as the callbacks add them, and
    the model's predictions on the explained images: what :func:`explainer_table` reads."""

    def __init__(self) -> None:
        self.scores: dict[str, dict[str, Tensor | float | str]] = {}
        self._correct: list[Tensor] = []  # per explained test batch, (B,) 1.0 where right
        self._classes: int | None = None

    def add(self, column: str, values: dict[str, Tensor | float | str]) -> None:
        """Add a column (one row per map): ``(n,)`` per-image scores (shown with their
        bootstrap interval), a number or a verdict."""
        self.scores.setdefault(column, {}).update(values)

    def note_predictions(self, predicted: Tensor, labels: Tensor, num_classes: int) -> None:
        """Record ``(B,)`` predictions on explained test images against their ``(B,)`` labels
        (of ``num_classes``): the table withholds verdicts from a model near chance."""
        self._correct.append((predicted.cpu() == labels.cpu()).float())
        self._classes = num_classes

    def table(self) -> ReportSection | None:
        """The trust table, or ``None`` when no callback scored a map."""
        if not self.scores:
            return None
        correct = torch.cat(self._correct) if self._correct else None
        return explainer_table(self.scores, correct, self._classes)


def explainer_table(
    scores: dict[str, dict[str, Tensor | float | str]],
    correct: Tensor | None = None,
    num_classes: int | None = None,
) -> ReportSection:
    """The report's answer to "which explainer can I trust here?".

    Per-image scores show as their mean and bootstrap 95% interval over the
    images. An explainer *beats* a control on a metric only when the interval
    of their paired difference excludes 0; it is **worth reading here** only
    when it beats every control on every faithfulness metric and passes the
    sanity checks that apply to it (the random-logit check is "n/a" for
    class-agnostic maps). A model near chance gets a banner instead of verdicts.

    Args:
        scores: column -> row -> per-image ``(n,)`` scores, a number or a verdict,
            as the callbacks added them (rows are explainers and controls; a column
            a callback did not fill shows "-").
        correct: ``(n,)`` bool, whether the model got each explained test image right.
        num_classes: Number of classes (chance is ``1 / num_classes``).
    """
    order = {column: index for index, column in enumerate(TRUST_COLUMNS)}
    scores = dict(sorted(scores.items(), key=lambda item: order.get(item[0], len(order))))
    rows = [name for name in (*EXPLAINERS, *CONTROLS) if any(name in c for c in scores.values())]
    banner = _chance_banner(correct, num_classes)
    verdicts = {} if banner else _verdicts(scores)
    header = ["map", *scores, *(["verdict"] if verdicts else [])]
    table = markdown_table(
        header,
        [
            (
                row,
                *(_cell(c.get(row, "-")) for c in scores.values()),
                *([verdicts.get(row, "control")] if verdicts else []),
            )
            for row in rows
        ],
    )
    body = "\n\n".join(
        [
            *([banner] if banner else []),
            "Every explainer beside the controls, maps that know nothing about the model. Each "
            "cell is the mean over the images with its bootstrap 95% interval (2,000 seeded "
            "resamples of the images). An explainer beats a control on a metric only where the "
            "interval of their paired difference excludes 0; it is worth reading here only "
            "where it beats every control on every faithfulness metric and passes the sanity "
            "checks that apply to it.",
            table,
        ]
    )
    summary = [f"- {banner}"] if banner else _trust_summary(scores, verdicts)
    return ReportSection("Which explainer can I trust here?", 5, body, summary)


def _cell(value: object) -> object:
    if isinstance(value, Tensor):
        return str(bootstrap_interval(value))
    return value


def _chance_banner(correct: Tensor | None, num_classes: int | None) -> str | None:
    """A banner when the model is at or near chance: at most twice the chance accuracy."""
    if correct is None or not num_classes or len(correct) == 0:
        return None
    accuracy = bootstrap_interval(correct.float())
    if accuracy.mean > 2 / num_classes:
        return None
    return (
        f"**The model is at or near chance** (accuracy {accuracy} on {accuracy.n} test images, "
        f"chance {1 / num_classes:.3f}): its maps explain a model that has learned nothing "
        "yet, so no explainer gets a verdict."
    )


def _verdicts(scores: dict[str, dict]) -> dict[str, str]:
    """explainer -> its verdict, from the per-image faithfulness scores and the sanity checks."""
    metrics = [m for m in FAITHFULNESS_METRICS if isinstance(_first(scores.get(m)), Tensor)]
    if not metrics:
        return {}
    controls = [c for c in CONTROLS if all(c in scores[m] for m in metrics)]
    verdicts = {}
    for name in EXPLAINERS:
        if not all(name in scores[m] for m in metrics):
            continue
        won = [m for m in metrics if _beats_all(scores[m], name, controls, FAITHFULNESS_METRICS[m])]
        checks = [scores.get(c, {}).get(name) for c in SANITY_VERDICTS]
        passes = all(check in ("passes", "n/a") for check in checks)
        worth = len(won) == len(metrics) and passes
        verdicts[name] = f"beats every control on {len(won)}/{len(metrics)} metrics; " + (
            "**worth reading here**" if worth else "not worth reading here"
        )
    return verdicts


def _beats_all(by_map: dict[str, Tensor], name: str, controls: list[str], higher: bool) -> bool:
    return all(
        compare(by_map[name], by_map[control], higher_is_better=higher)[0] == "better"
        for control in controls
    )


def _first(column: dict | None) -> object:
    return next(iter(column.values()), None) if column else None


def _trust_summary(scores: dict[str, dict], verdicts: dict[str, str]) -> list[str]:
    lines = []
    if verdicts:
        worth = [name for name, verdict in verdicts.items() if "**worth" in verdict]
        lines.append(
            "- Worth reading here (beat every control on every faithfulness metric, with 95% "
            "intervals over the images, and pass the sanity checks): "
            + (", ".join(worth) if worth else "none")
            + "."
        )
        leaders = _leaders(scores)
        if len(set(leaders.values())) > 1:
            by_leader: dict[str, list[str]] = {}
            for metric, leader in leaders.items():
                by_leader.setdefault(leader, []).append(metric)
            lines.append(
                "- The ranking depends on the metric: the best mean is "
                + "; ".join(f"{leader} under {', '.join(ms)}" for leader, ms in by_leader.items())
                + " (each with its interval in the table below)."
            )
    return lines


def _leaders(scores: dict[str, dict]) -> dict[str, str]:
    """faithfulness metric -> the map (explainer or control) with the best mean."""
    leaders = {}
    for metric, higher in FAITHFULNESS_METRICS.items():
        by_map = {n: v for n, v in scores.get(metric, {}).items() if isinstance(v, Tensor)}
        if by_map:
            means = {name: float(values.mean()) for name, values in by_map.items()}
            leaders[metric] = (max if higher else min)(means, key=means.get)
    return leaders


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats with 3 decimals."""

    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class ProbeFacts:
    """What the probe knows of the run, for the report's header.

    Attributes:
        vit: The analysed ViT.
        layout: Its token layout at the test's input size (None before a capture).
        layers, heads: Its attention layers and heads per layer.
        size, seed: The probe's size and seed.
        checkpoint: ``epoch`` and ``global_step`` of the tested checkpoint (empty: none).
        test_images: Test images the model saw.
        explainers: The explainers the test-time analyses compare.
    """

    vit: nn.Module
    layout: TokenLayout | None
    layers: int
    heads: int
    size: int
    seed: int
    checkpoint: dict
    test_images: int
    explainers: tuple[str, ...] = EXPLAINERS


def report_header(trainer: Trainer, pl_module: LightningModule, facts: ProbeFacts) -> list[str]:
    """The report's header lines: checkpoint, test accuracy, model, data, probe, version."""
    from lit_vit import __version__

    epoch = facts.checkpoint.get("epoch")
    lines = [
        f"- Checkpoint: `{trainer.ckpt_path}`"
        + (
            f" (epoch {epoch}, global step {facts.checkpoint['global_step']})"
            if epoch is not None
            else ""
        )
        if trainer.ckpt_path
        else "- Checkpoint: none (the model's weights as given)",
    ]
    accuracy = trainer.callback_metrics.get("test/acc")
    total = len(getattr(trainer.datamodule, "test_dataset", None) or [])
    if accuracy is not None:
        whole = " (the whole test set)" if facts.test_images == total else f" of {total:,}"
        lines.append(
            f"- Test accuracy: {float(accuracy):.4f} on {facts.test_images:,} test "
            f"images{whole if total else ''}"
        )
    hparams = getattr(pl_module, "hparams", {})
    vit = facts.vit
    parameters = sum(parameter.numel() for parameter in vit.parameters())
    shape = f"{facts.layers} layers, width {_width(vit)}, {facts.heads} heads"
    if facts.layout is not None:
        (ph, pw), (gh, gw) = facts.layout.patch_size, facts.layout.grid_size
        shape += f", patch {ph}x{pw}, images {gh * ph}x{gw * pw}"
    return lines + [
        f"- Model: {hparams.get('model_name', type(vit).__name__)}: {shape}, "
        f"{parameters:,} parameters",
        f"- Data: {_describe_data(trainer)}",
        f"- Probe: {facts.size} images (seed {facts.seed})",
        *_explainers_line(facts.explainers),
        f"- Written {date.today().isoformat()} by lit-vit {__version__}",
    ]


def _explainers_line(explainers: tuple[str, ...]) -> list[str]:
    """The explainers compared, when some were left out (none: every one of them)."""
    left_out = [name for name in EXPLAINERS if name not in explainers]
    if not left_out:
        return []
    return [f"- Explainers: {', '.join(explainers)} (left out: {', '.join(left_out)})"]


def _width(vit) -> int | str:
    """Token width of a ViT of any family."""
    for name in ("embed_dim", "hidden_dim"):
        if isinstance(getattr(vit, name, None), int):
            return getattr(vit, name)
    config = getattr(vit, "config", None)
    return getattr(config, "hidden_size", "?")


def _describe_data(trainer: Trainer) -> str:
    datamodule = trainer.datamodule
    if datamodule is None:
        return "dataloaders passed to the trainer"
    sizes = [
        f"{split} {len(dataset):,}"
        for split in ("train", "val", "test")
        if (dataset := getattr(datamodule, f"{split}_dataset", None)) is not None
    ]
    describe = getattr(datamodule, "describe", None)
    name = describe() if callable(describe) else type(datamodule).__name__
    return name + (f" ({', '.join(sizes)} images)" if sizes else "")
