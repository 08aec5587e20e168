"""The training recipe's switches: Mixup/CutMix, weight EMA, augmentation policies, erasing."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from lit_vit.cli import main
from lit_vit.data import PIXEL_MEAN, PIXEL_STD, FashionMNISTDataModule, apply_policy
from lit_vit.ema import TRAINING_WEIGHTS_KEY
from lit_vit.model import LitViT
from tests.conftest import read_events, run_dirs, tiny_run_args

LOW, HIGH = -PIXEL_MEAN / PIXEL_STD, (1 - PIXEL_MEAN) / PIXEL_STD  # normalised black, white


def tiny(**kwargs) -> LitViT:
    return LitViT(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, **kwargs)


def test_mixup_and_cutmix_train_on_soft_targets(monkeypatch):
    model = tiny(mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=1.0, label_smoothing=0.1)
    monkeypatch.setattr(model, "log", lambda *args, **kwargs: None)
    seen = {}
    forward = model.mixed_criterion.forward

    def capturing(logits, targets):
        seen["targets"] = targets
        return forward(logits, targets)

    monkeypatch.setattr(model.mixed_criterion, "forward", capturing)
    images, labels = torch.randn(8, 1, 28, 28), torch.arange(8) % 10
    loss = model.training_step([images, labels], 0)
    targets = seen["targets"]
    assert targets.shape == (8, 10) and loss.ndim == 0 and torch.isfinite(loss)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
    assert bool((targets.amax(dim=1) < 0.99).all()), "soft, mixed targets"
    with pytest.raises(ValueError, match="Mixup/CutMix needs an even batch size, got 7"):
        model.training_step([images[:7], labels[:7]], 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mixup_alpha": -1.0}, "mixup_alpha=-1.0 and cutmix_alpha=0.0 must be >= 0"),
        ({"mix_prob": 1.5}, "mix_prob=1.5 must be a probability"),
        ({"ema_decay": 1.0}, "ema_decay=1.0 must be in (0, 1)"),
        (
            {"pos_embed_init": "sincos", "pretrained": True},
            "pos_embed_init='sincos' would overwrite the pretrained position embedding",
        ),
    ],
)
def test_bad_recipe_values_are_refused(kwargs, message):
    with pytest.raises(ValueError) as error:
        tiny(**kwargs)
    assert message in str(error.value)


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, fake_fashion_mnist):
    """Two epochs with EMA and CutMix through the CLI; the checkpoint of each epoch kept."""
    tmp_path = tmp_path_factory.mktemp("ema")
    args = tiny_run_args(
        tmp_path,
        fake_fashion_mnist,
        "--trainer.callbacks=[]",
        "--checkpoint.save_top_k=-1",
        "--model.ema_decay=0.9",
        "--model.cutmix_alpha=1.0",
        "--data.random_erasing=0.5",
        "--model.pos_embed_init=sincos",
        "--model.distance_bias=true",
    )
    main(["fit", *args])
    (run_dir,) = run_dirs(tmp_path / "logs")
    return tmp_path, args, run_dir


def val_images(tmp_path, fake_fashion_mnist):
    data = FashionMNISTDataModule(
        data_dir=str(tmp_path / "data"), system_dir=str(fake_fashion_mnist), val_size=128
    )
    data.setup("fit")
    images, labels = data.val_dataset.tensors
    return images[:64], labels[:64]  # limit_val_batches=2 of 32


def test_ema_weights_are_validated_and_saved(ema_run, fake_fashion_mnist):
    tmp_path, _, run_dir = ema_run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    training = checkpoint[TRAINING_WEIGHTS_KEY]
    ema = {k.removeprefix("vit."): v for k, v in checkpoint["state_dict"].items()}
    assert set(training) == {k for k in ema if k in training}
    assert any(not torch.equal(ema[name], value) for name, value in training.items())
    slopes = training["blocks.0.attn.slope"]  # the distance bias, trained and saved
    assert not torch.equal(slopes, torch.tensor([1.0, 0.5]))
    model = LitViT.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt").eval()
    images, labels = val_images(tmp_path, fake_fashion_mnist)
    with torch.no_grad():
        accuracy = (model(images).argmax(dim=-1) == labels).float().mean().item()
    events = read_events(run_dir)
    assert events.Scalars("val/acc")[-1].value == pytest.approx(accuracy, abs=1e-6)
    assert "train/acc" not in events.Tags()["scalars"], "no train accuracy on mixed images"


def test_sincos_position_embedding_starts_from_the_2d_sine_cosine_grid():
    model = tiny(pos_embed_init="sincos")
    pos_embed = model.vit.pos_embed.detach()  # (1, 1 + 49, 32): class token first
    assert model.vit.pos_embed.requires_grad, "still learned"
    torch.testing.assert_close(pos_embed[0, 0], torch.zeros(32))
    # By hand: patch (row 2, column 5) of the 7x7 grid; per axis 8 frequencies 1 / 10000^(f/8),
    # sines then cosines, the first 16 channels for the row (timm's order, the grid flattened
    # row by row like the patches).
    omega = 1.0 / 10000 ** (torch.arange(8) / 8)
    row, column = 2.0 * omega, 5.0 * omega
    expected = torch.cat([row.sin(), column.sin(), row.cos(), column.cos()])
    torch.testing.assert_close(pos_embed[0, 1 + 2 * 7 + 5], expected)
    assert not torch.equal(tiny().vit.pos_embed[0, 1:], pos_embed[0, 1:]), "timm's own otherwise"


def test_ema_is_restored_when_resuming(ema_run):
    tmp_path, args, run_dir = ema_run
    first = next((run_dir / "checkpoints").glob("epoch000-*.ckpt"))
    checkpoint = torch.load(first, weights_only=False)
    model = tiny(ema_decay=0.9, cutmix_alpha=1.0, distance_bias=True)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    model.on_fit_start()
    for name, tensor in model.ema.module.state_dict().items():
        torch.testing.assert_close(tensor, checkpoint["state_dict"][f"vit.{name}"])
    for name, tensor in model.vit.state_dict().items():
        torch.testing.assert_close(tensor, checkpoint[TRAINING_WEIGHTS_KEY][name])
    assert model.ema.get_decay(1) < 0.5 < model.ema.get_decay(10_000) == pytest.approx(0.9)
    main(["fit", *args, f"--ckpt_path={first}"])
    resumed = run_dirs(tmp_path / "logs")[-1]
    assert [int(e.value) for e in read_events(resumed).Scalars("epoch")][-1] == 1


def test_augmentation_policies_keep_shapes_and_ranges():
    images = torch.rand(16, 1, 28, 28) * (HIGH - LOW) + LOW
    for policy in (v2.TrivialAugmentWide(), v2.RandAugment()):
        augmented = apply_policy(images, policy)
        assert augmented.shape == images.shape and augmented.dtype == torch.float32
        assert float(augmented.min()) >= LOW - 1e-5 and float(augmented.max()) <= HIGH + 1e-5
    with pytest.raises(ValueError, match="policy='autoaugment' must be one of"):
        FashionMNISTDataModule(policy="autoaugment")
    with pytest.raises(ValueError, match="random_erasing=2.0 must be a probability"):
        FashionMNISTDataModule(random_erasing=2.0)
