"""Faithfulness through the real CLI on a tiny ViT: fit one epoch, then test its checkpoint.

(Not ``test_faithfulness.py``: ``tests/attention/`` has a module of that name, and
without ``__init__.py`` files pytest cannot import two test modules of one name.)

Every logged AUC is recomputed with :func:`lit_vit.attention.deletion_insertion_auc`
on the same images: the validation probe from the checkpoint's callback state,
and the first test images read from the test files.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.datasets import FashionMNIST

from lit_vit.attention import (
    EXPLAINERS,
    AttentionRecorder,
    cls_attention,
    controls,
    deletion_insertion_auc,
    explain,
    gradient_rollout,
    rollout,
)
from lit_vit.callbacks.faithfulness import Faithfulness
from lit_vit.data import PIXEL_MEAN, PIXEL_STD
from tests.callbacks.conftest import (
    BATCH_SIZE,
    FAITHFULNESS_MAX_BATCH,
    FAITHFULNESS_STEPS,
    FAITHFULNESS_TEST_IMAGES,
    FAITHFULNESS_VAL_STEPS,
)
from tests.conftest import checkpoint_probe, read_events

STEPS, TEST_IMAGES, MAX_BATCH = (
    FAITHFULNESS_STEPS,
    FAITHFULNESS_TEST_IMAGES,
    FAITHFULNESS_MAX_BATCH,
)
VALIDATION_MAPS = ("rollout", "class token", "grad rollout", "random")
TEST_MAPS = (*EXPLAINERS, "intensity", "edges", "centre", "random")


@pytest.fixture(scope="module")
def runs(attention_run):
    return attention_run


def recompute(model, images: torch.Tensor, seed: int, test: bool = False) -> dict:
    """Map -> per-image (deletion, insertion) AUC, straight from the toolkit, at the test's or
    the validation's number of steps."""
    recorder = AttentionRecorder(model)
    if test:
        maps = explain(recorder, images)
        layout = recorder.backend.layout((28, 28))
        pixels = (images * PIXEL_STD + PIXEL_MEAN).clamp(0, 1)
        baselines = controls(pixels, layout, seed)
        maps |= {name: baselines[name] for name in ("intensity", "edges", "centre")}
    else:
        recording = recorder.record(images, grad_targets=[None])
        attention, layout = recording.attention, recording.layout
        maps = {
            "rollout": rollout(attention, layout),
            "class token": cls_attention(attention, layout).maps[-1].mean(dim=1),
            "grad rollout": gradient_rollout(attention, recording.attention_grads[0], layout),
        }
    results = {
        method: deletion_insertion_auc(
            model,
            images,
            saliency,
            layout,
            steps=STEPS if test else FAITHFULNESS_VAL_STEPS,
            max_batch=MAX_BATCH,
            seed=seed,
        )
        for method, saliency in maps.items()
    }
    # Same images and seed: the random reference is the same in every call.
    for result in results.values():
        torch.testing.assert_close(result.random_deletion, results["rollout"].random_deletion)
    aucs = {method: (result.deletion, result.insertion) for method, result in results.items()}
    first = results["rollout"]
    return {**aucs, "random": (first.random_deletion, first.random_insertion)}


def assert_scalars_match(run_dir, root: str, expected: dict[str, tuple[torch.Tensor, ...]]) -> None:
    events = read_events(run_dir)
    for method, aucs in expected.items():
        for kind, values in zip(("deletion", "insertion"), aucs, strict=True):
            tag = f"{root}/faithfulness/{kind}_{method.replace(' ', '_')}"
            event = events.Scalars(tag)[-1]
            assert event.value == pytest.approx(float(values.mean()), abs=1e-5), (kind, method)


def test_validation_scalars_match_the_toolkit_on_the_checkpoint_probe(runs):
    probe = checkpoint_probe(runs.checkpoint, runs.data_dir)
    expected = recompute(runs.model, probe.images, seed=0)
    assert tuple(expected) == VALIDATION_MAPS
    assert_scalars_match(runs.fit_dir, "val_attention", expected)
    assert (runs.fit_dir / "attention" / "epoch_001" / "faithfulness.png").is_file()
    assert "val_attention/faithfulness" in read_events(runs.fit_dir).Tags()["images"]


def test_test_scores_the_first_test_images_batch_by_batch(runs):
    split = FashionMNIST(str(runs.data_dir), train=False, download=False)
    images = (split.data[:TEST_IMAGES, None].float() / 255 - PIXEL_MEAN) / PIXEL_STD
    parts = [
        recompute(runs.model, batch, seed=index, test=True)
        for index, batch in enumerate(images.split(BATCH_SIZE))
    ]
    expected = {
        method: tuple(torch.cat([part[method][i] for part in parts]) for i in range(2))
        for method in TEST_MAPS
    }
    assert_scalars_match(runs.test_dir, "test_attention", expected)
    assert (runs.test_dir / "attention" / "test" / "faithfulness.png").is_file()
    assert "test_attention/faithfulness" in read_events(runs.test_dir).Tags()["images"]

    section = runs.report.split("## Faithfulness (deletion / insertion)")[1].split("\n## ")[0]
    assert f"on {TEST_IMAGES} test images" in section
    assert "each image's minimum value" in section
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    assert lines[0] == "| method | deletion AUC | insertion AUC |"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]
    assert [row[0] for row in rows] == list(TEST_MAPS)
    for row, method in zip(rows, TEST_MAPS, strict=True):
        for column in (1, 2):
            mean = float(expected[method][column - 1].mean())
            assert float(row[column]) == pytest.approx(mean, abs=6e-4), (row, method)
    deletion = float(expected["rollout"][0].mean())
    random = float(expected["random"][0].mean())
    assert f"AUC {deletion:.3f} against {random:.3f} for a random order" in runs.report
    trust = runs.report.split("## Which explainer can I trust here?\n")[1].split("\n## ")[0]
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in trust.splitlines()
        if line.startswith("| ")
    ]
    assert rows[0] == [
        "map",
        "deletion AUC",
        "insertion AUC",
        "lift",
        "Spearman after full randomisation",
        "random-logit Spearman",
        "sanity checks",
    ]
    assert [row[0] for row in rows[1:]] == [*EXPLAINERS, "random", "intensity", "edges", "centre"]
    by_map = {row[0]: row for row in rows[1:]}
    for method in TEST_MAPS:
        assert float(by_map[method][1]) == pytest.approx(
            float(expected[method][0].mean()), abs=6e-4
        )
    assert "- Beat every control on faithfulness: " in runs.report
    assert "- Pass the sanity checks: " in runs.report


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps=0 must be at least 1"),
        ({"val_steps": 0}, "val_steps=0 must be at least 1"),
        ({"test_images": 0}, "test_images=0 must be at least 1"),
        ({"max_batch": -2}, "max_batch=-2 must be at least 1"),
        ({"every_n_epochs": 0}, "every_n_epochs=0 must be at least 1"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError) as error:
        Faithfulness(**kwargs)
    assert message in str(error.value)
