"""The LightningModule: a timm Vision Transformer and its training recipe."""

from __future__ import annotations

import difflib
from typing import Any, Literal

import timm
import torch
from lightning.pytorch import LightningModule
from timm.data import Mixup
from timm.layers import build_sincos2d_pos_embed
from timm.loss import SoftTargetCrossEntropy
from timm.models import split_model_name_tag
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lit_vit.distance_bias import DistanceBiasAttention, set_prefix_tokens
from lit_vit.ema import SwappedEma
from lit_vit.hub import offline_unless_reachable


class LitViT(LightningModule):
    """A timm ViT trained with AdamW, warm-up + cosine decay and label smoothing,
    optionally Mixup/CutMix and a weight EMA.

    The network is built by ``timm.create_model(model_name, ...)``; every
    architecture argument left at ``None`` keeps the variant's default, so
    ``vit_tiny_patch16_224`` with ``img_size=28, patch_size=4, depth=12``
    is a 12-layer ViT over a 7x7 grid. The timm model is the plain attribute
    :attr:`vit`, where the attention callbacks (or your code) find it.

    The optimizer is timm's ``create_optimizer_v2`` (AdamW; norms, biases and
    the tokens timm lists in ``no_weight_decay()`` are not decayed) and the
    schedule timm's ``CosineLRScheduler`` stepped per optimizer step.

    Mixup and CutMix are timm's ``Mixup`` (per batch; soft targets carry the
    label smoothing, and the loss is timm's ``SoftTargetCrossEntropy``).
    With ``ema_decay``, timm's ``ModelEmaV3`` follows the weights; validation,
    test, prediction and the attention callbacks see the EMA weights, and
    checkpoints store them as the model's ``state_dict`` (the raw weights ride
    along for resuming), so a checkpoint tests and deploys as the EMA model.

    Logs ``train/loss``, ``train/acc`` (only without Mixup/CutMix: mixed
    images have no single true class), ``val/loss``, ``val/acc``,
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
        pos_embed_init: ``"timm"`` keeps timm's initialisation of the learned
            position embedding (small random values); ``"sincos"`` starts it
            from the fixed 2-D sine-cosine embedding of MAE and MoCo v3 (still
            learned, class-token position zero), so nearby patches start with
            similar positions. Only for models built from scratch.
        distance_bias: Add a learnable 2-D distance bias to every attention
            layer (:mod:`lit_vit.distance_bias`): a locality prior, per-head
            slopes starting at 1, 1/2, 1/4, ... per patch of distance, that
            training may keep or unlearn. Only for timm ``VisionTransformer``
            models built from scratch, on square patch grids.
        lr: Peak learning rate, reached after ``warmup_epochs``.
        weight_decay: AdamW weight decay; norms, biases and the class,
            register and position embeddings are never decayed.
        warmup_epochs: Linear warm-up length (fractions allowed).
        min_lr_ratio: Final learning rate over peak at the end of the cosine.
        label_smoothing: Cross-entropy label smoothing.
        mixup_alpha: Mixup's Beta(alpha, alpha) parameter; 0 turns Mixup off.
        cutmix_alpha: CutMix's Beta parameter; 0 turns CutMix off.
        mix_prob: Probability that a batch is mixed at all.
        mix_switch_prob: With both on, probability of CutMix rather than Mixup.
        ema_decay: Decay of the weight EMA (e.g. 0.9998), reached after timm's
            warm-up of the decay; ``None`` turns it off.

    Raises:
        ValueError: For an unknown model name (with close names), an image
            size that the patch size does not divide, non-positive rates,
            negative mixing parameters, probabilities outside [0, 1], an EMA
            decay outside (0, 1), or ``pos_embed_init="sincos"`` with
            pretrained weights or a model without a learned position embedding,
            or ``distance_bias`` with pretrained weights.
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
        pos_embed_init: Literal["timm", "sincos"] = "timm",
        distance_bias: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        mix_switch_prob: float = 0.5,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        _check_hyperparameters(self.hparams)
        architecture = dict(
            patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=mlp_ratio,
        )  # fmt: skip
        self.vit = create_vit(
            model_name,
            pretrained=pretrained,
            num_classes=num_classes,
            in_chans=in_chans,
            img_size=img_size,
            drop_path_rate=drop_path_rate,
            **({"attn_layer": DistanceBiasAttention} if distance_bias else {}),
            **{key: value for key, value in architecture.items() if value is not None},
        )
        if pos_embed_init == "sincos":
            init_sincos_pos_embed(self.vit)
        if distance_bias:
            set_prefix_tokens(self.vit)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.mixup = None
        if (mixup_alpha > 0 or cutmix_alpha > 0) and mix_prob > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                prob=mix_prob,
                switch_prob=mix_switch_prob,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
            self.mixed_criterion = SoftTargetCrossEntropy()
        # A plain object: its EMA copy stays outside the module tree, so that only one ViT is
        # found in the module and saved.
        self._swapped_ema = SwappedEma(ema_decay) if ema_decay is not None else None
        self.test_images = 0  # images of the latest test run
        # False: test batches are only counted (lit-vit analyze on data whose labels are not
        # this model's classes): no test/acc or test/loss that would compare other indices.
        self.score_test = True
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` images to ``(B, num_classes)`` logits."""
        return self.vit(images)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        if self.mixup is None:
            return self._shared_step(batch, "train", self.train_acc)
        images, labels = batch
        if len(images) % 2:
            raise ValueError(
                f"Mixup/CutMix needs an even batch size, got {len(images)}: set an even "
                "data.batch_size (training batches drop the last incomplete one)."
            )
        images, targets = self.mixup(images, labels)
        loss = self.mixed_criterion(self(images), targets)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val", self.val_acc)

    def on_test_epoch_start(self) -> None:
        self.test_images = 0

    def test_step(self, batch: list[Tensor], batch_idx: int) -> Tensor | None:
        self.test_images += len(batch[0])
        if not self.score_test:
            return None
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
        optimizer = create_optimizer_v2(
            self.vit, opt="adamw", lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        total_steps = max(1, self.trainer.estimated_stepping_batches)
        steps_per_epoch = total_steps / max(1, self.trainer.max_epochs or 1)
        warmup_steps = min(total_steps - 1, round(self.hparams.warmup_epochs * steps_per_epoch))
        scheduler = CosineLRScheduler(
            optimizer,
            t_initial=max(1, total_steps - warmup_steps),
            lr_min=self.hparams.lr * self.hparams.min_lr_ratio,
            warmup_t=warmup_steps,
            warmup_lr_init=self.hparams.lr / max(1, warmup_steps + 1),
            warmup_prefix=True,
            t_in_epochs=False,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def lr_scheduler_step(self, scheduler: CosineLRScheduler, metric: Any) -> None:
        """timm schedulers are stepped with the number of optimizer updates so far."""
        scheduler.step_update(num_updates=self.global_step)

    # -- weight EMA ---------------------------------------------------------------------

    @property
    def ema(self) -> ModelEmaV3 | None:
        """timm's ``ModelEmaV3`` of :attr:`vit` during fit with ``ema_decay``, else ``None``."""
        return self._swapped_ema.ema if self._swapped_ema is not None else None

    def on_fit_start(self) -> None:
        if self._swapped_ema is not None:
            self._swapped_ema.start(self.vit, self.device)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self._swapped_ema.train_with(self.vit)  # after a validation run

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self._swapped_ema.update(self.vit, step=self.global_step)

    def on_validation_epoch_start(self) -> None:
        if self.ema is not None:
            self._swapped_ema.evaluate_with(self.vit)  # also what the attention callbacks see

    def on_fit_end(self) -> None:
        if self.ema is not None:
            self._swapped_ema.evaluate_with(self.vit)  # after fit, the module is the EMA model

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """``state_dict`` holds the EMA weights; the training weights are kept beside them."""
        if self.ema is not None:
            self._swapped_ema.save(self.vit, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep both weight sets for a resumed fit; evaluation uses ``state_dict`` (EMA)."""
        if self._swapped_ema is not None:
            self._swapped_ema.load(checkpoint)


def _check_hyperparameters(hp: dict[str, Any]) -> None:
    """Refuse training hyperparameters out of range, naming the value and the fix."""
    lr, weight_decay, smoothing = hp["lr"], hp["weight_decay"], hp["label_smoothing"]
    if lr <= 0 or weight_decay < 0 or not 0 <= smoothing < 1:
        raise ValueError(
            f"lr={lr} must be > 0, weight_decay={weight_decay} >= 0 and "
            f"label_smoothing={smoothing} in [0, 1)."
        )
    if hp["mixup_alpha"] < 0 or hp["cutmix_alpha"] < 0:
        raise ValueError(
            f"mixup_alpha={hp['mixup_alpha']} and cutmix_alpha={hp['cutmix_alpha']} must be "
            ">= 0 (0 turns each off)."
        )
    for name in ("mix_prob", "mix_switch_prob"):
        if not 0 <= hp[name] <= 1:
            raise ValueError(f"{name}={hp[name]} must be a probability in [0, 1].")
    if hp["ema_decay"] is not None and not 0 < hp["ema_decay"] < 1:
        raise ValueError(
            f"ema_decay={hp['ema_decay']} must be in (0, 1), e.g. 0.9998; or null for no EMA."
        )
    if hp["pos_embed_init"] == "sincos" and hp["pretrained"]:
        raise ValueError(
            "pos_embed_init='sincos' would overwrite the pretrained position embedding: "
            "use it with model.pretrained: false, or keep pos_embed_init: timm."
        )
    if hp["distance_bias"] and hp["pretrained"]:
        raise ValueError(
            "distance_bias adds parameters that pretrained weights do not have: use it with "
            "model.pretrained: false, or set model.distance_bias: false."
        )


def create_vit(
    model_name: str,
    *,
    pretrained: bool,
    img_size: int,
    pretrained_option: str = "--model.pretrained",
    **kwargs,
) -> nn.Module:
    """``timm.create_model`` with errors that name the bad value and the fix; without a
    network, pretrained weights come from the local cache at once (no minute of retries).

    Args:
        pretrained_option: The command-line option that switches the weights off, for the
            message when they cannot be had.

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
    embed_dim, num_heads = kwargs.get("embed_dim"), kwargs.get("num_heads")
    if embed_dim is not None and num_heads is not None and embed_dim % num_heads:
        close = [heads for heads in range(1, embed_dim + 1) if embed_dim % heads == 0]
        nearest = " or ".join(map(str, sorted(sorted(close, key=lambda h: abs(h - num_heads))[:2])))
        raise ValueError(
            f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}: each head gets "
            f"embed_dim / num_heads channels. Use num_heads {nearest} (--model.num_heads), or "
            f"an embed_dim that is a multiple of {num_heads}."
        )
    try:
        with offline_unless_reachable():
            vit = timm.create_model(model_name, pretrained=pretrained, img_size=img_size, **kwargs)
    except TypeError as error:
        raise ValueError(f"timm model '{model_name}' rejects these arguments: {error}") from error
    except (OSError, RuntimeError) as error:
        if not pretrained:
            raise
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise FileNotFoundError(
            f"Could not load pretrained weights for '{model_name}' ({reason}). Connect to the "
            f"network once to fill the Hugging Face cache, or use random weights with "
            f"{pretrained_option} false."
        ) from error
    patch_embed = getattr(vit, "patch_embed", None)
    if patch_embed is not None:
        patch_size = patch_embed.patch_size[0]
        if img_size % patch_size:
            raise ValueError(_size_message(img_size, patch_size))
    return vit


def init_sincos_pos_embed(vit: nn.Module) -> None:
    """Fill a timm ViT's learned ``pos_embed`` with the 2-D sine-cosine embedding.

    The grid rows get ``build_sincos2d_pos_embed`` of the patch grid; the prefix
    (class, register) rows, when the embedding has them, get zeros.

    Raises:
        ValueError: ``vit`` has no learned ``(1, prefix + G, D)`` position embedding.
    """
    pos_embed = getattr(vit, "pos_embed", None)
    patch_embed = getattr(vit, "patch_embed", None)
    if not isinstance(pos_embed, nn.Parameter) or patch_embed is None:
        raise ValueError(
            f"pos_embed_init='sincos' needs a timm ViT with a learned pos_embed; "
            f"{type(vit).__name__} has none. Use pos_embed_init: timm."
        )
    grid = list(patch_embed.grid_size)
    grid_tokens = grid[0] * grid[1]
    prefix = pos_embed.shape[1] - grid_tokens  # (1, prefix + G, D)
    sincos = build_sincos2d_pos_embed(grid, pos_embed.shape[-1])  # (G, D), row-major like the grid
    with torch.no_grad():
        pos_embed[0, :prefix].zero_()
        pos_embed[0, prefix:].copy_(sincos)


def _size_message(img_size: int, patch_size: int) -> str:
    lower = img_size // patch_size * patch_size
    return (
        f"img_size={img_size} is not a multiple of patch_size={patch_size}: use an image size "
        f"of {lower or patch_size} or {lower + patch_size} (--data.img_size), or a patch size "
        f"that divides {img_size} (--model.patch_size)."
    )
