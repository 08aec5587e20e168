"""Layout and attention capture on tiny timm ViTs."""

from __future__ import annotations

import pytest
import torch
from timm.layers import Attention
from torch import nn

from lit_vit.attention import AttentionRecorder, TokenLayout, find_vit

# ---------------------------------------------------------------------------------------
# helpers


class Wrapper(nn.Module):
    """A model inside another module, like a LightningModule holding ``self.net``."""

    def __init__(self, net: nn.Module, extra: bool = False, fail: bool = False) -> None:
        super().__init__()
        self.net = net
        self.head_norm = nn.LayerNorm(4)  # unrelated submodule
        self.extra, self.fail = extra, fail

    def forward(self, x: torch.Tensor):
        out = self.net(x)
        if self.fail:
            raise RuntimeError("boom after the forward")
        return (out, out.detach() * 0) if self.extra else out


def attention_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, Attention)]


def hooks_left(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def fused_outputs(model: nn.Module, images: torch.Tensor):
    """Inputs and outputs of every attention module in a plain (fused) forward."""
    seen = []
    handles = [
        m.register_forward_hook(lambda mod, inp, out: seen.append((mod, inp[0], out)))
        for m in attention_modules(model)
    ]
    try:
        with torch.no_grad():
            model.eval()(images)
    finally:
        for h in handles:
            h.remove()
    return seen


def attention_times_v(module: Attention, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """The attention module's output rebuilt from a captured attention matrix."""
    b, n, _ = x.shape
    qkv = module.qkv(x).reshape(b, n, 3, module.num_heads, module.head_dim)
    v = qkv.permute(2, 0, 3, 1, 4)[2]
    out = (attn @ v).transpose(1, 2).reshape(b, n, module.attn_dim)
    return module.proj(module.norm(out))


# (create_model overrides, input (H, W), expected P, class token, grid)
VARIANTS = {
    "class_token": ({}, (28, 28), 1, True, (7, 7)),
    "deit_distilled": (
        {"name": "deit_tiny_distilled_patch16_224"},
        (28, 28),
        2,
        True,
        (7, 7),
    ),
    "registers": ({"reg_tokens": 4}, (28, 28), 5, True, (7, 7)),
    "no_prefix": ({"class_token": False, "global_pool": "avg"}, (28, 28), 0, False, (7, 7)),
    "registers_no_class": (
        {"class_token": False, "global_pool": "avg", "reg_tokens": 2},
        (28, 28),
        2,
        False,
        (7, 7),
    ),
    "qk_norm": ({"qk_norm": True}, (28, 28), 1, True, (7, 7)),
    "dynamic_other_size": ({"dynamic_img_size": True}, (36, 20), 1, True, (9, 5)),
    "non_square": ({"img_size": (28, 40)}, (28, 40), 1, True, (7, 10)),
    "rgb": ({"in_chans": 3}, (28, 28), 1, True, (7, 7)),
}


# ---------------------------------------------------------------------------------------
# TokenLayout and find_vit


def test_layout_properties_and_patch_centers() -> None:
    layout = TokenLayout(
        num_prefix_tokens=2, has_class_token=True, grid_size=(2, 3), patch_size=(4, 5)
    )
    assert layout.num_patches == 6 and layout.num_tokens == 8
    expected = torch.tensor(
        [[2.0, 2.5], [2.0, 7.5], [2.0, 12.5], [6.0, 2.5], [6.0, 7.5], [6.0, 12.5]]
    )
    centers = layout.patch_centers()
    assert centers.dtype == torch.float32
    torch.testing.assert_close(centers, expected)


def test_layout_coerces_lists_and_is_frozen() -> None:
    layout = TokenLayout(0, False, [2, 2], 4)
    assert layout.grid_size == (2, 2) and layout.patch_size == (4, 4)
    with pytest.raises(AttributeError):
        layout.grid_size = (3, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_prefix_tokens": -1}, "num_prefix_tokens must be an int >= 0"),
        ({"num_prefix_tokens": 0, "has_class_token": True}, "needs num_prefix_tokens >= 1"),
        ({"grid_size": (0, 3)}, "grid_size must be positive"),
        ({"patch_size": (4, -4)}, "patch_size must be positive"),
        ({"grid_size": (2, 2, 2)}, "grid_size must be a pair"),
    ],
)
def test_layout_validation(kwargs: dict, match: str) -> None:
    args = {"num_prefix_tokens": 1, "has_class_token": True, "grid_size": (2, 2)}
    args["patch_size"] = (4, 4)
    with pytest.raises(ValueError, match=match):
        TokenLayout(**{**args, **kwargs})


def test_find_vit_direct_wrapped_and_compiled(make_vit) -> None:
    vit = make_vit()
    assert find_vit(vit) == ("", vit)
    assert find_vit(Wrapper(vit)) == ("net", vit)
    compiled = torch.compile(vit)  # lazy: nothing is compiled until a forward
    assert find_vit(compiled) == ("_orig_mod", vit)
    assert find_vit(Wrapper(compiled)) == ("net._orig_mod", vit)
    assert find_vit(Wrapper(compiled), name="net") == ("net._orig_mod", vit)


def test_find_vit_errors(make_vit) -> None:
    with pytest.raises(ValueError, match=r"no ViT lit-vit knows .* module types found: \['Linear'"):
        find_vit(nn.Linear(2, 2))
    two = nn.ModuleDict({"student": make_vit(), "teacher": make_vit()})
    with pytest.raises(
        ValueError, match=r"several ViTs found: \['student', 'teacher'\]; pass name="
    ):
        find_vit(two)
    assert find_vit(two, name="teacher") == ("teacher", two["teacher"])
    with pytest.raises(ValueError, match=r"no submodule named 'pupil'.*\['student', 'teacher'\]"):
        find_vit(two, name="pupil")
    with pytest.raises(ValueError, match="'student.head' is a Linear, not a ViT lit-vit knows"):
        find_vit(two, name="student.head")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_from_model_layout(make_vit, variant: str) -> None:
    overrides, size, prefix, has_class, grid = VARIANTS[variant]
    vit = make_vit(**overrides)
    layout = TokenLayout.from_model(vit, size)
    assert layout == TokenLayout(prefix, has_class, grid, (4, 4))


def test_from_model_size_errors(make_vit) -> None:
    with pytest.raises(
        ValueError,
        match=r"images are 32x32 pixels but the model takes exactly 28x28"
        r".*dynamic_img_size=True",
    ):
        TokenLayout.from_model(make_vit(), (32, 32))
    with pytest.raises(
        ValueError,
        match=r"images are 30x28 pixels, not a multiple of the patch "
        r"size 4x4. Resize them to a multiple \(e.g. 32x28\)",
    ):
        TokenLayout.from_model(make_vit(dynamic_img_size=True), (30, 28))
    padded = make_vit(dynamic_img_size=True, dynamic_img_pad=True)
    assert TokenLayout.from_model(padded, (30, 27)).grid_size == (8, 7)
    with pytest.raises(ValueError, match="is not a timm-style ViT"):
        TokenLayout.from_model(nn.Linear(2, 2), (28, 28))


# ---------------------------------------------------------------------------------------
# capture


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_capture_reproduces_fused_attention_output(make_vit, variant: str) -> None:
    overrides, size, prefix, has_class, grid = VARIANTS[variant]
    vit = make_vit(**overrides)
    assert all(m.fused_attn for m in attention_modules(vit)), "timm should default to SDPA"
    chans = overrides.get("in_chans", 1)
    images = torch.rand(3, chans, *size, generator=torch.Generator().manual_seed(1))
    reference = fused_outputs(vit, images)

    rec = AttentionRecorder(vit).record(images)

    layout = rec.layout
    assert layout == TokenLayout(prefix, has_class, grid, (4, 4))
    n = layout.num_tokens
    assert rec.attention.shape == (2, 3, 2, n, n)
    assert rec.attention.dtype == torch.float32 and not rec.attention.requires_grad
    torch.testing.assert_close(rec.attention.sum(-1), torch.ones(2, 3, 2, n))
    assert rec.logits.shape == (3, 10) and rec.attention_grads == () and rec.targets == ()
    assert len(reference) == 2
    for layer, (module, x, fused_out) in enumerate(reference):
        with torch.no_grad():
            rebuilt = attention_times_v(module, x, rec.attention[layer])
        torch.testing.assert_close(rebuilt, fused_out, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(rec.logits, vit(images), atol=1e-5, rtol=1e-5)


def test_wrapped_model_tuple_output_and_names(make_vit) -> None:
    vit = make_vit()
    recorder = AttentionRecorder(Wrapper(vit, extra=True))
    assert recorder.module_names == ["net.blocks.0.attn", "net.blocks.1.attn"]
    images = torch.rand(2, 1, 28, 28)
    rec = recorder.record(images)
    with torch.no_grad():
        torch.testing.assert_close(rec.logits, vit.eval()(images))


def test_compiled_model_probes_eagerly(make_vit) -> None:
    """Compiling a forward takes ~25 s on CPU: the probe must not trigger it."""
    from torch._dynamo.utils import counters

    vit = make_vit()
    images = torch.rand(2, 1, 28, 28)
    expected = AttentionRecorder(vit).record(images).attention
    before = sum(sum(c.values()) for c in counters.values())
    for model in (torch.compile(vit), Wrapper(torch.compile(vit))):
        recorder = AttentionRecorder(model)
        assert recorder.module_names[0].endswith("_orig_mod.blocks.0.attn")
        torch.testing.assert_close(recorder.record(images).attention, expected)
    assert sum(sum(c.values()) for c in counters.values()) == before, "dynamo compiled a frame"


def test_module_pattern(make_vit) -> None:
    vit = make_vit()
    images = torch.rand(2, 1, 28, 28)
    auto = AttentionRecorder(vit).record(images).attention
    recorder = AttentionRecorder(vit, module_pattern=r"blocks\.1\.attn")
    assert recorder.module_names == ["blocks.1.attn"]
    torch.testing.assert_close(recorder.record(images).attention, auto[1:])
    with pytest.raises(
        ValueError,
        match=r"matches no module name \(re.fullmatch\); "
        r"attention-like modules: \['blocks.0.attn', 'blocks.1.attn'\]",
    ):
        AttentionRecorder(vit, module_pattern=r"attn")
    with pytest.raises(ValueError, match="is not a regex"):
        AttentionRecorder(vit, module_pattern="blocks[")
    with pytest.raises(ValueError, match=r"blocks.0.mlp gave .* expected attention of shape"):
        AttentionRecorder(vit, module_pattern=r"blocks\.\d\.mlp").record(images)


def test_no_attention_modules_error() -> None:
    class FakeViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch_embed = nn.Conv2d(1, 4, 4, 4)
            self.num_prefix_tokens = 0
            self.mixer = nn.Linear(4, 4)

    with pytest.raises(
        ValueError,
        match=r"no attention modules found .*\['Conv2d', 'FakeViT', "
        r"'Linear'\]. Pass module_pattern=",
    ):
        AttentionRecorder(FakeViT())
    with pytest.raises(ValueError, match="AttentionRecorder needs the ViT inside the model"):
        AttentionRecorder(nn.Sequential(nn.Linear(2, 2)), module_pattern="0")


def test_state_restored_after_record(make_vit) -> None:
    vit = make_vit()
    model = Wrapper(vit)
    modules = attention_modules(vit)
    modules[1].fused_attn = False  # a flag set by the user stays as it was
    model.train()
    vit.blocks[0].eval()  # mixed modes are restored module by module
    modes = [m.training for m in model.modules()]
    requires = [p.requires_grad for p in model.parameters()]
    recorder = AttentionRecorder(model)
    recorder.record(torch.rand(2, 1, 28, 28), grad_targets=[None])
    assert [m.fused_attn for m in modules] == [True, False]
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == requires
    assert all(p.grad is None for p in model.parameters())
    assert hooks_left(model) == 0


def test_state_restored_when_forward_raises(make_vit) -> None:
    vit = make_vit()
    model = Wrapper(vit, fail=True).train()
    recorder = AttentionRecorder(model)
    for targets in ((), [None]):
        with pytest.raises(RuntimeError, match="boom after the forward"):
            recorder.record(torch.rand(2, 1, 28, 28), grad_targets=targets)
        assert all(m.fused_attn for m in attention_modules(vit))
        assert all(m.training for m in model.modules())
        assert hooks_left(model) == 0


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.rand(1, 28, 28), r"images must be a \(B, C, H, W\) tensor, got \(1, 28, 28\)"),
        (torch.rand(0, 1, 28, 28), "images is an empty batch"),
        (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "must be a floating point tensor"),
        (
            torch.rand(2, 3, 28, 28),
            "images have 3 channels but the model's patch embedding takes 1",
        ),
        (torch.rand(2, 1, 30, 30), "images are 30x30 pixels but the model takes exactly 28x28"),
    ],
)
def test_bad_images(make_vit, images: torch.Tensor, match: str) -> None:
    vit = make_vit().train()
    recorder = AttentionRecorder(vit)
    with pytest.raises(ValueError, match=match):
        recorder.record(images)
    assert vit.training and all(m.fused_attn for m in attention_modules(vit))


