"""Bootstrap intervals and the comparisons that rest on them."""

from __future__ import annotations

import pytest
import torch

from lit_vit.attention import bootstrap_interval, compare, threshold_verdict


def test_interval_holds_the_mean_and_shrinks_with_more_images():
    values = torch.rand(400, generator=torch.Generator().manual_seed(0))
    wide, narrow = bootstrap_interval(values[:25]), bootstrap_interval(values)
    assert wide.low <= wide.mean <= wide.high and narrow.low <= narrow.mean <= narrow.high
    assert narrow.high - narrow.low < wide.high - wide.low
    # The standard error of a uniform's mean is 0.289 / sqrt(n): the interval is about 4 of it.
    assert narrow.high - narrow.low == pytest.approx(4 * 0.289 / 20, rel=0.2)
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)


def test_indistinguishable_maps_are_said_to_be():
    generator = torch.Generator().manual_seed(1)
    a = torch.rand(64, generator=generator)
    b = a + 0.01 * torch.randn(64, generator=generator)  # the same up to noise around 0
    verdict, interval = compare(a, b, higher_is_better=False)
    assert verdict == "not distinguishable" and interval.low < 0 < interval.high


def test_a_clear_difference_gets_its_direction():
    a = torch.linspace(0.2, 0.3, 64)
    b = a + 0.1
    assert compare(a, b, higher_is_better=False)[0] == "better"  # a has the lower deletion AUC
    assert compare(a, b, higher_is_better=True)[0] == "worse"


def test_threshold_verdicts():
    assert (
        threshold_verdict(torch.full((32,), 0.1) + torch.linspace(0, 0.1, 32), 0.5)[0] == "passes"
    )
    assert threshold_verdict(torch.linspace(0.8, 0.9, 32), 0.5)[0] == "fails"
    assert threshold_verdict(torch.linspace(0.0, 1.0, 32), 0.5)[0] == "not distinguishable"


def test_non_finite_scores_are_refused():
    with pytest.raises(ValueError, match="NaN or inf"):
        bootstrap_interval(torch.tensor([0.1, float("nan")]))
