"""Capture on every ViT family: Hugging Face transformers and torchvision beside timm.

Tiny models built from configs (no weights are downloaded). Each family's
captured attention is compared with the family's own (Hugging Face
``output_attentions`` under eager attention; torchvision's
``need_weights=True`` weights), and everything changed for the probe is
checked to be restored.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from torchvision.models import VisionTransformer

from lit_vit.attention import (
    AttentionRecorder,
    block_modules,
    find_vit,
    gradient_rollout,
    logit_lens,
    resize_images,
    resolution_sweep,
    rollout,
)
from lit_vit.attention.backends import PatternBackend, find_backend, model_logits

transformers = pytest.importorskip("transformers")

SIZE, PATCH, WIDTH, HEADS, LAYERS, CLASSES = 32, 8, 32, 2, 2, 4


def hf_config(kind=transformers.ViTConfig, **kwargs):
    return kind(
        image_size=SIZE,
        patch_size=PATCH,
        num_channels=3,
        hidden_size=WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=2 * WIDTH,
        num_labels=CLASSES,
        **kwargs,
    )


def hf_vit():
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(hf_config()).eval()


def torchvision_vit():
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=SIZE,
        patch_size=PATCH,
        num_layers=LAYERS,
        num_heads=HEADS,
        hidden_dim=WIDTH,
        mlp_dim=2 * WIDTH,
        num_classes=CLASSES,
    )
    nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision starts it at zero
    return model.eval()


def images(count: int = 3) -> torch.Tensor:
    return torch.randn(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_hugging_face_attention_equals_its_own_eager_attentions():
    model = hf_vit()
    assert model.config._attn_implementation == "sdpa"
    x = images()
    with torch.no_grad():
        before = model(x).logits
    recording = AttentionRecorder(model).record(x, grad_targets=[None])
    assert recording.attention.shape == (LAYERS, 3, HEADS, 17, 17)
    assert recording.layout.num_prefix_tokens == 1 and recording.layout.has_class_token
    torch.testing.assert_close(recording.logits, before)
    assert model.config._attn_implementation == "sdpa", "attention implementation restored"
    model.set_attn_implementation("eager")
    with torch.no_grad():
        own = model(x, output_attentions=True).attentions
    torch.testing.assert_close(recording.attention, torch.stack(own), atol=1e-6, rtol=0)
    gradients = recording.attention_grads[0]
    assert gradients.abs().sum() > 0, "gradients flow through the model's own graph"
    assert gradient_rollout(recording.attention, gradients, recording.layout).shape == (3, 4, 4)


def test_hugging_face_distillation_token_and_registers_are_prefix_tokens():
    torch.manual_seed(0)
    deit = transformers.DeiTForImageClassificationWithTeacher(hf_config(transformers.DeiTConfig))
    layout = AttentionRecorder(deit).record(images()).layout
    assert (layout.num_prefix_tokens, layout.has_class_token) == (2, True)
    config = hf_config(transformers.Dinov2WithRegistersConfig, num_register_tokens=4)
    dinov2 = transformers.Dinov2WithRegistersForImageClassification(config)
    recording = AttentionRecorder(dinov2).record(images())
    assert recording.layout.num_prefix_tokens == 5 and recording.attention.shape[-1] == 21
    backbone = transformers.Dinov2Model(hf_config(transformers.Dinov2Config))
    recording = AttentionRecorder(backbone).record(images())
    assert recording.logits is None and recording.attention.shape == (LAYERS, 3, HEADS, 17, 17)


def test_torchvision_attention_equals_its_need_weights_and_restores_forward():
    model = torchvision_vit()
    x = images()
    with torch.no_grad():
        before = model(x)
    inputs = []
    hooks = [
        layer.ln_1.register_forward_hook(lambda _m, _i, out: inputs.append(out))
        for layer in model.encoder.layers
    ]
    recording = AttentionRecorder(model).record(x, grad_targets=[None])
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(recording.logits, before, atol=1e-5, rtol=1e-5)
    for layer, (block, hidden) in enumerate(zip(model.encoder.layers, inputs, strict=True)):
        attention = block.self_attention
        assert "forward" not in vars(attention), "the module's own forward is back"
        with torch.no_grad():
            output, weights = attention(
                hidden, hidden, hidden, need_weights=True, average_attn_weights=False
            )
        torch.testing.assert_close(recording.attention[layer], weights, atol=1e-6, rtol=0)
        # attn @ v of the captured maps reproduces the block's attention output
        v = torch.nn.functional.linear(hidden, attention.in_proj_weight, attention.in_proj_bias)
        v = v[..., 2 * WIDTH :].view(3, 17, HEADS, WIDTH // HEADS).transpose(1, 2)
        mixed = (recording.attention[layer] @ v).transpose(1, 2).reshape(3, 17, WIDTH)
        torch.testing.assert_close(attention.out_proj(mixed), output, atol=1e-5, rtol=1e-5)
    assert recording.attention_grads[0].abs().sum() > 0
    assert rollout(recording.attention, recording.layout, validate=False).shape == (3, 4, 4)


@pytest.mark.parametrize("family", ["huggingface", "torchvision"])
def test_reduced_capture_equals_the_full_one_on_each_family(family):
    # The gradient products are made by hooks on each family's own attention tensor.
    model = hf_vit() if family == "huggingface" else torchvision_vit()
    recorder = AttentionRecorder(model)
    full = recorder.record(images(), grad_targets=[None])
    reduced = recorder.record(images(), grad_targets=[None], full=False).reduced
    assert reduced.gradient_products[0].abs().sum() > 0
    torch.testing.assert_close(
        reduced.gradient_rollout(),
        gradient_rollout(full.attention, full.attention_grads[0], full.layout),
    )
    torch.testing.assert_close(reduced.rollout(), rollout(full.attention, full.layout))


def test_modes_are_restored_whatever_the_family():
    for model in (hf_vit(), torchvision_vit()):
        model.train()
        AttentionRecorder(model).record(images())
        assert all(module.training for module in model.modules())


def test_windowed_models_are_refused_with_the_reason():
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        img_size=56,
        embed_dim=24,
        depths=(1, 1),
        num_heads=(1, 2),
        num_classes=CLASSES,
    )
    with pytest.raises(ValueError, match="windowed attention .*no global token grid"):
        AttentionRecorder(swin)
    config = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1], num_heads=[1], window_size=4
    )
    with pytest.raises(ValueError, match="windowed attention"):
        AttentionRecorder(transformers.SwinForImageClassification(config))


def test_unknown_kind_of_hugging_face_attention_names_what_was_found():
    model = hf_vit()
    for attention in [m for m in model.modules() if type(m).__name__ == "ViTAttention"]:
        del attention.q_proj  # an attention module of another structure
        attention.query = nn.Linear(WIDTH, WIDTH)
    with pytest.raises(ValueError, match=r"found a huggingface ViT .*ViTAttention.*transformers"):
        AttentionRecorder(model)


def torchvision_at(model: VisionTransformer, size: int) -> VisionTransformer:
    """torchvision's own way to another size: a new model, the state's embedding resampled."""
    from torchvision.models.vision_transformer import interpolate_embeddings

    resized = VisionTransformer(size, PATCH, LAYERS, HEADS, WIDTH, 2 * WIDTH, num_classes=CLASSES)
    resized.load_state_dict(interpolate_embeddings(size, PATCH, model.state_dict()))
    return resized.eval()


@pytest.mark.parametrize("family", ["huggingface", "torchvision"])
def test_resolution_sweep_resizes_each_family_its_own_way(family):
    model = hf_vit() if family == "huggingface" else torchvision_vit()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    x, labels = images(4), torch.arange(4) % CLASSES
    bigger = resize_images(x, 48)
    with torch.no_grad():
        if family == "huggingface":
            expected = model(bigger, interpolate_pos_encoding=True).logits
        else:
            expected = torchvision_at(model, 48)(bigger)
        resized = find_backend(model).resized_copy(model, (48, 48)).eval()
        torch.testing.assert_close(model_logits(resized(bigger)), expected)
    results = resolution_sweep(model, x, labels, [SIZE, 48], batch_size=4)
    assert [r.grid_size for r in results] == [(4, 4), (6, 6)]
    assert results[1].accuracy == (expected.argmax(-1) == labels).float().mean().item()
    assert results[1].relative_distance.shape == (LAYERS,)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), f"{name}: the caller's model is not modified"
    if family == "torchvision":
        with pytest.raises(ValueError, match="square images only, not 32x48"):
            resolution_sweep(model, x, labels, [(32, 48)])


def timm_to_hugging_face(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm ViT's weights under Hugging Face ViT's names (its q/k/v split out of qkv)."""
    renamed = {
        "cls_token": "vit.embeddings.cls_token",
        "pos_embed": "vit.embeddings.position_embeddings",
        "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
        "norm.weight": "vit.layernorm.weight",
        "norm.bias": "vit.layernorm.bias",
        "head.weight": "classifier.weight",
        "head.bias": "classifier.bias",
    }
    block_parts = {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.o_proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    converted = {}
    for name, tensor in state.items():
        if name in renamed:
            converted[renamed[name]] = tensor
            continue
        _, layer, part = name.split(".", 2)
        part, kind = part.rsplit(".", 1)  # e.g. "attn.qkv", "weight"
        prefix = f"vit.layers.{layer}"
        if part == "attn.qkv":
            for projection, chunk in zip("qkv", tensor.chunk(3), strict=True):
                converted[f"{prefix}.attention.{projection}_proj.{kind}"] = chunk
        else:
            converted[f"{prefix}.{block_parts[part]}.{kind}"] = tensor
    return converted


def test_timm_and_hugging_face_on_shared_weights_give_the_same_attention_and_logits():
    torch.manual_seed(0)
    timm_vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=SIZE, patch_size=PATCH,
        embed_dim=WIDTH, depth=LAYERS, num_heads=HEADS, mlp_ratio=2.0, num_classes=CLASSES,
    ).eval()  # fmt: skip
    hf = transformers.ViTForImageClassification(hf_config(layer_norm_eps=1e-6)).eval()
    hf.load_state_dict(timm_to_hugging_face(timm_vit.state_dict()))
    x = images()
    from_timm = AttentionRecorder(timm_vit).record(x)
    from_hf = AttentionRecorder(hf).record(x)
    torch.testing.assert_close(from_hf.attention, from_timm.attention, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_hf.logits, from_timm.logits, atol=1e-5, rtol=0)
    assert from_hf.layout == from_timm.layout


