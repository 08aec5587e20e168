"""What the probe hands its analysis callbacks, and what it reads of them.

:class:`ProbeAnalysis` is one captured pass over the probe with the maps
several callbacks read (computed once, on first use); :class:`ProbeConsumer`
is the protocol an analysis callback implements
(:class:`~lit_vit.callbacks.base.AttentionCallback` does), so the probe and its
consumers do not import each other's classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from lit_vit.attention import AttentionRecorder, AttentionRecording, QueryAttention
from lit_vit.attention.propagation import HEAD_FUSIONS
from lit_vit.callbacks._data import Probe
from lit_vit.callbacks.outputs import ProbeRun
from lit_vit.callbacks.report import ReportSection

# Gradient targets an analysis callback may ask for, in the order they are recorded.
GRADIENT_TARGETS = ("predicted", "true")


@dataclass
class ProbeAnalysis:
    """One analysed run of the probe, with the maps several callbacks use.

    The probe's pass is captured when a consumer first reads :attr:`recording`
    (once per run, for all the run's consumers): a run whose consumers read
    none (the sanity checks and the resolution sweep at fit end) captures
    nothing.

    Attributes:
        probe: The probe images.
        run: Where this run logs.
        figure_rows: Probe images that image grids show (the first ones);
            measures use all of them.
        record: The capture: attention of every layer (validated when recorded),
            reduced to what the analyses read (``recording.reduced``), with the
            gradient products for the targets the run's consumers asked for; the full
            ``recording.attention`` only with ``AttentionProbe(full_attention=True)``.
        reduced: ``fast_dev_run``: test-set samples shrink to the probe size.
    """

    probe: Probe
    run: ProbeRun
    figure_rows: int
    record: Callable[[], AttentionRecording] = field(repr=False)
    reduced: bool = False
    _gradient_index: dict[str, int] = field(default_factory=dict, repr=False)

    @classmethod
    def prepare(
        cls,
        recorder: AttentionRecorder,
        probe: Probe,
        run: ProbeRun,
        consumers: Sequence[ProbeConsumer],
        *,
        device: torch.device,
        full_attention: bool,
        figure_rows: int,
        reduced: bool,
    ) -> ProbeAnalysis:
        """The run's analysis of ``probe``, whose capture (on ``device``) records the
        gradients, head fusions and block outputs the run's ``consumers`` declare."""
        wanted = {target for consumer in consumers for target in consumer.gradients}
        targets = [target for target in GRADIENT_TARGETS if target in wanted]
        fusions = {"mean"}.union(*(consumer.head_fusions for consumer in consumers))

        def record() -> AttentionRecording:
            labels = probe.labels.to(device)
            return recorder.record(
                probe.images.to(device),
                grad_targets=[None if target == "predicted" else labels for target in targets],
                full=full_attention,
                head_fusions=[fusion for fusion in HEAD_FUSIONS if fusion in fusions],
                hidden_states=any(consumer.hidden_states for consumer in consumers),
            )

        return cls(
            probe=probe,
            run=run,
            figure_rows=min(figure_rows, len(probe.labels)),
            record=record,
            reduced=reduced,
            _gradient_index={target: index for index, target in enumerate(targets)},
        )

    @property
    def captured(self) -> bool:
        """Whether a consumer has read :attr:`recording` (the capture ran)."""
        return "recording" in self.__dict__  # where functools.cached_property keeps it

    @cached_property
    def recording(self) -> AttentionRecording:
        """The run's one captured pass (see :attr:`record`).

        Raises:
            NonFiniteAttentionError: The model's attention or logits are not finite.
        """
        return self.record()

    @property
    def stage(self) -> str:
        return self.run.stage

    @property
    def predictions(self) -> Tensor:
        """``(B,)`` predicted classes."""
        return self.recording.logits.argmax(dim=-1).cpu()

    @cached_property
    def rollout(self) -> Tensor:
        """``(B, gh, gw)`` attention rollout (mean fusion, no discard)."""
        return self.recording.reduced.rollout().cpu()

    @cached_property
    def _query_attention(self) -> QueryAttention:
        return self.recording.reduced.cls_attention()

    @property
    def query_maps(self) -> Tensor:
        """``(L, B, H, gh, gw)`` class-token (query) attention per layer and head."""
        return self._query_attention.maps.cpu()

    @property
    def prefix_mass(self) -> Tensor:
        """``(L, B, H)`` attention mass the query puts on prefix tokens."""
        return self._query_attention.prefix_mass.cpu()

    @cached_property
    def entropy(self) -> Tensor:
        """``(L, H)`` attention entropy as a fraction of the uniform entropy."""
        return self.recording.reduced.attention_entropy().normalized.cpu()

    def gradient_rollout(self, target: str) -> Tensor:
        """``(B, gh, gw)`` gradient rollout for ``"predicted"`` or ``"true"`` classes."""
        cache = self.__dict__.setdefault("_gradient_maps", {})
        if target not in cache:
            reduced = self.recording.reduced
            cache[target] = reduced.gradient_rollout(self._gradient_index[target]).cpu()
        return cache[target]


class ProbeConsumer(Protocol):
    """What the probe reads of an analysis callback
    (:class:`~lit_vit.callbacks.base.AttentionCallback` implements it): so the probe and
    its consumers do not import each other's classes."""

    name: str | None
    stages: frozenset[str]
    on_reduced_runs: bool
    hidden_states: bool
    report_section: ReportSection | None

    @property
    def state_key(self) -> str: ...

    @property
    def gradients(self) -> frozenset[str]: ...

    @property
    def head_fusions(self) -> frozenset[str]: ...

    @property
    def explained_test_images(self) -> int | None: ...

    def due(self, trainer: Trainer) -> bool: ...

    def charts(self) -> dict[str, list[str]]: ...

    def progress(self, run: ProbeRun, message: str) -> None: ...

    def analyze(
        self, trainer: Trainer, pl_module: LightningModule, analysis: ProbeAnalysis
    ) -> None: ...


def check_distinct_names(callbacks: Iterable[object]) -> None:
    """Refuse two analysis callbacks of one kind and name (``state_key``): their figures, tags,
    report sections and checkpoint state would collide. Other callbacks are ignored.

    Raises:
        ValueError: Naming the kind and the fix (a ``name=`` of its own).
    """
    seen: dict[str, object] = {}
    for callback in callbacks:
        if not hasattr(callback, "report_section"):  # not a ProbeConsumer
            continue
        other = seen.setdefault(callback.state_key, callback)
        if other is not callback:
            kind = type(callback).__name__
            shared = f"the name {callback.name!r}" if callback.name else "no name="
            raise ValueError(
                f"two {kind} callbacks have {shared}, so their figures, tags, report sections "
                f"and checkpoint state would collide; give each its own name= (e.g. "
                f"{kind}(name='{kind.lower()}_2'), or `init_args: {{name: {kind.lower()}_2}}` "
                "in YAML)."
            )
