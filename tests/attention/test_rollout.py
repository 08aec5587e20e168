"""Class-token attention, rollout and gradient rollout against plain loops and hand cases."""

from __future__ import annotations

import math

import pytest
import torch

from lit_vit.attention import TokenLayout, cls_attention, gradient_rollout, rollout

LAYOUTS = {
    "class": TokenLayout(1, True, (2, 3), (4, 4)),
    "none": TokenLayout(0, False, (2, 3), (4, 4)),
    "class_registers": TokenLayout(5, True, (3, 2), (4, 4)),
    "registers_only": TokenLayout(2, False, (2, 2), (4, 4)),
}


# ---------------------------------------------------------------------------------------
# brute-force references: loops, no vectorisation


def query_row(matrix: list[list[float]], layout: TokenLayout) -> list[float]:
    n, p = layout.num_tokens, layout.num_prefix_tokens
    if layout.has_class_token:
        return list(matrix[0])
    return [sum(matrix[i][j] for i in range(p, n)) / (n - p) for j in range(n)]


def to_map(row: list[float], layout: TokenLayout) -> torch.Tensor:
    patches = row[layout.num_prefix_tokens :]
    total = sum(patches)
    return torch.tensor([v / total for v in patches], dtype=torch.float64).reshape(layout.grid_size)


def matmul(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    n = len(a)
    return [[sum(a[i][k] * b[k][j] for k in range(n)) for j in range(n)] for i in range(n)]


def brute_rollout(attention, layout, head_fusion="mean", discard_ratio=0.0, start_layer=0):
    num_layers, batch, heads, n, _ = attention.shape
    p = layout.num_prefix_tokens
    a = attention.double().tolist()
    maps = []
    for b in range(batch):
        mixed_layers = []
        for layer in range(start_layer, num_layers):
            fused = [[0.0] * n for _ in range(n)]
            for i in range(n):
                for j in range(n):
                    values = [a[layer][b][h][i][j] for h in range(heads)]
                    if head_fusion == "mean":
                        fused[i][j] = sum(values) / heads
                    elif head_fusion == "max":
                        fused[i][j] = max(values)
                    else:
                        fused[i][j] = min(values)
            entries = sorted(
                (fused[i][j], i * (n - p) + (j - p), i, j) for i in range(n) for j in range(p, n)
            )
            for _, _, i, j in entries[: math.floor(discard_ratio * len(entries))]:
                fused[i][j] = 0.0
            mixed = []
            for i in range(n):
                row = [0.5 * fused[i][j] + (0.5 if i == j else 0.0) for j in range(n)]
                total = sum(row)
                mixed.append([v / total for v in row])
            mixed_layers.append(mixed)
        product = mixed_layers[-1]
        for mixed in reversed(mixed_layers[:-1]):
            product = matmul(product, mixed)
        maps.append(to_map(query_row(product, layout), layout))
    return torch.stack(maps)


def brute_gradient_rollout(attention, grad, layout):
    num_layers, batch, heads, n, _ = attention.shape
    a, g = attention.double().tolist(), grad.double().tolist()
    maps = []
    for b in range(batch):
        r = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
        for layer in range(num_layers):
            abar = [
                [
                    sum(max(g[layer][b][h][i][j] * a[layer][b][h][i][j], 0.0) for h in range(heads))
                    / heads
                    for j in range(n)
                ]
                for i in range(n)
            ]
            update = matmul(abar, r)
            r = [[r[i][j] + update[i][j] for j in range(n)] for i in range(n)]
        maps.append(to_map(query_row(r, layout), layout))
    return torch.stack(maps)


# ---------------------------------------------------------------------------------------
# rollout


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize(("discard_ratio", "start_layer"), [(0.0, 0), (0.3, 1), (0.9, 0)])
def test_rollout_row_matrix_and_brute_force_agree(
    random_attention, layout_name, head_fusion, discard_ratio, start_layer
) -> None:
    layout = LAYOUTS[layout_name]
    attention = random_attention(layout, layers=3, batch=2, heads=3)
    before = attention.clone()
    kwargs = dict(head_fusion=head_fusion, discard_ratio=discard_ratio, start_layer=start_layer)
    row = rollout(attention, layout, method="row", **kwargs)
    matrix = rollout(attention, layout, method="matrix", **kwargs)
    expected = brute_rollout(attention, layout, **kwargs).float()
    assert row.shape == (2, *layout.grid_size) and row.dtype == torch.float32
    torch.testing.assert_close(row, matrix, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(row, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(row.sum((1, 2)), torch.ones(2))
    assert torch.equal(attention, before)


def test_rollout_hand_cases() -> None:
    layout = TokenLayout(1, True, (2, 2), (4, 4))
    uniform = torch.full((2, 1, 2, 5, 5), 0.2)
    torch.testing.assert_close(rollout(uniform, layout), torch.full((1, 2, 2), 0.25))
    # one layer, class token attends only to patch 2, every other token to itself:
    # Ã row 0 = 0.5 e_0 + 0.5 e_3, so the map is one-hot at patch (1, 0)
    attention = torch.eye(5).repeat(1, 1, 1, 1, 1)
    attention[0, 0, 0, 0] = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0])
    expected = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
    for method in ("row", "matrix"):
        torch.testing.assert_close(rollout(attention, layout, method=method), expected)
    # discarding never touches prefix keys: 0.99 of the patch-key entries go, the map survives
    torch.testing.assert_close(
        rollout(uniform, layout, discard_ratio=0.99).sum(), torch.tensor(1.0)
    )


def test_rollout_without_class_token_is_mean_of_patch_rows() -> None:
    layout = TokenLayout(0, False, (1, 2), (4, 4))
    # patch 0 looks at patch 1, patch 1 at itself: R rows are (0.5, 0.5) and (0, 1)
    attention = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).reshape(1, 1, 1, 2, 2)
    torch.testing.assert_close(rollout(attention, layout), torch.tensor([[[0.25, 0.75]]]))


