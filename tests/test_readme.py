"""The README's examples run as written: tiny models from configs stand in for downloaded
weights, small loaders for the reader's own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

README = Path(__file__).resolve().parents[1] / "README.md"
SIZE, PATCH, CLASSES = 32, 8, 10


def example(class_name: str) -> str:
    """The README's Python block that defines ``class_name``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    (block,) = [block for block in blocks if f"class {class_name}(" in block]
    return block


def loaders() -> dict[str, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, SIZE, SIZE, generator=generator)
    dataset = TensorDataset(images, torch.arange(16) % CLASSES)
    return {
        "train_loader": DataLoader(dataset, batch_size=8),
        "val_loader": DataLoader(dataset, batch_size=8),
    }


def run(block: str, tmp_path: Path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)  # Lightning's default logs go to the working directory
    namespace = {"__name__": "readme_example", **loaders()}
    exec(compile(block, str(README), "exec"), namespace)
    return namespace


def test_the_hugging_face_example(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")

    def tiny(name, num_labels, ignore_mismatched_sizes):
        assert name == "google/vit-base-patch16-224" and ignore_mismatched_sizes
        config = transformers.ViTConfig(
            image_size=SIZE, patch_size=PATCH, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64, num_labels=num_labels,
        )  # fmt: skip
        return transformers.ViTForImageClassification(config)

    monkeypatch.setattr(transformers.ViTForImageClassification, "from_pretrained", tiny)
    namespace = run(example("HuggingFaceClassifier"), tmp_path, monkeypatch)
    trainer = namespace["trainer"]
    assert trainer.current_epoch == 3
    figures = Path(trainer.log_dir) / "attention" / "epoch_002"
    for name in ("layer_maps", "rollout", "rollout_evolution", "evolution"):
        assert (figures / f"{name}.png").is_file(), name


def test_the_torchvision_example(tmp_path, monkeypatch):
    def tiny(weights):
        assert weights == "IMAGENET1K_V1"
        return torchvision.models.VisionTransformer(
            image_size=SIZE, patch_size=PATCH, num_layers=2, num_heads=2, hidden_dim=32,
            mlp_dim=64,
        )  # fmt: skip

    monkeypatch.setattr(torchvision.models, "vit_b_16", tiny)
    namespace = run(example("TorchvisionClassifier"), tmp_path, monkeypatch)
    trainer = namespace["trainer"]
    assert trainer.current_epoch == 3
    assert trainer.lightning_module.model.heads.head.out_features == CLASSES
    figures = Path(trainer.log_dir) / "attention" / "epoch_002"
    assert (figures / "layer_maps.png").is_file() and (figures / "rollout.png").is_file()


def test_the_toolkit_example(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    (block,) = [block for block in blocks if "recorder = AttentionRecorder(vit)" in block]
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=SIZE, patch_size=PATCH,
        embed_dim=32, depth=2, num_heads=2, num_classes=CLASSES,
    )  # fmt: skip
    pixels = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    namespace = {"vit": vit, "images": pixels * 2 - 1, "pixels": pixels}
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(README), "exec"), namespace)
    grid = (SIZE // PATCH, SIZE // PATCH)
    for name in ("maps", "flow", "grad_maps"):
        assert namespace[name].shape == (4, *grid), name
    assert set(namespace["every"]) >= {"rollout", "flow", "grad rollout"}
    assert namespace["reduced"].query_rows.shape == (2, 4, 2, 1 + grid[0] * grid[1])
    torch.testing.assert_close(namespace["diversity"], namespace["reduced"].head_diversity())
    assert namespace["entropy"].normalized.shape == (2, 2)
    # The second block goes on from the first.
    (trust,) = [block for block in blocks if "relevance = cp_lrp(" in block]
    exec(compile(trust, str(README), "exec"), namespace)
    assert namespace["relevance"].shape == (4, SIZE, SIZE)
    assert namespace["patches"].shape == (4, *grid)
    assert namespace["coefficients"]["cp-lrp"].shape == (4,)
    assert namespace["removed"]["intensity"].lerf.shape == (4,)
    assert namespace["verdict"] in ("better", "worse", "not distinguishable")
    assert namespace["filled"].shape == namespace["images"].shape
