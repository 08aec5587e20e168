"""Lightning callbacks: thin schedulers and loggers around :mod:`lit_vit.attention`.

One :class:`AttentionProbe` owns a fixed, class-balanced set of validation
images and captures their attention once per analysed validation run (and
once at test); each analysis callback receives that capture and logs its
figures, scalars and report section.
"""

from lit_vit.callbacks.analysis import ProbeAnalysis
from lit_vit.callbacks.attention_maps import AttentionMaps
from lit_vit.callbacks.attention_rollout import AttentionRollout
from lit_vit.callbacks.base import AttentionCallback, ReportSection
from lit_vit.callbacks.faithfulness import Faithfulness
from lit_vit.callbacks.focus_coverage import FocusCoverage
from lit_vit.callbacks.head_diversity import HeadDiversity
from lit_vit.callbacks.prediction_writer import PredictionWriter
from lit_vit.callbacks.probe import AttentionProbe
from lit_vit.callbacks.representations import LayerRepresentations
from lit_vit.callbacks.resolution_sweep import ResolutionSweep
from lit_vit.callbacks.sanity_checks import SanityChecks

__all__ = [
    "AttentionCallback",
    "AttentionMaps",
    "AttentionProbe",
    "AttentionRollout",
    "Faithfulness",
    "FocusCoverage",
    "HeadDiversity",
    "LayerRepresentations",
    "PredictionWriter",
    "ProbeAnalysis",
    "ReportSection",
    "ResolutionSweep",
    "SanityChecks",
]