def test_bad_grad_targets(make_vit) -> None:
    recorder = AttentionRecorder(make_vit())
    images = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match=r"grad_targets\[0\] must be None or a \(B=2,\) integer"):
        recorder.record(images, grad_targets=[torch.tensor([0.0, 1.0])])
    with pytest.raises(ValueError, match=r"grad_targets\[1\] must be None or a \(B=2,\)"):
        recorder.record(images, grad_targets=[None, torch.tensor([1])])
    with pytest.raises(ValueError, match=r"class indices outside \[0, 10\): \[3, 10\]"):
        recorder.record(images, grad_targets=[torch.tensor([3, 10])])


# ---------------------------------------------------------------------------------------
# gradients


def reference_gradients(model: nn.Module, images: torch.Tensor, target: torch.Tensor):
    """Attention gradients computed by hand: explicit path, retain_grad on each attention."""
    model = model.eval()
    kept = []

    def keep(_module, _inputs, output):
        output.retain_grad()
        kept.append(output)

    modules = attention_modules(model)
    handles = [m.attn_drop.register_forward_hook(keep) for m in modules]
    for m in modules:
        m.fused_attn = False
    try:
        logits = model(images.clone().requires_grad_(True))
        logits.gather(1, target[:, None]).sum().backward()
    finally:
        for h in handles:
            h.remove()
        for m in modules:
            m.fused_attn = True
        model.zero_grad(set_to_none=True)
    return torch.stack([a.detach() for a in kept]), torch.stack([a.grad for a in kept])


