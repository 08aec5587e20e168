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
    FAITHFULNESS_METRICS,
    AttentionRecorder,
    cls_attention,
    controls,
    cp_lrp_map,
    deletion_insertion_auc,
    explain,
    gradient_rollout,
    road,
    rollout,
    saco,
)
from lit_vit.callbacks.faithfulness import Faithfulness, _evolution_figure
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
VALIDATION_MAPS = ("rollout", "class token", "grad rollout", "cp-lrp", "random")
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
        predicted = recording.logits.argmax(dim=-1)
        maps = {
            "rollout": rollout(attention, layout),
            "class token": cls_attention(attention, layout).maps[-1].mean(dim=1),
            "grad rollout": gradient_rollout(attention, recording.attention_grads[0], layout),
            "cp-lrp": cp_lrp_map(model, images, predicted, recorder.backend, layout),
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


def all_metrics(model, images: torch.Tensor, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Metric -> map -> per-image score of every explainer and control, from the toolkit."""
    recorder = AttentionRecorder(model)
    layout = recorder.backend.layout((28, 28))
    pixels = (images * PIXEL_STD + PIXEL_MEAN).clamp(0, 1)
    maps = explain(recorder, images) | controls(pixels, layout, seed)
    scored = {name: maps[name] for name in TEST_MAPS}
    removed = road(model, images, scored, layout, seed=seed, max_batch=MAX_BATCH)
    coefficients = saco(model, images, scored, layout, max_batch=MAX_BATCH)
    blurred = {
        name: deletion_insertion_auc(
            model, images, maps[name], layout, steps=STEPS, baseline="blur", seed=seed
        )
        for name in TEST_MAPS
        if name != "random"
    }
    aucs = recompute(model, images, seed, test=True)
    blurred_random = blurred["rollout"].random_deletion
    return {
        "deletion AUC (background)": {name: aucs[name][0] for name in TEST_MAPS},
        "insertion AUC (background)": {name: aucs[name][1] for name in TEST_MAPS},
        "deletion AUC (blurred)": {
            name: blurred[name].deletion if name != "random" else blurred_random
            for name in TEST_MAPS
        },
        "ROAD MoRF": {name: removed[name].morf for name in TEST_MAPS},
        "ROAD LeRF": {name: removed[name].lerf for name in TEST_MAPS},
        "ROAD LeRF - MoRF": {name: removed[name].lerf - removed[name].morf for name in TEST_MAPS},
        "SaCo": coefficients,
    }


def table(section: str) -> list[list[str]]:
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_test_scores_every_metric_on_the_first_test_images_batch_by_batch(runs):
    split = FashionMNIST(str(runs.data_dir), train=False, download=False)
    images = (split.data[:TEST_IMAGES, None].float() / 255 - PIXEL_MEAN) / PIXEL_STD
    parts = [
        all_metrics(runs.model, batch, seed=index)
        for index, batch in enumerate(images.split(BATCH_SIZE))
    ]
    expected = {
        metric: {name: torch.cat([part[metric][name] for part in parts]) for name in TEST_MAPS}
        for metric in FAITHFULNESS_METRICS
    }
    aucs = {
        name: (
            expected["deletion AUC (background)"][name],
            expected["insertion AUC (background)"][name],
        )
        for name in TEST_MAPS
    }
    assert_scalars_match(runs.test_dir, "test_attention", aucs)
    assert (runs.test_dir / "attention" / "test" / "faithfulness.png").is_file()
    events = read_events(runs.test_dir)
    assert "test_attention/faithfulness" in events.Tags()["images"]
    saco_rollout = events.Scalars("test_attention/faithfulness/SaCo/rollout")[-1].value
    assert saco_rollout == pytest.approx(float(expected["SaCo"]["rollout"].mean()), abs=1e-5)

    section = runs.report.split("## Faithfulness\n")[1].split("\n## ")[0]
    assert f"on {TEST_IMAGES} test images" in section
    assert "noisy linear imputation" in section and "sigma = the patch size" in section
    rows = table(section)
    assert rows[0] == ["map", *FAITHFULNESS_METRICS]
    assert [row[0] for row in rows[1:]] == list(TEST_MAPS)
    for row in rows[1:]:
        for column, metric in enumerate(FAITHFULNESS_METRICS, start=1):
            mean = float(expected[metric][row[0]].mean())
            assert float(row[column]) == pytest.approx(mean, abs=6e-4), (row[0], metric)

    # The trust table: the same numbers with intervals; the tiny model is at chance, so a
    # banner stands where verdicts would.
    trust = runs.report.split("## Which explainer can I trust here?\n")[1].split("\n## ")[0]
    assert "**The model is at or near chance**" in trust
    rows = table(trust)
    assert rows[0][: len(FAITHFULNESS_METRICS) + 1] == ["map", *FAITHFULNESS_METRICS]
    assert "verdict" not in rows[0]
    assert [row[0] for row in rows[1:]] == [*EXPLAINERS, "random", "intensity", "edges", "centre"]
    by_map = {row[0]: row for row in rows[1:]}
    for name in TEST_MAPS:
        cell = by_map[name][FAITHFULNESS_METRICS_INDEX["SaCo"]]
        mean, low, high = (
            float(v) for v in cell.replace("[", "").replace("]", "").replace(",", "").split()
        )
        assert mean == pytest.approx(float(expected["SaCo"][name].mean()), abs=6e-4)
        assert low <= mean <= high
    text = read_events(runs.test_dir).Tensors("test_attention/trust_table/text_summary")
    assert "**The model is at or near chance**" in text[-1].tensor_proto.string_val[0].decode()


FAITHFULNESS_METRICS_INDEX = {metric: i for i, metric in enumerate(FAITHFULNESS_METRICS, start=1)}


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


def test_the_evolution_figure_draws_a_line_per_map_on_the_data_range():
    callback = Faithfulness()
    for epoch, shift in enumerate((0.0, 0.05, 0.1)):
        means = {"rollout": (0.30 + shift, 0.40), "cp-lrp": (0.25, 0.45 - shift)}
        callback._remember(epoch, means)
    callback._remember(3, {**means, "flow": (0.3, 0.4)})  # a map new to the history
    deletion, insertion = _evolution_figure(callback.history).axes
    assert [line.get_label() for line in deletion.lines] == ["rollout", "cp-lrp", "flow"]
    assert list(deletion.lines[0].get_ydata()) == pytest.approx([0.30, 0.35, 0.40, 0.40])
    assert list(insertion.lines[1].get_ydata()) == pytest.approx([0.45, 0.40, 0.35, 0.35])
    assert deletion.lines[2].get_ydata()[:3] == pytest.approx([float("nan")] * 3, nan_ok=True)
    low, high = deletion.get_ylim()
    assert 0.2 < low <= 0.25 and 0.40 <= high < 0.45  # the AUCs' range, not 0-1
    assert deletion.get_ylabel() == "mean AUC (lower is better)"


def test_forwards_are_cache_sized_on_a_cpu_unless_max_batch_is_given():
    on_cpu, elsewhere = torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8, device="meta")
    assert Faithfulness()._max_batch(on_cpu) == 32
    assert Faithfulness()._max_batch(elsewhere) == 512
    assert Faithfulness(max_batch=7)._max_batch(on_cpu) == 7