def timm_vit(**overrides):
    torch.manual_seed(0)
    shape = dict(img_size=SIZE, patch_size=PATCH, depth=LAYERS, embed_dim=WIDTH)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_heads=HEADS, num_classes=CLASSES,
        **shape, **overrides,
    ).eval()  # fmt: skip


@pytest.mark.parametrize("family", ["timm", "timm avg pool", "huggingface", "torchvision"])
def test_the_logit_lens_at_the_last_layer_is_the_models_output(family):
    model = {
        "timm": timm_vit,
        "timm avg pool": lambda: timm_vit(global_pool="avg", class_token=False),
        "huggingface": hf_vit,
        "torchvision": torchvision_vit,
    }[family]()
    recorder = AttentionRecorder(model)
    recording = recorder.record(images(5), full=False, hidden_states=True)
    assert recording.hidden_states.shape == (LAYERS, 5, recording.layout.num_tokens, WIDTH)
    assert len(block_modules(model, recorder.backend)) == LAYERS
    readout = recorder.backend.readout()
    torch.testing.assert_close(readout.logits(recording.hidden_states[-1]), recording.logits)
    labels = recording.logits.argmax(dim=-1)
    lens = logit_lens(recording.hidden_states, readout.logits, labels)
    assert float(lens.accuracy[-1]) == 1.0, "the model's own predictions as labels"
    expected = recording.logits.softmax(-1).max(-1).values.mean()
    assert float(lens.true_probability[-1]) == pytest.approx(float(expected), rel=1e-5)
    assert lens.first_readable_layer(1.0) in (0, 1)


