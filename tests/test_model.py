import math

import pytest
import torch

from lit_vit.model import LitViT, create_vit, parameter_groups, warmup_cosine


def tiny(**kwargs) -> LitViT:
    defaults = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    return LitViT(**{**defaults, **kwargs})


def test_architecture_arguments_reach_timm():
    model = tiny(depth=3, img_size=28, patch_size=4)
    assert len(model.vit.blocks) == 3
    assert model.vit.patch_embed.grid_size == (7, 7)
    assert model.vit.embed_dim == 32
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_no_weight_decay_for_norms_biases_and_tokens():
    model = tiny()
    decay, plain = parameter_groups(model.vit, 0.05)
    names = {id(p): n for n, p in model.vit.named_parameters()}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert {"cls_token", "pos_embed", "norm.weight", "head.bias"} <= plain_names
    assert all(p.ndim >= 2 for p in decay["params"])
    assert "head.weight" not in plain_names
    assert decay["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0


def test_warmup_then_cosine():
    schedule = warmup_cosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert schedule(0) == pytest.approx(1 / 5)
    assert schedule(3) == pytest.approx(4 / 5)
    assert schedule(4) == pytest.approx(1.0)
    assert schedule(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert schedule(14) == pytest.approx(0.1)


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
    with pytest.raises(FileNotFoundError, match="pretrained weights.*model.pretrained: false"):
        create_vit("vit_tiny_patch16_224", pretrained=True, img_size=28, patch_size=4, in_chans=1)
