"""Input checks and small numeric helpers shared by rollout and metrics."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_vit.attention.layout import TokenLayout

# Rows of a bfloat16 softmax (a model run in pure bf16) are off by up to ~3e-3; logits or a
# wrongly normalised tensor are off by far more.
ROW_SUM_ATOL = 1e-2


def check_layout(layout: object) -> TokenLayout:
    if not isinstance(layout, TokenLayout):
        raise ValueError(
            f"layout must be a TokenLayout, got {type(layout).__name__}; build one with "
            "TokenLayout.from_model(vit, (H, W)) or take AttentionRecording.layout."
        )
    return layout


def check_attention(
    attention: object, layout: TokenLayout, name: str = "attention", rows_sum_to_one: bool = True
) -> Tensor:
    """Validate ``(L, B, H, N, N)`` attention against ``layout``; return it as float32."""
    check_layout(layout)
    if not isinstance(attention, Tensor):
        raise ValueError(
            f"{name} must be a Tensor of shape (L, B, H, N, N), got {type(attention)}."
        )
    if attention.dim() != 5:
        raise ValueError(
            f"{name} must have shape (L, B, H, N, N) (layers, batch, heads, query, key), got "
            f"{tuple(attention.shape)}; stack per-layer (B, H, N, N) maps with torch.stack."
        )
    num_layers, batch, heads, n_query, n_key = attention.shape
    if num_layers == 0 or heads == 0:
        raise ValueError(f"{name} has no layers or no heads: shape {tuple(attention.shape)}.")
    if batch == 0:
        raise ValueError(f"{name} has an empty batch (B=0): shape {tuple(attention.shape)}.")
    if n_query != n_key:
        raise ValueError(f"{name} must be square over tokens (N, N), got {n_query}x{n_key}.")
    if n_key != layout.num_tokens:
        raise ValueError(
            f"{name} has N={n_key} tokens but the layout has {layout.num_tokens} "
            f"({layout.num_prefix_tokens} prefix + {layout.grid_size[0]}x{layout.grid_size[1]} "
            "patches); build the layout for the same model and input size."
        )
    attention = attention.float()
    # Two reductions, no full-size temporaries: NaN and inf propagate into the row sums.
    row_sums = attention.sum(dim=-1)  # (L, B, H, N)
    finite = torch.isfinite(row_sums).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().tolist()
        raise ValueError(f"{name} has NaN or inf values in layer(s) {bad}.")
    if rows_sum_to_one:
        error = (row_sums - 1).abs().flatten(1).amax(dim=1)
        if bool((error > ROW_SUM_ATOL).any()):
            layer = int(error.argmax())
            raise ValueError(
                f"{name} rows must sum to 1 (post-softmax probabilities); layer {layer} is off "
                f"by up to {float(error[layer]):.3g} (tolerance {ROW_SUM_ATOL}). Pass the "
                "softmax output, not the logits."
            )
        if float(attention.amin()) < 0:
            raise ValueError(f"{name} has negative entries; pass post-softmax probabilities.")
    return attention


def renormalize(x: Tensor, dim: int = -1) -> Tensor:
    """``x / x.sum(dim)``; slices with no mass become uniform."""
    total = x.sum(dim=dim, keepdim=True)
    uniform = torch.full_like(x, 1.0 / x.shape[dim])
    return torch.where(total > 0, x / total.clamp_min(torch.finfo(x.dtype).tiny), uniform)


def check_saliency(saliency: object, name: str = "saliency") -> Tensor:
    """``(B, gh, gw)`` or ``(B, G)`` non-negative map -> ``(B, G)`` float32 summing to 1."""
    if not isinstance(saliency, Tensor):
        raise ValueError(f"{name} must be a Tensor of shape (B, gh, gw) or (B, G).")
    if saliency.dim() not in (2, 3):
        raise ValueError(
            f"{name} must have shape (B, gh, gw) or (B, G), got {tuple(saliency.shape)}."
        )
    if saliency.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch (B=0).")
    flat = saliency.float().flatten(1)
    if flat.shape[1] == 0:
        raise ValueError(f"{name} has no patches: shape {tuple(saliency.shape)}.")
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(f"{name} has NaN or inf values.")
    if bool((flat < 0).any()):
        raise ValueError(
            f"{name} must be non-negative (a map over patches), min is {float(flat.min()):.3g}."
        )
    return renormalize(flat)


def check_fraction(value: object, name: str) -> float:
    """A float in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}.")
    return float(value)
