"""Attention flow against a plain maximum flow on the layered graph, and hand-computed cases."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from lit_vit.attention import TokenLayout, attention_flow, rollout
from lit_vit.attention.propagation import fuse_heads, mixed_attention


def max_flow(capacity: np.ndarray, source: int, sink: int) -> float:
    """Edmonds-Karp on a dense float capacity matrix: the textbook algorithm, nothing shared."""
    residual = capacity.astype(np.float64).copy()
    total = 0.0
    while True:
        parent = {source: None}
        queue = deque([source])
        while queue and sink not in parent:
            node = queue.popleft()
            for nxt in np.nonzero(residual[node] > 1e-15)[0]:
                if int(nxt) not in parent:
                    parent[int(nxt)] = node
                    queue.append(int(nxt))
        if sink not in parent:
            return total
        path, node = [], sink
        while parent[node] is not None:
            path.append((parent[node], node))
            node = parent[node]
        bottleneck = min(residual[u, v] for u, v in path)
        for u, v in path:
            residual[u, v] -= bottleneck
            residual[v, u] += bottleneck
        total += bottleneck


def reference_flow(attention: torch.Tensor, layout: TokenLayout, **rollout_args) -> torch.Tensor:
    """The definition written out: build the layered graph, one max flow per patch."""
    start = rollout_args.get("start_layer", 0)
    fusion = rollout_args.get("head_fusion", "mean")
    ratio = rollout_args.get("discard_ratio", 0.0)
    levels = attention.shape[0] - start
    n, p = layout.num_tokens, layout.num_prefix_tokens
    maps = []
    for image in range(attention.shape[1]):
        nodes = (levels + 1) * n + 1
        capacity = np.zeros((nodes, nodes))
        for k in range(levels):
            fused = fuse_heads(attention[start + k, image : image + 1], fusion)
            mixed = mixed_attention(fused, layout, ratio)
            for i in range(n):
                for j in range(n):
                    capacity[k * n + j, (k + 1) * n + i] = float(mixed[0, i, j])
        sink = levels * n if layout.has_class_token else nodes - 1
        if not layout.has_class_token:
            for t in range(p, n):
                capacity[levels * n + t, sink] = 1e9
        flows = [max_flow(capacity, p + g, sink) for g in range(layout.num_patches)]
        flows = torch.tensor(flows, dtype=torch.float32)
        maps.append((flows / flows.sum()).reshape(layout.grid_size))
    return torch.stack(maps)


def random_attention(layout: TokenLayout, layers: int = 3, batch: int = 2, heads: int = 2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    n = layout.num_tokens
    return (torch.randn(layers, batch, heads, n, n, generator=generator) * 2).softmax(dim=-1)


@pytest.mark.parametrize(
    "layout",
    [
        TokenLayout(1, True, (2, 3), (4, 4)),  # class token, non-square grid
        TokenLayout(0, False, (2, 2), (4, 4)),  # no prefix tokens
        TokenLayout(2, True, (2, 2), (4, 4)),  # class + distillation token
        TokenLayout(3, False, (3, 2), (4, 4)),  # registers without a class token
    ],
    ids=["class_token", "no_prefix", "distilled", "registers_no_class"],
)
@pytest.mark.parametrize(
    "rollout_args",
    [{}, {"head_fusion": "max", "discard_ratio": 0.5, "start_layer": 1}],
    ids=["default", "max_discard_start1"],
)
def test_flow_equals_a_plain_max_flow_on_the_layered_graph(layout, rollout_args):
    attention = random_attention(layout)
    expected = reference_flow(attention, layout, **rollout_args)
    got = attention_flow(attention, layout, **rollout_args)
    assert got.shape == (2, *layout.grid_size)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_two_layers_by_hand():
    # Class token and two patches, one head. Each path (0, g) -> (1, i) -> (2, cls) has its
    # own two edges, so the flow of g is sum_i min(Ã1[i, g], Ã2[cls, i]).
    layout = TokenLayout(1, True, (1, 2), (4, 4))
    first = torch.tensor([[0.2, 0.6, 0.2], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    second = torch.tensor([[0.4, 0.2, 0.4], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]])
    attention = torch.stack([first, second])[:, None, None]  # (2, 1, 1, 3, 3)
    mix_1 = 0.5 * first + 0.5 * torch.eye(3)  # rows already sum to 1
    mix_2 = 0.5 * second + 0.5 * torch.eye(3)
    flows = torch.tensor(
        [sum(min(mix_1[i, g], mix_2[0, i]) for i in range(3)) for g in (1, 2)]
    )  # Ã1 column 1: (0.3, 0.9, 0.15), column 2: (0.1, 0.05, 0.7); Ã2 row 0: (0.7, 0.1, 0.2)
    # patch 1: 0.3 + 0.1 + 0.15 = 0.55; patch 2: 0.1 + 0.05 + 0.2 = 0.35
    torch.testing.assert_close(flows, torch.tensor([0.55, 0.35]))
    got = attention_flow(attention, layout)
    torch.testing.assert_close(got, (flows / flows.sum()).reshape(1, 1, 2), rtol=1e-5, atol=0)


def test_identity_plus_constant_gives_the_ordering_of_rollout():
    layout = TokenLayout(1, True, (3, 3), (4, 4))
    n = layout.num_tokens
    attention = (torch.eye(n) + 0.2).expand(4, 1, 2, n, n)
    attention = attention / attention.sum(dim=-1, keepdim=True)
    flow, roll = attention_flow(attention, layout), rollout(attention, layout)
    torch.testing.assert_close(flow, roll, rtol=1e-4, atol=1e-6)  # both uniform
    torch.testing.assert_close(flow, torch.full_like(flow, 1 / 9))
    # One patch everybody attends to comes first in both.
    focused = attention.clone()
    focused[..., 5] += 1.0
    focused = focused / focused.sum(dim=-1, keepdim=True)
    flow, roll = attention_flow(focused, layout), rollout(focused, layout)
    assert int(flow.flatten().argmax()) == int(roll.flatten().argmax()) == 4


def test_bad_arguments_are_named():
    layout = TokenLayout(1, True, (2, 2), (4, 4))
    attention = random_attention(layout)
    with pytest.raises(ValueError, match="start_layer must be an int in \\[0, 2\\]"):
        attention_flow(attention, layout, start_layer=3)
    with pytest.raises(ValueError, match="head_fusion must be one of"):
        attention_flow(attention, layout, head_fusion="median")
    with pytest.raises(ValueError, match="rows must sum to 1"):
        attention_flow(attention * 2, layout)
