"""What the layers compute: representation similarity, the logit lens, token norms and sinks.

Attention maps say where a layer looks; these say what its output holds.

- **Linear CKA** (Kornblith et al. 2019) compares two sets of features of the
  same ``n`` inputs, ``(n, d1)`` and ``(n, d2)``, through their Gram matrices
  ``K = X Xᵀ`` and ``L = Y Yᵀ``: ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``.
  It is 1 for features that differ by a rotation and a scale, and does not
  depend on the width. The biased estimator ``HSIC(K, L) = tr(K H L H) / (n - 1)²``
  (``H`` the centring matrix) drifts up for few inputs; the debiased one
  (Song et al. 2012, as Nguyen et al. 2021 use it), with ``K̃``, ``L̃`` the Gram
  matrices with their diagonal set to 0,
  ``[tr(K̃ L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n - 1)(n - 2)) - 2 / (n - 2) · 1ᵀK̃L̃1] / (n (n - 3))``,
  is near 0 for independent features and needs ``n >= 4``. With many inputs
  (every token of every image) the bias is negligible (it shrinks as ``1/n``) and
  the Gram matrices would be large, so the biased estimator is computed from the
  centred features instead: ``HSIC = ||Yᵀ X||²_F / (n - 1)²``, the same number.
- **Logit lens**: the model's own final norm and head applied to an earlier
  block's output (pooled as the model pools its last one): at which depth the
  class becomes readable.
- **Token norms** (Darcet et al. 2024, "Vision Transformers Need
  Registers"): trained ViTs turn a few patch tokens into high-norm tokens that
  soak up attention. A token is high-norm when its output norm exceeds
  :data:`HIGH_NORM_RATIO` times the image's median patch-token norm, or the
  absolute :data:`HIGH_NORM_ABSOLUTE` (the paper's cut for large models).
- **Sink rate**: the share of heads whose mean attention (over the queries)
  to one single token exceeds :data:`SINK_THRESHOLD`.
- **Entropy collapse** (Zhai et al. 2023): a layer whose mean attention
  entropy, as a fraction of the uniform entropy, falls below a threshold after
  having been above it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "HIGH_NORM_ABSOLUTE",
    "HIGH_NORM_RATIO",
    "SINK_THRESHOLD",
    "LogitLens",
    "TokenNorms",
    "collapsed_layers",
    "cka_matrix",
    "layer_cka",
    "linear_cka",
    "logit_lens",
    "sink_rate",
    "sink_rate_of_keys",
    "token_norms",
]

SINK_THRESHOLD = 0.3
HIGH_NORM_RATIO = 10.0
HIGH_NORM_ABSOLUTE = 150.0


def linear_cka(x: Tensor, y: Tensor, debiased: bool = True) -> Tensor:
    """Linear CKA of ``(n, d1)`` and ``(n, d2)`` features of the same ``n`` inputs.

    Returns:
        A 0-d float64 tensor; 0 when either set of features is constant.

    Raises:
        ValueError: Not 2-D, a different ``n``, or ``n < 4`` for the debiased estimator.
    """
    _check_features(x, "x")
    _check_features(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must describe the same inputs, got n = {len(x)} and {len(y)}")
    return _cka([x, y], debiased)[0, 1]


def cka_matrix(features: Tensor, debiased: bool = True) -> Tensor:
    """CKA between every pair of ``(L, n, d)`` layers' features: ``(L, L)`` float64,
    symmetric, 1 on the diagonal (0 for a constant layer)."""
    if features.dim() != 3:
        raise ValueError(f"features must be (L, n, d), got {tuple(features.shape)}")
    return _cka(list(features), debiased)


def layer_cka(before: Tensor, after: Tensor, debiased: bool = True) -> Tensor:
    """CKA of each layer with itself elsewhere (e.g. the previous epoch): ``(L, n, d)``
    twice to ``(L,)`` float64."""
    if before.shape != after.shape or before.dim() != 3:
        raise ValueError(
            f"before and after must be the same (L, n, d), got {tuple(before.shape)} and "
            f"{tuple(after.shape)}"
        )
    return torch.stack([linear_cka(b, a, debiased) for b, a in zip(before, after, strict=True)])


def _check_features(features: Tensor, name: str) -> None:
    if features.dim() != 2:
        raise ValueError(f"{name} must be (n, d) features, got {tuple(features.shape)}")


def _check_count(n: int, debiased: bool) -> None:
    if debiased and n < 4:
        raise ValueError(f"the debiased estimator needs at least 4 inputs, got {n}")


def _cka(features: list[Tensor], debiased: bool) -> Tensor:
    """``(n, d_a)`` features of the same inputs to the ``(A, A)`` CKA of every pair."""
    n = features[0].shape[0]
    _check_count(n, debiased)
    flat = [f.detach().double().flatten(1) for f in features]
    hsic = _debiased_hsic(flat) if debiased else _biased_hsic(flat)
    scale = hsic.diagonal().clamp_min(0).sqrt()
    denominator = scale[:, None] * scale[None, :]
    return torch.where(denominator > 0, hsic / denominator.clamp_min(1e-300), 0.0)


def _debiased_hsic(features: list[Tensor]) -> Tensor:
    """The debiased HSIC of every pair, from the Gram matrices with a zero diagonal."""
    n = features[0].shape[0]
    off_diagonal = 1 - torch.eye(n, dtype=torch.float64, device=features[0].device)
    tilde = torch.stack([(f @ f.T) * off_diagonal for f in features])  # (A, n, n)
    sums = tilde.sum(dim=(-2, -1))  # (A,) 1ᵀK̃1
    row_sums = tilde.sum(dim=-1)  # (A, n) K̃1
    trace = torch.einsum("aij,bij->ab", tilde, tilde)  # tr(K̃_a K̃_b): both symmetric
    return (
        trace
        + sums[:, None] * sums[None, :] / ((n - 1) * (n - 2))
        - 2 / (n - 2) * row_sums @ row_sums.T
    ) / (n * (n - 3))


def _biased_hsic(features: list[Tensor]) -> Tensor:
    """The biased HSIC of every pair, ``||X_bᵀ X_a||²_F / (n - 1)²`` of centred features (the
    same as ``tr(K H L H) / (n - 1)²`` without ``n x n`` matrices)."""
    n = features[0].shape[0]
    centred = [f - f.mean(dim=0) for f in features]
    count = len(centred)
    hsic = torch.empty(count, count, dtype=torch.float64, device=features[0].device)
    for a in range(count):
        for b in range(a, count):
            hsic[a, b] = hsic[b, a] = (centred[b].T @ centred[a]).square().sum() / (n - 1) ** 2
    return hsic


@dataclass(frozen=True)
class LogitLens:
    """The model's head read at every layer.

    Attributes:
        accuracy: ``(L,)`` share of images whose top class at the layer is the true one.
        true_probability: ``(L,)`` mean softmax probability of the true class.
    """

    accuracy: Tensor
    true_probability: Tensor

    def first_readable_layer(self, model_accuracy: float, points: float = 5.0) -> int | None:
        """The first layer whose accuracy is within ``points`` percentage points of
        ``model_accuracy`` (in [0, 1]), or None."""
        close = (self.accuracy >= model_accuracy - points / 100).nonzero()
        return int(close[0]) if len(close) else None


def logit_lens(hidden: Tensor, readout: Callable[[Tensor], Tensor], labels: Tensor) -> LogitLens:
    """The model's own readout (final norm, pooling, head) applied to each layer's output.

    Args:
        hidden: ``(L, B, N, D)`` block outputs.
        readout: ``(B, N, D)`` tokens to ``(B, C)`` logits, as after the last block.
        labels: ``(B,)`` true classes.
    """
    with torch.no_grad():
        logits = torch.stack([readout(layer).float() for layer in hidden])  # (L, B, C)
    labels = labels.to(logits.device)
    probabilities = logits.softmax(dim=-1)
    true = probabilities.gather(-1, labels.view(1, -1, 1).expand(len(logits), -1, 1))[..., 0]
    correct = (logits.argmax(dim=-1) == labels).float()
    return LogitLens(accuracy=correct.mean(dim=1).cpu(), true_probability=true.mean(1).cpu())


@dataclass(frozen=True)
class TokenNorms:
    """Output norms of every token, per layer.

    Attributes:
        norms: ``(L, B, N)`` L2 norm of each token's output.
        high_norm_share: ``(L,)`` share of tokens above :data:`HIGH_NORM_RATIO` times
            their image's median patch-token norm.
        absolute_share: ``(L,)`` share of tokens above :data:`HIGH_NORM_ABSOLUTE`.
        norm_ratio: ``(L,)`` largest token norm over the median patch-token norm, the
            mean over images.
    """

    norms: Tensor
    high_norm_share: Tensor
    absolute_share: Tensor
    norm_ratio: Tensor


def token_norms(
    hidden: Tensor,
    num_prefix_tokens: int,
    ratio: float = HIGH_NORM_RATIO,
    absolute: float = HIGH_NORM_ABSOLUTE,
) -> TokenNorms:
    """Norms of ``(L, B, N, D)`` block outputs and their high-norm tokens (prefix and patch).

    Args:
        hidden: ``(L, B, N, D)`` block outputs.
        num_prefix_tokens: Leading non-patch tokens (class, registers, distillation).
        ratio: A token is high-norm above ``ratio`` times its image's median patch norm.
        absolute: ... or above this absolute norm.
    """
    norms = hidden.detach().float().norm(dim=-1)  # (L, B, N)
    median = norms[..., num_prefix_tokens:].median(dim=-1).values  # (L, B)
    relative = norms / median.clamp_min(1e-12)[..., None]
    return TokenNorms(
        norms=norms.cpu(),
        high_norm_share=(relative > ratio).float().mean(dim=(1, 2)).cpu(),
        absolute_share=(norms > absolute).float().mean(dim=(1, 2)).cpu(),
        norm_ratio=relative.amax(dim=-1).mean(dim=1).cpu(),
    )


def sink_rate(attention: Tensor, threshold: float = SINK_THRESHOLD) -> Tensor:
    """Per layer, the share of (image, head) pairs whose mean attention over the queries to
    one single token exceeds ``threshold``: ``(L, B, H, N, N)`` to ``(L,)``."""
    return sink_rate_of_keys(attention.float().mean(dim=-2), threshold)


def sink_rate_of_keys(key_mass: Tensor, threshold: float = SINK_THRESHOLD) -> Tensor:
    """:func:`sink_rate` from the ``(L, B, H, N)`` mean attention each key receives."""
    return (key_mass.amax(dim=-1) > threshold).float().mean(dim=(1, 2))


def collapsed_layers(entropy: Sequence[Sequence[float]], fraction: float = 0.1) -> list[int]:
    """Layers whose latest normalised entropy is below ``fraction`` after an earlier value
    at or above it.

    Args:
        entropy: Per analysed epoch (oldest first), each layer's mean attention entropy as a
            fraction of the uniform entropy.
        fraction: The alarm's threshold, in (0, 1).
    """
    if len(entropy) < 2:
        return []
    *earlier, latest = entropy
    return [
        layer
        for layer, value in enumerate(latest)
        if value < fraction and any(epoch[layer] >= fraction for epoch in earlier)
    ]