@pytest.mark.parametrize("variant", ["class_token", "no_prefix", "deit_distilled"])
def test_gradients_match_autograd_reference(make_vit, variant: str) -> None:
    overrides = VARIANTS[variant][0]
    vit = make_vit(**overrides)
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    chosen = torch.tensor([4, 0, 9])
    rec = AttentionRecorder(vit).record(images, grad_targets=[None, chosen])

    predicted = rec.logits.argmax(-1)
    assert torch.equal(rec.targets[0], predicted) and torch.equal(rec.targets[1], chosen)
    for grad, target in zip(rec.attention_grads, (predicted, chosen), strict=True):
        attn, expected = reference_gradients(vit, images, target)
        torch.testing.assert_close(rec.attention, attn, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-5)
        assert grad.dtype == torch.float32 and grad.abs().sum() > 0
    if variant == "class_token":
        # the real graph: only the class-token row of the last layer reaches the head
        assert rec.attention_grads[0][-1, :, :, 1:].abs().max() == 0


def test_gradients_finite_differences_of_the_real_graph(make_vit) -> None:
    """Perturb one attention entry inside the forward; compare with the recorded gradient."""
    vit = make_vit(qk_norm=True).double()
    images = torch.rand(1, 1, 28, 28, dtype=torch.float64)
    target = torch.tensor([3])
    grad = AttentionRecorder(vit).record(images, grad_targets=[target]).attention_grads[0]
    modules = attention_modules(vit)
    eps = 1e-6
    for layer, (b, h, i, j) in [(0, (0, 1, 5, 7)), (0, (0, 0, 0, 12)), (1, (0, 1, 0, 30))]:

        def bump(_module, _inputs, output, sign=1.0, where=(b, h, i, j)):
            output = output.clone()
            output[where] += sign * eps
            return output

        values = []
        for sign in (1.0, -1.0):
            for m in modules:
                m.fused_attn = False
            handle = modules[layer].attn_drop.register_forward_hook(
                lambda mod, inp, out, s=sign: bump(mod, inp, out, s)
            )
            with torch.no_grad():
                values.append(float(vit.eval()(images)[0, 3]))
            handle.remove()
            for m in modules:
                m.fused_attn = True
        numeric = (values[0] - values[1]) / (2 * eps)
        assert numeric == pytest.approx(float(grad[layer, b, h, i, j]), rel=1e-4, abs=1e-7)


