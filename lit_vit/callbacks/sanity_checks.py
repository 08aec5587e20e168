"""Do the maps depend on the model at all? Randomisation and random-logit checks at test."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer

from lit_vit.attention import (
    CLASS_SPECIFIC,
    CONTROLS,
    cascading_randomization,
    explain,
    random_logit_targets,
    randomization_steps,
    spearman,
)
from lit_vit.callbacks.base import AttentionCallback, ReportSection
from lit_vit.callbacks.probe import ProbeRun
from lit_vit.callbacks.report import markdown_table
from lit_vit.plotting import randomization_figure


class SanityChecks(AttentionCallback):
    """Sanity checks of every explainer on the test probe (Adebayo et al. 2018).

    At test, on the probe images, for rollout, attention flow, class-token
    attention (last layer, heads averaged), gradient rollout and input x
    gradient (both for the class the trained model predicts):

    - **cascading randomisation**: the model's parameters are re-initialised
      from the top (head, blocks from the last, then the patch and position
      embeddings with the prefix tokens), cumulatively; after each step each
      map is compared with the trained model's by Spearman correlation. The
      model is restored bit for bit afterwards. An explainer still above
      ``threshold`` once everything is random explains the input, not the model.
    - **random logit**: for the class-specific explainers, Spearman between the
      map for the predicted class and for a random other class; the
      class-agnostic ones score 1 by construction.

    Definitions in ``docs/attention.md``. Skipped under ``fast_dev_run``.
    With ``at_fit_end``, the same checks also run at the end of fit on the
    validation probe (figure, scalars and a table; the report is the test's).

    Logs:

    - image ``test_attention/sanity_checks``: a curve per explainer.
    - scalars ``test_attention/sanity/randomised_<explainer>`` (after full
      randomisation) and ``test_attention/sanity/random_logit_<explainer>``
      (class-specific explainers), explainer names with ``_`` for spaces.
    - with ``at_fit_end``: the same under ``val_attention/`` at the step of the
      last validation run, and text ``val_attention/sanity_checks/table``.

    Args:
        threshold: Correlation after full randomisation above which an
            explainer fails, in (0, 1].
        seed: Seed of the re-initialisation (step ``i`` uses ``seed + i``) and
            of the random classes.
        at_fit_end: Also check the trained model at the end of fit.
        name: See :class:`~lit_vit.callbacks.base.AttentionCallback`.

    Raises:
        ValueError: For ``threshold`` outside (0, 1].

    Example::

        Trainer(callbacks=[AttentionProbe(), SanityChecks(threshold=0.5)])

    .. code-block:: yaml

        trainer:
          callbacks:
            - class_path: lit_vit.callbacks.SanityChecks
              init_args: {threshold: 0.5}
    """

    report_order = 70
    per_run = False

    def __init__(
        self,
        threshold: float = 0.5,
        seed: int = 0,
        at_fit_end: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if not 0 < threshold <= 1:
            raise ValueError(f"SanityChecks: threshold={threshold} must be in (0, 1].")
        self.threshold = threshold
        self.seed = seed
        self.at_fit_end = at_fit_end

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_fit_end and trainer.is_global_zero and not self.probe.reduced:
            self.check(trainer, pl_module, self.probe.run(trainer, "fit_end"))

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero and not self.probe.reduced:
            self.check(trainer, pl_module, self.probe.run(trainer, "test"))

    def check(self, trainer: Trainer, pl_module: LightningModule, run: ProbeRun) -> None:
        """Both checks on the probe of ``run``'s stage; at test, the report's section too."""
        probe = self.probe.probe(trainer, pl_module, run.stage)
        images = probe.images.to(pl_module.device)
        recorder = self.probe.recorder
        logits = recorder.record(images, full=False).logits
        predicted, classes = logits.argmax(dim=-1), logits.shape[-1]
        steps = randomization_steps(pl_module, self.probe.recorder.backend)
        curve = cascading_randomization(
            pl_module, steps, lambda: explain(recorder, images, predicted), self.seed
        )
        other = random_logit_targets(predicted, classes, self.seed)
        trained = curve.trained  # the maps of the trained model, computed once
        swapped = explain(recorder, images, other.to(predicted.device))
        random_logit = {
            name: float(spearman(swapped[name], trained[name]).mean()) for name in CLASS_SPECIFIC
        }
        randomised = curve.after_full_randomisation()
        verdicts = {
            name: "passes"
            if value < self.threshold and random_logit.get(name, 0.0) < self.threshold
            else "fails"
            for name, value in randomised.items()
        }
        scalars = {f"sanity/randomised_{_tag(n)}": value for n, value in randomised.items()}
        scalars |= {f"sanity/random_logit_{_tag(n)}": value for n, value in random_logit.items()}
        self.log_scalars(pl_module, run, scalars)
        figure = randomization_figure(curve.labels, curve.correlations, self.threshold)
        path = self.log_figure(trainer, run, "sanity_checks", figure)
        section = self._section(randomised, random_logit, verdicts, len(images), path)
        if run.stage != "test":
            self.probe.log_text(trainer, run, self.key("sanity_checks/table"), section.body)
            return
        model_free = dict.fromkeys(CONTROLS, 1.0)  # the controls ignore the model and the class
        self.probe.add_scores("Spearman after full randomisation", randomised | model_free)
        self.probe.add_scores(
            "random-logit Spearman", {n: random_logit.get(n, 1.0) for n in randomised} | model_free
        )
        self.probe.add_scores("sanity checks", verdicts)
        self.report_section = section

    def _section(
        self, randomised: dict, random_logit: dict, verdicts: dict, count: int, figure: str
    ) -> ReportSection:
        rows = [
            (
                name,
                value,
                random_logit.get(name, "1 (class-agnostic)"),
                verdicts[name],
            )
            for name, value in randomised.items()
        ]
        failing = [row[0] for row in rows if row[3] == "fails"]
        body = "\n\n".join(
            [
                f"On {count} probe images. Spearman correlation of each explainer's map "
                "with its map of the trained model, after re-initialising the head, then each "
                "block from the last, then the patch and position embeddings with the prefix "
                f"tokens; an explainer still above {self.threshold} once the whole model is "
                "random explains the input rather than the model. Random logit: the map for "
                "the predicted class against the map for a random other class.",
                markdown_table(
                    [
                        "explainer",
                        "Spearman after full randomisation",
                        "random-logit Spearman",
                        "verdict",
                    ],
                    rows,
                ),
                f"![cascading randomisation]({figure})",
            ]
        )
        verb = "fails" if len(failing) == 1 else "fail"
        summary = (
            f"- Sanity checks: {', '.join(failing)} {verb} (above {self.threshold} after full "
            "randomisation, or for a random class); the others pass."
            if failing
            else f"- Sanity checks: every explainer passes (below {self.threshold})."
        )
        return ReportSection(self.title("Sanity checks"), self.report_order, body, [summary])


def _tag(name: str) -> str:
    return name.replace(" ", "_")
