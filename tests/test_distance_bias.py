"""The learnable 2-D distance bias: hand-computed distances, brute-force attention, the switch."""

from __future__ import annotations

import math

import pytest
import torch
from timm.optim import create_optimizer_v2

from lit_vit.distance_bias import DistanceBiasAttention, grid_distances
from lit_vit.model import LitViT


def test_grid_distances_by_hand():
    root2 = math.sqrt(2)
    expected = torch.tensor(
        [[0, 1, 1, root2], [1, 0, root2, 1], [1, root2, 0, 1], [root2, 1, 1, 0]]
    )  # cells (0, 0), (0, 1), (1, 0), (1, 1)
    torch.testing.assert_close(grid_distances(4), expected)
    assert grid_distances(9)[0, 8] == pytest.approx(2 * root2)  # corner to corner of 3x3
    with pytest.raises(ValueError, match="needs a square patch grid; 6 patch tokens"):
        grid_distances(6)


def test_bias_is_minus_slope_times_distance_and_zero_for_prefix_tokens():
    attention = DistanceBiasAttention(8, num_heads=2, num_prefix_tokens=2)
    torch.testing.assert_close(attention.slope.detach(), torch.tensor([1.0, 0.5]))
    bias = attention.bias(2 + 9).detach()  # (1, H, N, N): two prefix tokens, a 3x3 grid
    assert bias.shape == (1, 2, 11, 11)
    assert not bias[0, :, :2].any() and not bias[0, :, :, :2].any()
    torch.testing.assert_close(bias[0, 1, 2:, 2:], -0.5 * grid_distances(9))
    assert bias[0, 0, 2, 10] == pytest.approx(-2 * math.sqrt(2))


@pytest.mark.parametrize("fused", [False, True])
def test_attention_is_the_softmax_of_scaled_logits_plus_bias(fused):
    torch.manual_seed(0)
    attention = DistanceBiasAttention(8, num_heads=2, qkv_bias=True).eval()
    attention.fused_attn = fused
    with torch.no_grad():
        attention.slope.copy_(torch.tensor([0.7, -0.3]))
    x = torch.randn(3, 1 + 16, 8)  # (B, N, D): class token and a 4x4 grid
    # By brute force: q, k, v per head from the qkv weights, logits q.k / sqrt(d) + bias.
    q, k, v = (x @ attention.qkv.weight.T + attention.qkv.bias).reshape(3, 17, 3, 2, 4).unbind(2)
    logits = torch.einsum("bihd,bjhd->bhij", q, k) / 2.0
    logits[:, :, 1:, 1:] -= torch.tensor([0.7, -0.3]).view(1, 2, 1, 1) * grid_distances(16)
    weights = logits.softmax(dim=-1)  # (B, H, N, N)
    mixed = torch.einsum("bhij,bjhd->bihd", weights, v).reshape(3, 17, 8)
    expected = mixed @ attention.proj.weight.T + attention.proj.bias
    captured = []
    attention.attn_drop.register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.no_grad():
        torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-5)
    if not fused:  # the explicit path is the one lit-vit's capture reads
        torch.testing.assert_close(captured[0], weights, atol=1e-6, rtol=1e-5)


def test_a_given_mask_is_combined_with_the_bias():
    attention = DistanceBiasAttention(8, num_heads=2, num_prefix_tokens=0).eval()
    attention.fused_attn = False
    captured = []
    attention.attn_drop.register_forward_hook(lambda _m, _i, out: captured.append(out))
    allowed = torch.ones(4, 4, dtype=torch.bool)
    allowed[:, 3] = False  # no query may attend to the last patch
    with torch.no_grad():
        attention(torch.randn(1, 4, 8), attn_mask=allowed)
    assert not captured[0][..., 3].any()
    torch.testing.assert_close(captured[0].sum(-1), torch.ones(1, 2, 4))


def test_the_switch_keeps_timm_module_names_and_no_weight_decay_on_slopes():
    plain = LitViT(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    model = LitViT(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, distance_bias=True)
    added = {n for n, _ in model.named_parameters()} - {n for n, _ in plain.named_parameters()}
    assert added == {"vit.blocks.0.attn.slope", "vit.blocks.1.attn.slope"}
    assert all(isinstance(block.attn, DistanceBiasAttention) for block in model.vit.blocks)
    optimizer = create_optimizer_v2(model.vit, opt="adamw", weight_decay=0.05)  # as LitViT's
    undecayed = [group for group in optimizer.param_groups if group["weight_decay"] == 0]
    slopes = {id(block.attn.slope) for block in model.vit.blocks}
    assert slopes <= {id(p) for group in undecayed for p in group["params"]}
    with pytest.raises(ValueError, match="distance_bias adds parameters that pretrained"):
        LitViT(distance_bias=True, pretrained=True)
