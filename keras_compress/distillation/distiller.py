"""`Distiller`: a `keras.Model` that trains a student on labels and a frozen teacher."""

import copy
import numbers

import keras
import numpy as np
from keras import ops
from tflite_bench.checks import check_int

# Keras has no public name for it. Under a tf.distribute strategy, the trainer
# expects compute_loss to return the loss divided by the replica count (Keras's
# own losses do this inside) and divides it back for logging.
from keras.src.losses.loss import scale_loss_for_distribution
from keras.src.trainers.compile_utils import CompileMetrics

from keras_compress import _data
from keras_compress._backend import check_backend
from keras_compress._models import check_finite_weights
from keras_compress.distillation.losses import (
    feature_distillation_loss,
    hard_label_distillation_loss,
    response_distillation_loss,
)

MODES = ("soft", "hard")

#: The label that marks a sample without one (as `ignore_index` in other
#: frameworks): for integer labels the value itself, for one-hot or soft
#: labels a row of it. The hard (label) loss and the compiled metrics skip
#: such samples; the teacher's soft loss uses every sample.
UNLABELLED = -1


def _is_kl(loss):
    """Whether `loss` means KL divergence: a name, the function or the class."""
    if isinstance(loss, str):
        return loss in ("kl_divergence", "kld", "KLD", "kullback_leibler_divergence", "KLDivergence")
    return loss is keras.losses.kl_divergence or isinstance(loss, keras.losses.KLDivergence)


def _check_model(model, role):
    if not isinstance(model, keras.Model):
        raise TypeError(f"Distiller: {role} must be a keras.Model, got {type(model).__name__}: {model!r}.")
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            f"Distiller: {role} '{model.name}' must be a built model with known inputs "
            "(give it a keras.Input)."
        )
    check_finite_weights(model, f"Distiller ({role})")


def _shape(tensor):
    return tuple(tensor.shape)


def _per_sample(fn, y_true, y_pred):
    """`fn(y_true, y_pred)` per sample, shape `(batch,)`, unreduced."""
    if isinstance(fn, keras.losses.Loss):
        values = fn.call(ops.cast(y_true, fn.dtype), ops.cast(y_pred, fn.dtype))
    else:
        values = fn(y_true, y_pred)
    values = ops.cast(values, "float32")
    if len(values.shape) == 0:
        raise ValueError(
            "Distiller: student_loss_fn must return one value per sample, so that samples "
            "labelled -1 (UNLABELLED) can be left out: a keras.losses.Loss or a function such "
            "as keras.losses.sparse_categorical_crossentropy; got a function returning a scalar."
        )
    if len(values.shape) > 1:
        values = ops.mean(values, axis=tuple(range(1, len(values.shape))))
    return values


def _label_mask(labels):
    """1.0 for samples that have a label, 0.0 for those marked `UNLABELLED`."""
    present = ops.not_equal(labels, ops.cast(UNLABELLED, labels.dtype))
    if len(present.shape) > 1:
        present = ops.any(present, axis=tuple(range(1, len(present.shape))))
    return ops.cast(present, "float32")


def _fill_unlabelled(labels, mask):
    """`labels` with the `UNLABELLED` entries set to 0: valid for any loss or metric."""
    keep = ops.reshape(mask, (-1,) + (1,) * (len(labels.shape) - 1))
    return labels * ops.cast(keep, labels.dtype)


def _batch_mean(fn, y_true, y_pred):
    """`mean(fn(y_true, y_pred))` over this replica's part of the batch.

    A `keras.losses.Loss` is called through its unreduced `call`: its
    `__call__` already divides by the number of replicas, which
    `Distiller.compute_loss` does once, for the total.
    """
    if isinstance(fn, keras.losses.Loss):
        return ops.mean(fn.call(ops.cast(y_true, fn.dtype), ops.cast(y_pred, fn.dtype)))
    return ops.mean(fn(y_true, y_pred))


def _layer_output(model, name, role):
    try:
        return model.get_layer(name).output
    except ValueError:
        names = [layer.name for layer in model.layers]
        raise ValueError(
            f"Distiller: hint layer '{name}' is not in the {role} '{model.name}'; "
            f"its layers are: {', '.join(names)}."
        ) from None


