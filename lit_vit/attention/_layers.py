"""The layers of one recorded pass: each layer's attention checked and reduced as it arrives,
and its gradient reduced the same way during the backward pass."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from lit_vit.attention._validate import ValueChecks
from lit_vit.attention.layout import TokenLayout
from lit_vit.attention.propagation import gradient_product
from lit_vit.attention.reduction import LayerReduction, reduce_layer


class CapturedLayers:
    """The attention of one recorded pass, layer by layer as the forward produces it.

    Each layer is checked against the layout (shape now, values after the
    pass) and reduced when it arrives; the tensor itself is kept only when
    ``keep`` (the full attention, or gradients, are wanted).

    Args:
        names: qualified names of the backend's attention modules, indexed by
            the ``index`` the backend's capture passes.
        layout: the input's token layout.
        batch: the batch size.
        head_fusions: the fusions to reduce with.
        keep: keep each layer's tensor (in the graph) in :attr:`kept`.
    """

    def __init__(
        self,
        names: list[str],
        layout: TokenLayout,
        batch: int,
        head_fusions: tuple[str, ...],
        keep: bool,
    ) -> None:
        self.module_names, self.layout, self.batch = names, layout, batch
        self.head_fusions, self.keep = head_fusions, keep
        self.calls = [0] * len(names)
        self.names: list[str] = []  # forward order
        self.reductions: list[LayerReduction] = []
        self.kept: list[Tensor] = []
        self.checks = ValueChecks()

    def capture(self, index: int, attention: Tensor) -> None:
        """The backend's callback: module ``index`` produced ``attention``."""
        self.calls[index] += 1
        if self.calls[index] > 1:
            return  # reported by finish()
        name = self.module_names[index]
        self._check_shape(name, attention)
        layer = len(self.names)
        self.names.append(name)
        values = attention.detach().float()  # (B, H, N, N)
        self.checks.add(layer, values, values.sum(dim=-1))
        self.reductions.append(reduce_layer(values, self.layout, self.head_fusions))
        if self.keep:
            self.kept.append(attention)

    def finish(self) -> None:
        """After the forward: every module ran once, head counts agree, values are valid.

        Raises:
            ValueError: a module ran more than once or not at all, head counts
                differ, or bad values (see :class:`~lit_vit.attention._validate.ValueChecks`).
        """
        counts = {self.module_names[i]: count for i, count in enumerate(self.calls) if count != 1}
        if counts:
            raise ValueError(
                "each attention module must run exactly once per forward pass; calls seen: "
                f"{counts}. Check module_pattern or the model's forward."
            )
        heads = {layer.query_rows.shape[1] for layer in self.reductions}
        if len(heads) > 1:
            raise ValueError(f"layers have different head counts {sorted(heads)}; cannot stack.")
        self.checks.raise_if_invalid()

    def gradients(
        self, logits: Tensor, targets: list[Tensor], x: Tensor, full: bool
    ) -> tuple[list[list[Tensor]], tuple[Tensor, ...]]:
        """Backward once per target, reducing each layer's gradient as it arrives.

        A hook on every kept attention tensor turns its ``(B, H, N, N)``
        gradient into ``mean_h relu(dA * A)`` during the backward pass, so no
        two layers' full gradients are alive at once (unless ``full``).

        Returns:
            Per target, the ``(B, N, N)`` products of every layer; with ``full``,
            per target the ``(L, B, H, N, N)`` float32 gradient (else empty).

        Raises:
            ValueError: the attention is not part of an autograd graph.
        """
        if not all(attention.requires_grad for attention in self.kept):
            raise ValueError("the recorded attention is not part of an autograd graph.")
        received: dict[int, Tensor] = {}
        products: dict[int, Tensor] = {}

        def on_gradient(layer: int, grad: Tensor) -> None:
            attention = kept[layer].detach().float()
            products[layer] = gradient_product(grad.float(), attention)
            if full:
                received[layer] = grad.detach().float()

        kept = self.kept
        handles = [
            attention.register_hook(functools.partial(on_gradient, layer))
            for layer, attention in enumerate(kept)
        ]
        all_products, all_grads = [], []
        try:
            for i, target in enumerate(targets):
                received.clear()
                products.clear()
                score = logits.gather(1, target[:, None]).sum()
                torch.autograd.grad(score, x, retain_graph=i < len(targets) - 1, allow_unused=True)
                # A layer the score does not depend on has no gradient: zeros.
                all_products.append(
                    [products.get(layer, _no_gradient(a[:, 0])) for layer, a in enumerate(kept)]
                )
                if full:
                    all_grads.append(
                        torch.stack(
                            [received.get(layer, _no_gradient(a)) for layer, a in enumerate(kept)]
                        )
                    )
        finally:
            for handle in handles:
                handle.remove()
        return all_products, tuple(all_grads)

    def _check_shape(self, name: str, attention: object) -> None:
        n = self.layout.num_tokens
        if (
            not isinstance(attention, Tensor)
            or attention.dim() != 4
            or attention.shape[0] != self.batch
        ):
            raise ValueError(
                f"{name} gave {getattr(attention, 'shape', type(attention))}, expected attention "
                f"of shape (B={self.batch}, H, N, N); module_pattern must select attention "
                "modules."
            )
        if attention.shape[-2:] != (n, n):
            raise ValueError(
                f"{name} has attention over {attention.shape[-1]} tokens but the layout has "
                f"N={n} ({self.layout.num_prefix_tokens} prefix + {self.layout.grid_size[0]}x"
                f"{self.layout.grid_size[1]} patches)."
            )


def _no_gradient(attention: Tensor) -> Tensor:
    """float32 zeros shaped like ``attention``: a layer's ``(B, H, N, N)`` or one head's."""
    return torch.zeros(attention.shape, dtype=torch.float32, device=attention.device)