def test_one_finder_finds_every_family_and_looks_through_torch_compile():
    """``find_vit`` and ``find_backend`` are one finder: the ViT of any family, by name when
    the model holds several, the eager module behind a compiled one."""
    hf, tv = hf_vit(), torchvision_vit()
    assert find_vit(hf) == ("", hf)
    assert find_vit(nn.ModuleDict({"net": tv})) == ("net", tv)
    both = nn.ModuleDict({"teacher": hf, "student": torch.compile(tv)})
    with pytest.raises(ValueError, match=r"several ViTs found: \['teacher', 'student._orig_mod'\]"):
        find_vit(both)
    assert find_vit(both, name="student") == ("student._orig_mod", tv)
    assert (
        find_backend(both, "student").module_names[0]
        == "student._orig_mod.encoder.layers.encoder_layer_0.self_attention"
    )


@pytest.mark.parametrize("family", ["huggingface", "torchvision"])
def test_a_module_pattern_keeps_everything_else_of_the_family_found(family):
    """The pattern backend records the modules the user names (read as timm's are) and keeps
    the family's layout, input size, square inputs and readout."""
    model = hf_vit() if family == "huggingface" else torchvision_vit()
    found = find_backend(model)
    recorder = AttentionRecorder(model, module_pattern=found.module_names[1].replace(".", r"\."))
    backend = recorder.backend
    assert isinstance(backend, PatternBackend) and backend.family == family
    assert backend.module_names == found.module_names[1:2]
    assert backend.square_inputs == (family == "torchvision")
    assert backend.layout((SIZE, SIZE)) == found.layout((SIZE, SIZE))
    assert backend.input_size() == found.input_size()
    tokens = torch.randn(2, found.layout((SIZE, SIZE)).num_tokens, WIDTH)
    torch.testing.assert_close(backend.readout().logits(tokens), found.readout().logits(tokens))
