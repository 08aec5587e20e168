"""What the layers compute, epoch by epoch: CKA, the logit lens, token norms and sinks."""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_vit.attention import (
    SINK_THRESHOLD,
    cka_matrix,
    collapsed_layers,
    layer_cka,
    logit_lens,
    token_norms,
)
from lit_vit.callbacks.analysis import ProbeAnalysis
from lit_vit.callbacks.base import HistoryCallback, ReportSection
from lit_vit.callbacks.outputs import ProbeRun
from lit_vit.callbacks.report import markdown_table
from lit_vit.plotting import (
    evolution_figure,
    layer_curves_figure,
    rollout_figure,
    similarity_figure,
)

# Per-layer measures whose history is kept: name -> (scalar key, colour scale of its
# evolution panel; None for the data's end).
MEASURES = {
    "logit-lens accuracy": ("logit_lens/accuracy", (0.0, 1.0)),
    "true-class probability": ("logit_lens/true_probability", (0.0, 1.0)),
    "CKA with previous epoch": ("cka_previous", (0.0, 1.0)),
    "high-norm share": ("token_norms/high_norm_share", (0.0, None)),
    "sink rate": ("token_norms/sink_rate", (0.0, 1.0)),
    "entropy": ("entropy_mean", (0.0, 1.0)),
}
# The measures of the evolution figure (the true-class probability follows the accuracy, and
# HeadDiversity's evolution shows the entropy).
EVOLUTION_PANELS = (
    "logit-lens accuracy",
    "CKA with previous epoch",
    "high-norm share",
    "sink rate",
)
# The per-layer shares drawn in one panel.
SHARES = ("logit-lens accuracy", "true-class probability", "high-norm share", "sink rate")
# Fewest probe images the debiased CKA estimator takes.
MIN_CKA_IMAGES = 4


