"""Knowledge distillation: a `Distiller` model and the losses it uses."""

from keras_compress.distillation.distiller import Distiller
from keras_compress.distillation.losses import (
    feature_distillation_loss,
    hard_label_distillation_loss,
    response_distillation_loss,
)

__all__ = [
    "Distiller",
    "feature_distillation_loss",
    "hard_label_distillation_loss",
    "response_distillation_loss",
]
