"""The probe owner: one fixed set of images, one captured pass per analysed run, one report.

:class:`AttentionProbe` selects the probe images once, captures their
attention once per due validation run (and once at test) with exactly the
gradients its analysis callbacks declare, hands the same
:class:`ProbeAnalysis` to each of them, and assembles the test report from
the sections they render. The analysis callbacks find it at ``setup``; when a
trainer lists them without one, a probe with default settings is added, so
``Trainer(callbacks=[AttentionMaps()])`` just works. Its checkpoint state is a
few hundred bytes: the probe's dataset positions and a fingerprint of its
pixels, never the images.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_vit._arguments import check_counts
from lit_vit._private import logged_step
from lit_vit.attention import (
    EXPLAINERS,
    AttentionRecorder,
    NonFiniteAttentionError,
    TokenLayout,
)
from lit_vit.callbacks._data import Probe, ProbeSelection, check_probe_size
from lit_vit.callbacks.analysis import ProbeAnalysis, ProbeConsumer, check_distinct_names
from lit_vit.callbacks.explained import ExplainedBatch, ExplainedTestSet, explain_test_set
from lit_vit.callbacks.outputs import RunOutputs
from lit_vit.callbacks.report import ProbeFacts, TrustScores, report_header, write_report

# Strategies whose parameters are sharded: a forward pass on rank zero alone would deadlock.
SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


class AttentionProbe(Callback):
    """Owns the probe: selects it, captures it once per analysed run, writes the report.

    For each run its analysis callbacks declare (due validation runs, fit end,
    test), it hands them one :class:`~lit_vit.callbacks.analysis.ProbeAnalysis`
    whose capture (one forward pass, with gradients only for the targets they
    declare) runs on first read; on rank zero only, never during the sanity
    check. At the end of the test it writes ``<log_dir>/attention/report.md``.
    The validation probe is ``size`` class-balanced validation images drawn with
    ``seed`` (at test, the same draw from the test set); its positions and a
    fingerprint are checkpointed, so a resumed run analyses the same images.

    Args:
        size: Number of probe images.
        seed: Seed of the probe's selection.
        module: Qualified name of the ViT inside the LightningModule, for
            modules holding several; ``None`` finds the only one.
        figure_rows: Probe images shown in image grids (the first ones); the
            measures use all ``size``.
        full_attention: Keep the full ``(L, B, H, N, N)`` attention (and its
            gradients) in :attr:`ProbeAnalysis.recording` for callbacks of your
            own that read it. Off: each layer is reduced while it is recorded to
            what the analyses read, at most ``1/H`` of it
            (:class:`~lit_vit.attention.ReducedAttention`).
        explainers: The explainers the test-time analyses compare (faithfulness,
            focus, sanity checks), from :data:`~lit_vit.attention.EXPLAINERS`; ``None``
            for all. Leave out ``flow`` on large grids: it solves a maximum flow per
            patch and image (about 3 s per 224 px image on a CPU core).

    Raises:
        ValueError: For ``size`` or ``figure_rows`` below 1, an unknown explainer; at
            setup, when the module has no ViT or no attention modules, ``module`` names none,
            the probe is larger than the evaluation set, two analysis callbacks
            share a name, or the strategy shards parameters (FSDP, DeepSpeed).

    Example::

        Trainer(callbacks=[AttentionProbe(size=16), AttentionMaps(), AttentionRollout()])
    """

    def __init__(
        self,
        size: int = 8,
        seed: int = 0,
        module: str | None = None,
        figure_rows: int = 8,
        full_attention: bool = False,
        explainers: list[str] | None = None,
    ) -> None:
        self.explainers = _checked_arguments(size, figure_rows, explainers)
        self.size = size
        self.seed = seed
        self.module = module
        self.figure_rows = figure_rows
        self.full_attention = full_attention
        self.consumers: list[ProbeConsumer] = []
        self.recorder: AttentionRecorder | None = None
        self.outputs = RunOutputs()
        self.trust = TrustScores()
        self._setup_key: tuple[int, str] | None = None
        self.selection = ProbeSelection(size, seed)
        self._checkpoint: dict[str, Any] = {}
        self._test_images = 0
        self._heads = 0
        self._layout: TokenLayout | None = None
        self._warned_divergence = False
        self._explained = ExplainedTestSet()  # this test run's, shared by the consumers

    def register(self, consumer: ProbeConsumer) -> None:
        """Add ``consumer`` (once), its name checked against the others'."""
        if consumer not in self.consumers:
            check_distinct_names([*self.consumers, consumer])
            self.consumers.append(consumer)

    # -- Lightning hooks --------------------------------------------------------------

    @property
    def state_key(self) -> str:
        return "AttentionProbe"

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._setup_key == (id(trainer), stage):
            return
        if self._setup_key is not None and self._setup_key[0] != id(trainer):
            self.selection.forget()  # another trainer, maybe other data: select it anew
        self._setup_key = (id(trainer), stage)
        self.consumers = []
        _refuse_sharded(trainer)
        self.recorder = AttentionRecorder(pl_module, vit_name=self.module)
        self.outputs.setup(trainer)
        check_probe_size(trainer, stage, self.size, self.num_layers, self.figure_rows)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """TensorBoard's custom scalars: one multi-line chart per measure (a line per layer)."""
        charts = {title: p for consumer in self.consumers for title, p in consumer.charts().items()}
        self.outputs.add_charts(trainer, charts)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.outputs.write_fit_row(trainer, pl_module)
        self._dispatch(trainer, pl_module, "fit_end")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.outputs.close()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.outputs.last_val_step = logged_step(trainer)
        self._dispatch(trainer, pl_module, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._test_images += len(batch[0])

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._test_images = 0
        self.trust = TrustScores()
        self._explained.clear()

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._dispatch(trainer, pl_module, "test")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._explained.clear()  # the test images and their maps: not kept past the test
        if not trainer.is_global_zero or self.outputs.root is None:
            return
        sections = [c.report_section for c in self.consumers if c.report_section is not None]
        trust = self.trust.table()
        if trust is not None:
            self.outputs.log_text(
                trainer, self.outputs.run(trainer, "test"), "trust_table", trust.body
            )
            sections.append(trust)
        path = write_report(
            self.outputs.root / "report.md", self._report_header(trainer, pl_module), sections
        )
        self.outputs.log_report(trainer, path)
        self.outputs.write_test_row(trainer, pl_module)
        rank_zero_info(f"Attention report: {path}")

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._checkpoint = {
            "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
        }

    def state_dict(self) -> dict[str, Any]:
        return self.selection.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.selection.load_state_dict(state_dict)

    # -- for the analysis callbacks ---------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.recorder.module_names)

    @property
    def reduced(self) -> bool:
        """``fast_dev_run``: no files, no resolution sweep, small test samples."""
        return self.outputs.root is None

    def probe(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> Probe:
        """The probe of ``"val"`` (also used at fit end) or ``"test"``, selected once."""
        return self.selection.get(trainer, pl_module, stage)

    def explained_test_set(
        self, trainer: Trainer, pl_module: LightningModule, limit: int | None
    ) -> list[ExplainedBatch]:
        """The first ``limit`` test images (``None``: all) with every explainer's and control's
        map, batch by batch.

        Explaining is the expensive part of the test-time analysis (a pass with
        gradients, attention flow, input x gradient), so the probe does it once
        per test run, for as many images as its most demanding consumer declares
        in :attr:`ProbeConsumer.explained_test_images`,
        and every consumer reads its share.
        """

        def explain(most: int | None) -> list[ExplainedBatch]:
            if self.reduced:
                most = min(most or self.size, self.size)
            total = min(most or sys.maxsize, self._test_images or sys.maxsize)
            return explain_test_set(
                trainer, pl_module, self.recorder, self.explainers, self.seed, most, total
            )

        wanted = [consumer.explained_test_images for consumer in self.consumers]
        return self._explained.first(limit, wanted, explain)

    # -- internals --------------------------------------------------------------------

    def _dispatch(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Hand this ``stage``'s run to every consumer that analyses it (on rank zero), with one
        capture for all of them on first read; a diverged capture skips them, warned once."""
        consumers = [
            consumer
            for consumer in self.consumers
            if stage in consumer.stages
            and (stage != "val" or consumer.due(trainer))
            and (consumer.on_reduced_runs or not self.reduced)
        ]
        if not consumers or not trainer.is_global_zero:
            return
        analysis = ProbeAnalysis.prepare(
            self.recorder, self.probe(trainer, pl_module, stage),
            self.outputs.run(trainer, stage), consumers, device=pl_module.device,
            full_attention=self.full_attention, figure_rows=self.figure_rows,
            reduced=self.reduced,
        )  # fmt: skip
        for consumer in consumers:
            consumer.progress(analysis.run, "analysing")
            try:
                consumer.analyze(trainer, pl_module, analysis)
            except NonFiniteAttentionError as error:
                self._warn_divergence(trainer, consumers, error)
                return
        if analysis.captured:  # the report's header shows the model as the test saw it
            self._heads = analysis.recording.reduced.query_rows.shape[2]
            self._layout = analysis.recording.layout

    def _warn_divergence(
        self, trainer: Trainer, consumers: Sequence[ProbeConsumer], error: Exception
    ) -> None:
        if not self._warned_divergence:
            self._warned_divergence = True
            rank_zero_warn(divergence_message(trainer.current_epoch, consumers, error))

    def _report_header(self, trainer: Trainer, pl_module: LightningModule) -> list[str]:
        facts = ProbeFacts(
            vit=self.recorder.vit,
            layout=self._layout,
            layers=self.num_layers,
            heads=self._heads,
            size=self.size,
            seed=self.seed,
            checkpoint=self._checkpoint,
            test_images=self._test_images,
            explainers=self.explainers,
        )
        return report_header(trainer, pl_module, facts)


def attach_probe(
    trainer: Trainer, pl_module: LightningModule, stage: str, consumer: ProbeConsumer
) -> AttentionProbe:
    """The trainer's probe (added with defaults when it has none), set up, with ``consumer``
    registered.

    Raises:
        ValueError: Several probes, or ``consumer``'s name taken by another
            callback of its kind.
    """
    probes = [cb for cb in trainer.callbacks if isinstance(cb, AttentionProbe)]
    if len(probes) > 1:
        raise ValueError(
            f"the trainer has {len(probes)} AttentionProbe callbacks; keep one: it is "
            "shared by every attention callback."
        )
    if probes:
        probe = probes[0]
    else:
        probe = AttentionProbe()
        trainer.callbacks.append(probe)
    probe.setup(trainer, pl_module, stage)
    probe.register(consumer)
    return probe


def divergence_message(epoch: int, consumers: Sequence[ProbeConsumer], error: Exception) -> str:
    """What the probe says once when a capture is not finite."""
    names = ", ".join(type(consumer).__name__ for consumer in consumers)
    return (
        f"AttentionProbe: at epoch {epoch} {error} The loss has most likely diverged: lower the "
        f"learning rate (--model.lr). Skipping the analysis of {names} while it lasts (warned "
        "once); training and checkpoints go on."
    )


def _checked_arguments(
    size: int, figure_rows: int, explainers: list[str] | None
) -> tuple[str, ...]:
    """The explainers to compare, in :data:`~lit_vit.attention.EXPLAINERS` order, once the
    arguments are checked."""
    check_counts("AttentionProbe", size=size, figure_rows=figure_rows)
    unknown = [name for name in explainers or () if name not in EXPLAINERS]
    if unknown:
        raise ValueError(
            f"AttentionProbe: explainers={explainers} names {unknown}; choose from "
            f"{list(EXPLAINERS)}."
        )
    return tuple(name for name in EXPLAINERS if explainers is None or name in explainers)


def _refuse_sharded(trainer: Trainer) -> None:
    """The probe's forward pass runs on rank zero only: with sharded parameters it would
    deadlock."""
    strategy = type(trainer.strategy).__name__
    if strategy in SHARDED_STRATEGIES:
        raise ValueError(
            f"AttentionProbe: strategy {strategy} shards the model's parameters, and the "
            "probe's forward pass runs on rank zero only, which would deadlock. Use "
            "strategy=ddp (or a single device) for runs with attention callbacks."
        )
