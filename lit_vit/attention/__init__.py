"""Model-agnostic attention analysis for timm-style Vision Transformers.

Torch and timm only (no Lightning): capture the attention of every block,
then compute rollout and the measures defined in ``docs/attention.md``.
"""

from lit_vit.attention._validate import NonFiniteAttentionError
from lit_vit.attention.backends import Readout, find_vit
from lit_vit.attention.battery import SACO_GROUPS, Battery, faithfulness_battery
from lit_vit.attention.blocks import block_modules
from lit_vit.attention.capture import AttentionRecorder, AttentionRecording
from lit_vit.attention.controls import CONTROLS, controls, input_x_gradient
from lit_vit.attention.explainers import (
    CLASS_SPECIFIC,
    EXPLAINERS,
    cp_lrp_map,
    explain,
    positive_patch_map,
)
from lit_vit.attention.faithfulness import (
    FaithfulnessResult,
    classifier_logits,
    deletion_insertion_auc,
    gaussian_blur,
)
from lit_vit.attention.flow import attention_flow
from lit_vit.attention.layout import TokenLayout
from lit_vit.attention.lrp import conservative_backward, cp_lrp, patch_relevance
from lit_vit.attention.metrics import (
    ObjectMass,
    attention_entropy,
    coverage,
    focus_score,
    foreground_mask,
    head_diversity,
    mean_attention_distance,
    object_mass,
    query_distribution,
)
from lit_vit.attention.reduced import (
    AttentionDistance,
    AttentionEntropy,
    QueryAttention,
    ReducedAttention,
)
from lit_vit.attention.reduction import reduce_attention
from lit_vit.attention.representations import (
    HIGH_NORM_ABSOLUTE,
    HIGH_NORM_RATIO,
    SINK_THRESHOLD,
    LogitLens,
    TokenNorms,
    cka_matrix,
    collapsed_layers,
    layer_cka,
    linear_cka,
    logit_lens,
    sink_rate,
    token_norms,
)
from lit_vit.attention.resolution import (
    ResolutionResult,
    check_size,
    resize_images,
    resolution_sweep,
)
from lit_vit.attention.road import ROAD_FRACTIONS, RoadResult, noisy_linear_imputation, road
from lit_vit.attention.rollout import cls_attention, gradient_rollout, rollout
from lit_vit.attention.saco import saco, saco_coefficient
from lit_vit.attention.sanity import (
    RandomizationCurve,
    RandomizationStep,
    cascading_randomization,
    random_logit_targets,
    randomization_steps,
    spearman,
)
from lit_vit.attention.verdicts import (
    FAITHFULNESS_METRICS,
    INDISTINGUISHABLE,
    Interval,
    bootstrap_interval,
    compare,
    threshold_verdict,
)

__all__ = [
    "HIGH_NORM_ABSOLUTE",
    "HIGH_NORM_RATIO",
    "SINK_THRESHOLD",
    "LogitLens",
    "Readout",
    "TokenNorms",
    "block_modules",
    "cka_matrix",
    "collapsed_layers",
    "layer_cka",
    "linear_cka",
    "logit_lens",
    "sink_rate",
    "token_norms",
    "FAITHFULNESS_METRICS",
    "SACO_GROUPS",
    "Battery",
    "faithfulness_battery",
    "INDISTINGUISHABLE",
    "ROAD_FRACTIONS",
    "Interval",
    "RoadResult",
    "bootstrap_interval",
    "classifier_logits",
    "compare",
    "conservative_backward",
    "cp_lrp",
    "cp_lrp_map",
    "gaussian_blur",
    "noisy_linear_imputation",
    "patch_relevance",
    "positive_patch_map",
    "road",
    "saco",
    "saco_coefficient",
    "threshold_verdict",
    "CLASS_SPECIFIC",
    "CONTROLS",
    "EXPLAINERS",
    "AttentionDistance",
    "AttentionEntropy",
    "AttentionRecorder",
    "AttentionRecording",
    "FaithfulnessResult",
    "NonFiniteAttentionError",
    "ObjectMass",
    "QueryAttention",
    "RandomizationCurve",
    "RandomizationStep",
    "ReducedAttention",
    "ResolutionResult",
    "TokenLayout",
    "attention_entropy",
    "attention_flow",
    "cascading_randomization",
    "check_size",
    "cls_attention",
    "controls",
    "coverage",
    "deletion_insertion_auc",
    "explain",
    "find_vit",
    "focus_score",
    "foreground_mask",
    "gradient_rollout",
    "head_diversity",
    "input_x_gradient",
    "mean_attention_distance",
    "object_mass",
    "query_distribution",
    "random_logit_targets",
    "randomization_steps",
    "reduce_attention",
    "resize_images",
    "resolution_sweep",
    "rollout",
    "spearman",
]