# ---------------------------------------------------------------------------------------
# class-token attention


def test_cls_attention_with_class_token_and_registers() -> None:
    layout = TokenLayout(2, True, (1, 2), (4, 4))
    row = torch.tensor([0.1, 0.3, 0.15, 0.45])
    attention = torch.full((1, 1, 1, 4, 4), 0.25)
    attention[0, 0, 0, 0] = row
    result = cls_attention(attention, layout)
    torch.testing.assert_close(result.maps, torch.tensor([0.25, 0.75]).reshape(1, 1, 1, 1, 2))
    torch.testing.assert_close(result.prefix_mass, torch.tensor(0.4).reshape(1, 1, 1))


def test_cls_attention_without_class_token() -> None:
    layout = TokenLayout(1, False, (1, 2), (4, 4))  # one register, no class token
    attention = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.8, 0.0], [0.6, 0.2, 0.2]]).reshape(
        1, 1, 1, 3, 3
    )
    result = cls_attention(attention, layout)
    # mean of patch rows over patch keys: (0.5, 0.1) -> renormalised (5/6, 1/6)
    torch.testing.assert_close(result.maps, torch.tensor([5 / 6, 1 / 6]).reshape(1, 1, 1, 1, 2))
    torch.testing.assert_close(result.prefix_mass, torch.tensor(0.4).reshape(1, 1, 1))
    no_prefix = cls_attention(torch.full((2, 3, 4, 4, 4), 0.25), TokenLayout(0, False, (2, 2), 4))
    assert no_prefix.maps.shape == (2, 3, 4, 2, 2)
    assert torch.equal(no_prefix.prefix_mass, torch.zeros(2, 3, 4))


def test_cls_attention_matches_rows(random_attention) -> None:
    layout = LAYOUTS["class_registers"]
    attention = random_attention(layout)
    maps = cls_attention(attention, layout).maps
    patches = attention[..., 0, layout.num_prefix_tokens :]
    expected = patches / patches.sum(-1, keepdim=True)
    torch.testing.assert_close(maps.flatten(-2), expected)


# ---------------------------------------------------------------------------------------
# gradient rollout


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
def test_gradient_rollout_matches_brute_force(random_attention, layout_name) -> None:
    layout = LAYOUTS[layout_name]
    attention = random_attention(layout, layers=3, batch=2, heads=2)
    grad = torch.randn(attention.shape, generator=torch.Generator().manual_seed(5))
    before = (attention.clone(), grad.clone())
    result = gradient_rollout(attention, grad, layout)
    expected = brute_gradient_rollout(attention, grad, layout).float()
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(attention, before[0]) and torch.equal(grad, before[1])


def test_gradient_rollout_zero_gradient_is_uniform() -> None:
    layout = TokenLayout(1, True, (2, 2), (4, 4))
    attention = torch.full((2, 1, 2, 5, 5), 0.2)
    result = gradient_rollout(attention, torch.zeros_like(attention), layout)
    torch.testing.assert_close(result, torch.full((1, 2, 2), 0.25))


def test_gradient_rollout_on_a_recording(make_vit) -> None:
    from lit_vit.attention import AttentionRecorder

    vit = make_vit(num_heads=1)
    rec = AttentionRecorder(vit).record(torch.rand(2, 1, 28, 28), grad_targets=[None])
    small = TokenLayout(1, True, (7, 7), (4, 4))
    result = gradient_rollout(rec.attention, rec.attention_grads[0], rec.layout)
    expected = brute_gradient_rollout(rec.attention, rec.attention_grads[0], small).float()
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------
# errors


def _attention(layout: TokenLayout) -> torch.Tensor:
    n = layout.num_tokens
    return torch.full((2, 1, 2, n, n), 1.0 / n)


