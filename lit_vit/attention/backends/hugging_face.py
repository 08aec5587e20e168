"""Hugging Face transformers (ViT, DeiT, DINOv2 with and without registers, and any model built
on their attention modules): the eager attention implementation, whose attention modules
return the probabilities they multiply with the values."""

from __future__ import annotations

import contextlib
import inspect

from torch import Tensor, nn

from lit_vit._private import attention_implementation
from lit_vit.attention.backends.base import Capture, CaptureBackend, Readout, eval_mode_dtype
from lit_vit.attention.layout import TokenLayout


class HuggingFaceBackend(CaptureBackend):
    family = "huggingface"

    @classmethod
    def claims(cls, module: nn.Module) -> bool:
        return (
            type(module).__module__.startswith("transformers.")
            and hasattr(module, "set_attn_implementation")
            and _embeddings(module) is not None
        )

    @classmethod
    def is_attention(cls, module: nn.Module) -> bool:
        return all(hasattr(module, name) for name in ("q_proj", "k_proj", "v_proj", "config"))

    def layout(self, image_size: tuple[int, int]) -> TokenLayout:
        embeddings = _embeddings(self.vit)
        patch = embeddings.patch_embeddings.patch_size
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        prefix = sum(
            getattr(embeddings, name).shape[1]
            for name in ("cls_token", "distillation_token", "register_tokens")
            if isinstance(getattr(embeddings, name, None), Tensor)
        )
        height, width = image_size
        return TokenLayout(
            num_prefix_tokens=prefix,
            has_class_token=isinstance(getattr(embeddings, "cls_token", None), Tensor),
            grid_size=(height // patch[0], width // patch[1]),
            patch_size=patch,
        )

    def input_size(self) -> tuple[int, int]:
        size = self.vit.config.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    def resize(self, vit: nn.Module, size: tuple[int, int]) -> None:
        """The embeddings interpolate their position encoding at every size."""
        embeddings = _embeddings(vit)
        forward = embeddings.forward
        if "interpolate_pos_encoding" not in inspect.signature(forward).parameters:
            if hasattr(embeddings, "interpolate_pos_encoding"):
                return  # DINOv2's embeddings always interpolate
            raise ValueError(
                f"{type(embeddings).__name__} cannot interpolate its position encoding, so "
                f"{type(vit).__name__} runs at its own size only; leave the sweep out for it."
            )

        def interpolating(*args, **kwargs):
            # The model passes interpolate_pos_encoding=False explicitly: override it.
            return forward(*args, **{**kwargs, "interpolate_pos_encoding": True})

        embeddings.forward = interpolating

    def readout(self) -> Readout:
        """A classifier with a ``layernorm`` and a ``classifier`` on the class token (ViT,
        DeiT); other heads are not known (their pooled features are the class token)."""
        vit = self.vit
        base = getattr(vit, "base_model", vit)
        norm = getattr(base, "layernorm", None) or nn.Identity()
        classifier = getattr(vit, "classifier", None)
        width = getattr(vit.config, "hidden_size", None)
        known = isinstance(classifier, nn.Linear) and classifier.in_features == width
        return Readout(
            pooling=lambda tokens: norm(tokens)[:, 0],
            head=classifier if known else None,
            dtype=eval_mode_dtype(vit),
        )

    def capture_modules(self, capture: Capture, restore: contextlib.ExitStack) -> None:
        previous = attention_implementation(self.vit.config)
        if previous != "eager":
            self.vit.set_attn_implementation("eager")
            restore.callback(self.vit.set_attn_implementation, previous)
        for index, module in enumerate(self.modules):
            # The eager attention returns (output, probabilities): the probabilities it
            # multiplied with the values, so their gradient is the model's own.
            handle = module.register_forward_hook(
                lambda _m, _i, out, index=index: capture(index, out[1])
            )
            restore.callback(handle.remove)

    def versions_hint(self) -> str:
        import transformers

        return (
            f"transformers {transformers.__version__} is installed; lit-vit reads the attention "
            "modules of transformers >= 5 (q_proj, k_proj, v_proj and an attention interface)."
        )


def _embeddings(model: nn.Module) -> nn.Module | None:
    """The embeddings module (the one with ``patch_embeddings``) of a Hugging Face ViT."""
    return next((m for m in model.modules() if hasattr(m, "patch_embeddings")), None)
