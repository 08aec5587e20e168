from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from lit_vit import data as data_module
from lit_vit.attention import resize_images as resize
from lit_vit.data import (
    CLASS_NAMES,
    DEBIAN_DIR,
    DataNotFoundError,
    FashionMNISTDataModule,
    random_crop,
    random_horizontal_flip,
)
from tests.conftest import TEST_IMAGES, TRAIN_IMAGES


def test_loads_original_format_files_with_seeded_split(tmp_path, fake_fashion_mnist):
    dm = FashionMNISTDataModule(tmp_path / "data", system_dir=str(fake_fashion_mnist), val_size=40)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_dataset) == TRAIN_IMAGES - 40
    assert len(dm.val_dataset) == 40
    assert len(dm.test_dataset) == TEST_IMAGES
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (40, 1, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and int(labels.max()) < dm.num_classes
    # Same seed, same split.
    again = FashionMNISTDataModule(tmp_path / "data", system_dir=None, val_size=40)
    again.setup("fit")
    torch.testing.assert_close(again.val_dataset.tensors[0], dm.val_dataset.tensors[0])
    assert dm.class_names == CLASS_NAMES and len(CLASS_NAMES) == dm.num_classes
    pixels = dm.denormalize(images)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


@pytest.mark.skipif(not Path(DEBIAN_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_debian_files(tmp_path):
    dm = FashionMNISTDataModule(tmp_path / "data", download=False)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (
        55000,
        5000,
        10000,
    )
    counts = torch.bincount(dm.test_dataset.tensors[1], minlength=10)
    assert counts.tolist() == [1000] * 10
    mean = dm.train_dataset.tensors[0].mean().item()
    assert abs(mean) < 0.01, "normalisation constants do not match the real data"


def test_missing_data_offline_names_every_option(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(data_module.FashionMNIST, "download", offline)
    dm = FashionMNISTDataModule(tmp_path / "data", system_dir=str(tmp_path / "empty"))
    with pytest.raises(DataNotFoundError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "data") in message and str(tmp_path / "empty") in message
    assert "download failed" in message


def test_unwritable_data_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    dm = FashionMNISTDataModule(blocker / "data", system_dir=None, download=False)
    with pytest.raises(PermissionError, match="not writable.*--data.data_dir"):
        dm.prepare_data()


def test_bad_sizes():
    with pytest.raises(ValueError, match="img_size=0"):
        FashionMNISTDataModule(img_size=0)
    with pytest.raises(ValueError, match="val_size=60000"):
        FashionMNISTDataModule(val_size=60000)


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    torch.manual_seed(0)
    images = torch.randn(16, 2, 6, 5)
    cropped = random_crop(images, padding=2)
    black = -data_module.PIXEL_MEAN / data_module.PIXEL_STD
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), value=black)
    for image, crop in zip(padded, cropped, strict=True):
        windows = [image[:, dy : dy + 6, dx : dx + 5] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(window, crop) for window in windows)
    assert not torch.equal(cropped, images), "16 random crops were all the identity"


def test_flip_and_resize():
    images = torch.arange(12.0).reshape(1, 1, 3, 4).repeat(64, 1, 1, 1)
    flipped = random_horizontal_flip(images)
    same = (flipped == images).flatten(1).all(1)
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 64
    assert resize(images, 8).shape == (64, 1, 8, 8)
    assert resize(images, (3, 4)) is images
