"""Faithfulness of the explainers and the controls: deletion / insertion (background and
blurred baselines), ROAD and SaCo, beside a random patch order."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from matplotlib.figure import Figure
from torch import Tensor

from lit_vit._arguments import check_counts
from lit_vit.attention import (
    EXPLAINERS,
    FAITHFULNESS_METRICS,
    ROAD_FRACTIONS,
    SACO_GROUPS,
    FaithfulnessResult,
    classifier_logits,
    cp_lrp,
    deletion_insertion_auc,
    faithfulness_battery,
    noisy_linear_imputation,
    positive_patch_map,
)
from lit_vit.callbacks.analysis import ProbeAnalysis
from lit_vit.callbacks.base import HistoryCallback, ReportSection
from lit_vit.callbacks.explained import duration
from lit_vit.callbacks.report import markdown_table
from lit_vit.plotting import evolution_curves_figure, faithfulness_figure, signed_relevance_figure

# Controls scored as maps by deletion / insertion; the random one is the shared random order.
MAP_CONTROLS = ("intensity", "edges", "centre")
# Images whose forward is timed (one batch) for the estimate of the test-set scoring.
FORWARD_TIMING_IMAGES = 32
# Masked images per forward pass by default, on a CPU (cache-sized) and on an accelerator.
CPU_MAX_BATCH, ACCELERATOR_MAX_BATCH = 32, 512


class Faithfulness(HistoryCallback):
    """Do the maps point at the evidence? Seven faithfulness metrics, beside the controls.

    Patches are ordered by decreasing saliency; growing fractions
    ``0, 1/T, ..., 1`` of them are replaced by a baseline (deletion) or revealed
    on an all-baseline image (insertion), and the probability of the class
    predicted on the clean image is followed (Petsiuk et al. 2018; see
    ``docs/attention.md``). The baseline is each image's minimum (its
    background). Low deletion and high insertion AUC mean the map found the
    evidence; beside every map, a random patch order (``random``; batch ``i``
    uses seed ``seed + i``).

    At due validation runs, on the probe images, four maps: ``rollout`` (mean
    head fusion, no discard), ``class token`` (last layer, heads averaged),
    ``grad rollout`` and ``cp-lrp`` (predicted class), and CP-LRP's signed
    relevance as a figure. At test, on the first ``test_images`` images of the
    test set, batch by batch, every explainer and every control that knows
    nothing about the model (``random``, ``intensity``, ``edges``, ``centre``)
    is scored on seven metrics, so no verdict hangs on one baseline: deletion
    and insertion with the background baseline, deletion with a blurred one
    (Gaussian, sigma = the patch size), ROAD MoRF, LeRF and LeRF - MoRF (noisy
    linear imputation, seed ``seed + i`` for batch ``i``) and SaCo (10 groups).
    The per-image scores go to the report's trust table, which puts bootstrap
    intervals on them and gives the verdicts.

    Logs (means over the images; ``<method>`` with ``_`` for spaces):

    - scalars ``val_attention/faithfulness/deletion_<method>`` and
      ``val_attention/faithfulness/insertion_<method>``.
    - image ``val_attention/faithfulness``: mean deletion and insertion curves.
    - image ``val_attention/cp_lrp``: CP-LRP's signed relevance of the probe
      images for their predicted classes (diverging colours centred on 0).
    - image ``val_attention/faithfulness_evolution``: the probe's deletion and
      insertion AUC of each map at every analysed epoch so far (maps x
      epochs); the history is kept in the checkpoint, so a resumed run
      continues it, and the test report shows it.
    - at test also: scalars ``test_attention/faithfulness/<metric>/<method>``
      for the seven metrics (e.g. ``ROAD_LeRF_minus_MoRF``, ``SaCo``).

    At test the same tags under ``test_attention/``; with ``name=...`` every
    tag gets ``<name>/`` after the root.

    Args:
        steps: Number ``T`` of intervals on the fraction axis (``T + 1`` points)
            at test.
        val_steps: The same at validation runs, where the curves are redone
            every epoch: 8 (every eighth of the patches) halves the masked
            forwards of 16 and keeps the callbacks within 1.5% of an epoch of
            the default experiment (``benchmarks/callback_overhead.py``).
        test_images: Test images scored at test (at most the test set; under
            ``fast_dev_run``, the probe's size).
        max_batch: Largest number of masked images in one forward pass; ``None``: 32 on a
            CPU (where larger forwards run slower per image: ViT-Ti/16 at 224 px takes 15 ms
            per image in forwards of 32, 22 ms in forwards of 256), 512 on an accelerator.
        seed: Seed of the random order (batch ``i`` of the test set uses ``seed + i``).
        every_n_epochs, name: See :class:`~lit_vit.callbacks.base.AttentionCallback`.

    Raises:
        ValueError: For ``steps``, ``val_steps``, ``test_images`` or ``max_batch``
            smaller than 1.

    Example::

        Trainer(callbacks=[Faithfulness(steps=16, val_steps=8, test_images=256)])
    """

    report_order = 60

    def __init__(
        self,
        steps: int = 16,
        val_steps: int = 8,
        test_images: int = 256,
        max_batch: int | None = None,
        seed: int = 0,
        every_n_epochs: int = 1,
        name: str | None = None,
    ) -> None:
        super().__init__(every_n_epochs, name)
        check_counts(
            "Faithfulness",
            steps=steps,
            val_steps=val_steps,
            test_images=test_images,
            max_batch=max_batch,
        )
        self.steps = steps
        self.val_steps = val_steps
        self.test_images = test_images
        self.max_batch = max_batch
        self.seed = seed
        # Per analysed validation run: its epoch, and the probe's mean AUCs per map.
        self.history: dict[str, Any] = {"epoch": [], "deletion": {}, "insertion": {}}

    @property
    def gradients(self) -> frozenset[str]:
        return frozenset({"predicted"})

    @property
    def explained_test_images(self) -> int:
        return self.test_images

    def charts(self) -> dict[str, list[str]]:
        return {
            self.title(f"{kind} AUC"): [self.tag_pattern(f"faithfulness/{kind}_.*")]
            for kind in ("deletion", "insertion")
        }

    def analyze(
        self, trainer: Trainer, pl_module: LightningModule, analysis: ProbeAnalysis
    ) -> None:
        if analysis.stage == "test":
            limit = len(analysis.probe.labels) if analysis.reduced else self.test_images
            classes = analysis.recording.logits.shape[-1]
            results, per_image = self._score_test_set(trainer, pl_module, limit, classes)
        else:
            results = self._score_probe(trainer, pl_module, analysis)
        means = {
            method: (float(deletion.mean()), float(insertion.mean()))
            for method, (deletion, insertion) in _aucs(results).items()
        }
        self.log_scalars(pl_module, analysis.run, _auc_scalars(means))
        path = self.log_figure(
            trainer, analysis.run, "faithfulness", faithfulness_figure(*_curves(results))
        )
        if analysis.stage == "val":
            self._remember(trainer.current_epoch, means)
        evolution = None
        if self.history["epoch"]:
            figure = _evolution_figure(self.history)
            evolution = self.log_figure(trainer, analysis.run, "faithfulness_evolution", figure)
        if analysis.stage == "test":
            for metric, values in per_image.items():
                self.probe.trust.add(metric, values)
            self.log_scalars(pl_module, analysis.run, _metric_means(per_image))
            count = len(results["rollout"].deletion)
            _, relevance = self._probe_relevance(trainer, pl_module, analysis)
            body = _report_body(per_image, count, self.steps, path, evolution, relevance)
            self.report_section = ReportSection(self.title("Faithfulness"), self.report_order, body)

    def _score_probe(
        self, trainer: Trainer, pl_module: LightningModule, analysis: ProbeAnalysis
    ) -> dict[str, FaithfulnessResult]:
        """Deletion / insertion of the probe's maps at a validation run."""
        images = analysis.probe.images.to(pl_module.device)
        layout = analysis.recording.layout
        relevance, _ = self._probe_relevance(trainer, pl_module, analysis)
        maps = {
            "rollout": analysis.rollout,
            "class token": analysis.query_maps[-1].mean(dim=1),
            "grad rollout": analysis.gradient_rollout("predicted"),
            "cp-lrp": positive_patch_map(relevance, layout.patch_size),
        }
        return deletion_insertion_auc(
            pl_module, images, {name: values.to(images.device) for name, values in maps.items()},
            layout, steps=self.val_steps, max_batch=self._max_batch(images), seed=self.seed,
        )  # fmt: skip

    def _probe_relevance(
        self, trainer: Trainer, pl_module: LightningModule, analysis: ProbeAnalysis
    ) -> tuple[Tensor, str]:
        """``(B, H, W)`` CP-LRP relevance of the probe for its predicted classes, on the CPU;
        logs its signed figure and returns the figure's path too."""
        images = analysis.probe.images.to(pl_module.device)
        predicted = analysis.predictions.to(pl_module.device)
        backend = self.probe.recorder.backend
        relevance = cp_lrp(pl_module, images, predicted, backend=backend).cpu()
        rows = analysis.figure_rows
        names = self.class_names(trainer, analysis)
        titles = [
            f"{names[label]}\npred {pred}"
            for label, pred in zip(
                analysis.probe.labels[:rows],
                self.predicted_names(trainer, analysis)[:rows],
                strict=True,
            )
        ]
        figure = signed_relevance_figure(analysis.probe.pixels[:rows], relevance[:rows], titles)
        return relevance, self.log_figure(trainer, analysis.run, "cp_lrp", figure)

    def _max_batch(self, images: Tensor) -> int:
        if self.max_batch is not None:
            return self.max_batch
        return CPU_MAX_BATCH if images.device.type == "cpu" else ACCELERATOR_MAX_BATCH

    def _score_test_set(
        self, trainer: Trainer, pl_module: LightningModule, limit: int, classes: int
    ) -> tuple[dict[str, FaithfulnessResult], dict[str, dict[str, Tensor]]]:
        """Every metric of every explainer and control on the first ``limit`` test images.

        Returns:
            The background deletion / insertion results (for the curves and the
            history), and :data:`FAITHFULNESS_METRICS` -> map -> ``(n,)`` per-image scores.
        """
        parts: list[dict[str, FaithfulnessResult]] = []
        per_image: dict[str, dict[str, list[Tensor]]] = {m: {} for m in FAITHFULNESS_METRICS}
        batches = self.probe.explained_test_set(trainer, pl_module, limit)
        self._say_cost(pl_module, batches)
        for batch in batches:
            maps = {n: batch.maps[n] for n in (*EXPLAINERS, *MAP_CONTROLS) if n in batch.maps}
            battery = faithfulness_battery(
                pl_module, batch.images, maps, batch.maps["random"], batch.layout,
                steps=self.steps, seed=self.seed + batch.index,
                max_batch=self._max_batch(batch.images),
            )  # fmt: skip
            background = battery.background
            parts.append(background)
            for metric, by_map in battery.scores.items():
                for name, values in by_map.items():
                    per_image[metric].setdefault(name, []).append(values.float().cpu())
            predicted = background["rollout"].predicted.cpu()
            self.probe.trust.note_predictions(predicted, batch.labels, classes)
        results = {
            method: FaithfulnessResult.cat([p[method] for p in parts]) for method in parts[0]
        }
        scores = {
            metric: {name: torch.cat(values) for name, values in by_map.items()}
            for metric, by_map in per_image.items()
        }
        return results, scores

    def _say_cost(self, pl_module: LightningModule, batches: list) -> None:
        images, maps, forwards, imputations, seconds = scoring_cost(pl_module, batches, self.steps)
        self.progress(
            self.probe.outputs.run(pl_module.trainer, "test"),
            f"{images:,} images x {maps} maps: {forwards:,} forwards and {imputations} ROAD "
            f"imputations per image, about {duration(seconds)}",
        )

    def _remember(self, epoch: int, means: dict[str, tuple[float, float]]) -> None:
        """Add one validation run's mean AUCs to the history (a map new to it starts here)."""
        analysed = len(self.history["epoch"])
        self.history["epoch"].append(epoch)
        for index, kind in enumerate(("deletion", "insertion")):
            for method, pair in means.items():
                values = self.history[kind].setdefault(method, [math.nan] * analysed)
                values.append(pair[index])


def _report_body(
    per_image: dict[str, dict[str, Tensor]],
    count: int,
    steps: int,
    figure: str,
    evolution: str | None,
    relevance: str,
) -> str:
    """The report section's Markdown: what each metric does, the means of every map on
    ``count`` images, and the figures (curves, CP-LRP relevance, evolution when trained)."""
    maps = list(next(iter(per_image.values())))
    rows = [
        (name, *(float(per_image[metric][name].mean()) for metric in per_image)) for name in maps
    ]
    return "\n\n".join(
        [
            *_metric_definitions(count, steps),
            "Means over the images (intervals and verdicts: *Which explainer can I trust here?*):",
            markdown_table(["map", *per_image], rows),
            f"![deletion and insertion curves (background)]({figure})",
            "CP-LRP's signed relevance on the probe images, for the predicted class (red: "
            "evidence for it, blue: against; each panel on its own symmetric scale):",
            f"![CP-LRP relevance]({relevance})",
            *(
                [
                    "The probe's AUCs at each analysed epoch of training "
                    "(from the checkpoint's history):",
                    f"![faithfulness over the epochs]({evolution})",
                ]
                if evolution
                else []
            ),
        ]
    )


def _evolution_figure(history: dict[str, Any]) -> Figure:
    """The probe's mean deletion and insertion AUC of each map over the epochs, a line per
    map: AUCs of 0.2-0.4 are one colour on a heatmap."""
    methods = list(history["deletion"])
    measures = {
        f"{kind} AUC": torch.tensor([history[kind][m] for m in methods])  # (M, E)
        for kind in ("deletion", "insertion")
    }
    return evolution_curves_figure(
        history["epoch"],
        measures,
        methods,
        {
            "deletion AUC": "mean AUC (lower is better)",
            "insertion AUC": "mean AUC (higher is better)",
        },
        "Faithfulness on the probe over the epochs",
    )


def _metric_definitions(count: int, steps: int) -> list[str]:
    """The report's paragraphs that say what each metric does, on ``count`` images."""
    return [
        f"Seven faithfulness metrics on {count} test images, each for every explainer "
        "and every control (maps that know nothing about the model: a random map, the "
        "image's intensity, its edges, a centred Gaussian). Each follows the probability "
        "of the class predicted on the clean image while patches are removed:",
        "- **deletion / insertion AUC (background)** (Petsiuk et al. 2018): patches in "
        f"map order set to each image's minimum value (its background), {steps} "
        "steps; lower deletion, higher insertion is better. On dark-background images "
        "a hole of background colour is out of distribution, which favours maps of the "
        "image's brightness whatever the model does;",
        "- **deletion AUC (blurred)**: removed patches take the values of the image "
        "blurred with a Gaussian of sigma = the patch size;",
        "- **ROAD** (Rong et al. 2022): 10%, ..., 90% of the patches removed, most "
        "relevant first (MoRF, lower is better) or least relevant first (LeRF, higher is "
        "better), every removed pixel filled by noisy linear imputation from its "
        "neighbours (noise sigma 0.01), so the hole carries no shape; AUCs over the "
        "fractions divided by their span; LeRF - MoRF higher is better;",
        "- **SaCo** (Wu et al. 2024): 10 patch groups by saliency, each removed alone "
        "(set to the image's mean); 1 when every more salient group costs more "
        "confidence, about 0 for a random map.",
    ]


def _auc_scalars(means: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Scalars ``faithfulness/deletion_<map>`` and ``.../insertion_<map>`` of the mean AUCs."""
    return {
        f"faithfulness/{kind}_{method.replace(' ', '_')}": pair[index]
        for method, pair in means.items()
        for index, kind in enumerate(("deletion", "insertion"))
    }


def _metric_means(per_image: dict[str, dict[str, Tensor]]) -> dict[str, float]:
    """Scalars ``faithfulness/<metric>/<map>`` of the test's per-image scores."""
    return {
        f"faithfulness/{_tag(metric)}/{_tag(name)}": float(values.mean())
        for metric, by_map in per_image.items()
        for name, values in by_map.items()
    }


def _tag(name: str) -> str:
    return name.replace(" - ", "_minus_").replace("(", "").replace(")", "").replace(" ", "_")


def scoring_cost(
    model: LightningModule, batches: list, steps: int
) -> tuple[int, int, int, int, float]:
    """What scoring the explained test ``batches`` costs: images, maps, forwards and ROAD
    imputations per image, and the seconds they take (one batch of forwards timed, one
    imputation of an image with its first half of patches removed timed on every thread)."""
    first = batches[0]
    maps = sum(n in first.maps for n in (*EXPLAINERS, *MAP_CONTROLS)) + 1  # and random
    images = sum(len(batch.labels) for batch in batches)
    timed = first.images[:1].expand(FORWARD_TIMING_IMAGES, -1, -1, -1)  # batched, as scored
    start = time.perf_counter()
    classifier_logits(model, [timed])
    forward = (time.perf_counter() - start) / FORWARD_TIMING_IMAGES
    forwards = maps * (3 * (steps + 1) + 2 * len(ROAD_FRACTIONS) + SACO_GROUPS)
    # The first half of the patches: one large hole, about what ROAD's fractions cost on
    # average (scattered small holes solve twice as fast and made the estimate too low).
    patches = torch.arange(first.layout.num_patches).reshape(first.layout.grid_size)
    patches = patches < first.layout.num_patches // 2
    height, width = first.layout.patch_size
    removed = patches.repeat_interleave(height, 0).repeat_interleave(width, 1)
    parallel = torch.get_num_threads()  # copies are imputed on that many threads at once
    start = time.perf_counter()
    noisy_linear_imputation(
        first.images[:1].cpu().float().expand(parallel, -1, -1, -1),
        removed.expand(parallel, -1, -1),
    )
    imputation = (time.perf_counter() - start) / parallel
    imputations = 2 * len(ROAD_FRACTIONS) * maps
    seconds = images * (forwards * forward + imputations * imputation)
    return images, maps, forwards, imputations, seconds


def _aucs(results: Mapping[str, FaithfulnessResult]) -> dict[str, tuple[Tensor, Tensor]]:
    """Method -> per-image (deletion, insertion) AUC, and the shared ``random`` order's."""
    aucs = {method: (result.deletion, result.insertion) for method, result in results.items()}
    first = results["rollout"]
    return {**aucs, "random": (first.random_deletion, first.random_insertion)}


def _curves(results: Mapping[str, FaithfulnessResult]) -> tuple[Tensor, dict[str, Tensor]]:
    """The fractions and the ``"deletion: <legend name>"`` curves of :func:`faithfulness_figure`."""
    curves = {}
    for method, result in results.items():
        curves[f"deletion: {method}"] = result.deletion_curve
        curves[f"insertion: {method}"] = result.insertion_curve
    first = results["rollout"]
    curves["deletion: random"] = first.random_deletion_curve
    curves["insertion: random"] = first.random_insertion_curve
    return first.fractions, curves
