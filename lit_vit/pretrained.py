"""Named classifiers as ``lit-vit analyze`` loads them: timm models and Hugging Face folders
or hub ids, with the data config (input size, mean, std) and class names each brings."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import timm
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from timm.data import ImageNetInfo, infer_imagenet_subset, resolve_data_config
from timm.models import split_model_name_tag
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lit_vit.attention.backends import model_logits
from lit_vit.hub import offline_unless_reachable
from lit_vit.model import create_vit

# ViT image processors' defaults, for a Hugging Face folder saved without its processor.
HF_DEFAULT_MEAN_STD = (0.5, 0.5)


class PretrainedClassifier(LightningModule):
    """A timm or Hugging Face classifier, tested as it is.

    ``test/acc`` and ``test/loss`` are logged when ``scored`` (the labels are
    the model's class indices); otherwise only the attention is analysed.

    Args:
        model: The classifier; its output is logits, a tuple starting with
            them or an object with ``.logits``.
        model_name: Its name, for the report.
        num_classes: The model's outputs.
        scored: Whether the test labels are the model's classes.
    """

    def __init__(self, model: nn.Module, model_name: str, num_classes: int, scored: bool) -> None:
        super().__init__()
        self.save_hyperparameters({"model_name": model_name, "num_classes": num_classes})
        self.model = model
        self.scored = scored
        self.test_acc = MulticlassAccuracy(max(num_classes, 1), average="micro")
        self.test_images = 0

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` images to ``(B, classes)`` logits."""
        return model_logits(self.model(images))

    def on_test_epoch_start(self) -> None:
        self.test_images = 0

    def test_step(self, batch: list[Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.test_images += len(labels)
        if self.scored:
            loss = nn.functional.cross_entropy(logits, labels)
            self.test_acc(logits, labels)
            self.log("test/loss", loss)
            self.log("test/acc", self.test_acc)


def id2label_names(config: Any) -> list[str]:
    """A Hugging Face config's class names, or none for the generic ``LABEL_<i>``."""
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label.get(index, "")) for index in range(int(config.num_labels))]
    generic = all(re.fullmatch(r"LABEL_\d+", name) for name in names)
    return [] if generic or not all(names) else names


def imagenet_names(model: nn.Module) -> list[tuple[str, ...]]:
    """A pretrained timm classifier's ImageNet classes, each as its aliases: the names of its
    description, the first one shown, then its WordNet id (``("tench", "Tinca tinca",
    "n01440764")``); none when the model is no ImageNet classifier."""
    subset = infer_imagenet_subset(model)
    if subset is None:
        return []
    info = ImageNetInfo(subset)
    if info.num_classes() != model.num_classes:
        return []
    return [
        (*info.index_to_description(index).split(", "), info.index_to_label_name(index))
        for index in range(info.num_classes())
    ]


def timm_model(
    name: str, pretrained: bool, num_classes: int | None, model_kwargs: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    """The timm model and its data config (the input size it was built for)."""
    kwargs = dict(model_kwargs)
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    img_size = kwargs.pop("img_size", None)
    if img_size is None:
        img_size = _timm_default_size(name)
    model = create_vit(
        name, pretrained=pretrained, img_size=img_size, pretrained_option="--pretrained", **kwargs
    )
    data_config = resolve_data_config({}, model=model)
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None:
        channels = data_config["input_size"][0]
        data_config["input_size"] = (channels, *(int(s) for s in patch_embed.img_size))
    return model, data_config


def _timm_default_size(name: str) -> int:
    """The input side of ``name``'s pretrained config (224 when timm has none)."""
    architecture, _ = split_model_name_tag(name)
    config = timm.models.get_pretrained_cfg(name) if timm.is_model(architecture) else None
    return int(config.input_size[-1]) if config is not None else 224


def hugging_face_model(source: str, pretrained: bool) -> tuple[nn.Module, dict[str, Any]]:
    """A Hugging Face image classifier and a timm-style data config from its processor."""
    try:
        import transformers
    except ImportError as error:
        raise ValueError(
            "Hugging Face models need transformers: pip install 'lit-vit[hf]'."
        ) from error
    try:
        with offline_unless_reachable():
            if pretrained:
                model = transformers.AutoModelForImageClassification.from_pretrained(source)
            else:
                config = transformers.AutoConfig.from_pretrained(source)
                model = transformers.AutoModelForImageClassification.from_config(config)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"--model hf:{source}: cannot load it ({str(error).splitlines()[0]}). Give a hub id "
            "(with a network or a filled cache) or a folder written by save_pretrained()."
        ) from error
    mean, std = HF_DEFAULT_MEAN_STD
    try:
        with offline_unless_reachable():
            processor = transformers.AutoImageProcessor.from_pretrained(source)
        mean = getattr(processor, "image_mean", None) or mean
        std = getattr(processor, "image_std", None) or std
    except (OSError, ValueError):
        rank_zero_info(f"{source} has no image processor: mean and std {mean}, resize only.")
    channels = getattr(model.config, "num_channels", 3)
    return model, resize_config(channels, int(model.config.image_size), mean, std)


def resize_config(
    channels: int, size: int, mean: float | Sequence[float], std: float | Sequence[float]
) -> dict[str, Any]:
    """A timm data config that resizes to ``size x size`` (no crop) and normalises."""

    def per_channel(value: float | Sequence[float]) -> tuple[float, ...]:
        return tuple(value) if isinstance(value, Sequence) else (float(value),) * channels

    return {
        "input_size": (channels, size, size),
        "mean": per_channel(mean),
        "std": per_channel(std),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
    }