class LayerRepresentations(HistoryCallback):
    """What the layers compute: how similar they are, where the class becomes readable,
    which tokens grow into high-norm sinks, and whether attention entropy collapses.

    From the probe's one capture (every block's output is recorded in the same
    forward; no second pass), per layer (definitions in ``docs/attention.md``):

    - **CKA** (linear; debiased from 4 probe images on) between every pair of block outputs, tokens
      pooled as the model pools them and, separately, all tokens; and each layer's
      pooled output against the same layer at the previous analysed epoch (1 =
      unchanged: the layer has settled);
    - **logit lens**: the model's own final norm, pooling and head on each
      block's output: accuracy and mean probability of the true class;
    - **token norms**: the share of high-norm tokens (above 10x the image's median
      patch norm), the largest norm over the median, and the **sink rate** (share of
      heads whose mean attention to one token exceeds 0.3);
    - **entropy collapse**: a warning when a layer's mean attention entropy falls
      below ``collapse_fraction`` of the uniform entropy after having been above it.

    Logs (``LL`` = zero-padded layer; from the second analysed run for ``cka_previous``):

    - scalars ``val_attention/logit_lens/accuracy/layer_LL``,
      ``val_attention/logit_lens/true_probability/layer_LL``,
      ``val_attention/cka_previous/layer_LL``,
      ``val_attention/token_norms/high_norm_share/layer_LL``,
      ``val_attention/token_norms/sink_rate/layer_LL``
    - image ``val_attention/cka``: layers x layers, pooled and all tokens
    - image ``val_attention/layers``: logit lens and token norms over the layers
    - image ``test_attention/patch_norms`` (at test): the probe's patch-token norms at the
      layer with the largest norm ratio
    - image ``val_attention/representation_evolution``: each measure, layers x epochs
      (the history is kept in the checkpoint, so a resumed run continues it)
    - text ``val_attention/entropy_collapse`` when the alarm fires

    At test the same under ``test_attention/`` and a report section.

    Args:
        collapse_fraction: The entropy alarm's threshold, a fraction of the uniform entropy
            in (0, 1).
        every_n_epochs, name: See :class:`~lit_vit.callbacks.base.AttentionCallback`.

    Raises:
        ValueError: ``collapse_fraction`` outside (0, 1).

    Example::

        Trainer(callbacks=[AttentionProbe(), LayerRepresentations()])
    """

    report_order = 25
    hidden_states = True

    def __init__(
        self, collapse_fraction: float = 0.1, every_n_epochs: int = 1, name: str | None = None
    ) -> None:
        super().__init__(every_n_epochs, name)
        if not 0 < collapse_fraction < 1:
            raise ValueError(
                f"LayerRepresentations: collapse_fraction={collapse_fraction} must be in (0, 1)."
            )
        self.collapse_fraction = collapse_fraction
        self.history: dict[str, Any] = _empty_history()

    def charts(self) -> dict[str, list[str]]:
        return {
            self.title(f"{measure} by layer"): [self.layer_pattern(key)]
            for measure, (key, _) in MEASURES.items()
            if measure != "entropy"
        }

    def restored_history(self, history: dict[str, Any]) -> dict[str, Any]:
        return _empty_history() | history

    def analyze(
        self, trainer: Trainer, pl_module: LightningModule, analysis: ProbeAnalysis
    ) -> None:
        hidden = analysis.recording.hidden_states  # (L, B, N, D)
        layout = analysis.recording.layout
        readout = self.probe.recorder.backend.readout()
        with torch.no_grad():
            pooled = torch.stack([readout.pool(layer) for layer in hidden]).cpu()
        lens = None
        if readout.head is not None:
            lens = logit_lens(hidden, readout.logits, analysis.probe.labels)
        norms = token_norms(hidden, layout.num_prefix_tokens)
        sinks = analysis.recording.reduced.sink_rate().cpu()  # (L,)
        entropy = analysis.entropy.mean(dim=1)  # (L,)
        debiased = len(pooled[0]) >= MIN_CKA_IMAGES  # else the biased estimator, said so
        similarity = {
            "pooled tokens" + ("" if debiased else " (biased: < 4 images)"): cka_matrix(
                pooled, debiased
            ),
            # n = B * N inputs: the biased estimator, its bias negligible, in feature space
            "all tokens": cka_matrix(hidden.flatten(1, 2).cpu(), debiased=False),
        }
        change = self._change(pooled, analysis.stage, debiased)
        values = {
            "logit-lens accuracy": None if lens is None else lens.accuracy,
            "true-class probability": None if lens is None else lens.true_probability,
            "CKA with previous epoch": change,
            "high-norm share": norms.high_norm_share,
            "sink rate": sinks,
            "entropy": entropy,
        }
        self._log(pl_module, analysis.run, values)
        if analysis.stage == "val":
            self._remember(trainer.current_epoch, values, pooled)
            self._alarm(trainer, analysis.run)
        paths = self._figures(trainer, analysis, similarity, values, norms.norm_ratio, norms.norms)
        if analysis.stage == "test":
            model_accuracy = float((analysis.predictions == analysis.probe.labels).float().mean())
            self.report_section = self._section(lens, norms, sinks, model_accuracy, paths)

    # -- steps of the analysis ---------------------------------------------------------

    def _change(self, pooled: Tensor, stage: str, debiased: bool) -> Tensor | None:
        """``(L,)`` CKA of each layer's pooled output with the previous analysed validation
        run's (its probe images are the same), or None without one."""
        previous = self.history.get("previous_pooled")
        if stage != "val" or previous is None or previous.shape != pooled.shape:
            return None
        return layer_cka(previous, pooled, debiased).float()

    def _log(self, pl_module: LightningModule, run: ProbeRun, values: dict) -> None:
        scalars = {
            f"{MEASURES[measure][0]}/layer_{layer:02d}": float(value)
            for measure, per_layer in values.items()
            if per_layer is not None and measure != "entropy"
            for layer, value in enumerate(per_layer)
        }
        self.log_scalars(pl_module, run, scalars)

    def _remember(self, epoch: int, values: dict, pooled: Tensor) -> None:
        self.history["epoch"].append(epoch)
        for measure in MEASURES:
            per_layer = values[measure]
            layers = len(values["entropy"])
            self.history[measure].append(
                [math.nan] * layers if per_layer is None else [float(v) for v in per_layer]
            )
        self.history["previous_pooled"] = pooled

    def _alarm(self, trainer: Trainer, run: ProbeRun) -> None:
        """Warn (console and text) about layers whose attention entropy collapsed."""
        collapsed = collapsed_layers(self.history["entropy"], self.collapse_fraction)
        if not collapsed:
            return
        latest = self.history["entropy"][-1]
        listed = ", ".join(f"layer {layer} ({latest[layer]:.3f})" for layer in collapsed)
        message = (
            f"Epoch {trainer.current_epoch}: attention entropy collapsed in {listed}, below "
            f"{self.collapse_fraction} of the uniform entropy after having been above it: "
            "each query attends to almost one token (Zhai et al. 2023). Training may be "
            "unstable: lower the learning rate or warm up longer."
        )
        rank_zero_warn(message)
        self.probe.outputs.log_text(trainer, run, self.key("entropy_collapse"), message)

    def _figures(self, trainer, analysis, similarity, values, norm_ratio, norms) -> dict:
        """Log this run's figures; their PNG paths by key."""
        shares = {name: values[name] for name in SHARES if values[name] is not None}
        figures = {
            "cka": similarity_figure(similarity, "Linear CKA between layers"),
            "layers": layer_curves_figure(
                {"share": shares, "largest / median patch norm": {"norm ratio": norm_ratio}},
                "What each layer's output holds (probe images)",
            ),
        }
        if analysis.stage == "test":  # the report's; each epoch's curves hold the ratios
            figures["patch_norms"] = self._patch_norms_figure(trainer, analysis, norms, norm_ratio)
        if self.history["epoch"]:
            figures["representation_evolution"] = self._evolution_figure()
        return {
            key: self.log_figure(trainer, analysis.run, key, figure)
            for key, figure in figures.items()
        }

    def _patch_norms_figure(self, trainer, analysis, norms: Tensor, norm_ratio: Tensor):
        """The probe's patch-token norms, ``(L, B, N)``, at the layer with the largest ratio."""
        layout, rows = analysis.recording.layout, analysis.figure_rows
        layer = int(norm_ratio.argmax())
        grid = norms[layer, :rows, layout.num_prefix_tokens :].reshape(-1, *layout.grid_size)
        names = self.class_names(trainer, analysis)
        labels = [names[label] for label in analysis.probe.labels[:rows]]
        title = f"Output norm of each patch token in layer {layer} (each image to its range)"
        maps = {f"token norm, layer {layer}": grid}
        return rollout_figure(analysis.probe.pixels[:rows], maps, labels, title=title)

    def _evolution_figure(self):
        measures = {
            measure: torch.tensor(self.history[measure]).T  # (L, E)
            for measure in EVOLUTION_PANELS
        }
        ranges = {measure: scale for measure, (_, scale) in MEASURES.items()}
        return evolution_figure(
            self.history["epoch"],
            measures,
            ranges,
            title="What the layers compute, over the epochs",
        )

    def _section(self, lens, norms, sinks, model_accuracy: float, paths: dict) -> ReportSection:
        body, summary = _section_body(
            lens, norms, sinks, model_accuracy, paths, self.history["epoch"]
        )
        title = self.title("What the layers compute")
        return ReportSection(title, self.report_order, body, summary)


