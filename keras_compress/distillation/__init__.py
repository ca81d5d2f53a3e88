"""Knowledge distillation: a `Distiller` model and the losses it uses."""

from keras_compress.distillation.distiller import UNLABELLED, Distiller, mixed_dataset
from keras_compress.distillation.losses import (
    feature_distillation_loss,
    hard_label_distillation_loss,
    response_distillation_loss,
)

__all__ = [
    "Distiller",
    "UNLABELLED",
    "mixed_dataset",
    "feature_distillation_loss",
    "hard_label_distillation_loss",
    "response_distillation_loss",
]
