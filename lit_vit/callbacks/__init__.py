"""Lightning callbacks: thin schedulers and loggers around :mod:`lit_vit.attention`.

Each attention callback probes a fixed, class-balanced set of validation
images at the end of validation epochs (and of the test), shares one captured
forward pass with the others, and logs figures and scalars.
"""

from lit_vit.callbacks.attention_maps import AttentionMaps
from lit_vit.callbacks.attention_rollout import AttentionRollout
from lit_vit.callbacks.base import AttentionCallback, ReportSection
from lit_vit.callbacks.faithfulness import Faithfulness
from lit_vit.callbacks.focus_coverage import FocusCoverage
from lit_vit.callbacks.head_diversity import HeadDiversity
from lit_vit.callbacks.prediction_writer import PredictionWriter
from lit_vit.callbacks.resolution_sweep import ResolutionSweep

__all__ = [
    "AttentionCallback",
    "AttentionMaps",
    "AttentionRollout",
    "Faithfulness",
    "FocusCoverage",
    "HeadDiversity",
    "PredictionWriter",
    "ReportSection",
    "ResolutionSweep",
]
