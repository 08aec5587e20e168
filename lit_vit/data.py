"""Fashion-MNIST as a LightningDataModule.

The images are kept as one normalised float tensor per split, so a batch is a
slice of memory rather than 128 PIL round trips; augmentation (random crop
with padding, horizontal flip) and resizing run batched on the device in
``on_after_batch_transfer``. On 2 CPU cores this keeps data loading out of
the training profile without worker processes.

Where the data comes from, first found wins:

1. ``data_dir`` already in torchvision's layout (``data_dir/FashionMNIST/raw``);
2. the four original ``.gz`` files in ``system_dir`` (Debian's
   ``dataset-fashion-mnist`` package installs them in
   ``/usr/share/datasets/fashion-mnist``), unpacked into ``data_dir``;
3. torchvision's download into ``data_dir``.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from timm.data.random_erasing import RandomErasing
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import extract_archive
from torchvision.transforms import v2

from lit_vit.attention import resize_images

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
NATIVE_SIZE = 28
# Mean and standard deviation of the 60,000 training images' pixels in [0, 1].
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530
# Automatic augmentation policies (torchvision), by the name the config uses.
POLICIES = {
    "none": lambda: None,
    "trivial": v2.TrivialAugmentWide,
    "randaugment": v2.RandAugment,
}


class DataNotFoundError(FileNotFoundError):
    """Fashion-MNIST could be found nowhere and could not be downloaded."""


class DataCorruptError(ValueError):
    """A Fashion-MNIST file is truncated or not in the IDX format."""


class FashionMNISTDataModule(LightningDataModule):
    """Fashion-MNIST with a seeded train/val split and batched augmentation.

    Batches are ``(images, labels)``: images ``(B, 1, img_size, img_size)``
    float32, normalised with :data:`PIXEL_MEAN` / :data:`PIXEL_STD`; labels
    ``(B,)`` int64 in ``[0, 10)``.

    Args:
        data_dir: Where the data lives or is written (torchvision's layout).
        system_dir: Folder holding the four original ``.gz`` files, used
            without a network when ``data_dir`` has no data yet. ``None``
            skips it.
        download: Fall back to torchvision's download when neither has it.
        batch_size: Images per batch, for every stage.
        num_workers: DataLoader workers. 0 is fastest here: a batch is a
            tensor slice.
        val_size: Training images held out for validation (seeded split).
        seed: Seed of the train/val split.
        img_size: Side of the square images the model sees; 28 is native,
            other sizes are resized on the device (bilinear, antialiased when
            shrinking).
        augment: Random crop with ``crop_padding`` zero padding and
            horizontal flip, on training batches only.
        crop_padding: Padding of the random crop, in native pixels.
        policy: An automatic augmentation policy on training batches, after
            the crop and flip: torchvision's ``TrivialAugmentWide``
            (``"trivial"``) or ``RandAugment`` (``"randaugment"``), one random
            draw per image; ``"none"`` (default) for none.
        random_erasing: Probability that timm's ``RandomErasing`` erases a
            random rectangle of a training image (per-pixel normal noise, as
            in timm's recipes); 0 turns it off.

    Raises:
        ValueError: On a non-positive size, a ``val_size`` that leaves no
            training images or a ``random_erasing`` outside [0, 1].
        DataNotFoundError: When no source has the data (names all three).
        DataCorruptError: When a file is truncated or damaged (names it and
            how to get it again).
        PermissionError: When ``data_dir`` must be written and cannot be.
    """

    def __init__(
        self,
        data_dir: str = "data",
        system_dir: str | None = DEBIAN_DIR,
        download: bool = True,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int = 5000,
        seed: int = 42,
        img_size: int = NATIVE_SIZE,
        augment: bool = True,
        crop_padding: int = 2,
        policy: Literal["none", "trivial", "randaugment"] = "none",
        random_erasing: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("img_size", img_size)):
            if value < 1:
                raise ValueError(f"{name}={value} must be a positive integer.")
        if not 0 < val_size < 60_000:
            raise ValueError(f"val_size={val_size} must be between 1 and 59,999.")
        if not 0 <= random_erasing <= 1:
            raise ValueError(f"random_erasing={random_erasing} must be a probability in [0, 1].")
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r} must be one of {sorted(POLICIES)}.")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.system_dir = Path(system_dir) if system_dir else None
        self.download = download
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.img_size = img_size
        self.augment = augment
        self.crop_padding = crop_padding
        self.policy = POLICIES[policy]()
        self.random_erasing = random_erasing
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None
        self.test_dataset: TensorDataset | None = None

    # What the CLI links into the model.
    num_classes: int = len(CLASS_NAMES)
    in_chans: int = 1
    class_names: tuple[str, ...] = CLASS_NAMES
    pixel_mean: tuple[float, ...] = (PIXEL_MEAN,)
    pixel_std: tuple[float, ...] = (PIXEL_STD,)

    @property
    def raw_folder(self) -> Path:
        """``data_dir/FashionMNIST/raw``, where torchvision reads the files."""
        return self.data_dir / "FashionMNIST" / "raw"

    def prepare_data(self) -> None:
        """Make the four raw files present in ``data_dir`` (rank zero only)."""
        if self._has_raw_files():
            return
        self._ensure_writable()
        if self.system_dir and all(
            (self.system_dir / f"{name}.gz").is_file() for name in RAW_FILES
        ):
            for name in RAW_FILES:
                self._extract(self.system_dir / f"{name}.gz")
            return
        if self.download:
            try:
                FashionMNIST(str(self.data_dir), download=True)
                return
            except (RuntimeError, OSError) as error:
                reason = f"the download failed ({str(error).strip().splitlines()[0]})"
        else:
            reason = "download=False"
        raise DataNotFoundError(self._missing_data_message(reason))

    def setup(self, stage: str | None = None) -> None:
        if not self._has_raw_files():
            self.prepare_data()
        if stage in ("fit", "validate", None) and self.train_dataset is None:
            full = _load_split(self.data_dir, train=True)
            generator = torch.Generator().manual_seed(self.hparams.seed)
            train_size = len(full) - self.hparams.val_size
            train, val = random_split(full, [train_size, self.hparams.val_size], generator)
            self.train_dataset = _subset_to_tensors(train)
            self.val_dataset = _subset_to_tensors(val)
        if stage in ("test", "predict", None) and self.test_dataset is None:
            self.test_dataset = _load_split(self.data_dir, train=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset)

    def on_after_batch_transfer(self, batch: list[Tensor], dataloader_idx: int) -> list[Tensor]:
        """Augment training batches and resize every batch, on its device."""
        images, labels = batch
        if self.trainer is not None and self.trainer.training:
            if self.augment:
                images = random_crop(images, self.crop_padding)
                images = random_horizontal_flip(images)
            if self.policy is not None:
                images = apply_policy(images, self.policy)
            if self.random_erasing > 0:
                erase = RandomErasing(self.random_erasing, mode="pixel", device=images.device)
                images = erase(images)
        images = resize_images(images, self.img_size)
        return [images, labels]

    def denormalize(self, images: Tensor) -> Tensor:
        """Normalised ``(B, 1, H, W)`` images back to pixel values in [0, 1]."""
        return images * PIXEL_STD + PIXEL_MEAN

    def _loader(self, dataset: TensorDataset | None, **kwargs) -> DataLoader:
        if dataset is None:
            raise RuntimeError("FashionMNISTDataModule.setup() must run before its dataloaders.")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def _extract(self, archive: Path) -> None:
        """Unpack one ``.gz`` into the raw folder; a broken archive leaves no partial file."""
        target = self.raw_folder / archive.stem
        try:
            extract_archive(str(archive), str(self.raw_folder))
        except (EOFError, OSError, zlib.error) as error:
            target.unlink(missing_ok=True)
            raise DataCorruptError(
                f"{archive} cannot be unpacked ({error}): the file is truncated or damaged. "
                "Reinstall it (`apt-get install --reinstall dataset-fashion-mnist`) or copy an "
                "intact one there."
            ) from error

    def _has_raw_files(self) -> bool:
        return all((self.raw_folder / name).is_file() for name in RAW_FILES)

    def _ensure_writable(self) -> None:
        try:
            self.raw_folder.mkdir(parents=True, exist_ok=True)
            probe = self.raw_folder / ".write_test"
            probe.touch()
            probe.unlink()
        except OSError as error:
            raise PermissionError(
                f"data_dir '{self.data_dir}' is not writable ({error.strerror}): choose another "
                "folder with --data.data_dir, or put the data there in torchvision's layout."
            ) from error

    def _missing_data_message(self, reason: str) -> str:
        system = self.system_dir or "(system_dir=None)"
        return (
            "Fashion-MNIST was not found. Looked in:\n"
            f"  1. data_dir '{self.data_dir}': no files in {self.raw_folder}\n"
            f"  2. system_dir '{system}': not the four original .gz files\n"
            f"  3. torchvision's download: {reason}\n"
            "Fix one of these: `apt-get install dataset-fashion-mnist` (Debian, no network "
            "needed), copy the four .gz files into --data.system_dir, or run once with a "
            "network and --data.download true."
        )


def check_idx_file(path: Path) -> None:
    """Check that ``path`` is a complete uint8 IDX file: its size is what its header says.

    Raises:
        DataCorruptError: Naming the file, what is wrong and how to get it again.
    """
    fix = (
        f"Delete it (rm {path}) so that lit-vit unpacks it again from --data.system_dir or "
        "downloads it, or reinstall Debian's copy (`apt-get install --reinstall "
        "dataset-fashion-mnist`)."
    )
    data = path.read_bytes()[:16]
    if len(data) < 4 or data[:3] != bytes([0, 0, 8]):
        raise DataCorruptError(f"{path} is not a Fashion-MNIST (IDX, uint8) file. {fix}")
    dims = data[3]
    if len(data) < 4 + 4 * dims:
        raise DataCorruptError(f"{path} is truncated inside its header. {fix}")
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    expected = 4 + 4 * dims + math.prod(shape)
    size = path.stat().st_size
    if size != expected:
        raise DataCorruptError(
            f"{path} has {size:,} bytes, but its header ({'x'.join(map(str, shape))} values) "
            f"promises {expected:,}: the file is truncated or damaged. {fix}"
        )


def _load_split(data_dir: Path, train: bool) -> TensorDataset:
    """One split as normalised float images ``(B, 1, 28, 28)`` and labels ``(B,)``."""
    raw = data_dir / "FashionMNIST" / "raw"
    prefix = "train" if train else "t10k"
    for name in RAW_FILES:
        if name.startswith(prefix):
            check_idx_file(raw / name)
    split = FashionMNIST(str(data_dir), train=train, download=False)
    images = split.data.unsqueeze(1).float().div_(255).sub_(PIXEL_MEAN).div_(PIXEL_STD)
    return TensorDataset(images, split.targets.long())


def _subset_to_tensors(subset) -> TensorDataset:
    images, labels = subset.dataset.tensors
    index = torch.as_tensor(subset.indices)
    return TensorDataset(images[index], labels[index])


def random_crop(images: Tensor, padding: int) -> Tensor:
    """Random crop of each image after padding with black, batched.

    Like torchvision's ``RandomCrop(28, padding)`` on raw pixels, the padding
    is black (0 in raw pixels, ``-mean / std`` once normalised).

    Args:
        images: ``(B, C, H, W)`` normalised images.
        padding: Pixels of padding on each side; 0 returns the input.

    Returns:
        ``(B, C, H, W)``, each image shifted by up to ``padding`` pixels.
    """
    if padding <= 0:
        return images
    batch, _, height, width = images.shape
    black = -PIXEL_MEAN / PIXEL_STD
    padded = F.pad(images, (padding,) * 4, value=black)
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), device=images.device)
    rows = offsets[:, 0, None] + torch.arange(height, device=images.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(width, device=images.device)  # (B, W)
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    # Advanced indexing around the channel slice puts the indexed dims first: (B, H, W, C).
    cropped = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()


def random_horizontal_flip(images: Tensor, p: float = 0.5) -> Tensor:
    """Flip each ``(B, C, H, W)`` image left-right with probability ``p``."""
    flip = torch.rand(images.shape[0], device=images.device) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def apply_policy(images: Tensor, policy: nn.Module) -> Tensor:
    """An augmentation policy drawn per image on normalised ``(B, 1, H, W)`` images.

    The policy runs on the uint8 pixels, as torchvision's policies expect.
    """
    pixels = (images * PIXEL_STD + PIXEL_MEAN).clamp(0, 1).mul(255).round().to(torch.uint8)
    augmented = torch.stack([policy(image) for image in pixels])
    return (augmented.float() / 255 - PIXEL_MEAN) / PIXEL_STD
