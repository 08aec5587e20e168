"""Deletion / insertion AUC on hand-made cases."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lit_vit.attention.faithfulness import deletion_insertion_auc


class PatchModel(nn.Module):
    """Two-class "model" whose class-0 logit is ``scale`` times the mean of one patch.

    Records how it is called: batch sizes, inputs, and whether it was in training mode.
    """

    def __init__(self, rows: slice, cols: slice, scale: float = 4.0) -> None:
        super().__init__()
        self.rows, self.cols, self.scale = rows, cols, scale
        self.drop = nn.Dropout(0.5)  # a submodule whose mode must be restored
        self.batch_sizes: list[int] = []
        self.inputs: list[torch.Tensor] = []
        self.training_flags: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        self.inputs.append(x.clone())
        self.training_flags.append(self.training)
        m = x[:, :, self.rows, self.cols].mean(dim=(1, 2, 3))
        return torch.stack([self.scale * m, torch.zeros_like(m)], dim=-1)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def trapezoid(ys: list[float]) -> float:
    dx = 1.0 / (len(ys) - 1)
    return sum((a + b) / 2 * dx for a, b in zip(ys[:-1], ys[1:], strict=True))


def two_by_two_image() -> torch.Tensor:
    """(1, 1, 8, 8): patch 0 (top-left, 4x4) is 1.0, patch 3 is the minimum 0.0, others 0.5."""
    img = torch.full((1, 1, 8, 8), 0.5)
    img[..., :4, :4] = 1.0
    img[..., 4:, 4:] = 0.0
    return img


def test_hand_computed_trapezoid_best_and_worst_order() -> None:
    model = PatchModel(slice(0, 4), slice(0, 4), scale=4.0)
    images = two_by_two_image()
    best = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])  # patch 0 first
    worst = torch.tensor([[[0.0, 3.0], [2.0, 1.0]]])  # patch 0 last
    s = sigmoid(4.0)  # clean probability of class 0; without patch 0 it is sigmoid(0) = 0.5

    res = deletion_insertion_auc(model, images, best, (4, 4), steps=4)
    torch.testing.assert_close(res.fractions, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    torch.testing.assert_close(res.deletion_curve, torch.tensor([[s, 0.5, 0.5, 0.5, 0.5]]))
    torch.testing.assert_close(res.insertion_curve, torch.tensor([[0.5, s, s, s, s]]))
    del_best = 0.25 * ((s + 0.5) / 2 + 1.5)
    ins_best = 0.25 * ((0.5 + s) / 2 + 3 * s)
    assert res.deletion.item() == pytest.approx(del_best, abs=1e-6)
    assert res.insertion.item() == pytest.approx(ins_best, abs=1e-6)
    assert res.predicted.tolist() == [0]

    bad = deletion_insertion_auc(model, images, worst, 4, steps=4)
    assert bad.deletion.item() == pytest.approx(trapezoid([s, s, s, s, 0.5]), abs=1e-6)
    assert bad.insertion.item() == pytest.approx(trapezoid([0.5, 0.5, 0.5, 0.5, s]), abs=1e-6)
    # The saliency that ranks the only evidence first reaches the bounds.
    assert res.deletion < bad.deletion and res.insertion > bad.insertion
    for r in (res, bad):
        assert del_best - 1e-6 <= r.random_deletion.item() <= bad.deletion.item() + 1e-6
        assert bad.insertion.item() - 1e-6 <= r.random_insertion.item() <= ins_best + 1e-6


def test_curve_end_points_are_clean_and_all_baseline_images() -> None:
    torch.manual_seed(0)
    model = PatchModel(slice(0, 4), slice(0, 4), scale=3.0)
    images = torch.randn(3, 2, 8, 8)
    saliency = torch.rand(3, 2, 2)
    res = deletion_insertion_auc(model, images, saliency, 4, steps=5)
    clean = torch.softmax(model(images), dim=-1).gather(1, res.predicted[:, None]).squeeze(1)
    for curve in (res.deletion_curve, res.random_deletion_curve):
        torch.testing.assert_close(curve[:, 0], clean)
    for curve in (res.insertion_curve, res.random_insertion_curve):
        torch.testing.assert_close(curve[:, -1], clean)
    # Deletion at fraction 1 and insertion at fraction 0 are the same all-baseline image.
    torch.testing.assert_close(res.deletion_curve[:, -1], res.insertion_curve[:, 0])
    torch.testing.assert_close(res.random_deletion_curve[:, -1], res.deletion_curve[:, -1])
    torch.testing.assert_close(res.random_insertion_curve[:, 0], res.insertion_curve[:, 0])


def test_default_baseline_is_image_minimum_and_float_overrides() -> None:
    model = PatchModel(slice(0, 4), slice(0, 4), scale=2.0)
    images = torch.stack([two_by_two_image()[0] - 0.3, two_by_two_image()[0] * 2 + 1])
    saliency = torch.rand(2, 2, 2)
    res = deletion_insertion_auc(model, images, saliency, 4, steps=2)
    torch.testing.assert_close(res.baseline, torch.tensor([-0.3, 1.0]))
    # All-baseline image: logit 2 * baseline against 0, class 0 predicted on both clean images.
    expected = torch.sigmoid(2.0 * torch.tensor([-0.3, 1.0]))
    torch.testing.assert_close(res.deletion_curve[:, -1], expected)

    res = deletion_insertion_auc(model, images, saliency, 4, steps=2, baseline=0.25)
    torch.testing.assert_close(res.baseline, torch.tensor([0.25, 0.25]))
    torch.testing.assert_close(res.insertion_curve[:, 0], torch.sigmoid(torch.tensor([0.5, 0.5])))


def test_non_square_patches_follow_row_major_grid_order() -> None:
    # Image (1, 4, 12), patch (2, 3): grid 2 x 4. The evidence is patch (1, 2): rows 2:4, cols 6:9.
    model = PatchModel(slice(2, 4), slice(6, 9), scale=5.0)
    images = torch.zeros(1, 1, 4, 12)
    images[..., 2:4, 6:9] = 1.0
    saliency = torch.zeros(1, 2, 4)
    saliency[0, 1, 2] = 1.0  # ties among the others are broken by patch index
    layout = SimpleNamespace(patch_size=(2, 3))
    res = deletion_insertion_auc(model, images, saliency, layout, steps=8)
    s = sigmoid(5.0)
    torch.testing.assert_close(res.deletion_curve, torch.tensor([[s] + [0.5] * 8]))
    torch.testing.assert_close(res.insertion_curve, torch.tensor([[0.5] + [s] * 8]))


def test_random_order_uses_the_same_code_and_is_seeded() -> None:
    torch.manual_seed(1)
    model = PatchModel(slice(0, 4), slice(0, 4), scale=4.0)
    images = two_by_two_image().repeat(6, 1, 1, 1)
    saliency = torch.tensor([[4.0, 3.0], [2.0, 1.0]]).expand(6, 2, 2)
    res = deletion_insertion_auc(model, images, saliency, 4, steps=4, seed=3)
    s = sigmoid(4.0)
    # Position of patch 0 in each random order, read off the random deletion curve.
    position = (res.random_deletion_curve > (s + 0.5) / 2).sum(dim=1) - 1
    assert len(set(position.tolist())) > 1  # the random orders differ between images
    # Re-running with a saliency that puts patch 0 at that position gives the same AUCs
    # (only the position of patch 0 matters to this model).
    replay = torch.tensor([0.0, 3.0, 2.0, 1.0]).repeat(6, 1)
    replay[:, 0] = 3.5 - position.float()
    again = deletion_insertion_auc(model, images, replay.view(6, 2, 2), 4, steps=4, seed=3)
    torch.testing.assert_close(again.deletion, res.random_deletion)
    torch.testing.assert_close(again.insertion, res.random_insertion)
    # Same seed, same reference; another seed, another one.
    same = deletion_insertion_auc(model, images, saliency, 4, steps=4, seed=3)
    torch.testing.assert_close(same.random_deletion, res.random_deletion)
    other = deletion_insertion_auc(model, images, saliency, 4, steps=4, seed=4)
    assert not torch.equal(other.random_deletion_curve, res.random_deletion_curve)


def test_forward_passes_are_chunked_and_mode_restored() -> None:
    model = PatchModel(slice(0, 4), slice(0, 4))
    model.train()
    model.drop.eval()  # mixed modes: each module's own flag must come back
    images = torch.rand(3, 1, 8, 8)
    saliency = torch.rand(3, 2, 2)
    res = deletion_insertion_auc(model, images, saliency, 4, steps=4, max_batch=7)
    run = distinct_inputs(model)
    # 4 curves x 3 images x 5 steps, of which the 4 clean and 4 all-baseline ends of each
    # image's curves are 2 inputs: at most 60 - 3 x 6 run.
    assert run <= 4 * 3 * 5 - 3 * 6
    assert res.forward_passes == math.ceil(run / 7) == len(model.batch_sizes)
    assert max(model.batch_sizes) <= 7
    assert not any(model.training_flags)
    assert model.training and not model.drop.training

    model.batch_sizes.clear()
    one = deletion_insertion_auc(model, images, saliency, 4, steps=4, max_batch=512)
    assert one.forward_passes == 1 == len(model.batch_sizes)
    for name in ("deletion", "insertion", "random_deletion", "random_insertion"):
        torch.testing.assert_close(getattr(one, name), getattr(res, name))


def distinct_inputs(model: PatchModel) -> int:
    """How many inputs ``model`` ran; fails if one ran twice."""
    inputs = torch.cat(model.inputs).flatten(1)
    assert len(torch.unique(inputs, dim=0)) == len(inputs), "an input ran twice"
    return len(inputs)


def test_several_maps_share_the_random_order_and_match_single_calls() -> None:
    """A mapping of maps gives, per map, the numbers of its own call, in fewer passes."""
    images = torch.rand(3, 1, 8, 8)
    maps = {"a": torch.rand(3, 2, 2), "b": torch.rand(3, 2, 2), "c": torch.rand(3, 2, 2)}
    model = PatchModel(slice(0, 4), slice(4, 8))
    together = deletion_insertion_auc(model, images, maps, 4, steps=4, max_batch=7, seed=3)
    run = distinct_inputs(model)
    assert list(together) == ["a", "b", "c"]
    assert run <= 2 * (3 + 1) * 3 * 5 - 3 * (2 * 8 - 2)  # each image's 16 curve ends: 2 inputs
    assert len(model.batch_sizes) == math.ceil(run / 7)
    for name, saliency in maps.items():
        alone = deletion_insertion_auc(model, images, saliency, 4, steps=4, seed=3)
        result = together[name]
        assert result.forward_passes == math.ceil(run / 7)
        for field in ("deletion", "insertion", "random_deletion", "random_insertion"):
            torch.testing.assert_close(getattr(result, field), getattr(alone, field))
        torch.testing.assert_close(result.deletion_curve, alone.deletion_curve)
        assert torch.equal(result.predicted, alone.predicted)
    torch.testing.assert_close(together["a"].random_deletion, together["c"].random_deletion)


def test_mapping_errors_name_the_map() -> None:
    model = PatchModel(slice(0, 4), slice(0, 4))
    images = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="empty mapping"):
        deletion_insertion_auc(model, images, {}, 4)
    bad = {"rollout": torch.rand(2, 2, 2), "cls": torch.rand(2, 3, 3)}
    with pytest.raises(ValueError, match=r"cls must be \(B, gh, gw\) = \(2, 2, 2\)"):
        deletion_insertion_auc(model, images, bad, 4)
    bad = {"rollout": torch.full((2, 2, 2), float("inf"))}
    with pytest.raises(ValueError, match="rollout has NaN or inf"):
        deletion_insertion_auc(model, images, bad, 4)


def test_tiny_vit_shapes_ranges_and_inputs_untouched(make_vit) -> None:
    vit = make_vit()
    images = torch.randn(4, 1, 28, 28)
    saliency = torch.rand(4, 7, 7)
    images_before, saliency_before = images.clone(), saliency.clone()
    res = deletion_insertion_auc(vit, images, saliency, (4, 4), steps=6, max_batch=64)
    assert res.forward_passes == math.ceil((4 * 4 * 7 - 4 * 6) / 64)  # curve ends: 2 per image
    for name in ("deletion", "insertion", "random_deletion", "random_insertion"):
        value = getattr(res, name)
        assert value.shape == (4,) and value.dtype == torch.float32
        assert ((value >= 0) & (value <= 1)).all()
    assert res.deletion_curve.shape == res.insertion_curve.shape == (4, 7)
    assert torch.equal(images, images_before) and torch.equal(saliency, saliency_before)
    assert vit.training  # timm models are created in training mode


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"saliency": torch.rand(2, 3, 2)}, "saliency must be"),
        ({"saliency": torch.rand(3, 2, 2)}, "saliency must be"),
        ({"images": torch.rand(0, 1, 8, 8), "saliency": torch.rand(0, 2, 2)}, "empty"),
        ({"images": torch.rand(2, 1, 9, 8)}, "not a multiple of the patch size"),
        ({"images": torch.rand(1, 8, 8)}, r"\(B, C, H, W\)"),
        ({"saliency": torch.tensor([float("nan")]).expand(2, 2, 2)}, "NaN"),
        ({"steps": 0}, "steps"),
        ({"max_batch": 0}, "max_batch"),
        ({"patch_size": "x"}, "patch_size"),
    ],
)
def test_errors(kwargs: dict, match: str) -> None:
    args = {
        "images": torch.rand(2, 1, 8, 8),
        "saliency": torch.rand(2, 2, 2),
        "patch_size": 4,
    }
    args.update(kwargs)
    model = PatchModel(slice(0, 4), slice(0, 4))
    with pytest.raises(ValueError, match=match):
        deletion_insertion_auc(model, args.pop("images"), args.pop("saliency"), **args)


def test_tuple_output_is_accepted_and_bad_output_rejected() -> None:
    inner = PatchModel(slice(0, 4), slice(0, 4))
    images, saliency = two_by_two_image(), torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    plain = deletion_insertion_auc(inner, images, saliency, 4, steps=4)

    class TupleModel(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return inner(x), x

    res = deletion_insertion_auc(TupleModel(), images, saliency, 4, steps=4)
    torch.testing.assert_close(res.deletion_curve, plain.deletion_curve)

    class FlatModel(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten()

    with pytest.raises(ValueError, match=r"\(n, num_classes\) logits"):
        deletion_insertion_auc(FlatModel(), images, saliency, 4, steps=4)


def test_blurred_baseline_curves_follow_the_definition():
    from torchvision.transforms.v2.functional import gaussian_blur

    class TopLeft(torch.nn.Module):
        def forward(self, x):
            score = 10 * x[:, 0, :4, :4].mean(dim=(1, 2))
            return torch.stack([torch.zeros_like(score), score], dim=1)

    model = TopLeft()
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, :4, :4] = 1.0
    saliency = torch.arange(16.0).flip(0).view(1, 4, 4)  # patch 0 most salient
    result = deletion_insertion_auc(model, image, saliency, 2, steps=4, baseline="blur")
    blurred = gaussian_blur(image, kernel_size=[13, 13], sigma=[2.0, 2.0])  # sigma = patch size
    expected = []
    for count in (0, 4, 8, 12, 16):
        keep = torch.ones(16, dtype=torch.bool)
        keep[:count] = False
        mask = keep.view(4, 4).repeat_interleave(2, 0).repeat_interleave(2, 1)
        copy = torch.where(mask, image, blurred)
        expected.append(float(model(copy).softmax(dim=1)[0, 1]))
    torch.testing.assert_close(result.deletion_curve[0], torch.tensor(expected))
    assert torch.isnan(result.baseline).all()
    with pytest.raises(ValueError, match="baseline must be None, a number or 'blur'"):
        deletion_insertion_auc(model, image, saliency, 2, baseline="gaussian")


def test_deletion_only_halves_the_passes_and_keeps_the_deletion_scores():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    images = torch.randn(4, 1, 8, 8)
    maps = {"a": torch.rand(4, 4, 4), "b": torch.rand(4, 4, 4)}
    both = deletion_insertion_auc(model, images, maps, 2, steps=4, baseline="blur", max_batch=1)
    alone = deletion_insertion_auc(
        model, images, maps, 2, steps=4, baseline="blur", insertion=False, max_batch=1
    )
    for name in maps:
        torch.testing.assert_close(alone[name].deletion, both[name].deletion)
        torch.testing.assert_close(alone[name].deletion_curve, both[name].deletion_curve)
        assert torch.isnan(alone[name].insertion).all()
        assert torch.isnan(alone[name].insertion_curve).all()
    torch.testing.assert_close(alone["a"].random_deletion, both["a"].random_deletion)
    assert alone["a"].forward_passes < both["a"].forward_passes
