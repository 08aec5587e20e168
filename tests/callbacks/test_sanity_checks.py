"""SanityChecks through the real CLI (the shared run): report table, scalars, figure, restore."""

from __future__ import annotations

import pytest
import torch

from lit_vit.attention import CLASS_SPECIFIC, EXPLAINERS
from lit_vit.callbacks import SanityChecks
from tests.conftest import read_events

VERDICTS = ("passes", "fails", "not distinguishable")


def interval(cell: str) -> tuple[float, float, float]:
    """``"0.123 [0.1, 0.2]"`` -> (mean, low, high)."""
    mean, low, high = cell.replace("[", "").replace("]", "").replace(",", "").split()
    return float(mean), float(low), float(high)


def table_rows(section: str) -> list[list[str]]:
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_report_has_a_row_per_explainer_with_the_logged_values(attention_run):
    section = attention_run.report.split("## Sanity checks\n")[1].split("\n## ")[0]
    rows = table_rows(section)
    assert [row[0] for row in rows] == list(EXPLAINERS)
    events = read_events(attention_run.test_dir)
    for row in rows:
        tag = row[0].replace(" ", "_")
        logged = events.Scalars(f"test_attention/sanity/randomised_{tag}")[-1].value
        mean, low, high = interval(row[1])
        assert mean == pytest.approx(logged, abs=6e-4) and low <= mean <= high
        assert row[2] == ("passes" if high < 0.5 else "fails" if low > 0.5 else VERDICTS[2])
        if row[0] in CLASS_SPECIFIC:
            logit = events.Scalars(f"test_attention/sanity/random_logit_{tag}")[-1].value
            mean, low, high = interval(row[3])
            assert mean == pytest.approx(logit, abs=6e-4)
            assert row[4] == ("passes" if high < 0.5 else "fails" if low > 0.5 else VERDICTS[2])
        else:
            assert row[3:] == ["n/a (class-agnostic)", "n/a"]
    # At least 32 test images (the shared run's test set has more), not the 6 probe images.
    assert "On 32 images." in section
    assert "- Sanity checks on 32 images: " in attention_run.report.split("## Summary")[1]
    assert (attention_run.test_dir / "attention" / "test" / "sanity_checks.png").is_file()
    assert "test_attention/sanity_checks" in events.Tags()["images"]


def test_at_fit_end_the_validation_probe_is_checked_too(attention_run):
    events = read_events(attention_run.fit_dir)
    last_val_step = events.Scalars("val/acc")[-1].step
    for name in EXPLAINERS:
        (logged,) = events.Scalars(f"val_attention/sanity/randomised_{name.replace(' ', '_')}")
        assert logged.step == last_val_step and -1 <= logged.value <= 1
    folder = attention_run.fit_dir / "attention" / "fit_end"
    assert (folder / "sanity_checks.png").is_file()
    rows = table_rows((folder / "sanity_checks" / "table.md").read_text())
    assert [row[0] for row in rows] == list(EXPLAINERS)


def test_the_tested_checkpoint_is_unchanged_by_the_checks(attention_run):
    # The test run loaded last.ckpt, randomised the model in place and restored it: the
    # model the test scored is the checkpoint's (its accuracy is logged after the checks ran).
    state = torch.load(attention_run.checkpoint, weights_only=False)["state_dict"]
    for name, tensor in attention_run.model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_bad_threshold_is_refused():
    with pytest.raises(ValueError, match=r"SanityChecks: threshold=0 must be in \(0, 1\]"):
        SanityChecks(threshold=0)
    with pytest.raises(ValueError, match=r"SanityChecks: images=8 must be at least 32"):
        SanityChecks(images=8)
