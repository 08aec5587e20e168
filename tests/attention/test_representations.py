"""CKA, logit lens, token norms, sinks and the entropy alarm: brute force and by hand."""

from __future__ import annotations

import math

import pytest
import torch

from lit_vit.attention import (
    cka_matrix,
    collapsed_layers,
    layer_cka,
    linear_cka,
    sink_rate,
    token_norms,
)


def brute_force_hsic(x: torch.Tensor, y: torch.Tensor, debiased: bool) -> float:
    """HSIC of linear kernels written out element by element."""
    n = len(x)
    k = [[float(x[i] @ x[j]) for j in range(n)] for i in range(n)]
    l = [[float(y[i] @ y[j]) for j in range(n)] for i in range(n)]  # noqa: E741
    if not debiased:  # tr(K H L H) / (n - 1)^2

        def centred(m):
            rows = [sum(r) / n for r in m]
            cols = [sum(m[i][j] for i in range(n)) / n for j in range(n)]
            total = sum(rows) / n
            return [[m[i][j] - rows[i] - cols[j] + total for j in range(n)] for i in range(n)]

        kc, lc = centred(k), centred(l)
        return sum(kc[i][j] * lc[j][i] for i in range(n) for j in range(n)) / (n - 1) ** 2
    for i in range(n):
        k[i][i] = l[i][i] = 0.0
    trace = sum(k[i][j] * l[j][i] for i in range(n) for j in range(n))
    k_sum, l_sum = sum(map(sum, k)), sum(map(sum, l))
    cross = sum(sum(k[i]) * sum(l[i]) for i in range(n))  # 1ᵀ K L 1
    return (trace + k_sum * l_sum / ((n - 1) * (n - 2)) - 2 / (n - 2) * cross) / (n * (n - 3))


@pytest.mark.parametrize("debiased", [True, False])
def test_linear_cka_is_hsic_normalised_as_written_out(debiased):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(9, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(9, 3, generator=generator, dtype=torch.float64)
    y[:, 0] += x[:, 0]  # some shared signal
    expected = brute_force_hsic(x, y, debiased) / math.sqrt(
        brute_force_hsic(x, x, debiased) * brute_force_hsic(y, y, debiased)
    )
    assert float(linear_cka(x, y, debiased)) == pytest.approx(expected, rel=1e-9)


def test_cka_is_one_for_rotated_and_scaled_features_and_with_itself():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(20, 6, generator=generator, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))
    for debiased in (True, False):
        assert float(linear_cka(x, x, debiased)) == pytest.approx(1.0, abs=1e-12)
        assert float(linear_cka(x, 3.5 * x @ rotation, debiased)) == pytest.approx(1.0, abs=1e-12)


def test_debiased_cka_of_independent_features_is_near_zero_where_the_biased_one_is_not():
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(40, 200, generator=generator), torch.randn(40, 200, generator=generator)
    assert abs(float(linear_cka(x, y, debiased=True))) < 0.05
    assert float(linear_cka(x, y, debiased=False)) > 0.5  # wide features, few inputs: biased


def test_cka_matrix_and_layer_cka_agree_with_pairs():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(3, 10, 4, generator=generator)
    features[2] = features[0] * 2
    matrix = cka_matrix(features)
    for a in range(3):
        for b in range(3):
            assert float(matrix[a, b]) == pytest.approx(float(linear_cka(features[a], features[b])))
    assert float(matrix[0, 2]) == pytest.approx(1.0)
    torch.testing.assert_close(layer_cka(features, features.flip(0)), matrix.flip(1).diagonal())
    assert float(cka_matrix(torch.zeros(2, 6, 3))[0, 1]) == 0.0, "a constant layer: 0, not NaN"
    with pytest.raises(ValueError, match="at least 4 inputs"):
        linear_cka(torch.randn(3, 2), torch.randn(3, 2))


def test_token_norms_and_high_norm_tokens_by_hand():
    # One layer, one image: a class token and four patch tokens of norms 1, 1, 1 and 20.
    hidden = torch.tensor([[[[0.0, 2.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [12.0, 16.0]]]])
    norms = token_norms(hidden, num_prefix_tokens=1)
    torch.testing.assert_close(norms.norms, torch.tensor([[[2.0, 1.0, 1.0, 1.0, 20.0]]]))
    # Median patch norm 1: 20 is above 10x it, 2 is not; nothing above 150.
    assert norms.high_norm_share.tolist() == [pytest.approx(1 / 5)]
    assert norms.norm_ratio.tolist() == [pytest.approx(20.0)]
    assert norms.absolute_share.tolist() == [0.0]
    assert token_norms(hidden * 10, 1).absolute_share.tolist() == [pytest.approx(1 / 5)]


def test_sink_rate_by_hand():
    uniform = torch.full((4, 4), 0.25)
    sink = torch.tensor([[0.1, 0.9, 0.0, 0.0]] * 4)  # every query on token 1
    attention = torch.stack([uniform, sink, sink, uniform])[None, None]  # (L=1, B=1, H=4, 4, 4)
    assert sink_rate(attention).tolist() == [0.5]
    assert sink_rate(attention, threshold=0.95).tolist() == [0.0]


def test_entropy_collapse_needs_a_fall_below_the_fraction():
    history = [[0.8, 0.05, 0.5], [0.3, 0.04, 0.09]]
    assert collapsed_layers(history) == [2], "layer 1 was always low: no collapse"
    assert collapsed_layers(history[:1]) == []
    assert collapsed_layers(history, fraction=0.35) == [0, 2]
