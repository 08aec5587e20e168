"""Attention flow's network (Abnar & Zuidema 2020): a maximum flow through the layers, not a
product.

Rollout multiplies the layers' mixed attention matrices; flow treats them as
a network of pipes. With ``Ã[l]`` as in rollout (heads fused, weakest patch
entries discarded, ``rownorm(0.5 * fused + 0.5 * I)``), the layered graph has
a node for every token at every level ``0 .. L - s`` (level ``k`` is the
input of layer ``s + k``), and an edge from token ``j`` at level ``k`` to
token ``i`` at level ``k + 1`` with capacity ``Ã[s + k][i, j]``. The flow of
patch ``g`` is the value of the maximum flow from its node at level 0 to the
class token's node at the top (without a class token: to a sink joined to
every top-level patch node with unbounded capacity). The map is the flows
over the patches, renormalised to sum 1.

Computed exactly with SciPy's Dinic maximum flow on capacities scaled to
integers (about 2^20 per unit: relative error about 1e-6, well inside the
1e-4 the definition asks for), one flow per patch and image.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_flow
from torch import Tensor

from lit_vit.attention._validate import renormalize
from lit_vit.attention.layout import TokenLayout

# Integer capacity of one unit of attention; the sum of any node's capacities must fit int32.
UNIT = 2**20


def flow_maps(mixed: Tensor, layout: TokenLayout) -> Tensor:
    """Flow maps of the ``(levels, B, N, N)`` mixed matrices ``Ã[s .. L-1]``: ``(B, gh, gw)``
    float32, sums to 1 per image (uniform when no flow reaches the top)."""
    flows = [
        _image_flows(mixed[:, image].double().cpu().numpy(), layout)
        for image in range(mixed.shape[1])
    ]
    maps = renormalize(torch.tensor(np.stack(flows), dtype=torch.float32))
    return maps.reshape(-1, *layout.grid_size).to(mixed.device)


def _image_flows(mixed: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """Max flow of every patch of one image: ``mixed`` is ``(levels, N, N)``; returns ``(G,)``."""
    levels, n, _ = mixed.shape
    unit = min(UNIT, 2**30 // (n * (levels + 1)))
    graph, sink = _layered_graph(mixed, layout, unit)
    flows = np.empty(layout.num_patches)
    for patch in range(layout.num_patches):
        source = layout.num_prefix_tokens + patch  # its node at level 0
        flows[patch] = maximum_flow(graph, source, sink).flow_value / unit
    return flows


def _layered_graph(mixed: np.ndarray, layout: TokenLayout, unit: int) -> tuple[csr_array, int]:
    """The graph as an int32 CSR capacity matrix, and its sink node.

    Node ``k * N + t`` is token ``t`` at level ``k``; the edge ``(k, j) -> (k + 1, i)`` has
    capacity ``round(unit * mixed[k, i, j])``.
    """
    levels, n, _ = mixed.shape
    capacity = np.rint(mixed * unit).astype(np.int64)  # (levels, N query i, N key j)
    level, target, origin = np.nonzero(capacity)
    rows = [level * n + origin]  # from key j at level k
    cols = [(level + 1) * n + target]  # to query i at level k + 1
    data = [capacity[level, target, origin]]
    nodes = (levels + 1) * n
    if layout.has_class_token:
        sink = levels * n  # the class token at the top
    else:
        sink = nodes
        nodes += 1
        top_patches = levels * n + np.arange(layout.num_prefix_tokens, n)
        rows.append(top_patches)
        cols.append(np.full(len(top_patches), sink))
        data.append(np.full(len(top_patches), unit * n))  # more than any flow can carry
    graph = csr_array(
        (np.concatenate(data).astype(np.int32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(nodes, nodes),
    )
    return graph, sink
