"""SaCo against hand-computed cases and its expectation for random maps."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lit_vit.attention import saco, saco_coefficient
from lit_vit.attention.saco import group_of_patches


def test_perfect_order_is_one_and_reversed_is_minus_one():
    salience = torch.tensor([0.4, 0.3, 0.2, 0.1])
    assert float(saco_coefficient(salience, torch.tensor([0.9, 0.5, 0.2, 0.0]))) == 1.0
    assert float(saco_coefficient(salience, torch.tensor([0.0, 0.2, 0.5, 0.9]))) == -1.0


def test_a_hand_computed_mixed_case():
    salience = torch.tensor([0.5, 0.3, 0.2])
    drop = torch.tensor([0.1, 0.4, 0.0])
    # pairs (0,1): w 0.2, d0 < d1 -> -0.2; (0,2): w 0.3, + ; (1,2): w 0.1, +
    expected = (-0.2 + 0.3 + 0.1) / (0.2 + 0.3 + 0.1)
    assert float(saco_coefficient(salience, drop)) == pytest.approx(expected)
    assert float(saco_coefficient(torch.full((3,), 0.2), drop)) == 0.0  # no weight at all


def test_groups_are_array_split_of_the_saliency_order():
    saliency = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.8])
    groups = group_of_patches(saliency, 3)  # sizes 3, 2, 2 in order 1, 6, 4 | 2, 3 | 5, 0
    assert groups.tolist() == [2, 0, 1, 1, 0, 2, 0]


class Additive(nn.Module):
    """Two classes; class 1's logit is the sum over pixels of ``weights * x``."""

    def __init__(self, weights: Tensor) -> None:
        super().__init__()
        self.weights = weights

    def forward(self, x: Tensor) -> Tensor:
        score = (x[:, 0] * self.weights).sum(dim=(1, 2))
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_the_true_contributions_score_one_their_reverse_minus_one():
    weights = torch.linspace(0.1, 2.0, 64).view(8, 8) / 20  # logits of a few units: no saturation
    model = Additive(weights)
    image = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    # Removing a group (set to the mean) lowers the logit by exactly its contribution.
    contribution = (weights * (image[0, 0] - image.mean())).view(4, 2, 4, 2).sum(dim=(1, 3))
    assert float(saco(model, image, contribution[None], 2, groups=4)[0]) == 1.0
    assert float(saco(model, image, -contribution[None], 2, groups=4)[0]) == -1.0


def test_random_maps_average_near_zero():
    model = Additive(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)))
    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    scores = torch.cat(
        [
            saco(model, images, torch.rand(64, 4, 4, generator=torch.Generator().manual_seed(s)), 2)
            for s in range(4)
        ]
    )
    assert abs(float(scores.mean())) < 0.05
    assert scores.min() >= -1 and scores.max() <= 1


def test_bad_groups_are_refused():
    with pytest.raises(ValueError, match=r"groups must be an int in \[2, 16\], got 17"):
        saco(Additive(torch.ones(8, 8)), torch.ones(1, 1, 8, 8), torch.rand(1, 4, 4), 2, groups=17)
