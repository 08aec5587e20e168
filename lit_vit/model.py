"""The LightningModule: a timm Vision Transformer and its training recipe."""

from __future__ import annotations

import difflib
import math

import timm
import torch
from lightning.pytorch import LightningModule
from timm.models import split_model_name_tag
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy


class LitViT(LightningModule):
    """A timm ViT trained with AdamW, warm-up + cosine decay and label smoothing.

    The network is built by ``timm.create_model(model_name, ...)``; every
    architecture argument left at ``None`` keeps the variant's default, so
    ``vit_tiny_patch16_224`` with ``img_size=28, patch_size=4, depth=12``
    is a 12-layer ViT over a 7x7 grid. The timm model is the plain attribute
    :attr:`vit`, where the attention callbacks (or your code) find it.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``,
    ``test/loss`` and ``test/acc``.

    Args:
        model_name: Any name from ``timm.list_models()``.
        num_classes: Output classes (linked from the data by the CLI).
        in_chans: Input channels (linked from the data by the CLI).
        img_size: Input side in pixels; must be a multiple of the patch size.
        patch_size: Patch side in pixels (``None``: the variant's).
        embed_dim: Token width (``None``: the variant's).
        depth: Number of blocks (``None``: the variant's).
        num_heads: Attention heads per block (``None``: the variant's).
        mlp_ratio: MLP hidden width over token width (``None``: the variant's).
        pretrained: Load the variant's pretrained weights (needs a network or
            a filled Hugging Face cache); timm adapts the input channels, the
            patch size and the position embeddings to the arguments above.
        drop_path_rate: Stochastic depth rate.
        lr: Peak learning rate, reached after ``warmup_epochs``.
        weight_decay: AdamW weight decay; norms, biases and the class,
            register and position embeddings are never decayed.
        warmup_epochs: Linear warm-up length (fractions allowed).
        min_lr_ratio: Final learning rate over peak at the end of the cosine.
        label_smoothing: Cross-entropy label smoothing.

    Raises:
        ValueError: For an unknown model name (with close names), an image
            size that the patch size does not divide, or non-positive rates.
        FileNotFoundError: When pretrained weights cannot be fetched.
    """

    def __init__(
        self,
        model_name: str = "vit_tiny_patch16_224",
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int = 28,
        patch_size: int | None = 4,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float | None = None,
        pretrained: bool = False,
        drop_path_rate: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        if lr <= 0 or weight_decay < 0 or not 0 <= label_smoothing < 1:
            raise ValueError(
                f"lr={lr} must be > 0, weight_decay={weight_decay} >= 0 and "
                f"label_smoothing={label_smoothing} in [0, 1)."
            )
        self.save_hyperparameters()
        architecture = {
            "patch_size": patch_size,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
        }
        self.vit = create_vit(
            model_name,
            pretrained=pretrained,
            num_classes=num_classes,
            in_chans=in_chans,
            img_size=img_size,
            drop_path_rate=drop_path_rate,
            **{key: value for key, value in architecture.items() if value is not None},
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` images to ``(B, num_classes)`` logits."""
        return self.vit(images)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train", self.train_acc)

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val", self.val_acc)

    def test_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test", self.test_acc)

    def predict_step(self, batch: list[Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Class probabilities ``(B, num_classes)`` and predictions ``(B,)``."""
        probabilities = self(batch[0]).softmax(dim=-1)
        return {"probabilities": probabilities, "predictions": probabilities.argmax(dim=-1)}

    def _shared_step(self, batch: list[Tensor], stage: str, accuracy: MulticlassAccuracy) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.criterion(logits, labels)
        accuracy(logits, labels)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            parameter_groups(self.vit, self.hparams.weight_decay), lr=self.hparams.lr
        )
        total_steps = max(1, self.trainer.estimated_stepping_batches)
        steps_per_epoch = total_steps / max(1, self.trainer.max_epochs or 1)
        warmup_steps = min(total_steps - 1, round(self.hparams.warmup_epochs * steps_per_epoch))
        schedule = warmup_cosine(warmup_steps, total_steps, self.hparams.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def create_vit(model_name: str, *, pretrained: bool, img_size: int, **kwargs) -> nn.Module:
    """``timm.create_model`` with errors that name the bad value and the fix.

    Raises:
        ValueError: Unknown ``model_name`` (close names suggested) or an
            ``img_size`` that is not a multiple of the patch size.
        FileNotFoundError: Pretrained weights that cannot be downloaded.
    """
    architecture, _ = split_model_name_tag(model_name)
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ValueError(
            f"Unknown timm model name '{model_name}'.{hint} "
            "See timm.list_models('vit_*') for the ViTs timm knows."
        )
    patch_size = kwargs.get("patch_size")
    if patch_size is not None and img_size % patch_size:
        raise ValueError(_size_message(img_size, patch_size))
    try:
        vit = timm.create_model(model_name, pretrained=pretrained, img_size=img_size, **kwargs)
    except TypeError as error:
        raise ValueError(f"timm model '{model_name}' rejects these arguments: {error}") from error
    except (OSError, RuntimeError) as error:
        if not pretrained:
            raise
        raise FileNotFoundError(
            f"Could not load pretrained weights for '{model_name}' ({error}). Connect to the "
            "network once to fill the Hugging Face cache, or set model.pretrained: false."
        ) from error
    patch_embed = getattr(vit, "patch_embed", None)
    if patch_embed is not None:
        patch_size = patch_embed.patch_size[0]
        if img_size % patch_size:
            raise ValueError(_size_message(img_size, patch_size))
    return vit


def _size_message(img_size: int, patch_size: int) -> str:
    lower = img_size // patch_size * patch_size
    return (
        f"img_size={img_size} is not a multiple of patch_size={patch_size}: use an image size "
        f"of {lower or patch_size} or {lower + patch_size} (--data.img_size), or a patch size "
        f"that divides {img_size} (--model.patch_size)."
    )


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weight matrices, and everything else.

    Norm weights, biases (1-D) and the embeddings that timm lists in
    ``no_weight_decay()`` (class, register, position tokens) are not decayed.
    """
    skip = set(getattr(model, "no_weight_decay", set)())
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        keep_plain = parameter.ndim <= 1 or name in skip
        (no_decay if keep_plain else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """Learning-rate multiplier: linear from 0 to 1, then cosine to ``min_ratio``."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier
