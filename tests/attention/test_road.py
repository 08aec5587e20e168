"""Noisy linear imputation and ROAD against their definitions (hand-computed cases)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lit_vit.attention import ROAD_FRACTIONS, noisy_linear_imputation, road

# Weights of the 8 neighbours: 1/6 direct, 1/12 diagonal.
DIRECT, DIAGONAL = 1 / 6, 1 / 12


def test_a_linear_ramp_is_reproduced_exactly_where_interior_pixels_are_removed():
    rows, cols = torch.meshgrid(torch.arange(12.0), torch.arange(10.0), indexing="ij")
    ramp = (0.3 * rows - 0.2 * cols + 1.0)[None, None].repeat(2, 3, 1, 1)  # (2, 3, 12, 10)
    removed = torch.zeros(2, 12, 10, dtype=torch.bool)
    removed[0, 2:9, 3:8] = True  # one block
    removed[1, 1:11:2, 1:9:3] = True  # scattered pixels
    filled = noisy_linear_imputation(ramp, removed, sigma=0)
    torch.testing.assert_close(filled, ramp, rtol=0, atol=1e-5)


def test_a_removed_pixel_is_the_weighted_mean_of_its_neighbours_at_corners_and_edges():
    image = torch.arange(25.0).view(1, 1, 5, 5) ** 1.5  # not linear: the means differ
    for row, col in [(0, 0), (0, 2), (2, 4), (2, 2), (4, 4)]:
        removed = torch.zeros(1, 5, 5, dtype=torch.bool)
        removed[0, row, col] = True
        weights = {
            (dr, dc): DIAGONAL if dr and dc else DIRECT
            for dr in (-1, 0, 1)
            for dc in (-1, 0, 1)
            if (dr or dc) and 0 <= row + dr < 5 and 0 <= col + dc < 5
        }
        expected = sum(w * image[0, 0, row + dr, col + dc] for (dr, dc), w in weights.items())
        expected /= sum(weights.values())
        filled = noisy_linear_imputation(image, removed, sigma=0)
        assert float(filled[0, 0, row, col]) == pytest.approx(float(expected), rel=1e-6)
        unchanged = ~removed[0]
        assert torch.equal(filled[0, 0][unchanged], image[0, 0][unchanged])


def test_two_adjacent_removed_pixels_are_solved_jointly():
    # A 1x3 strip [a, x, y] with a known: x = a (its only other neighbour is y), y = x.
    # On a 3x3 image with the middle row removed but its first pixel, every removed value
    # is the mean of its neighbours: check the equations, not a formula.
    image = torch.rand(1, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    removed = torch.zeros(1, 3, 3, dtype=torch.bool)
    removed[0, 1, 1:] = True
    filled = noisy_linear_imputation(image, removed, sigma=0)[0, 0]
    for row, col in [(1, 1), (1, 2)]:
        total = weight_sum = 0.0
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                r, c = row + dr, col + dc
                if (dr or dc) and 0 <= r < 3 and 0 <= c < 3:
                    w = DIAGONAL if dr and dc else DIRECT
                    total, weight_sum = total + w * float(filled[r, c]), weight_sum + w
        assert float(filled[row, col]) == pytest.approx(total / weight_sum, rel=1e-6)


def test_noise_is_seeded_and_only_on_removed_pixels():
    image = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    removed = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1)) < 0.4
    quiet = noisy_linear_imputation(image, removed, sigma=0)
    first = noisy_linear_imputation(image, removed, sigma=0.01, seed=3)
    assert torch.equal(first, noisy_linear_imputation(image, removed, sigma=0.01, seed=3))
    assert not torch.equal(first, noisy_linear_imputation(image, removed, sigma=0.01, seed=4))
    noise = (first - quiet)[:, 0]
    assert torch.equal(noise[~removed], torch.zeros_like(noise[~removed]))
    assert 0.005 < float(noise[removed].std()) < 0.02


@pytest.mark.parametrize(
    ("removed", "message"),
    [
        (torch.ones(1, 4, 4, dtype=torch.bool), "covers every pixel"),
        (torch.zeros(1, 4, 4), "must be a bool tensor"),
        (torch.zeros(1, 4, 5, dtype=torch.bool), r"removed must be \(B, H, W\) = \(1, 4, 4\)"),
    ],
)
def test_bad_masks_are_refused(removed, message):
    with pytest.raises(ValueError, match=message):
        noisy_linear_imputation(torch.zeros(1, 1, 4, 4), removed)


class MeanBrightness(nn.Module):
    """Two classes; the logit of class 1 is ``10 * mean(x)`` of the top-left quadrant."""

    def forward(self, x: Tensor) -> Tensor:
        score = 10 * x[:, 0, :4, :4].mean(dim=(1, 2))
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_road_curves_follow_the_definition_on_a_model_built_here():
    model = MeanBrightness()
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, :4, :4] = 1.0  # the evidence: top-left quadrant, 4 of 16 2x2 patches
    saliency = torch.zeros(1, 4, 4)
    saliency[0, :2, :2] = torch.tensor([[4.0, 3.0], [2.0, 1.0]])  # evidence first
    saliency[0, 2:, 2:] = 0.5
    result = road(model, image, saliency, 2, sigma=0)
    assert result.fractions.tolist() == pytest.approx(list(ROAD_FRACTIONS))
    assert result.predicted.tolist() == [1]
    curves = []
    for descending in (True, False):
        order = torch.argsort(saliency.flatten(), descending=descending, stable=True)
        curve = []
        for p in ROAD_FRACTIONS:
            count = int(p * 16 + 0.5)
            patches = torch.zeros(16, dtype=torch.bool)
            patches[order[:count]] = True
            pixels = patches.view(4, 4).repeat_interleave(2, 0).repeat_interleave(2, 1)
            filled = noisy_linear_imputation(image, pixels[None], sigma=0)
            curve.append(float(model(filled).softmax(dim=1)[0, 1]))
        curves.append(torch.tensor(curve))
    torch.testing.assert_close(result.morf_curve[0], curves[0])
    torch.testing.assert_close(result.lerf_curve[0], curves[1])
    x = torch.tensor(ROAD_FRACTIONS)
    span = float(x[-1] - x[0])
    assert float(result.morf[0]) == pytest.approx(float(torch.trapezoid(curves[0], x)) / span)
    assert float(result.lerf[0]) == pytest.approx(float(torch.trapezoid(curves[1], x)) / span)
    assert result.morf[0] < result.lerf[0]  # the map found the evidence


def test_road_scores_several_maps_like_one_call_each():
    model = MeanBrightness()
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    maps = {
        n: torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(i))
        for i, n in enumerate("ab")
    }
    together = road(model, images, maps, 2, seed=5)
    for name, saliency in maps.items():
        alone = road(model, images, saliency, 2, seed=5)
        torch.testing.assert_close(together[name].morf, alone.morf)
        torch.testing.assert_close(together[name].lerf_curve, alone.lerf_curve)
