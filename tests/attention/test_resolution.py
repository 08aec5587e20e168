"""Resolution sweep of a tiny ViT trained (here: created) at 28 px."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_vit.attention.capture import AttentionRecorder
from lit_vit.attention.metrics import (
    attention_entropy,
    coverage,
    focus_score,
    mean_attention_distance,
)
from lit_vit.attention.resolution import resize_images, resolution_sweep
from lit_vit.attention.rollout import rollout


class Wrapper(nn.Module):
    """A LightningModule-like wrapper: the ViT is a submodule, forward adds a step."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2.0 - 1.0)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(6, 1, 28, 28, generator=gen), torch.randint(0, 10, (6,), generator=gen)


def test_sweep_shapes_and_original_model_untouched(data, make_vit) -> None:
    images, labels = data
    model = make_vit()
    model.train()
    pos_embed = model.pos_embed.detach().clone()
    images_before = images.clone()
    sizes = [20, 28, 36, (24, 32)]
    results = resolution_sweep(model, images, labels, sizes, batch_size=4)

    assert [r.image_size for r in results] == [(20, 20), (28, 28), (36, 36), (24, 32)]
    assert [r.grid_size for r in results] == [(5, 5), (7, 7), (9, 9), (6, 8)]
    for r in results:
        gh, gw = r.grid_size
        assert r.relative_distance.shape == r.entropy.shape == r.effective_area.shape == (2,)
        assert r.focus.shape == r.coverage.shape == (4,)  # probe batch: min(6, batch_size)
        assert r.rollout_maps.shape == (4, gh, gw)
        torch.testing.assert_close(r.rollout_maps.sum(dim=(1, 2)), torch.ones(4))
        assert 0.0 <= r.accuracy <= 1.0 and r.seconds_per_image > 0
        assert ((r.entropy > 0) & (r.entropy <= 1 + 1e-6)).all()

    # The caller's model and images are untouched.
    assert torch.equal(model.pos_embed, pos_embed)
    assert tuple(model.patch_embed.img_size) == (28, 28)
    assert tuple(model.patch_embed.grid_size) == (7, 7)
    assert model.training
    assert torch.equal(images, images_before)


def test_training_size_equals_direct_computation(data, make_vit) -> None:
    images, labels = data
    model = make_vit()
    (r,) = resolution_sweep(model, images, labels, [28], batch_size=4)

    model.eval()
    with torch.no_grad():
        accuracy = (model(images).argmax(dim=-1) == labels).float().mean().item()
    assert r.accuracy == pytest.approx(accuracy)
    rec = AttentionRecorder(model).record(images[:4])
    maps = rollout(rec.attention, rec.layout)
    torch.testing.assert_close(r.rollout_maps, maps)
    torch.testing.assert_close(
        r.relative_distance, mean_attention_distance(rec.attention, rec.layout).relative.mean(-1)
    )
    entropy = attention_entropy(rec.attention, rec.layout)
    torch.testing.assert_close(r.entropy, entropy.normalized.mean(-1))
    torch.testing.assert_close(r.effective_area, entropy.effective_area.mean(-1))
    torch.testing.assert_close(r.focus, focus_score(maps, k=0.1))
    torch.testing.assert_close(r.coverage, coverage(maps, m=0.5))


def test_other_size_matches_timm_dynamic_img_size(data, make_vit) -> None:
    # timm's dynamic_img_size resamples the same pos_embed per call with the same
    # function: the set_input_size copy must give the same predictions and attention.
    images, _ = data
    model = make_vit()
    dynamic = make_vit(dynamic_img_size=True)
    dynamic.load_state_dict(model.state_dict())
    dynamic.eval()
    for size in (20, 36):
        x = F.interpolate(images, size=(size, size), mode="bilinear", antialias=size < 28)
        with torch.no_grad():
            predicted = dynamic(x).argmax(dim=-1)
        (r,) = resolution_sweep(model, images, predicted, [size], batch_size=4)
        assert r.accuracy == 1.0
        rec = AttentionRecorder(dynamic).record(x[:4])
        torch.testing.assert_close(r.rollout_maps, rollout(rec.attention, rec.layout))


def test_wrapper_model_and_vit_name(data, make_vit) -> None:
    images, labels = data
    model = Wrapper(make_vit())
    pos_embed = model.net.pos_embed.detach().clone()
    results = resolution_sweep(model, images, labels, [(28, 20), 32], vit_name="net")
    assert [r.grid_size for r in results] == [(7, 5), (8, 8)]
    assert torch.equal(model.net.pos_embed, pos_embed)
    assert tuple(model.net.patch_embed.img_size) == (28, 28)


def test_resize_antialiases_only_when_shrinking() -> None:
    x = torch.rand(2, 1, 28, 28)
    assert resize_images(x, (28, 28)) is x
    small = resize_images(x, (20, 20))
    torch.testing.assert_close(
        small, F.interpolate(x, size=(20, 20), mode="bilinear", antialias=True)
    )
    assert not torch.allclose(small, F.interpolate(x, size=(20, 20), mode="bilinear"))
    big = resize_images(x, (36, 36))
    torch.testing.assert_close(big, F.interpolate(x, size=(36, 36), mode="bilinear"))


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        (
            [28, 30],
            r"size 30 is not a multiple of the patch size 4x4; nearest valid sizes: 28 or 32",
        ),
        ([(26, 32)], r"\(26, 32\).*nearest valid sizes: \(24, 32\) or \(28, 32\)"),
        ([2], r"nearest valid sizes: 4"),
        ([0], "positive int"),
        ([], "sizes is empty"),
    ],
)
def test_bad_sizes(data, sizes, match, make_vit) -> None:
    images, labels = data
    with pytest.raises(ValueError, match=match):
        resolution_sweep(make_vit(), images, labels, sizes)


def test_bad_inputs(data, make_vit) -> None:
    images, labels = data
    with pytest.raises(ValueError, match="labels"):
        resolution_sweep(make_vit(), images, labels[:3], [28])
    with pytest.raises(ValueError, match="non-empty"):
        resolution_sweep(make_vit(), images[:0], labels[:0], [28])
    with pytest.raises(ValueError, match=r"^batch_size=0 must be at least 1\.$"):
        resolution_sweep(make_vit(), images, labels, [28], batch_size=0)
    with pytest.raises(ValueError, match=r"^timing_repeats=-1 must be at least 1\.$"):
        resolution_sweep(make_vit(), images, labels, [28], timing_repeats=-1)