def _empty_history() -> dict[str, Any]:
    return {"epoch": [], **{measure: [] for measure in MEASURES}, "previous_pooled": None}


def _lens_statement(lens, model_accuracy: float) -> str:
    if lens is None:
        return "- Logit lens: this model's head is not known to lit-vit, so no layer is read."
    first = lens.first_readable_layer(model_accuracy)
    where = (
        f"from layer {first} of {len(lens.accuracy)}"
        if first is not None
        else "at no layer before the output"
    )
    return (
        f"- The class is readable (logit-lens accuracy within 5 points of the model's "
        f"{model_accuracy:.1%} on the probe) {where}."
    )


def _norm_statement(norms, sinks: Tensor) -> str:
    layer = int(norms.norm_ratio.argmax())
    return (
        f"- Largest token norm over the median patch norm: {float(norms.norm_ratio[layer]):.1f} "
        f"in layer {layer} ({float(norms.high_norm_share[layer]):.1%} high-norm tokens); "
        f"attention sinks in up to {float(sinks.max()):.0%} of the heads (layer "
        f"{int(sinks.argmax())})."
    )


def _section_body(
    lens, norms, sinks: Tensor, model_accuracy: float, paths: dict, epochs: list[int]
) -> tuple[str, list[str]]:
    """The report section's Markdown and its summary statements."""
    layers = len(sinks)
    rows = [
        (
            layer,
            "n/a" if lens is None else float(lens.accuracy[layer]),
            "n/a" if lens is None else float(lens.true_probability[layer]),
            float(norms.norm_ratio[layer]),
            float(norms.high_norm_share[layer]),
            float(norms.absolute_share[layer]),
            float(sinks[layer]),
        )
        for layer in range(layers)
    ]
    table = markdown_table(
        [
            "layer",
            "logit-lens accuracy",
            "true-class probability",
            "largest / median norm",
            "high-norm share",
            "norm > 150",
            f"sink rate (> {SINK_THRESHOLD})",
        ],
        rows,
    )
    summary = [_lens_statement(lens, model_accuracy), _norm_statement(norms, sinks)]
    evolution = (
        [
            f"Over the training epochs {epochs[0]} to "
            f"{epochs[-1]} (CKA with previous epoch: 1 = the layer no longer "
            "changes):",
            f"![evolution]({paths['representation_evolution']})",
        ]
        if "representation_evolution" in paths
        else []
    )
    body = "\n\n".join(
        [
            "Per layer, on the probe images: the model's own head read at each block "
            "(logit lens), and the token norms and attention sinks (Darcet et al. 2024).",
            table,
            f"![layers]({paths['layers']}) ![patch norms]({paths['patch_norms']})",
            "Linear CKA between every pair of layers (tokens pooled as the model pools "
            "them, and all tokens):",
            f"![cka]({paths['cka']})",
            *evolution,
        ]
    )
    return body, summary
