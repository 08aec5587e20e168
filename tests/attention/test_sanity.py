"""Cascading randomisation and the random-logit check: cascade order, restore, correlations."""

from __future__ import annotations

import pytest
import timm
import torch
from scipy.stats import spearmanr
from torch import nn

from lit_vit.attention import (
    AttentionRecorder,
    cascading_randomization,
    random_logit_targets,
    randomization_steps,
    rollout,
    spearman,
)


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, in_chans=1,
        embed_dim=32, depth=3, num_heads=2, num_classes=4, reg_tokens=2,
    ).eval()  # fmt: skip


def images() -> torch.Tensor:
    return torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def test_steps_go_from_the_head_down_and_cover_every_parameter_once():
    model = tiny_vit()
    steps = randomization_steps(model, AttentionRecorder(model).backend)
    assert [step.label for step in steps] == ["head", "block 2", "block 1", "block 0", "embeddings"]
    assert set(steps[-1].parameters) == {
        "cls_token", "reg_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"
    }  # fmt: skip
    assert set(steps[0].parameters) == {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    named = [name for step in steps for name in step.parameters]
    assert sorted(named) == sorted(name for name, _ in model.named_parameters())


@pytest.mark.parametrize("family", ["huggingface", "torchvision"])
def test_steps_of_other_families_cover_every_parameter_once(family):
    if family == "huggingface":
        transformers = pytest.importorskip("transformers")
        config = transformers.ViTConfig(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64, num_labels=4,
        )  # fmt: skip
        model = transformers.ViTForImageClassification(config)
    else:
        from torchvision.models import VisionTransformer

        model = VisionTransformer(32, 8, 2, 2, 32, 64, num_classes=4)
    steps = randomization_steps(model, AttentionRecorder(model).backend)
    assert [step.label for step in steps] == ["head", "block 1", "block 0", "embeddings"]
    named = [name for step in steps for name in step.parameters]
    assert sorted(named) == sorted(name for name, _ in model.named_parameters())
    assert any("pos" in name for name in steps[-1].parameters)
    assert any("token" in name for name in steps[-1].parameters)


def test_model_restored_bit_for_bit_also_when_an_explainer_raises():
    model = tiny_vit()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    steps = randomization_steps(model, AttentionRecorder(model).backend)
    recorder = AttentionRecorder(model)
    x = images()

    def explain():
        recording = recorder.record(x)
        return {"rollout": rollout(recording.attention, recording.layout, validate=False)}

    curve = cascading_randomization(model, steps, explain)
    assert curve.labels == ("trained", "head", "block 2", "block 1", "block 0", "embeddings")
    assert curve.correlations["rollout"][0] == 1.0 and len(curve.correlations["rollout"]) == 6
    calls = []

    def failing():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("explainer failed")
        return explain()

    with pytest.raises(RuntimeError, match="explainer failed"):
        cascading_randomization(model, steps, failing)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_a_constant_explainer_correlates_1_throughout():
    model = tiny_vit()
    steps = randomization_steps(model, AttentionRecorder(model).backend)
    curve = cascading_randomization(model, steps, lambda: {"constant": torch.ones(4, 4, 4)})
    torch.testing.assert_close(curve.correlations["constant"], torch.ones(6))
    assert curve.after_full_randomisation() == {"constant": 1.0}
    assert torch.equal(curve.trained["constant"], torch.ones(4, 4, 4)), "the trained maps kept"


def test_an_input_only_explainer_survives_randomisation():
    model = tiny_vit()
    steps = randomization_steps(model, AttentionRecorder(model).backend)
    brightness = images().view(4, 4, 8, 4, 8).mean(dim=(2, 4))  # knows nothing of the model
    curve = cascading_randomization(model, steps, lambda: {"input": brightness})
    torch.testing.assert_close(curve.correlations["input"], torch.ones(6))


def test_an_expensive_explainer_may_skip_the_steps_between_the_two_ends():
    model = tiny_vit()
    steps = randomization_steps(model, AttentionRecorder(model).backend)  # 5 steps
    brightness = images().view(4, 4, 8, 4, 8).mean(dim=(2, 4))
    calls = []

    def explain():
        calls.append(len(calls))
        ends = calls[-1] in (0, len(steps))
        return {"cheap": brightness, **({"costly": brightness} if ends else {})}

    curve = cascading_randomization(model, steps, explain)
    costly = curve.correlations["costly"]
    assert costly[0] == 1.0 and costly[-1] == 1.0 and costly[1:-1].isnan().all()
    torch.testing.assert_close(curve.correlations["cheap"], torch.ones(6))
    torch.testing.assert_close(curve.randomised["costly"], torch.ones(4))

    def forgetful():
        calls.append(len(calls))
        return {"cheap": brightness} if len(calls) > 1 else {"cheap": brightness, "x": brightness}

    calls.clear()
    with pytest.raises(ValueError, match=r"left out \['x'\] at the last step"):
        cascading_randomization(model, steps, forgetful)


def test_spearman_against_scipy_with_ties():
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, 4, (5, 3, 3), generator=generator).float()  # many ties
    second = torch.rand(5, 3, 3, generator=generator)
    got = spearman(first, second)
    for image in range(5):
        expected = spearmanr(first[image].flatten(), second[image].flatten()).statistic
        assert float(got[image]) == pytest.approx(expected, abs=1e-6)
    assert spearman(second, second).tolist() == pytest.approx([1.0] * 5)


def test_random_logit_targets_are_other_classes_and_seeded():
    predicted = torch.arange(20) % 4
    targets = random_logit_targets(predicted, 4, seed=3)
    assert not bool((targets == predicted).any()) and bool((targets < 4).all())
    assert torch.equal(targets, random_logit_targets(predicted, 4, seed=3))
    # A class-agnostic map is the same for any class: it passes by construction.
    maps = torch.rand(20, 3, 3)
    assert spearman(maps, maps).tolist() == pytest.approx([1.0] * 20)
