"""Controls on hand-made images, and input x gradient against its definition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_vit.attention import CONTROLS, TokenLayout, controls, input_x_gradient

LAYOUT = TokenLayout(1, True, (4, 4), (4, 4))  # 16x16 images, 4x4 grid


def test_every_control_is_a_distribution_over_patches():
    pixels = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = controls(pixels, LAYOUT, seed=5)
    assert tuple(maps) == CONTROLS
    for name, values in maps.items():
        assert values.shape == (3, 4, 4) and bool((values >= 0).all()), name
        torch.testing.assert_close(values.sum(dim=(1, 2)), torch.ones(3))


def test_random_is_seeded_per_image():
    pixels = torch.zeros(2, 1, 16, 16)
    first, again = controls(pixels, LAYOUT, seed=7)["random"], controls(pixels, LAYOUT, seed=7)
    torch.testing.assert_close(first, again["random"])
    assert not torch.equal(first[0], first[1]), "each image its own seed"
    torch.testing.assert_close(controls(pixels[1:], LAYOUT, seed=8)["random"][0], first[1])


def test_intensity_is_brighter_where_the_image_is():
    pixels = torch.zeros(1, 3, 16, 16)
    pixels[..., :8] = 0.75  # the left half, every channel
    intensity = controls(pixels, LAYOUT)["intensity"][0]
    torch.testing.assert_close(intensity[:, :2], torch.full((4, 2), 1 / 8))
    torch.testing.assert_close(intensity[:, 2:], torch.zeros(4, 2))


def test_edges_sit_on_a_step():
    pixels = torch.zeros(1, 1, 16, 16)
    pixels[..., 6:] = 1.0  # a vertical step between columns 5 and 6, inside patch column 1
    edges = controls(pixels, LAYOUT)["edges"][0]
    assert torch.equal(edges[:, 1] > 0, torch.ones(4, dtype=torch.bool))
    torch.testing.assert_close(edges[:, 1], torch.full((4,), 0.25))  # all mass on the step
    assert float(edges[:, [0, 2, 3]].sum()) == 0.0


def test_centre_is_a_gaussian_on_the_grid():
    layout = TokenLayout(0, False, (3, 5), (4, 4))
    centre = controls(torch.zeros(1, 1, 12, 20), layout)["centre"][0]
    assert int(centre.flatten().argmax()) == 7  # row 1, column 2: the middle
    sigma = 5 / 4
    expected = torch.exp(
        -((torch.arange(3.0)[:, None] - 1) ** 2 + (torch.arange(5.0)[None] - 2) ** 2)
        / (2 * sigma**2)
    )
    torch.testing.assert_close(centre, expected / expected.sum())


def test_input_x_gradient_of_a_linear_model_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 3))
    images = torch.randn(2, 1, 16, 16)
    model.train()
    maps = input_x_gradient(model, images, LAYOUT, targets=torch.tensor([2, 0]))
    assert model.training, "mode restored"
    weights = model[1].weight.view(3, 1, 16, 16)
    for image, target in enumerate((2, 0)):
        product = (images[image] * weights[target])[0]  # the gradient of a linear logit is W_c
        per_patch = product.view(4, 4, 4, 4).sum(dim=(1, 3)).abs()
        torch.testing.assert_close(maps[image], per_patch / per_patch.sum())


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"pixels must be \(B, C, 16, 16\) for a 4x4 grid"):
        controls(torch.zeros(1, 1, 16, 12), LAYOUT)
