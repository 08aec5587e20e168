"""Do the maps depend on the model at all? Randomisation and random-logit checks at test."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from lit_vit.attention import (
    CLASS_SPECIFIC,
    CONTROLS,
    INDISTINGUISHABLE,
    bootstrap_interval,
    cascading_randomization,
    explain,
    random_logit_targets,
    randomization_steps,
    spearman,
    threshold_verdict,
)
from lit_vit.callbacks.analysis import ProbeAnalysis
from lit_vit.callbacks.base import AttentionCallback, ReportSection
from lit_vit.callbacks.explained import duration
from lit_vit.callbacks.outputs import ProbeRun
from lit_vit.callbacks.report import markdown_table
from lit_vit.plotting import randomization_figure

# Fewest test images a verdict rests on.
MIN_IMAGES = 32
# Explainers that cost seconds per image on large grids (a maximum flow per patch).
SPARSE_EXPLAINERS = ("flow",)


class SanityChecks(AttentionCallback):
    """Sanity checks of every explainer (Adebayo et al. 2018), with intervals over images.

    At test, on the first ``images`` test images (at least 32, so that a verdict
    rests on an interval rather than on a few images), for rollout, attention
    flow, class-token attention (last layer, heads averaged), gradient rollout,
    input x gradient and CP-LRP (the class-specific ones for the class the
    trained model predicts):

    - **cascading randomisation**: the model's parameters are re-initialised
      from the top (head, blocks from the last, then the patch and position
      embeddings with the prefix tokens), cumulatively; after each step each
      map is compared with the trained model's by Spearman correlation. The
      model is restored bit for bit afterwards. An explainer passes when the
      bootstrap 95% interval of its mean correlation once everything is random
      lies below ``threshold``, fails when it lies above, and is "not
      distinguishable" otherwise: it explains the input, not the model, where it
      stays high.
    - **random logit**: for the class-specific explainers, Spearman between the
      map for the predicted class and for a random other class, judged the same
      way; "n/a" for the class-agnostic ones (they are the same for every class).

    Definitions in ``docs/attention.md``. Skipped under ``fast_dev_run``.
    With ``at_fit_end``, the same checks also run at the end of fit on the
    validation probe (figure, scalars and a table; the report is the test's).

    Logs:

    - image ``test_attention/sanity_checks``: a curve per explainer.
    - scalars ``test_attention/sanity/randomised_<explainer>`` (mean after full
      randomisation) and ``test_attention/sanity/random_logit_<explainer>``
      (class-specific explainers), explainer names with ``_`` for spaces.
    - with ``at_fit_end``: the same under ``val_attention/`` at the step of the
      last validation run, and text ``val_attention/sanity_checks/table``.

    Args:
        threshold: Correlation after full randomisation (and for a random
            class) above which an explainer fails, in (0, 1].
        images: Test images checked at test (at least 32; at most the test set).
        seed: Seed of the re-initialisation (step ``i`` uses ``seed + i``), of the
            random classes and of the bootstrap.
        at_fit_end: Also check the trained model at the end of fit.
        flow_at_ends_above: On grids of more patches than this, attention flow (seconds per
            image there) is computed for the trained and the fully random model only, the
            two ends the verdict compares, and the report says so; ``None`` (the
            definition): after every step.
        name: See :class:`~lit_vit.callbacks.base.AttentionCallback`.

    Raises:
        ValueError: For ``threshold`` outside (0, 1] or ``images`` below 32.

    Example::

        Trainer(callbacks=[AttentionProbe(), SanityChecks(threshold=0.5, images=32)])
    """

    report_order = 70
    on_reduced_runs = False  # fast_dev_run: skipped

    def __init__(
        self,
        threshold: float = 0.5,
        images: int = 32,
        seed: int = 0,
        at_fit_end: bool = False,
        flow_at_ends_above: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if not 0 < threshold <= 1:
            raise ValueError(f"SanityChecks: threshold={threshold} must be in (0, 1].")
        if images < MIN_IMAGES:
            raise ValueError(
                f"SanityChecks: images={images} must be at least {MIN_IMAGES}: fewer give "
                "intervals too wide for a verdict."
            )
        self.threshold = threshold
        self.images = images
        self.seed = seed
        self.at_fit_end = at_fit_end
        self.stages = frozenset({"fit_end", "test"} if at_fit_end else {"test"})
        self.flow_at_ends_above = flow_at_ends_above

    @property
    def explained_test_images(self) -> int:
        return self.images

    def analyze(
        self, trainer: Trainer, pl_module: LightningModule, analysis: ProbeAnalysis
    ) -> None:
        """Both checks on the run's images (test: the first ``images`` test images; fit end:
        the validation probe); at test, the report's section and trust-table columns too."""
        run = analysis.run
        images = self._images(trainer, pl_module, run.stage)
        recorder = self.probe.recorder
        logits = recorder.record(images, full=False).logits
        predicted, classes = logits.argmax(dim=-1), logits.shape[-1]
        curve, sparse, patches = self._cascade(pl_module, run, images, predicted)
        other = random_logit_targets(predicted, classes, self.seed)
        swapped = explain(recorder, images, other.to(predicted.device), self.probe.explainers)
        random_logit = {
            name: spearman(swapped[name], curve.trained[name])
            for name in CLASS_SPECIFIC
            if name in swapped
        }
        checks = {
            name: (
                threshold_verdict(values, self.threshold, seed=self.seed)[0],
                threshold_verdict(random_logit[name], self.threshold, seed=self.seed)[0]
                if name in random_logit
                else "n/a",
            )
            for name, values in curve.randomised.items()
        }
        scalars = {f"sanity/randomised_{_tag(n)}": v.mean() for n, v in curve.randomised.items()}
        scalars |= {f"sanity/random_logit_{_tag(n)}": v.mean() for n, v in random_logit.items()}
        self.log_scalars(pl_module, run, scalars)
        figure = randomization_figure(curve.labels, curve.correlations, self.threshold)
        path = self.log_figure(trainer, run, "sanity_checks", figure)
        section = self._section(curve.randomised, random_logit, checks, len(images), path)
        if sparse:
            section.body += (
                f"\n\nOn {patches} patches {', '.join(sparse)} costs seconds per image, so it "
                "is computed for the trained and the fully random model only (the verdict's "
                "two ends); its curve has no points between."
            )
        if run.stage != "test":
            self.probe.outputs.log_text(trainer, run, self.key("sanity_checks/table"), section.body)
            return
        model_free = dict.fromkeys(CONTROLS, "1 (model-free)")
        not_applicable = dict.fromkeys(CONTROLS, "n/a")
        agnostic = {n: "n/a (class-agnostic)" for n in curve.randomised if n not in random_logit}
        self.probe.trust.add("Spearman after full randomisation", curve.randomised | model_free)
        self.probe.trust.add("random-logit Spearman", random_logit | agnostic | model_free)
        for index, column in enumerate(("randomisation check", "random-logit check")):
            verdicts = {name: pair[index] for name, pair in checks.items()}
            self.probe.trust.add(column, verdicts | not_applicable)
        self.report_section = section

    def _cascade(self, pl_module: LightningModule, run: ProbeRun, images: Tensor, predicted):
        """Cascading randomisation of ``(n, C, H, W)`` images, explaining ``(n,)`` predicted
        classes; on large grids the expensive explainers only at the two ends. The curve, the
        explainers left out between, and the grid's patches."""
        recorder = self.probe.recorder
        steps = randomization_steps(pl_module, recorder.backend)
        explainers = self.probe.explainers
        patches = recorder.backend.layout(tuple(images.shape[-2:])).num_patches
        sparse = [name for name in SPARSE_EXPLAINERS if name in explainers]
        above = self.flow_at_ends_above
        sparse = sparse if above is not None and patches > above else []
        self.progress(run, f"cascading randomisation of {len(steps)} steps on {len(images)} images")
        calls = itertools.count()

        def explain_now() -> dict[str, Tensor]:
            """All explainers for the trained and the fully random model; the expensive ones
            left out of the steps between on large grids."""
            every_step = next(calls) in (0, len(steps))
            methods = [n for n in explainers if every_step or n not in sparse]
            return explain(recorder, images, predicted, methods)

        explain_all = _estimating(
            explain_now,
            len(steps),
            bool(sparse),
            lambda seconds: self.progress(run, f"about {duration(seconds)} more"),
        )
        return cascading_randomization(pl_module, steps, explain_all, self.seed), sparse, patches

    def _images(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> Tensor:
        """``(n, C, H, W)`` images checked: the first ``images`` test images at test, else the
        validation probe."""
        if stage != "test":
            return self.probe.probe(trainer, pl_module, stage).images.to(pl_module.device)
        batches = self.probe.explained_test_set(trainer, pl_module, self.images)
        return torch.cat([batch.images for batch in batches])

    def _section(
        self,
        randomised: dict[str, Tensor],
        random_logit: dict[str, Tensor],
        checks: dict[str, tuple[str, str]],
        count: int,
        figure: str,
    ) -> ReportSection:
        rows = [
            (
                name,
                str(bootstrap_interval(values, seed=self.seed)),
                checks[name][0],
                str(bootstrap_interval(random_logit[name], seed=self.seed))
                if name in random_logit
                else "n/a (class-agnostic)",
                checks[name][1],
            )
            for name, values in randomised.items()
        ]
        body = "\n\n".join(
            [
                f"On {count} images. Spearman correlation of each explainer's map with its map "
                "of the trained model, after re-initialising the head, then each block from the "
                "last, then the patch and position embeddings with the prefix tokens; an "
                f"explainer whose correlation stays above {self.threshold} once the whole model "
                "is random explains the input rather than the model. Random logit: the map for "
                "the predicted class against the map for a random other class (class-specific "
                "explainers only). Each cell is the mean with its bootstrap 95% interval over "
                "the images; a check passes (or fails) only where the interval lies below (or "
                f"above) {self.threshold}, else it is not distinguishable on {count} images.",
                markdown_table(
                    [
                        "explainer",
                        "Spearman after full randomisation",
                        "randomisation check",
                        "random-logit Spearman",
                        "random-logit check",
                    ],
                    rows,
                ),
                f"![cascading randomisation]({figure})",
            ]
        )
        failing = [name for name, pair in checks.items() if "fails" in pair]
        unsure = [
            name
            for name, pair in checks.items()
            if name not in failing and INDISTINGUISHABLE in pair
        ]
        verb = "fails" if len(failing) == 1 else "fail"
        summary = "- Sanity checks on {} images: {}{}.".format(
            count,
            f"{', '.join(failing)} {verb}" if failing else "no explainer fails",
            f"; not distinguishable from {self.threshold}: {', '.join(unsure)}" if unsure else "",
        )
        return ReportSection(self.title("Sanity checks"), self.report_order, body, [summary])


def _estimating(
    explain_all: Callable[[], dict[str, Tensor]],
    steps: int,
    sparse: bool,
    say: Callable[[float], None],
) -> Callable[[], dict[str, Tensor]]:
    """``explain_all`` that says how long the rest of the checks will take: the trained and
    the fully random model and a random class explained with every explainer, the ``steps``
    between without the ``sparse`` ones (timed on the first call of each kind)."""
    timed: list[float] = []

    def explain_and_estimate() -> dict[str, Tensor]:
        start = time.perf_counter()
        maps = explain_all()
        timed.append(time.perf_counter() - start)
        if len(timed) == (2 if sparse else 1):
            full, between = timed[0], timed[-1]
            total = 3 * full + (steps - 1) * between  # ends, random class; steps between
            say(total - sum(timed))
        return maps

    return explain_and_estimate


def _tag(name: str) -> str:
    return name.replace(" ", "_")
