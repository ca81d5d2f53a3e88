"""Distillation losses, each a pure function of teacher and student outputs.

Registered with Keras, so that a config holding one (a `FeatureDistillation`
hint with `loss=feature_distillation_loss`, say) reloads."""

import keras
from keras import ops

_register = keras.saving.register_keras_serializable(package="keras_compress")


@_register
def response_distillation_loss(teacher_logits, student_logits, temperature):
    """KL(teacher || student) of the temperature-softened distributions, times T^2.

    `T^2 * mean_over_batch(sum_c p_t * (log p_t - log p_s))` with
    `p = softmax(logits / T)`, computed from `log_softmax` so that no
    probability is clipped (Hinton et al., 2015). Multiplying by `T^2` keeps
    its gradients on the scale of the hard-label loss as `T` changes.

    Args:
        teacher_logits: `(batch, classes)` logits of the teacher.
        student_logits: `(batch, classes)` logits of the student.
        temperature: the softening temperature, > 0.

    Returns:
        A scalar.
    """
    t = ops.cast(teacher_logits, "float32") / temperature
    s = ops.cast(student_logits, "float32") / temperature
    log_p_teacher = ops.log_softmax(t, axis=-1)
    log_p_student = ops.log_softmax(s, axis=-1)
    kl = ops.sum(ops.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    return ops.mean(kl) * temperature**2


@_register
def hard_label_distillation_loss(teacher_logits, student_logits):
    """Cross-entropy of the student against the teacher's argmax labels."""
    labels = ops.argmax(teacher_logits, axis=-1)
    log_p = ops.log_softmax(ops.cast(student_logits, "float32"), axis=-1)
    return -ops.mean(ops.take_along_axis(log_p, ops.expand_dims(labels, -1), axis=-1))


@_register
def feature_distillation_loss(teacher_features, student_features):
    """Mean squared error between two feature maps of the same shape (FitNets hints)."""
    difference = ops.cast(teacher_features, "float32") - ops.cast(student_features, "float32")
    return ops.mean(ops.square(difference))
