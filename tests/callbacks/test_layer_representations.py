"""LayerRepresentations' entropy-collapse alarm and its history."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lit_vit.callbacks import LayerRepresentations


def test_the_entropy_alarm_fires_once_a_layer_falls_below_the_fraction():
    callback = LayerRepresentations(collapse_fraction=0.1)
    texts = []
    outputs = SimpleNamespace(log_text=lambda trainer, run, key, text: texts.append(key))
    callback.probe = SimpleNamespace(outputs=outputs)
    trainer, run = SimpleNamespace(current_epoch=1), SimpleNamespace(stage="val")
    pooled = torch.zeros(2, 4, 3)
    for epoch, entropy in enumerate(([0.6, 0.5], [0.4, 0.05])):
        values = dict.fromkeys(
            ("logit-lens accuracy", "true-class probability", "CKA with previous epoch"), None
        )
        values |= {
            "high-norm share": torch.zeros(2),
            "sink rate": torch.zeros(2),
            "entropy": torch.tensor(entropy),
        }
        callback._remember(epoch, values, pooled)
        if epoch == 0:
            callback._alarm(trainer, run)
            assert texts == [], "no alarm while every layer is above 0.1"
    with pytest.warns(UserWarning, match=r"attention entropy collapsed in layer 1 \(0\.050\)"):
        callback._alarm(trainer, run)
    assert texts == ["entropy_collapse"]
    # A measure this model has no value for (no known head): blank (nan) in the history.
    assert all(math.isnan(value) for value in callback.history["logit-lens accuracy"][1])


def test_collapse_fraction_is_checked():
    with pytest.raises(ValueError, match="collapse_fraction=1.5 must be in"):
        LayerRepresentations(collapse_fraction=1.5)
