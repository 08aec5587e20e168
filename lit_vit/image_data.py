"""Test sets for models trained elsewhere: Fashion-MNIST's test split or a folder of images,
preprocessed the way the model expects (its timm data config: size, crop, mean, std)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule
from PIL import Image
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import FashionMNIST, ImageFolder
from torchvision.transforms import Compose, Lambda

from lit_vit.data import CLASS_NAMES, DEBIAN_DIR, FashionMNISTDataModule

FASHION_MNIST = "fashion_mnist"


class ImageTestDataModule(LightningDataModule):
    """A test set for a model trained elsewhere, preprocessed as the model expects.

    Batches are ``(images, labels)``: images ``(B, C, H, W)`` float32 from
    timm's evaluation transform for ``data_config`` (resize, centre crop,
    normalise), converted to the model's channels first (grey or RGB);
    labels ``(B,)`` int64.

    Args:
        source: ``"fashion_mnist"`` for its 10,000 test images (found as
            :class:`~lit_vit.data.FashionMNISTDataModule` finds them), or a
            folder in torchvision's ``ImageFolder`` layout
            (``<source>/<class name>/<image>``; class names from the folders).
        data_config: timm's data config of the model (``input_size``
            ``(C, H, W)``, ``mean``, ``std``, ``interpolation``, ``crop_pct``),
            e.g. from ``timm.data.resolve_data_config``.
        data_dir: Where Fashion-MNIST lives or is unpacked.
        system_dir: Folder of the original ``.gz`` files (Debian's package).
        batch_size: Images per batch.
        num_workers: DataLoader workers.
        model_classes: The model's class names, one entry per output (each
            a name or its aliases, the first one shown, e.g. ``("tench",
            "Tinca tinca", "n01440764")``); the data's classes are matched to them by name
            (case, spaces and punctuation aside), and labels become the
            model's class indices when every class matches (``scored``).
            Empty: the model's classes are unknown, nothing is scored.

    Raises:
        ValueError: ``source`` is neither ``"fashion_mnist"`` nor a folder of
            class folders with images; a non-positive ``batch_size``.
    """

    def __init__(
        self,
        source: str,
        data_config: dict[str, Any],
        data_dir: str = "data",
        system_dir: str | None = DEBIAN_DIR,
        batch_size: int = 64,
        num_workers: int = 0,
        model_classes: Sequence[str | Sequence[str]] = (),
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be a positive integer.")
        if source != FASHION_MNIST and not Path(source).is_dir():
            raise ValueError(
                f"--data '{source}' is neither {FASHION_MNIST} nor a folder. Give a folder of "
                "class folders (<folder>/<class name>/<image>), or --data fashion_mnist."
            )
        self.source = source
        self.data_config = dict(data_config)
        self.data_dir = data_dir
        self.system_dir = system_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        channels = self.data_config["input_size"][0]
        self.in_chans = channels
        self.pixel_mean = tuple(self.data_config["mean"])
        self.pixel_std = tuple(self.data_config["std"])
        self.model_aliases = [_aliases(entry) for entry in model_classes]
        self.model_class_names = tuple(aliases[0] for aliases in self.model_aliases)
        self.test_dataset: Dataset | None = None
        self.class_names: tuple[str, ...] = CLASS_NAMES if source == FASHION_MNIST else ()
        self.unmatched: tuple[str, ...] = ()  # data classes none of the model's names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def prepare_data(self) -> None:
        if self.source == FASHION_MNIST:
            FashionMNISTDataModule(
                data_dir=self.data_dir, system_dir=self.system_dir
            ).prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.test_dataset is not None:
            return
        transform = self._transform()
        if self.source == FASHION_MNIST:
            self.prepare_data()
            dataset = FashionMNIST(self.data_dir, train=False, transform=transform)
        else:
            try:
                dataset = ImageFolder(self.source, transform=transform, loader=read_image)
            except FileNotFoundError as error:
                raise ValueError(
                    f"--data '{self.source}' has no images in class folders ({error}). Lay it "
                    "out as <folder>/<class name>/<image>.png (or .jpg, ...)."
                ) from None
            self.class_names = tuple(dataset.classes)
        indices = match_classes(self.class_names, self.model_aliases)
        self.unmatched = tuple(
            name for name, index in zip(self.class_names, indices, strict=True) if index is None
        )
        if self.scored:
            dataset.target_transform = indices.__getitem__  # data label -> model class
            self.class_names = self.model_class_names
        self.test_dataset = dataset

    @property
    def scored(self) -> bool:
        """Whether labels are the model's classes (every data class matched one by name), so
        accuracy and loss mean something."""
        return bool(self.model_aliases) and bool(self.class_names) and not self.unmatched

    def test_dataloader(self) -> DataLoader:
        return DataLoader(
            self.test_dataset, batch_size=self.batch_size, num_workers=self.num_workers
        )

    def describe(self) -> str:
        """``Fashion-MNIST test split`` or ``image folder <path>``, for messages."""
        if self.source == FASHION_MNIST:
            return "the Fashion-MNIST test split"
        return f"the image folder {self.source}"

    def _transform(self) -> Compose:
        """The image in the model's channels, then timm's evaluation transform."""
        mode = "L" if self.in_chans == 1 else "RGB"
        timm_transform = create_transform(**self.data_config, is_training=False)
        return Compose([Lambda(partial(_convert, mode=mode)), timm_transform])


def read_image(path: str) -> Image.Image:
    """The RGB image at ``path`` (as torchvision's loader reads it).

    Raises:
        ValueError: A file that is no image PIL reads, or one larger than PIL's guard
            against decompression bombs (``PIL.Image.MAX_IMAGE_PIXELS``), named with the fix.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"--data: {path} is too large to read safely ({error}). Shrink it or take it out "
            "of the folder; for an image you trust, raise PIL.Image.MAX_IMAGE_PIXELS."
        ) from None
    except OSError as error:
        raise ValueError(
            f"--data: {path} is no image that can be read ({error}). Take it out of the "
            "folder or replace it."
        ) from None


def _convert(image: Image.Image, mode: str) -> Image.Image:
    return image if image.mode == mode else image.convert(mode)


def match_classes(
    data_classes: Sequence[str], model_aliases: Sequence[Sequence[str]]
) -> list[int | None]:
    """For each data class, the index of the model class one of whose aliases has its name
    (compared without case, spaces and punctuation: ``ankle_boot`` is ``Ankle boot``), or
    None."""
    index_of = {}
    for index, aliases in enumerate(model_aliases):
        for alias in aliases:
            index_of.setdefault(_normalized(alias), index)
    return [index_of.get(_normalized(name)) for name in data_classes]


def _normalized(name: str) -> str:
    return re.sub(r"[\W_]+", "", name.casefold())


def _aliases(entry: str | Sequence[str]) -> tuple[str, ...]:
    return (entry,) if isinstance(entry, str) else tuple(entry)
