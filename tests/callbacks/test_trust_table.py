"""The trust table's verdicts on hand-built per-image scores."""

from __future__ import annotations

import torch

from lit_vit.attention import CONTROLS, FAITHFULNESS_METRICS
from lit_vit.callbacks.report import explainer_table

N = 64


def scores(rollout_offset: float) -> dict:
    """Every faithfulness metric: controls around 0.5, rollout ``rollout_offset`` better,
    grad rollout the same as the controls up to noise."""
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(N, generator=generator) * 0.2 + 0.4
    table = {}
    for metric, higher in FAITHFULNESS_METRICS.items():
        sign = 1 if higher else -1
        column = {c: base + 0.01 * torch.randn(N, generator=generator) for c in CONTROLS}
        column["rollout"] = base + sign * rollout_offset
        column["grad rollout"] = base + 0.01 * torch.randn(N, generator=generator)
        table[metric] = column
    table["randomisation check"] = {"rollout": "passes", "grad rollout": "passes"}
    table["random-logit check"] = {"rollout": "n/a", "grad rollout": "passes"}
    return table


def verdicts(section) -> dict[str, str]:
    rows = [
        line.strip("|").split("|") for line in section.body.splitlines() if line.startswith("| ")
    ]
    header = [cell.strip() for cell in rows[0]]
    return {row[0].strip(): row[header.index("verdict")].strip() for row in rows[1:]}


def test_a_clear_winner_is_worth_reading_and_a_tie_is_not():
    section = explainer_table(scores(0.1), torch.ones(N), 10)
    found = verdicts(section)
    assert found["rollout"] == "beats every control on 7/7 metrics; **worth reading here**"
    assert found["grad rollout"].startswith("beats every control on 0/7 metrics; not worth")
    assert found["random"] == "control"
    assert "- Worth reading here (" in section.summary[0] and section.summary[0].endswith(
        "): rollout."
    )
    assert "0.500 [" not in section.body  # cells are intervals: "mean [low, high]"
    assert "[" in section.body.split("| rollout |")[1].split("\n")[0]


def test_a_failed_sanity_check_withholds_the_verdict():
    table = scores(0.1)
    table["randomisation check"]["rollout"] = "fails"
    assert verdicts(explainer_table(table, torch.ones(N), 10))["rollout"].endswith(
        "not worth reading here"
    )


def test_a_model_near_chance_gets_a_banner_and_no_verdicts():
    correct = (torch.arange(N) % 10 == 0).float()  # 10% right, 10 classes
    section = explainer_table(scores(0.1), correct, 10)
    assert section.body.startswith("**The model is at or near chance** (accuracy 0.109 [")
    assert "verdict" not in section.body.splitlines()[4]
    assert section.summary[0].startswith("- **The model is at or near chance**")


def test_the_summary_says_where_the_ranking_depends_on_the_metric():
    table = scores(0.1)
    table["deletion AUC (background)"]["intensity"] = (
        table["deletion AUC (background)"]["rollout"] - 0.2
    )
    section = explainer_table(table, torch.ones(N), 10)
    line = next(line for line in section.summary if "depends on the metric" in line)
    assert "intensity under deletion AUC (background)" in line
    assert "rollout under insertion AUC (background)" in line


def test_more_global_is_said_only_where_the_interval_allows_it():
    from lit_vit.callbacks.head_diversity import _distance_statement

    generator = torch.Generator().manual_seed(0)
    rising = torch.rand(12, 8, 4, generator=generator) * 0.1
    rising += torch.linspace(0.5, 1.0, 12)[:, None, None]  # late layers clearly more global
    assert "late layers are more global than early ones (difference 0.3" in _distance_statement(
        rising
    )
    noise = torch.rand(12, 8, 4, generator=generator)
    assert "not distinguishable from early ones on 8 images" in _distance_statement(noise)
    assert _distance_statement(noise[:1]) == ""
