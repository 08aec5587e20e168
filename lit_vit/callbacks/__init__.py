"""Lightning callbacks: thin schedulers and loggers around :mod:`lit_vit.attention`.

One :class:`AttentionProbe` owns a fixed, class-balanced set of validation
images and captures their attention once per analysed validation run (and
once at test); each analysis callback receives that capture and logs its
figures, scalars and report section.

In a LightningCLI config every callback is a ``class_path`` under
``trainer.callbacks`` with its constructor's arguments as ``init_args``;
``configs/fashion_mnist.yaml`` lists them all:

.. code-block:: yaml

    trainer:
      callbacks:
        - class_path: lit_vit.callbacks.AttentionProbe
          init_args: {size: 16, seed: 0}
        - class_path: lit_vit.callbacks.AttentionRollout
          init_args: {head_fusion: max, discard_ratio: 0.9, name: rollout_max}
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