LAYOUT = TokenLayout(1, True, (2, 2), (4, 4))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda a: rollout(a[0], LAYOUT), r"must have shape \(L, B, H, N, N\).*got \(1, 2, 5, 5\)"),
        (lambda a: rollout(a * 2, LAYOUT), "rows must sum to 1.*layer 0 is off by up to 1"),
        (lambda a: rollout(a, TokenLayout(2, True, (2, 2), 4)), "N=5 tokens but the layout has 6"),
        (lambda a: rollout(a[:, :0], LAYOUT), r"empty batch \(B=0\)"),
        (lambda a: rollout(a, LAYOUT, discard_ratio=1.0), r"discard_ratio must be .* \[0, 1\)"),
        (lambda a: rollout(a, LAYOUT, discard_ratio=-0.1), r"discard_ratio must be .*got -0.1"),
        (lambda a: rollout(a, LAYOUT, start_layer=2), r"start_layer must be an int in \[0, 1\]"),
        (lambda a: rollout(a, LAYOUT, start_layer=-1), "2 layers\\), got -1"),
        (lambda a: rollout(a, LAYOUT, head_fusion="median"), "head_fusion must be one of"),
        (lambda a: rollout(a, LAYOUT, method="fast"), "method must be 'row' or 'matrix'"),
        (lambda a: rollout(a, "layout"), "layout must be a TokenLayout"),
        (lambda a: cls_attention(a.tolist(), LAYOUT), "attention must be a Tensor"),
        (lambda a: cls_attention(a[..., :4], LAYOUT), r"square over tokens \(N, N\), got 5x4"),
        (
            lambda a: gradient_rollout(a, a[:, :, :1], LAYOUT),
            r"attention_grad has shape \(2, 1, 1, 5, 5\) but attention has \(2, 1, 2, 5, 5\)",
        ),
        (
            lambda a: gradient_rollout(a, torch.full_like(a, float("nan")), LAYOUT),
            r"attention_grad has NaN or inf values in layer\(s\) \[0, 1\]",
        ),
    ],
)
def test_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(_attention(LAYOUT))


def test_nan_error_names_the_layer() -> None:
    attention = _attention(LAYOUT).clone()
    attention[1, 0, 1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match=r"attention has NaN or inf values in layer\(s\) \[1\]"):
        rollout(attention, LAYOUT)


def test_bfloat16_softmax_rows_are_accepted() -> None:
    """A model run in pure bf16 has rows off by ~3e-3; they must pass validation."""
    logits = 20 * torch.randn(2, 1, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    attention = logits.bfloat16().softmax(-1).float()
    assert (attention.sum(-1) - 1).abs().max() > 1e-3
    torch.testing.assert_close(rollout(attention, LAYOUT).sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="rows must sum to 1"):
        rollout(attention * 1.05, LAYOUT)


@pytest.mark.parametrize("start_layer", [0, 2])
def test_rollout_fast_path_in_one_image_chunks(random_attention, monkeypatch, start_layer) -> None:
    """Mean fusion without discard walks cache-sized chunks; with one image per chunk
    (several chunks per layer) it still equals the matrix product and the brute force."""
    from lit_vit.attention import _validate

    monkeypatch.setattr(_validate, "CHUNK_BYTES", 1)
    layout = LAYOUTS["class_registers"]
    attention = random_attention(layout, layers=3, batch=3, heads=2)
    before = attention.clone()
    row = rollout(attention, layout, start_layer=start_layer)
    matrix = rollout(attention, layout, method="matrix", start_layer=start_layer)
    expected = brute_rollout(attention, layout, start_layer=start_layer).float()
    torch.testing.assert_close(row, matrix, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(row, expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(attention, before)


def test_rollout_fast_path_validates_every_chunk(monkeypatch) -> None:
    """A bad value in any chunk, also in a layer before ``start_layer``, is reported by layer."""
    from lit_vit.attention import _validate

    monkeypatch.setattr(_validate, "CHUNK_BYTES", 1)
    attention = torch.full((3, 2, 2, 5, 5), 0.2)
    attention[0, 1, 0, 0, 0] = float("nan")
    attention[2, 1, 1, 4, 4] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or inf values in layer\(s\) \[0, 2\]"):
        rollout(attention, LAYOUT, start_layer=1)
    attention = torch.full((3, 2, 2, 5, 5), 0.2)
    attention[1, 1, 0, 3] = torch.tensor([0.6, 0.4, 0.2, 0.0, -0.2])  # sums to 1
    with pytest.raises(ValueError, match="negative entries"):
        rollout(attention, LAYOUT)


def test_rollout_accepts_bfloat16_attention(random_attention) -> None:
    attention = random_attention(LAYOUT, layers=2, batch=2, heads=2).bfloat16()
    row = rollout(attention, LAYOUT)
    matrix = rollout(attention, LAYOUT, method="matrix")
    assert row.dtype == torch.float32
    torch.testing.assert_close(row, matrix, atol=1e-6, rtol=1e-5)
