"""Input checks and small numeric helpers shared by rollout and metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from lit_vit.attention.layout import TokenLayout

# Rows of a bfloat16 softmax (a model run in pure bf16) are off by up to ~3e-3; logits or a
# wrongly normalised tensor are off by far more.
ROW_SUM_ATOL = 1e-2


class NonFiniteAttentionError(ValueError):
    """Attention with NaN or inf values: usually a model whose loss diverged."""


def check_layout(layout: object) -> TokenLayout:
    if not isinstance(layout, TokenLayout):
        raise ValueError(
            f"layout must be a TokenLayout, got {type(layout).__name__}; build one with "
            "TokenLayout.from_model(vit, (H, W)) or take AttentionRecording.layout."
        )
    return layout


# Validation walks the attention in chunks of about this size, so that a caller computing on the
# same chunk (rollout) reads it from cache rather than from memory a second time.
CHUNK_BYTES = 4 * 2**20


class CheckedChunk(NamedTuple):
    """One validated-on-the-way piece of ``(L, B, H, N, N)`` attention.

    Attributes:
        layer: the layer index ``l``.
        images: the batch slice ``b0:b1`` it covers.
        attention: ``attention[l, b0:b1]`` as float32, ``(b, H, N, N)``.
        row_sums: its row sums, ``(b, H, N)``.
    """

    layer: int
    images: slice
    attention: Tensor
    row_sums: Tensor


def check_attention_shape(
    attention: object, layout: TokenLayout, name: str = "attention"
) -> Tensor:
    """Check that ``attention`` is an ``(L, B, H, N, N)`` Tensor matching ``layout``."""
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
    return attention


def checked_chunks(
    attention: object,
    layout: TokenLayout,
    name: str = "attention",
    rows_sum_to_one: bool = True,
    last_layer_first: bool = False,
    check_values: bool = True,
) -> Iterator[CheckedChunk]:
    """Walk ``(L, B, H, N, N)`` attention in cache-sized chunks, validating it on the way.

    Shape and layout are checked before the first chunk; values (finite, rows
    summing to 1, non-negative) as the chunks pass, and the error is raised
    after the last one, naming every bad layer. A caller that consumes the
    whole iterator has therefore validated the input before it returns
    anything, and has read each chunk from memory once.

    Args:
        attention: ``(L, B, H, N, N)`` attention, any float dtype.
        layout: token layout with ``N`` tokens.
        name: the argument's name in error messages.
        rows_sum_to_one: check post-softmax rows (off for gradients).
        last_layer_first: yield layers ``L-1 .. 0`` (rollout's order).
        check_values: off for attention validated before (a recording): the
            chunks and their row sums are yielded, nothing is checked.

    Yields:
        :class:`CheckedChunk` per layer and group of images.

    Raises:
        ValueError: bad shape or layout, NaN or inf (naming the layers), rows
            not summing to 1 within ``ROW_SUM_ATOL``, negative entries.
    """
    attention = check_attention_shape(attention, layout, name)
    num_layers, batch, heads, n, _ = attention.shape
    per_chunk = max(1, CHUNK_BYTES // (heads * n * n * 4))
    layers = range(num_layers - 1, -1, -1) if last_layer_first else range(num_layers)
    checks = ValueChecks(rows_sum_to_one)
    for layer in layers:
        for start in range(0, batch, per_chunk):
            images = slice(start, min(start + per_chunk, batch))
            chunk = attention[layer, images].float()  # (b, H, N, N)
            row_sums = chunk.sum(dim=-1)  # (b, H, N); NaN and inf propagate into it
            if check_values:
                checks.add(layer, chunk, row_sums)
            yield CheckedChunk(layer, images, chunk, row_sums)
    if check_values:
        checks.raise_if_invalid(name)


class ValueChecks:
    """Per-layer value statistics of attention, gathered piece by piece and checked at once.

    Args:
        rows_sum_to_one: check post-softmax rows (off for gradients).
    """

    def __init__(self, rows_sum_to_one: bool = True) -> None:
        self.rows_sum_to_one = rows_sum_to_one
        # per layer: lists of 0-d tensors, one per piece (no sync until raise_if_invalid)
        self.finite: dict[int, list[Tensor]] = {}
        self.row_error: dict[int, list[Tensor]] = {}
        self.minimum: dict[int, list[Tensor]] = {}

    def add(self, layer: int, attention: Tensor, row_sums: Tensor) -> None:
        """Note a ``(b, H, N, N)`` float32 piece of ``layer`` and its ``(b, H, N)`` row sums."""
        self.finite.setdefault(layer, []).append(torch.isfinite(row_sums).all())
        if self.rows_sum_to_one:
            self.row_error.setdefault(layer, []).append((row_sums - 1).abs().amax())
            self.minimum.setdefault(layer, []).append(attention.amin())

    def raise_if_invalid(self, name: str = "attention") -> None:
        """Raise for what was noted (one sync).

        Raises:
            NonFiniteAttentionError: NaN or inf, naming the layers.
            ValueError: rows not summing to 1 within ``ROW_SUM_ATOL``, negative entries.
        """
        layers = sorted(self.finite)
        layer_finite = torch.stack([torch.stack(self.finite[i]).all() for i in layers]).tolist()
        bad = [layer for layer, ok in zip(layers, layer_finite, strict=True) if not ok]
        if bad:
            raise NonFiniteAttentionError(f"{name} has NaN or inf values in layer(s) {bad}.")
        if not self.row_error:
            return
        errors = torch.stack([torch.stack(self.row_error[i]).amax() for i in layers])
        if bool((errors > ROW_SUM_ATOL).any()):
            worst = int(errors.argmax())
            raise ValueError(
                f"{name} rows must sum to 1 (post-softmax probabilities); layer {layers[worst]} "
                f"is off by up to {float(errors[worst]):.3g} (tolerance {ROW_SUM_ATOL}). Pass "
                "the softmax output, not the logits."
            )
        minimum = torch.stack([torch.stack(self.minimum[i]).amin() for i in layers]).amin()
        if float(minimum) < 0:
            raise ValueError(f"{name} has negative entries; pass post-softmax probabilities.")


def check_attention(
    attention: object, layout: TokenLayout, name: str = "attention", rows_sum_to_one: bool = True
) -> Tensor:
    """Validate ``(L, B, H, N, N)`` attention against ``layout``; return it as float32.

    Raises:
        ValueError: see :func:`checked_chunks`.
    """
    for _ in checked_chunks(attention, layout, name, rows_sum_to_one):
        pass
    return attention.float()


def checked_attention(
    attention: object,
    layout: TokenLayout,
    validate: bool,
    name: str = "attention",
    rows_sum_to_one: bool = True,
) -> Tensor:
    """``attention`` as float32: fully validated, or only its shape when ``validate`` is off.

    ``validate=False`` is for attention already validated where it was captured
    (an :class:`~lit_vit.attention.AttentionRecording`).
    """
    if validate:
        return check_attention(attention, layout, name, rows_sum_to_one)
    return check_attention_shape(attention, layout, name).float()


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
