"""Pruning for Keras 3.

Unstructured (weights set to zero, the file shrinks): wrappers, schedules,
criteria, callbacks, strip, report. Structured (whole units removed, the
model gets smaller and faster): `shrink`, `iterative_shrink`, `GroupLasso`,
`dependency_groups`, with the unit criteria in `pruning.structured`.
"""

from keras_compress.pruning import criteria, structured
from keras_compress.pruning.callbacks import (
    L1Regularization,
    PruningSummaries,
    ThresholdPruning,
    UpdatePruningStep,
)
from keras_compress.pruning.policy import PruneForLatencyOnXNNPack, PruningPolicy
from keras_compress.pruning.prunable_layer import PrunableLayer
from keras_compress.pruning.prune import prune_low_magnitude, prune_scope, strip_pruning
from keras_compress.pruning.report import LayerSparsity, SparsityReport, sparsity_report
from keras_compress.pruning.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from keras_compress.pruning.structured import (
    DependencyGroup,
    GroupLasso,
    dependency_groups,
    iterative_shrink,
    shrink,
)
from keras_compress.pruning.wrapper import PruneWrapper

__all__ = [
    "ConstantSparsity",
    "DependencyGroup",
    "GroupLasso",
    "L1Regularization",
    "LayerSparsity",
    "PolynomialDecay",
    "PrunableLayer",
    "PruneForLatencyOnXNNPack",
    "PruneWrapper",
    "PruningPolicy",
    "PruningSchedule",
    "PruningSummaries",
    "SparsityReport",
    "ThresholdPruning",
    "UpdatePruningStep",
    "criteria",
    "dependency_groups",
    "iterative_shrink",
    "prune_low_magnitude",
    "prune_scope",
    "shrink",
    "sparsity_report",
    "strip_pruning",
    "structured",
]
