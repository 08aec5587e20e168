"""Per-head and per-image measures: hand-computed cases and plain-loop references."""

from __future__ import annotations

import math

import pytest
import torch

from lit_vit.attention import (
    TokenLayout,
    attention_entropy,
    coverage,
    focus_score,
    foreground_mask,
    head_diversity,
    mean_attention_distance,
    object_mass,
    query_distribution,
)

GRID = TokenLayout(1, True, (2, 2), (4, 4))  # 5 tokens: class + 2x2 patches


def with_class_rows(rows: list[list[float]], layout: TokenLayout = GRID) -> torch.Tensor:
    """``(1, 1, H, N, N)`` attention whose class-token rows over patches are ``rows``.

    Patch query rows are uniform; class rows put no mass on prefix tokens.
    """
    n, p = layout.num_tokens, layout.num_prefix_tokens
    attention = torch.full((1, 1, len(rows), n, n), 1.0 / n)
    for h, row in enumerate(rows):
        attention[0, 0, h, 0] = torch.tensor([0.0] * p + row)
    return attention


# ---------------------------------------------------------------------------------------
# query distribution and head diversity


def test_query_distribution_shape_and_sum(random_attention) -> None:
    layout = TokenLayout(3, True, (2, 3), (4, 4))
    q = query_distribution(random_attention(layout, layers=2, batch=4, heads=3), layout)
    assert q.shape == (2, 4, 3, 6) and q.dtype == torch.float32
    torch.testing.assert_close(q.sum(-1), torch.ones(2, 4, 3))


