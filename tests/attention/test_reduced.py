"""Attention reduced while recording: every measure as from the full tensor, at 1/H the size."""

from __future__ import annotations

import pytest
import torch

from lit_vit.attention import (
    AttentionRecorder,
    attention_entropy,
    attention_flow,
    cls_attention,
    gradient_rollout,
    head_diversity,
    mean_attention_distance,
    reduce_attention,
    rollout,
)
from lit_vit.attention.propagation import HEAD_FUSIONS

HEADS, LAYERS = 3, 3


def record_both(model, images, targets):
    """The same pass recorded with the full tensor and reduced only."""
    recorder = AttentionRecorder(model)
    full = recorder.record(images, targets, full=True, head_fusions=HEAD_FUSIONS)
    reduced = recorder.record(images, targets, full=False, head_fusions=HEAD_FUSIONS)
    return full, reduced


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # class token
        {"class_token": False, "global_pool": "avg"},  # mean patch query
        {"reg_tokens": 2},  # prefix tokens besides the class token
    ],
    ids=["class-token", "no-class-token", "registers"],
)
def test_every_reduced_measure_equals_the_one_of_the_full_attention(make_vit, overrides):
    model = make_vit(depth=LAYERS, num_heads=HEADS, embed_dim=24, **overrides).eval()
    images = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 5, 9])
    full, recorded = record_both(model, images, [None, labels])
    attention, layout = full.attention, full.layout
    close = dict(atol=1e-6, rtol=1e-5)

    for reduced in (full.reduced, recorded.reduced):
        query = cls_attention(attention, layout)
        torch.testing.assert_close(reduced.cls_attention().maps, query.maps, **close)
        torch.testing.assert_close(reduced.cls_attention().prefix_mass, query.prefix_mass, **close)
        torch.testing.assert_close(reduced.head_diversity(), head_diversity(attention, layout))
        entropy = attention_entropy(attention, layout)
        torch.testing.assert_close(reduced.attention_entropy().normalized, entropy.normalized)
        torch.testing.assert_close(
            reduced.attention_entropy().effective_area, entropy.effective_area
        )
        distance = mean_attention_distance(attention, layout)
        torch.testing.assert_close(reduced.mean_attention_distance().pixels, distance.pixels)
        torch.testing.assert_close(reduced.mean_attention_distance().relative, distance.relative)
        for fusion in HEAD_FUSIONS:
            for discard, start in ((0.0, 0), (0.5, 1)):
                torch.testing.assert_close(
                    reduced.rollout(fusion, discard, start),
                    rollout(attention, layout, fusion, discard, start),
                    **close,
                )
        torch.testing.assert_close(
            reduced.attention_flow(), attention_flow(attention, layout), atol=1e-5, rtol=1e-4
        )
        for target in range(2):
            torch.testing.assert_close(
                reduced.gradient_rollout(target),
                gradient_rollout(attention, full.attention_grads[target], layout),
                **close,
            )
    torch.testing.assert_close(recorded.logits, full.logits)
    assert [t.tolist() for t in recorded.targets] == [t.tolist() for t in full.targets]


def test_a_reduced_recording_keeps_no_full_tensor_and_about_one_head_of_it(make_vit):
    model = make_vit(depth=LAYERS, num_heads=HEADS, embed_dim=24).eval()
    images = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    full, recorded = record_both(model, images, [None])
    assert recorded.attention is None and recorded.attention_grads == ()
    reduced = AttentionRecorder(model).record(images, [None], full=False).reduced  # mean only
    full_bytes = full.attention.nbytes + full.attention_grads[0].nbytes
    n = full.layout.num_tokens
    # The fused attention and gradient product are 1/H of theirs; the query rows and the key
    # mass add 1/N each.
    assert reduced.nbytes <= full_bytes * (1 / HEADS + 2 / n + 1e-3)
    assert reduced.nbytes * HEADS < full_bytes * 1.1


def test_a_head_fusion_not_recorded_is_refused_naming_the_fix(make_vit):
    model = make_vit().eval()
    reduced = AttentionRecorder(model).record(torch.randn(2, 1, 28, 28), full=False).reduced
    with pytest.raises(ValueError, match=r"'max' was not recorded .*head_fusions including 'max'"):
        reduced.rollout("max")
    with pytest.raises(ValueError, match=r"head_fusions must be among .*'median'"):
        AttentionRecorder(model).record(torch.randn(2, 1, 28, 28), head_fusions=["median"])
    with pytest.raises(ValueError, match=r"head_fusions must name at least one of"):
        AttentionRecorder(model).record(torch.randn(2, 1, 28, 28), head_fusions=[])


def test_reduced_values_are_validated_layer_by_layer_with_the_layer_named(make_vit):
    model = make_vit(depth=LAYERS).eval()
    broken = model.blocks[1].attn
    broken.attn_drop.register_forward_hook(lambda _m, _i, out: out * float("nan"))
    with pytest.raises(ValueError, match=r"NaN or inf values in layer\(s\) \[1, 2\]"):
        AttentionRecorder(model).record(torch.randn(2, 1, 28, 28), full=False)


def test_a_full_tensor_reduced_in_one_image_chunks_equals_the_recorders_reduction(
    make_vit, monkeypatch
):
    """``reduce_attention`` walks the tensor in chunks of one image per layer and joins them;
    every part equals what the recorder reduced layer by layer."""
    from lit_vit.attention import _validate

    model = make_vit(depth=LAYERS, num_heads=HEADS, embed_dim=24).eval()
    images = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    full, recorded = record_both(model, images, [None])
    monkeypatch.setattr(_validate, "CHUNK_BYTES", 1)
    reduced = reduce_attention(
        full.attention,
        full.layout,
        head_fusions=HEAD_FUSIONS,
        gradients=full.attention_grads,
        validate=False,
    )
    for part in ("query_rows", "distances", "key_mass"):
        torch.testing.assert_close(getattr(reduced, part), getattr(recorded.reduced, part))
    for fusion in HEAD_FUSIONS:
        torch.testing.assert_close(reduced.fused[fusion], recorded.reduced.fused[fusion])
        torch.testing.assert_close(
            reduced.fused_row_sums[fusion], recorded.reduced.fused_row_sums[fusion]
        )
    torch.testing.assert_close(
        reduced.gradient_products[0], recorded.reduced.gradient_products[0], atol=1e-7, rtol=1e-5
    )


def test_a_reduction_keeps_only_the_parts_asked_for_and_names_a_missing_one(random_attention):
    from lit_vit.attention import TokenLayout

    layout = TokenLayout(
        num_prefix_tokens=1, has_class_token=True, grid_size=(2, 3), patch_size=(4, 4)
    )
    attention = random_attention(layout, layers=2, batch=2, heads=2)
    reduced = reduce_attention(attention, layout, parts=("distances",), head_fusions=())
    assert reduced.query_rows is None and reduced.key_mass is None and not reduced.fused
    assert reduced.nbytes == reduced.distances.nbytes == 2 * 2 * 2 * 4
    with pytest.raises(ValueError, match=r"query_rows was not kept; .*parts including"):
        reduced.head_diversity()
    with pytest.raises(ValueError, match=r"parts \['rows'\] are unknown; choose from"):
        reduce_attention(attention, layout, parts=("rows",))
    with pytest.raises(ValueError, match=r"head_fusions must be among .*'median'"):
        reduce_attention(attention, layout, head_fusions=("median",))
    with pytest.raises(ValueError, match=r"attention_grad has shape \(1, 2, 2, 7, 7\)"):
        reduce_attention(attention, layout, gradients=(attention[:1],))