@keras.saving.register_keras_serializable(package="keras_compress")
class Distiller(keras.Model):
    """Trains a student model to match a frozen teacher, with `model.fit`.

    Each step runs the teacher in inference mode (no dropout, its
    BatchNormalization statistics untouched) and the student once, and
    minimizes

        alpha * student_loss(labels, student)
        + (1 - alpha) * distillation_loss(teacher, student)
        + hint_weight * sum of hint losses.

    The distillation loss is, with `mode="soft"` (response-based), the KL
    divergence between the temperature-softened teacher and student
    distributions times `T^2`, computed from log-softmax; with `mode="hard"`,
    the cross-entropy against the teacher's argmax labels. Hints
    (feature-based distillation, FitNets) pair a teacher layer with a student
    layer; when their shapes differ, a learned adapter (a 1x1 convolution for
    feature maps, a Dense projection for vectors) maps the student's feature
    onto the teacher's. Adapters train with the student and are not part of
    it: `distiller.student` is a plain Keras model, ready for `strip_pruning`,
    QAT export or `to_tflite`.

    Under a `tf.distribute` strategy (build the models and the distiller in
    `strategy.scope()`), every term is averaged over the global batch, as on
    one device.

    Labels are optional, per batch or per sample: `fit(x)` (no `y`) trains
    on the teacher alone, and a label of `UNLABELLED` (-1; a row of -1 for
    one-hot labels) marks a sample without one (`mixed_dataset` builds such
    data from labelled and unlabelled arrays). The student loss is then the
    mean over the labelled samples of the batch (0 when there are none), the
    distillation and hint losses use every sample, and the compiled metrics
    are measured on the labelled samples only (and not reported at all when
    no label was seen). This is distillation's strongest use: a few labels and
    many unlabelled inputs.

    Several teachers can be given as a list; their logits are averaged.
    `cache_teacher` computes the teacher's outputs once over a dataset, so
    that each epoch costs only the student.

    Args:
        student: the model to train, built, with logits as its output.
        teacher: a trained model (or a list of them) with the same inputs and
            the same number of output classes. It is set to
            `trainable = False`.
        hints: optional list of `(teacher_layer_name, student_layer_name)`
            pairs, or `keras.distillation.FeatureDistillation` objects
            (single teacher only).

    Example:

    ```python
    distiller = kc.distillation.Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss_fn=keras.losses.KLDivergence(),
        alpha=0.1,
        temperature=4,
    )
    distiller.fit(x_train, y_train, epochs=10)
    kc.to_tflite(distiller.student, "student.tflite")
    ```

    With 1,000 labels and 7,000 unlabelled images:

    ```python
    x, y = kc.distillation.mixed_dataset(x_train[:1000], y_train[:1000], x_train[1000:])
    distiller.fit(*distiller.cache_teacher(x, y), epochs=10)
    ```
    """

    def __init__(self, student, teacher, hints=None, **kwargs):
        check_backend("Distiller")
        super().__init__(**kwargs)
        _check_model(student, "student")
        teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
        if not teachers:
            raise ValueError("Distiller: teacher must be a model or a non-empty list of models.")
        for t in teachers:
            _check_model(t, "teacher")
            self._check_compatible(t, student)
        hints = self._parse_hints(hints, len(teachers))
        self.student = student
        self.teachers = teachers
        self.hints = hints
        for t in teachers:
            t.trainable = False
        self._kc_walk_target = student  # pruning and QAT callbacks see the student only

        student_features = [_layer_output(student, s, "student") for _, s, _ in hints]
        teacher_features = [_layer_output(teachers[0], t, "teacher") for t, _, _ in hints]
        # One student pass gives the logits and every hint feature.
        self._student_extractor = None
        self._teacher_extractor = None
        if hints:
            self._student_extractor = keras.Model(
                _inputs(student), [student.outputs[0], *student_features], name=f"{student.name}_hints"
            )
            self._teacher_extractor = keras.Model(
                _inputs(teachers[0]),
                [teachers[0].outputs[0], *teacher_features],
                name=f"{teachers[0].name}_hints",
            )
        self.adapters = [
            self._adapter(t_feature, s_feature, pair)
            for t_feature, s_feature, pair in zip(teacher_features, student_features, hints)
        ]
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self.hint_loss_tracker = keras.metrics.Mean(name="hint_loss") if hints else None
        self._student_features = None
        self._configure()
        # Every variable (student, teachers, adapters) exists by now. Built,
        # the distiller can be restored before its first step, as
        # BackupAndRestore and load_weights require.
        self.built = True

    # -- construction -------------------------------------------------------

    @staticmethod
    def _check_compatible(teacher, student):
        if len(teacher.inputs) != len(student.inputs):
            raise ValueError(
                f"Distiller: teacher '{teacher.name}' has {len(teacher.inputs)} inputs and "
                f"student '{student.name}' has {len(student.inputs)}; they must take the same inputs."
            )
        for t, s in zip(teacher.inputs, student.inputs):
            if _shape(t)[1:] != _shape(s)[1:]:
                raise ValueError(
                    f"Distiller: teacher '{teacher.name}' takes inputs of shape {_shape(t)} "
                    f"and student '{student.name}' {_shape(s)}; they must match."
                )
        t_out, s_out = _shape(teacher.outputs[0]), _shape(student.outputs[0])
        if len(teacher.outputs) != 1 or len(student.outputs) != 1 or t_out[1:] != s_out[1:]:
            raise ValueError(
                f"Distiller: teacher '{teacher.name}' outputs {[_shape(o) for o in teacher.outputs]} "
                f"and student '{student.name}' {[_shape(o) for o in student.outputs]}; both need "
                "one logits output of the same shape."
            )

    @staticmethod
    def _parse_hints(hints, n_teachers):
        if hints is None:
            return []
        if not isinstance(hints, (list, tuple)):
            raise TypeError(
                "Distiller: hints must be a list of (teacher_layer_name, student_layer_name) "
                f"pairs or keras.distillation.FeatureDistillation objects, got {hints!r}."
            )
        if hints and n_teachers > 1:
            raise ValueError("Distiller: hints need a single teacher; got several.")
        parsed = []
        for hint in hints:
            if isinstance(hint, keras.distillation.FeatureDistillation):
                loss = hint.loss if not isinstance(hint.loss, (list, tuple, dict)) else None
                if loss is None:
                    raise ValueError("Distiller: a FeatureDistillation hint needs a single loss.")
                if loss is keras.losses.mean_squared_error or isinstance(loss, keras.losses.MeanSquaredError):
                    loss = None  # the same loss, our implementation
                parsed.append((hint.teacher_layer_name, hint.student_layer_name, loss))
            elif (
                isinstance(hint, (list, tuple))
                and len(hint) == 2
                and all(isinstance(name, str) for name in hint)
            ):
                parsed.append((hint[0], hint[1], None))
            else:
                raise TypeError(
                    "Distiller: each hint must be a (teacher_layer_name, student_layer_name) "
                    f"pair of strings or a FeatureDistillation, got {hint!r}."
                )
        return parsed

    def _adapter(self, teacher_feature, student_feature, pair):
        t, s = _shape(teacher_feature), _shape(student_feature)
        if t[1:] == s[1:]:
            return None
        names = f"teacher layer '{pair[0]}' {t} and student layer '{pair[1]}' {s}"
        if len(t) == len(s) == 2:
            adapter = keras.layers.Dense(t[-1], name=f"adapter_{pair[1]}")
        elif len(t) == len(s) == 4 and t[1:3] == s[1:3]:
            adapter = keras.layers.Conv2D(t[-1], 1, name=f"adapter_{pair[1]}")
        else:
            raise ValueError(
                f"Distiller: cannot map the hint {names}: an adapter needs two vectors "
                "(Dense) or two feature maps with the same height and width (1x1 Conv2D)."
            )
        adapter.build(s)
        return adapter

    # -- compile ------------------------------------------------------------

    def compile(
        self,
        optimizer="adam",
        metrics=None,
        student_loss_fn=None,
        distillation_loss_fn=None,
        alpha=0.1,
        temperature=None,
        mode="soft",
        hint_weight=1.0,
        **kwargs,
    ):
        """Configures training, as in the keras.io distillation example.

        Args:
            optimizer: the student's optimizer.
            metrics: metrics of the student's predictions against the labels,
                on the labelled samples only (see `UNLABELLED`).
            student_loss_fn: loss of the student on the labels, averaged
                over the labelled samples of the batch (a `keras.losses.Loss`'s
                `reduction` is not used; a function must return one value per
                sample). Default `SparseCategoricalCrossentropy(from_logits=True)`.
            distillation_loss_fn: `None`, `"kl_divergence"` or
                `keras.losses.KLDivergence()` (all the stable KL on log-softmax);
                a `keras.distillation.LogitsDistillation` (its temperature is
                used unless `temperature` is given; a KL loss inside it is
                computed here, correctly); or any function
                `fn(teacher_probabilities, student_probabilities)` of the
                softened distributions, whose value is scaled by `T^2`.
            alpha: weight of the student loss, in [0, 1]; the distillation
                loss gets `1 - alpha`. Default 0.1.
            temperature: softening temperature, > 0. Default 3.
            mode: `"soft"` (default, response-based) or `"hard"` (the
                teacher's argmax as labels).
            hint_weight: weight of the hint (feature) losses, >= 0.
        """
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
            raise ValueError(f"Distiller.compile: alpha must be a number in [0, 1], got {alpha!r}.")
        if isinstance(distillation_loss_fn, keras.distillation.LogitsDistillation):
            if temperature is None:
                temperature = distillation_loss_fn.temperature
        temperature = 3.0 if temperature is None else temperature
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, numbers.Real)
            or not temperature > 0
        ):
            raise ValueError(
                f"Distiller.compile: temperature must be a number > 0, got {temperature!r}."
            )
        if mode not in MODES:
            raise ValueError(f"Distiller.compile: mode must be one of {MODES}, got {mode!r}.")
        if isinstance(hint_weight, bool) or not isinstance(hint_weight, numbers.Real) or hint_weight < 0:
            raise ValueError(f"Distiller.compile: hint_weight must be a number >= 0, got {hint_weight!r}.")
        if student_loss_fn is None:
            student_loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        elif isinstance(student_loss_fn, str):
            student_loss_fn = keras.losses.get(student_loss_fn)
        if not callable(student_loss_fn):
            raise TypeError(
                f"Distiller.compile: student_loss_fn must be a loss or a callable, got {student_loss_fn!r}."
            )
        self._configure(student_loss_fn, distillation_loss_fn, float(alpha), float(temperature), mode, float(hint_weight))
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def _configure(
        self,
        student_loss_fn=None,
        distillation_loss_fn=None,
        alpha=0.1,
        temperature=3.0,
        mode="soft",
        hint_weight=1.0,
    ):
        self.student_loss_fn = student_loss_fn
        self.alpha = alpha
        self.temperature = temperature
        self.mode = mode
        self.hint_weight = hint_weight
        fn = distillation_loss_fn
        if isinstance(fn, keras.distillation.LogitsDistillation):
            if isinstance(fn.loss, (list, tuple, dict)):
                raise ValueError(
                    "Distiller.compile: the distiller has one logits output, so a "
                    "LogitsDistillation needs a single loss, got "
                    f"loss={fn.loss!r}."
                )
            # Its default, "kl_divergence", resolves to the plain function, which
            # its compute_loss then applies to clipped logits, not probabilities
            # (Keras 3.15): KL is computed here instead.
            fn = None if _is_kl(fn.loss) else fn
        elif fn is not None and _is_kl(fn):
            fn = None
        elif fn is not None and not callable(fn):
            raise TypeError(
                "Distiller.compile: distillation_loss_fn must be None, a KL divergence, a "
                f"keras.distillation.LogitsDistillation or a callable, got {fn!r}."
            )
        self.distillation_loss_fn = fn

    # -- training -----------------------------------------------------------

    def call(self, inputs, training=None):
        if self._student_extractor is None:
            return self.student(inputs, training=training)
        logits, *features = self._student_extractor(inputs, training=training)
        # Read by compute_loss in the same step: one student pass for both.
        self._student_features = features
        return logits

    def teacher_outputs(self, x):
        """Averaged teacher logits and the teacher's hint features for `x`."""
        if self._teacher_extractor is not None:
            logits, *features = self._teacher_extractor(x, training=False)
            return logits, features
        logits = [t(x, training=False) for t in self.teachers]
        return (logits[0] if len(logits) == 1 else ops.mean(ops.stack(logits), axis=0)), []

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y_pred is None:
            y_pred = self(x, training=training)
        labels, cached = _split_targets(y)
        if cached is None:
            teacher_logits, teacher_features = self.teacher_outputs(x)
        else:
            teacher_logits, teacher_features = cached["teacher_logits"], cached.get("teacher_features", [])
        teacher_logits = ops.stop_gradient(teacher_logits)

        # Every term is a mean over this replica's batch; the total is scaled
        # for distribution once, at the end.
        student_loss = ops.zeros(())
        if labels is not None and self.alpha > 0:
            labels = ops.convert_to_tensor(labels)
            mask = _label_mask(labels)
            # Mean over the labelled samples of the batch (0 if there are none):
            # the teacher's soft loss below covers every sample.
            per_sample = _per_sample(self.student_loss_fn, _fill_unlabelled(labels, mask), y_pred)
            student_loss = ops.sum(per_sample * mask) / ops.maximum(ops.sum(mask), 1.0)
        distillation_loss = self._distillation_loss(teacher_logits, y_pred)
        total = self.alpha * student_loss + (1 - self.alpha) * distillation_loss
        self.student_loss_tracker.update_state(student_loss)
        self.distillation_loss_tracker.update_state(distillation_loss)
        if self.hints:
            features = self._student_features
            if features is None:
                raise RuntimeError("Distiller: hint features are missing; call the distiller first.")
            hint_loss = ops.zeros(())
            for adapter, (_, _, loss), t, s in zip(self.adapters, self.hints, teacher_features, features):
                s = s if adapter is None else adapter(s)
                t = ops.stop_gradient(t)
                hint_loss = hint_loss + (
                    feature_distillation_loss(t, s) if loss is None else _batch_mean(loss, t, s)
                )
            self.hint_loss_tracker.update_state(hint_loss)
            total = total + self.hint_weight * hint_loss
        for loss in self.student.losses:  # the student's own regularization (L1 pruning, ...)
            total = total + ops.cast(loss, total.dtype)
        return scale_loss_for_distribution(total)

    def _distillation_loss(self, teacher_logits, student_logits):
        if self.mode == "hard":
            return hard_label_distillation_loss(teacher_logits, student_logits)
        fn, temperature = self.distillation_loss_fn, self.temperature
        if fn is None:
            return response_distillation_loss(teacher_logits, student_logits, temperature)
        if isinstance(fn, keras.distillation.LogitsDistillation):
            # What its compute_loss does for one output, without the replica scaling.
            t = ops.cast(teacher_logits, "float32") / fn.temperature
            return _batch_mean(fn.loss, t, ops.cast(student_logits, "float32") / fn.temperature)
        soft_teacher = ops.softmax(ops.cast(teacher_logits, "float32") / temperature, axis=-1)
        soft_student = ops.softmax(ops.cast(student_logits, "float32") / temperature, axis=-1)
        return _batch_mean(fn, soft_teacher, soft_student) * temperature**2

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates the compiled metrics on the labelled samples only.

        Samples labelled `UNLABELLED` get weight 0; without labels at all
        (`fit(x)`, or `cache_teacher(x)` without `y`) the compiled metrics
        are left unbuilt and only the losses are reported.
        """
        labels, _ = _split_targets(y)
        compiled = getattr(self, "_compile_metrics", None)
        if labels is not None and compiled is not None:
            labels = ops.convert_to_tensor(labels)
            mask = _label_mask(labels)
            labels = _fill_unlabelled(labels, mask)
            weight = mask
            if sample_weight is not None:
                weight = mask * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            if not compiled.built:
                compiled.build(labels, y_pred)
            # What CompileMetrics.update_state does for one output, except that
            # `metrics` (unweighted) still skip the unlabelled samples.
            for metric in compiled._flat_metrics:
                if metric:
                    metric.update_state(labels, y_pred, sample_weight=mask)
            for metric in compiled._flat_weighted_metrics:
                if metric:
                    metric.update_state(labels, y_pred, sample_weight=weight)
        return self.get_metrics_result()

    def get_metrics_result(self):
        """The metrics' values; compiled metrics that never saw a label are left out."""
        results = {}
        for metric in self.metrics:
            if isinstance(metric, CompileMetrics) and not metric.built:
                continue
            result = metric.result()
            if isinstance(result, dict):
                results.update(result)
            else:
                results[metric.name] = result
        return results

    # -- teacher caching ----------------------------------------------------

    def cache_teacher(self, x, y=None, batch_size=256):
        """Runs the teacher once over `x`; returns `(x, targets)` for `fit`.

        `distiller.fit(*distiller.cache_teacher(x_train, y_train), epochs=10)`
        then trains on the stored teacher outputs: each epoch costs only the
        student. Augmentation that changes `x` between epochs cannot be cached.
        Labels may be missing (`y=None`) or -1 for some samples (see
        `UNLABELLED` and `mixed_dataset`).

        Args:
            x: the inputs, in any form of the shared data adapter
                (`keras_compress._data.INPUT_FORMS`): a numpy array; a list or
                dict of arrays by input name for several inputs; an `(x, y)`
                tuple; a finite `tf.data.Dataset`, iterable or generator of
                batches (or `(x, y)` batches). Everything is read into memory.
            y: labels, or `None`: none, or those that `x` yields.
            batch_size: int >= 1, batch size of the teacher's pass.

        Returns:
            `(x, targets)`: `x` as numpy (one array, or a list with one array
            per input in the model's order) and a dict of numpy arrays that
            `fit` passes to the loss: the teacher's logits (and hint features),
            and the labels if there were any.

        Raises:
            TypeError: `x` has none of the accepted forms, or `batch_size`
                is not an int.
            ValueError: `x` is empty or does not fit the model's inputs; `y`
                has another number of samples, or is given twice.
        """
        api = "Distiller.cache_teacher"
        check_int(api, "batch_size", batch_size, minimum=1)
        inputs = _data.input_specs(self.teachers[0])
        arrays, labels = _data.read_inputs(
            x, inputs, api=api, argument="x", model_name=self.teachers[0].name, labels=True
        )
        n = len(arrays[0])
        if y is not None:
            if labels is not None:
                raise ValueError(f"{api}: x already yields labels; pass y=None, or x without labels.")
            if isinstance(y, (str, bytes)) or not hasattr(y, "__len__"):
                raise TypeError(f"{api}: y must be an array of labels or None, got {type(y).__name__}.")
            labels = np.asarray(y)
        if labels is not None and len(labels) != n:
            raise ValueError(f"{api}: x has {n} samples and y {len(labels)}; they must match.")
        logits, features = [], []
        for start in range(0, n, batch_size):
            batch = [a[start : start + batch_size] for a in arrays]
            batch_logits, batch_features = self.teacher_outputs(batch[0] if len(batch) == 1 else batch)
            logits.append(ops.convert_to_numpy(batch_logits))
            features.append([ops.convert_to_numpy(f) for f in batch_features])
        targets = {"teacher_logits": np.concatenate(logits)}
        if self.hints:
            targets["teacher_features"] = [np.concatenate(parts) for parts in zip(*features)]
        if labels is not None:
            targets["labels"] = labels
        return (arrays[0] if len(arrays) == 1 else arrays), targets

    # -- serialization ------------------------------------------------------

    def get_config(self):
        config = {
            "name": self.name,
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": [keras.saving.serialize_keras_object(t) for t in self.teachers],
            "hints": [_hint_config(t, s, loss) for t, s, loss in self.hints],
        }
        return config

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is None:
            return None
        for key in ("loss", "loss_weights"):
            config.pop(key, None)
        serialize = keras.saving.serialize_keras_object
        config.update(
            {
                "student_loss_fn": serialize(self.student_loss_fn),
                "distillation_loss_fn": None
                if self.distillation_loss_fn is None
                else serialize(self.distillation_loss_fn),
                "alpha": self.alpha,
                "temperature": self.temperature,
                "mode": self.mode,
                "hint_weight": self.hint_weight,
            }
        )
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built and hasattr(self.optimizer, "build"):
            self.optimizer.build(self.trainable_variables)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = copy.deepcopy(config)  # Keras's deserialization edits nested configs in place
        student = keras.saving.deserialize_keras_object(config.pop("student"), custom_objects=custom_objects)
        teachers = [
            keras.saving.deserialize_keras_object(t, custom_objects=custom_objects)
            for t in config.pop("teacher")
        ]
        hints = [_hint_from_config(h) for h in config.pop("hints", [])] or None
        return cls(student=student, teacher=teachers if len(teachers) > 1 else teachers[0], hints=hints, **config)