def test_head_diversity_hand_cases() -> None:
    identical = with_class_rows([[0.1, 0.2, 0.3, 0.4]] * 3)
    torch.testing.assert_close(head_diversity(identical, GRID), torch.zeros(1))
    disjoint = with_class_rows([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(head_diversity(disjoint, GRID), torch.ones(1))
    # half overlap: p = (1/2, 1/2, 0, 0), q = (0, 1/2, 1/2, 0) -> JS = 1/2 bit
    half = with_class_rows([[0.5, 0.5, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0]])
    torch.testing.assert_close(head_diversity(half, GRID), torch.tensor([0.5]))
    one_head = with_class_rows([[0.7, 0.1, 0.1, 0.1]])
    torch.testing.assert_close(head_diversity(one_head, GRID), torch.zeros(1))


def brute_js(p: list[float], q: list[float]) -> float:
    total = 0.0
    for a, b in zip(p, q, strict=True):
        m = (a + b) / 2
        if a > 0:
            total += 0.5 * a * math.log2(a / m)
        if b > 0:
            total += 0.5 * b * math.log2(b / m)
    return total


def test_head_diversity_matches_pairwise_loops(random_attention) -> None:
    layout = TokenLayout(2, False, (2, 3), (4, 4))
    attention = random_attention(layout, layers=2, batch=3, heads=4)
    q = query_distribution(attention, layout).double().tolist()
    expected = []
    for layer in range(2):
        per_image = []
        for b in range(3):
            pairs = [
                brute_js(q[layer][b][h], q[layer][b][k]) for h in range(4) for k in range(h + 1, 4)
            ]
            per_image.append(sum(pairs) / len(pairs))
        expected.append(sum(per_image) / 3)
    torch.testing.assert_close(head_diversity(attention, layout), torch.tensor(expected))


# ---------------------------------------------------------------------------------------
# entropy


def test_entropy_hand_cases() -> None:
    uniform = with_class_rows([[0.25] * 4])
    result = attention_entropy(uniform, GRID)
    torch.testing.assert_close(result.normalized, torch.ones(1, 1))
    torch.testing.assert_close(result.effective_area, torch.ones(1, 1))
    one_hot = with_class_rows([[0.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    result = attention_entropy(one_hot, GRID)
    torch.testing.assert_close(result.normalized, torch.tensor([[0.0, 0.5]]))
    torch.testing.assert_close(result.effective_area, torch.tensor([[0.25, 0.5]]))


def test_entropy_matches_loops(random_attention) -> None:
    layout = TokenLayout(1, True, (3, 3), (4, 4))
    attention = random_attention(layout, layers=2, batch=3, heads=2)
    q = query_distribution(attention, layout).double().tolist()
    normalized = torch.zeros(2, 2, dtype=torch.float64)
    area = torch.zeros(2, 2, dtype=torch.float64)
    for layer in range(2):
        for h in range(2):
            for b in range(3):
                nats = -sum(v * math.log(v) for v in q[layer][b][h] if v > 0)
                normalized[layer, h] += nats / math.log(9) / 3
                area[layer, h] += math.exp(nats) / 9 / 3
    result = attention_entropy(attention, layout)
    torch.testing.assert_close(result.normalized, normalized.float())
    torch.testing.assert_close(result.effective_area, area.float())


def test_effective_area_is_resolution_free() -> None:
    """The same map sampled on a 2x finer grid: same area, different normalised entropy."""
    coarse = TokenLayout(0, False, (2, 2), (8, 8))
    fine = TokenLayout(0, False, (4, 4), (4, 4))
    row_coarse = torch.tensor([0.7, 0.1, 0.1, 0.1])
    row_fine = row_coarse.reshape(2, 2).repeat_interleave(2, 0).repeat_interleave(2, 1) / 4
    a_coarse = row_coarse.expand(4, 4).reshape(1, 1, 1, 4, 4)
    a_fine = row_fine.reshape(-1).expand(16, 16).reshape(1, 1, 1, 16, 16)
    coarse_result = attention_entropy(a_coarse, coarse)
    fine_result = attention_entropy(a_fine, fine)
    torch.testing.assert_close(coarse_result.effective_area, fine_result.effective_area)
    assert not torch.allclose(coarse_result.normalized, fine_result.normalized)


# ---------------------------------------------------------------------------------------
# mean attention distance


def test_distance_hand_cases() -> None:
    layout = TokenLayout(0, False, (2, 2), (4, 4))  # centres (2,2) (2,6) (6,2) (6,6)
    self_only = torch.eye(4).reshape(1, 1, 1, 4, 4)
    result = mean_attention_distance(self_only, layout)
    torch.testing.assert_close(result.pixels, torch.zeros(1, 1))
    neighbour = torch.eye(4)[[1, 0, 3, 2]].reshape(1, 1, 1, 4, 4)  # horizontal neighbour
    torch.testing.assert_close(
        mean_attention_distance(neighbour, layout).pixels, torch.tensor([[4.0]])
    )
    uniform = torch.full((1, 1, 1, 4, 4), 0.25)
    result = mean_attention_distance(uniform, layout)
    # each query: 0, 4, 4, 4*sqrt(2), averaged
    torch.testing.assert_close(result.pixels, torch.tensor([[(8 + 4 * math.sqrt(2)) / 4]]))
    torch.testing.assert_close(result.relative, torch.ones(1, 1))


def test_distance_ignores_prefix_keys_and_matches_loops(random_attention) -> None:
    layout = TokenLayout(2, True, (2, 3), (4, 6))
    attention = random_attention(layout, layers=2, batch=2, heads=2)
    a = attention.double().tolist()
    centers = [((r + 0.5) * 4, (c + 0.5) * 6) for r in range(2) for c in range(3)]
    p, g = 2, 6

    def dist(i: int, j: int) -> float:
        return math.dist(centers[i], centers[j])

    uniform = sum(dist(i, j) for i in range(g) for j in range(g)) / g / g
    pixels = torch.zeros(2, 2, dtype=torch.float64)
    for layer in range(2):
        for h in range(2):
            for b in range(2):
                total = 0.0
                for i in range(g):
                    row = a[layer][b][h][p + i][p:]
                    mass = sum(row)
                    total += sum(row[j] / mass * dist(i, j) for j in range(g))
                pixels[layer, h] += total / g / 2
    result = mean_attention_distance(attention, layout)
    torch.testing.assert_close(result.pixels, pixels.float())
    torch.testing.assert_close(result.relative, (pixels / uniform).float())


# ---------------------------------------------------------------------------------------
# focus and coverage


@pytest.mark.parametrize(("k", "grid"), [(0.1, 4), (0.5, 4), (1.0, 4), (0.3, 10), (0.1, 49)])
def test_focus_uniform_and_one_hot(k: float, grid: int) -> None:
    uniform = torch.full((2, grid), 1.0 / grid)
    expected = math.ceil(round(k * grid, 9)) / grid
    torch.testing.assert_close(focus_score(uniform, k), torch.full((2,), expected))
    one_hot = torch.zeros(1, grid)
    one_hot[0, grid - 1] = 3.0  # renormalised
    torch.testing.assert_close(focus_score(one_hot, k), torch.ones(1))


def test_focus_float_trap_and_grid_shape() -> None:
    # 0.3 * 10 is 3.0000000000000004 in floats: a naive ceil takes 4 patches
    saliency = torch.tensor([[0.4, 0.3, 0.2, 0.1, 0, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(focus_score(saliency, 0.3), torch.tensor([0.9]))
    grid = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    torch.testing.assert_close(focus_score(grid, 0.5), torch.tensor([0.7]))


@pytest.mark.parametrize(("m", "grid"), [(0.5, 4), (1.0, 4), (0.3, 10), (0.5, 49), (1.0, 196)])
def test_coverage_uniform_and_one_hot(m: float, grid: int) -> None:
    uniform = torch.full((2, grid), 1.0 / grid)
    expected = math.ceil(round(m * grid, 9)) / grid
    torch.testing.assert_close(coverage(uniform, m), torch.full((2,), expected))
    one_hot = torch.zeros(1, grid)
    one_hot[0, 0] = 1.0
    torch.testing.assert_close(coverage(one_hot, m), torch.full((1,), 1.0 / grid))


def test_coverage_ties_at_threshold() -> None:
    # 0.5 + 0.3 reaches m = 0.8 exactly (in exact arithmetic): two patches
    saliency = torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    torch.testing.assert_close(coverage(saliency, 0.8), torch.tensor([2 / 3, 1 / 3]))
    torch.testing.assert_close(coverage(saliency, 0.81), torch.tensor([1.0, 2 / 3]))


# ---------------------------------------------------------------------------------------
# foreground mask and object mass


def test_foreground_mask_hand_case() -> None:
    layout = TokenLayout(1, True, (2, 2), (2, 2))
    images = torch.zeros(1, 2, 4, 4)
    images[0, 0, :2, :2] = 0.2  # channel mean 0.1: exactly at the threshold
    images[0, 1, :2, 2:] = 0.1  # channel mean 0.05
    images[0, :, 2:, :2] = 1.0
    images[0, 0, 3, 3] = 0.8  # patch mean 0.1 over 4 pixels and 2 channels
    expected = torch.tensor([[[True, False], [True, True]]])
    assert torch.equal(foreground_mask(images, layout), expected)
    assert torch.equal(
        foreground_mask(images, layout, threshold=0.5),
        torch.tensor([[[False, False], [True, False]]]),
    )


def test_foreground_mask_padded_and_cropped_grids() -> None:
    images = torch.zeros(1, 1, 5, 4)
    images[0, 0, 4, :2] = 0.5  # the last patch row holds one real pixel row
    padded = TokenLayout(0, False, (3, 2), (2, 2))  # timm pads 5 -> 6 rows
    expected = torch.tensor([[[False, False], [False, False], [True, False]]])
    assert torch.equal(foreground_mask(images, padded), expected)
    cropped = TokenLayout(0, False, (2, 2), (2, 2))  # a strict model floors: row 4 ignored
    assert not foreground_mask(images, cropped).any()


def test_object_mass_hand_cases() -> None:
    mask = torch.tensor([[[True, False], [False, False]], [[True, True], [False, False]]])
    uniform = torch.full((2, 2, 2), 0.25)
    result = object_mass(uniform, mask)
    torch.testing.assert_close(result.mass, torch.tensor([0.25, 0.5]))
    torch.testing.assert_close(result.lift, torch.ones(2))
    peaked = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.5, 0.5]]])
    result = object_mass(peaked, mask)
    torch.testing.assert_close(result.mass, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(result.lift, torch.tensor([4.0, 0.0]))
    empty = object_mass(uniform[:1], torch.zeros(1, 2, 2, dtype=torch.bool))
    assert empty.mass.item() == 0 and math.isnan(empty.lift.item())


def test_inputs_untouched(random_attention) -> None:
    layout = TokenLayout(1, True, (2, 2), (4, 4))
    attention = random_attention(layout)
    saliency = torch.rand(3, 2, 2) * 5
    mask = saliency > 2
    images = torch.rand(3, 1, 8, 8)
    copies = [t.clone() for t in (attention, saliency, mask, images)]
    head_diversity(attention, layout)
    attention_entropy(attention, layout)
    mean_attention_distance(attention, layout)
    focus_score(saliency)
    coverage(saliency)
    object_mass(saliency, mask)
    foreground_mask(images, layout)
    for before, after in zip(copies, (attention, saliency, mask, images), strict=True):
        assert torch.equal(before, after)


# ---------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: focus_score(s, k=0), r"k must be a number in \(0, 1\], got 0"),
        (lambda s: focus_score(s, k=1.5), r"k must be a number in \(0, 1\], got 1.5"),
        (lambda s: coverage(s, m=0.0), r"m must be a number in \(0, 1\], got 0.0"),
        (lambda s: coverage(s, m=True), r"m must be a number in \(0, 1\], got True"),
        (lambda s: focus_score(s[:0]), r"saliency has an empty batch \(B=0\)"),
        (lambda s: focus_score(s - 1), "saliency must be non-negative"),
        (lambda s: coverage(s * float("nan")), "saliency has NaN or inf values"),
        (lambda s: coverage(s[0, 0, 0]), r"saliency must have shape \(B, gh, gw\) or \(B, G\)"),
        (lambda s: object_mass(s, s > 0.5), None),
        (lambda s: object_mass(s, (s > 0.5).float()), "mask must be a bool tensor"),
        (lambda s: object_mass(s, (s > 0.5).flatten(1)), r"mask has shape \(2, 4\) but saliency"),
    ],
)
def test_saliency_errors(call, match: str | None) -> None:
    saliency = torch.rand(2, 2, 2)
    if match is None:
        call(saliency)
        return
    with pytest.raises(ValueError, match=match):
        call(saliency)


def test_attention_errors() -> None:
    attention = with_class_rows([[0.25] * 4])
    for fn in (query_distribution, head_diversity, attention_entropy, mean_attention_distance):
        with pytest.raises(ValueError, match=r"attention must have shape \(L, B, H, N, N\)"):
            fn(attention[0], GRID)
        with pytest.raises(ValueError, match="N=5 tokens but the layout has 4"):
            fn(attention, TokenLayout(0, False, (2, 2), 4))
        with pytest.raises(ValueError, match="rows must sum to 1"):
            fn(attention * 0.5, GRID)


def test_foreground_mask_errors() -> None:
    layout = TokenLayout(0, False, (2, 2), (2, 2))
    with pytest.raises(ValueError, match=r"raw pixels in \[0, 1\], got values in \[-1"):
        foreground_mask(torch.full((1, 1, 4, 4), -1.0), layout)
    with pytest.raises(ValueError, match=r"images are 8x8 pixels but the layout is a 2x2 grid"):
        foreground_mask(torch.rand(1, 1, 8, 8), layout)
    with pytest.raises(ValueError, match=r"images must be a \(B, C, H, W\) tensor"):
        foreground_mask(torch.rand(4, 4), layout)
    with pytest.raises(ValueError, match="empty batch"):
        foreground_mask(torch.rand(0, 1, 4, 4), layout)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\], got 2"):
        foreground_mask(torch.rand(1, 1, 4, 4), layout, threshold=2)
