import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, TensorDataset

from lit_vit.model import LitViT, create_vit


def tiny(**kwargs) -> LitViT:
    defaults = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    return LitViT(**{**defaults, **kwargs})


def test_architecture_arguments_reach_timm():
    model = tiny(depth=3, img_size=28, patch_size=4)
    assert len(model.vit.blocks) == 3
    assert model.vit.patch_embed.grid_size == (7, 7)
    assert model.vit.embed_dim == 32
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


class LearningRates(Callback):
    def __init__(self) -> None:
        self.rates = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def fit_briefly(model: LitViT, epochs: int = 2, batches: int = 5) -> Trainer:
    images, labels = torch.randn(batches * 8, 1, 28, 28), torch.arange(batches * 8) % 10
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LearningRates()],
    )
    trainer.fit(model, DataLoader(TensorDataset(images, labels), batch_size=8))
    return trainer


def test_no_weight_decay_for_norms_biases_and_tokens_and_warmup_then_cosine():
    model = tiny(lr=1e-3, warmup_epochs=1, min_lr_ratio=0.1)
    trainer = fit_briefly(model)
    names = {id(p): n for n, p in model.vit.named_parameters()}
    groups = {
        group["weight_decay"]: {names[id(p)] for p in group["params"]}
        for group in trainer.optimizers[0].param_groups
    }
    assert {"cls_token", "pos_embed", "norm.weight", "head.bias"} <= groups[0.0]
    assert "head.weight" in groups[0.05] and "head.weight" not in groups[0.0]
    (monitor,) = [cb for cb in trainer.callbacks if isinstance(cb, LearningRates)]
    rates = monitor.rates
    # 10 steps: 5 of linear warm-up towards 1e-3, then a cosine from 1e-3 down to 1e-4.
    assert rates[0] == pytest.approx(1e-3 / 6)
    assert rates[:6] == sorted(rates[:6]) and max(rates) == pytest.approx(1e-3)
    assert rates[5:] == sorted(rates[5:], reverse=True) and rates[-1] > 1e-4


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(
        ValueError, match="Unknown timm model name 'vit_tiny_patch16'.*vit_tiny_patch16_224"
    ):
        tiny(model_name="vit_tiny_patch16")


def test_image_size_not_divisible_by_patch_size():
    with pytest.raises(ValueError, match="img_size=30 is not a multiple of patch_size=4.*28 or 32"):
        tiny(img_size=30, patch_size=4)
    with pytest.raises(ValueError, match="img_size=28 is not a multiple of patch_size=16"):
        tiny(patch_size=None)  # the variant's 16-pixel patches


def test_pretrained_offline_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="pretrained weights.*--model.pretrained false"):
        create_vit("vit_tiny_patch16_224", pretrained=True, img_size=28, patch_size=4, in_chans=1)


def test_pretrained_weights_without_a_network_come_from_the_cache_at_once(monkeypatch):
    """No minute of hub retries: without a connection the download reads the cache only,
    and a miss names the option that switches the weights off."""
    import socket

    import timm
    from huggingface_hub import constants

    def no_network(*args, **kwargs):
        raise OSError("Network is unreachable")

    offline_during_download = []

    def create_model(*args, **kwargs):
        offline_during_download.append(constants.is_offline_mode())
        raise OSError("not in the local cache")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as on a user's machine
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(timm, "create_model", create_model)
    with pytest.raises(FileNotFoundError, match="random weights with --pretrained false"):
        create_vit(
            "vit_tiny_patch16_224", pretrained=True, img_size=224, pretrained_option="--pretrained"
        )
    assert offline_during_download == [True] and not constants.is_offline_mode()