def mixed_dataset(x_labelled, y_labelled, x_unlabelled):
    """Labelled and unlabelled samples as one `(x, y)` pair for `Distiller.fit`.

    The unlabelled samples get the label `UNLABELLED` (-1; a row of -1 for
    one-hot labels). The Distiller's hard (label) loss and its compiled
    metrics then use the labelled samples only, and the teacher's soft loss
    every sample. `fit` shuffles, so each batch mixes both kinds:

    ```python
    x, y = kc.distillation.mixed_dataset(x_train[:1000], y_train[:1000], x_train[1000:])
    distiller.compile(optimizer="adam", metrics=["accuracy"], alpha=0.5, temperature=4)
    distiller.fit(*distiller.cache_teacher(x, y), epochs=20, batch_size=64)
    ```

    The same labels work in a `tf.data.Dataset` of `(x, y)` batches: mark a
    sample without a label with -1 yourself. Data with no labels at all is
    simply `distiller.fit(x)`.

    Args:
        x_labelled: inputs that have labels: a numpy array, or a list or
            dict of arrays (one per model input).
        y_labelled: their labels, integer class ids `(n,)` / `(n, 1)` or
            one-hot / soft rows `(n, classes)`; -1 is reserved.
        x_unlabelled: inputs without labels, in the same form and with the
            same per-sample shapes as `x_labelled`.

    Returns:
        `(x, y)`: the labelled samples first, then the unlabelled ones; `x`
        in the form of `x_labelled`, `y` a numpy array.

    Raises:
        TypeError: an argument is not an array (or a list / dict of them).
        ValueError: empty inputs, mismatched sample counts or shapes, or
            labels that already contain -1.
    """
    api = "mixed_dataset"
    labelled = _input_arrays(api, "x_labelled", x_labelled)
    unlabelled = _input_arrays(api, "x_unlabelled", x_unlabelled)
    if isinstance(labelled, dict) != isinstance(unlabelled, dict) or len(labelled) != len(unlabelled):
        raise ValueError(
            f"{api}: x_unlabelled must have the form of x_labelled (one array, or the same "
            f"list / dict of arrays per model input), got {_form(x_unlabelled)} and {_form(x_labelled)}."
        )
    if isinstance(labelled, dict) and set(labelled) != set(unlabelled):
        raise ValueError(
            f"{api}: x_unlabelled must have the keys of x_labelled {sorted(labelled)}, "
            f"got {sorted(unlabelled)}."
        )
    keys = list(labelled) if isinstance(labelled, dict) else range(len(labelled))
    n_labelled = _sample_count(api, "x_labelled", [labelled[k] for k in keys])
    _sample_count(api, "x_unlabelled", [unlabelled[k] for k in keys])
    for k in keys:
        if labelled[k].shape[1:] != unlabelled[k].shape[1:]:
            where = "" if not isinstance(labelled, dict) and len(keys) == 1 else f" (input {k!r})"
            raise ValueError(
                f"{api}: x_unlabelled samples must have the shape of x_labelled samples{where}, "
                f"{labelled[k].shape[1:]}, got {unlabelled[k].shape[1:]}."
            )
    if isinstance(y_labelled, (str, bytes)) or not hasattr(y_labelled, "__len__"):
        raise TypeError(f"{api}: y_labelled must be an array of labels, got {type(y_labelled).__name__}.")
    y = np.asarray(y_labelled)
    if y.dtype.kind not in "biuf" or y.ndim not in (1, 2):
        raise ValueError(
            f"{api}: y_labelled must hold numbers, class ids (n,) or (n, 1) or one-hot rows "
            f"(n, classes), got dtype {y.dtype} and shape {y.shape}."
        )
    if len(y) != n_labelled:
        raise ValueError(f"{api}: x_labelled has {n_labelled} samples and y_labelled {len(y)}; they must match.")
    if np.any(np.all(y.reshape(len(y), -1) == UNLABELLED, axis=1)):
        raise ValueError(
            f"{api}: y_labelled must not contain the label {UNLABELLED}: it marks the "
            "unlabelled samples. Pass those in x_unlabelled."
        )
    n_unlabelled = len(unlabelled[keys[0]] if isinstance(labelled, dict) else unlabelled[0])
    missing = np.full((n_unlabelled, *y.shape[1:]), UNLABELLED, dtype=y.dtype if y.dtype.kind in "if" else "int64")
    y_all = np.concatenate([y.astype(missing.dtype), missing])
    joined = {k: np.concatenate([labelled[k], unlabelled[k]]) for k in keys}
    if isinstance(labelled, dict):
        return joined, y_all
    if isinstance(x_labelled, (list, tuple)):
        return [joined[k] for k in keys], y_all
    return joined[0], y_all


