"""Pruning for Keras 3: wrappers, schedules, criteria, callbacks, strip, report."""

from keras_compress.pruning import criteria
from keras_compress.pruning.callbacks import (
    L1Regularization,
    PruningSummaries,
    ThresholdPruning,
    UpdatePruningStep,
)
from keras_compress.pruning.prune import prune_low_magnitude, strip_pruning
from keras_compress.pruning.report import LayerSparsity, SparsityReport, sparsity_report
from keras_compress.pruning.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from keras_compress.pruning.wrapper import PruneWrapper

__all__ = [
    "ConstantSparsity",
    "L1Regularization",
    "LayerSparsity",
    "PolynomialDecay",
    "PruneWrapper",
    "PruningSchedule",
    "PruningSummaries",
    "SparsityReport",
    "ThresholdPruning",
    "UpdatePruningStep",
    "criteria",
    "prune_low_magnitude",
    "sparsity_report",
    "strip_pruning",
]
