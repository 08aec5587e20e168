"""SanityChecks through the real CLI (the shared run): report table, scalars, figure, restore."""

from __future__ import annotations

import pytest
import torch

from lit_vit.callbacks import SanityChecks
from tests.conftest import read_events

EXPLAINERS = ("rollout", "flow", "class token", "grad rollout", "input x gradient")


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
        assert float(row[1]) == pytest.approx(logged, abs=6e-4)
        if row[0] in ("grad rollout", "input x gradient"):
            logit = events.Scalars(f"test_attention/sanity/random_logit_{tag}")[-1].value
            assert float(row[2]) == pytest.approx(logit, abs=6e-4)
        else:
            assert row[2] == "1 (class-agnostic)"
        assert row[3] in ("passes", "fails")
    assert "- Sanity checks: " in attention_run.report.split("## Summary")[1].split("\n## ")[0]
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