def _input_arrays(api, name, x):
    """`x` as a dict or list of numpy arrays (a lone array: a list of one)."""
    if isinstance(x, dict):
        values = dict(x)
    elif isinstance(x, (list, tuple)) and x and all(hasattr(v, "__array__") for v in x):
        values = list(x)
    elif hasattr(x, "__array__") and not isinstance(x, (str, bytes)):
        return [np.asarray(x)]
    else:
        raise TypeError(
            f"{api}: {name} must be a numpy array, or a list or dict of arrays (one per model "
            f"input), got {_form(x)}."
        )
    items = values.items() if isinstance(values, dict) else enumerate(values)
    for k, v in items:
        if not hasattr(v, "__array__"):
            raise TypeError(f"{api}: {name}[{k!r}] must be a numpy array, got {type(v).__name__}.")
        values[k] = np.asarray(v)
    return values


def _sample_count(api, name, arrays):
    counts = {len(a) if a.ndim else 0 for a in arrays}
    if len(counts) > 1:
        raise ValueError(f"{api}: the arrays of {name} must have the same number of samples, got {sorted(counts)}.")
    if counts == {0}:
        raise ValueError(f"{api}: {name} must hold at least one sample, got none.")
    return counts.pop()


def _form(x):
    if hasattr(x, "shape"):
        return f"an array of shape {tuple(x.shape)}"
    if isinstance(x, (list, tuple, dict)):
        return f"a {type(x).__name__} of {len(x)} items"
    return type(x).__name__


def _hint_config(teacher_layer, student_layer, loss):
    """A hint in a config: the pair of names, with its loss unless it is the default MSE."""
    if loss is None:
        return [teacher_layer, student_layer]
    return {
        "teacher_layer_name": teacher_layer,
        "student_layer_name": student_layer,
        "loss": keras.losses.serialize(loss),
    }


def _hint_from_config(config):
    if isinstance(config, dict):
        return keras.distillation.FeatureDistillation(
            loss=keras.losses.deserialize(config["loss"]),
            teacher_layer_name=config["teacher_layer_name"],
            student_layer_name=config["student_layer_name"],
        )
    return tuple(config)


def _inputs(model):
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def _split_targets(y):
    """(labels, cached teacher outputs or None) from fit's `y`."""
    if isinstance(y, dict) and "teacher_logits" in y:
        return y.get("labels"), y
    return y, None