def test_gradients_with_frozen_parameters(make_vit) -> None:
    vit = make_vit()
    vit.requires_grad_(False)
    rec = AttentionRecorder(vit).record(torch.rand(2, 1, 28, 28), grad_targets=[None])
    assert rec.attention_grads[0].abs().sum() > 0
    assert not any(p.requires_grad for p in vit.parameters())


def test_gradients_inside_inference_mode(make_vit) -> None:
    """Lightning runs validation under torch.inference_mode; gradients must still work."""
    vit = make_vit()
    images = torch.rand(2, 1, 28, 28)
    expected = AttentionRecorder(vit).record(images, grad_targets=[None])
    with torch.inference_mode():
        inference_images = images.clone()
        rec = AttentionRecorder(vit).record(inference_images, grad_targets=[None])
        plain = AttentionRecorder(vit).record(inference_images)
    torch.testing.assert_close(rec.attention_grads[0], expected.attention_grads[0])
    torch.testing.assert_close(plain.attention, expected.attention)


def test_bad_grad_targets_fail_before_the_forward(make_vit) -> None:
    vit = make_vit()
    calls = []
    vit.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=r"grad_targets\[0\] must be None"):
        AttentionRecorder(vit).record(torch.rand(2, 1, 28, 28), grad_targets=[torch.ones(2)])
    assert calls == []
