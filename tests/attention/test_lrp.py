"""CP-LRP against conservation and a brute-force forward written here, on every family."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from lit_vit.attention import cp_lrp, patch_relevance
from lit_vit.attention.backends import find_backend
from lit_vit.distance_bias import DistanceBiasAttention, set_prefix_tokens

SMALL = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2)


def timm_vit(**overrides) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=10, **{**SMALL, **overrides}
    ).eval()


def torchvision_vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=28, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    )  # fmt: skip
    with torch.no_grad():  # torchvision starts its head at zero
        model.heads.head.weight.normal_(0, 0.5)
    model.conv_proj = nn.Conv2d(1, 32, 4, 4)  # one channel, like the timm models here
    return model.eval()


def huggingface_vit(**config) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    settings = dict(
        image_size=28, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=10,
    )  # fmt: skip
    return transformers.ViTForImageClassification(
        transformers.ViTConfig(**{**settings, **config})
    ).eval()


def without_biases_and_positions(model: nn.Module) -> nn.Module:
    """Every bias, position embedding and prefix token set to zero."""
    words = ("bias", "pos_embed", "position_embeddings", "cls_token", "class_token")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(word in name for word in words) and "slope" not in name:
                parameter.zero_()
    return model


def images(batch: int = 3, seed: int = 1) -> Tensor:
    return torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def logit(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
    output = model(x)
    output = getattr(output, "logits", output)
    return output.gather(1, targets[:, None]).squeeze(1)


TARGETS = torch.tensor([1, 4, 7])


@pytest.mark.parametrize(
    "make",
    [
        lambda: timm_vit(class_token=False, global_pool="avg", pos_embed="none"),
        lambda: timm_vit(class_token=False, global_pool="avg", pos_embed="none", reg_tokens=0),
        torchvision_vit,
        huggingface_vit,
    ],
    ids=["timm", "timm-avg-pool", "torchvision", "huggingface"],
)
def test_relevance_is_conserved_without_biases_positions_or_prefix_tokens(make):
    model = without_biases_and_positions(make())
    x = images()
    relevance = cp_lrp(model, x, TARGETS)
    assert relevance.shape == (3, 28, 28) and relevance.dtype == torch.float32
    expected = logit(model, x, TARGETS).detach()
    torch.testing.assert_close(relevance.sum(dim=(1, 2)), expected, rtol=1e-5, atol=1e-6)
    # Plain gradient x input of the same model does not conserve: the rules are what does.
    x_grad = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(logit(model, x_grad, TARGETS).sum(), x_grad)
    assert not torch.allclose((x * gradient).sum(dim=(1, 2, 3)), expected, rtol=1e-3)


# -- brute force: each family's forward written out with the rules -----------------------


def layer_norm(norm: nn.LayerNorm, t: Tensor) -> Tensor:
    centred = t - t.mean(dim=-1, keepdim=True)
    std = (centred.pow(2).mean(dim=-1, keepdim=True) + norm.eps).sqrt()
    return centred / std.detach() * norm.weight + norm.bias


def gelu_identity(t: Tensor) -> Tensor:
    return t * (F.gelu(t) / t).detach()  # random inputs: no exact zeros


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | float = 0.0) -> Tensor:
    """``(B, H, N, d)`` each; softmax detached (constant in the backward)."""
    weights = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5 + bias).softmax(dim=-1).detach()
    return weights @ v


def heads(t: Tensor, count: int) -> Tensor:
    batch, tokens, width = t.shape
    return t.view(batch, tokens, count, width // count).transpose(1, 2)


def merge(t: Tensor) -> Tensor:
    batch, count, tokens, width = t.shape
    return t.transpose(1, 2).reshape(batch, tokens, count * width)


def timm_forward(model: nn.Module, x: Tensor) -> Tensor:
    tokens = model._pos_embed(model.patch_embed(x))
    for block in model.blocks:
        attn = block.attn
        h = layer_norm(block.norm1, tokens)
        q, k, v = (heads(t, attn.num_heads) for t in attn.qkv(h).chunk(3, dim=-1))
        bias = attn.bias(tokens.shape[1]) if isinstance(attn, DistanceBiasAttention) else 0.0
        tokens = tokens + attn.proj(merge(attention(q, k, v, bias)))
        h = layer_norm(block.norm2, tokens)
        tokens = tokens + block.mlp.fc2(gelu_identity(block.mlp.fc1(h)))
    tokens = layer_norm(model.norm, tokens)
    return model.head(tokens[:, 0])


def torchvision_forward(model: nn.Module, x: Tensor) -> Tensor:
    tokens = model._process_input(x)
    tokens = torch.cat([model.class_token.expand(len(x), -1, -1), tokens], dim=1)
    tokens = tokens + model.encoder.pos_embedding
    for layer in model.encoder.layers:
        mha = layer.self_attention
        h = layer_norm(layer.ln_1, tokens)
        qkv = F.linear(h, mha.in_proj_weight, mha.in_proj_bias)
        q, k, v = (heads(t, mha.num_heads) for t in qkv.chunk(3, dim=-1))
        tokens = tokens + mha.out_proj(merge(attention(q, k, v)))
        h = layer_norm(layer.ln_2, tokens)
        tokens = tokens + layer.mlp[3](gelu_identity(layer.mlp[0](h)))
    tokens = layer_norm(model.encoder.ln, tokens)
    return model.heads(tokens[:, 0])


def huggingface_forward(model: nn.Module, x: Tensor) -> Tensor:
    tokens = model.vit.embeddings(x)
    for layer in model.vit.layers:
        attn = layer.attention
        h = layer_norm(layer.layernorm_before, tokens)
        q, k, v = (
            heads(p(h), attn.num_attention_heads) for p in (attn.q_proj, attn.k_proj, attn.v_proj)
        )
        tokens = tokens + attn.o_proj(merge(attention(q, k, v)))
        h = layer_norm(layer.layernorm_after, tokens)
        tokens = tokens + layer.mlp.fc2(gelu_identity(layer.mlp.fc1(h)))
    tokens = layer_norm(model.vit.layernorm, tokens)
    return model.classifier(tokens[:, 0])


def brute_force(forward, model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
    x = x.clone().requires_grad_(True)
    logits = forward(model, x)
    (gradient,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), x)
    return (x * gradient).sum(dim=1).detach(), logits.detach()


def distance_bias_vit() -> nn.Module:
    model = timm_vit(attn_layer=DistanceBiasAttention)
    set_prefix_tokens(model)
    return model


@pytest.mark.parametrize(
    ("make", "forward"),
    [
        (timm_vit, timm_forward),
        (distance_bias_vit, timm_forward),
        (torchvision_vit, torchvision_forward),
        (huggingface_vit, huggingface_forward),
    ],
    ids=["timm", "timm-distance-bias", "torchvision", "huggingface"],
)
def test_relevance_equals_a_brute_force_forward_with_the_rules(make, forward):
    model = make()
    x = images()
    expected, logits = brute_force(forward, model, x, TARGETS)
    output = model(x)
    torch.testing.assert_close(logits, getattr(output, "logits", output).detach())  # the model
    torch.testing.assert_close(cp_lrp(model, x, TARGETS), expected, rtol=1e-4, atol=1e-6)


def hooks(model: nn.Module) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]


@pytest.mark.parametrize("make", [timm_vit, torchvision_vit, huggingface_vit])
def test_the_model_is_exactly_as_before_and_the_pass_is_its_own_forward(make):
    model = make().train()
    next(iter(model.children())).train(False)  # a mix of modes, each restored as it was
    modes = [m.training for m in model.modules()]
    fused = [getattr(m, "fused_attn", None) for m in model.modules()]
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    before = hooks(model)
    x = images()
    model.eval()
    reference = model(x)
    reference = getattr(reference, "logits", reference).detach()
    for module, mode in zip(model.modules(), modes, strict=True):
        module.training = mode
    seen = []
    handle = model.register_forward_hook(
        lambda _m, _i, out: seen.append(getattr(out, "logits", out).detach())
    )
    cp_lrp(model, x, TARGETS)
    handle.remove()
    torch.testing.assert_close(seen[0], reference, rtol=1e-5, atol=1e-6)
    assert [m.training for m in model.modules()] == modes
    assert [getattr(m, "fused_attn", None) for m in model.modules()] == fused
    assert getattr(getattr(model, "config", None), "_attn_implementation", None) == implementation
    assert hooks(model) == before
    after = model.eval()(x)
    torch.testing.assert_close(getattr(after, "logits", after), reference)


def test_the_model_is_restored_when_the_pass_raises():
    model = timm_vit()
    fused = [getattr(m, "fused_attn", None) for m in model.modules()]
    before = hooks(model)

    def fail(*_):
        raise RuntimeError("boom")

    handle = model.blocks[1].register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="boom"):
        cp_lrp(model, images(), TARGETS)
    handle.remove()
    assert hooks(model) == before
    assert [getattr(m, "fused_attn", None) for m in model.modules()] == fused
    assert model.blocks[0].attn.fused_attn  # fused attention left on in the model


@pytest.mark.parametrize(
    "overrides",
    [{}, {"reg_tokens": 4, "class_token": False, "global_pool": "avg"}, {"reg_tokens": 2}],
    ids=["class-token", "registers-only", "class-token-and-registers"],
)
def test_every_timm_layout_gets_a_map_and_classes_differ(overrides):
    model = timm_vit(**overrides)
    x = images()
    first = cp_lrp(model, x, TARGETS)
    second = cp_lrp(model, x, (TARGETS + 1) % 10)
    assert first.shape == second.shape == (3, 28, 28)
    assert not torch.allclose(first, second)
    patches = patch_relevance(first, (4, 4))
    assert patches.shape == (3, 7, 7)
    torch.testing.assert_close(patches.sum(dim=(1, 2)), first.sum(dim=(1, 2)))


def test_a_distillation_token_model_gets_a_map():
    torch.manual_seed(0)
    model = timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, num_classes=10, **SMALL
    ).eval()
    assert cp_lrp(model, images(), TARGETS).shape == (3, 28, 28)


def test_bad_targets_are_refused_with_the_value():
    model = timm_vit()
    with pytest.raises(ValueError, match=r"targets must be \(B,\) = \(3,\) class indices"):
        cp_lrp(model, images(), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"class indices in \[0, 10\), got \[1, 2, 12\]"):
        cp_lrp(model, images(), torch.tensor([1, 2, 12]))
    with pytest.raises(ValueError, match="non-empty \\(B, C, H, W\\) batch"):
        cp_lrp(model, torch.zeros(28, 28), TARGETS)


def test_backend_is_found_once_and_reused():
    model = timm_vit()
    backend = find_backend(model)
    torch.testing.assert_close(
        cp_lrp(model, images(), TARGETS, backend=backend), cp_lrp(model, images(), TARGETS)
    )
