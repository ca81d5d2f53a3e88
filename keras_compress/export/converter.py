"""`to_tflite`: the package's one Keras -> TFLite conversion entry point."""

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping

import keras
import numpy as np

from keras_compress._models import check_finite_weights, walk_layers

# The converter skips tensors below this fraction of zeros (its own
# minimum for sparse encoding), so "auto" tries the encoding only when some
# weight tensor is at least this sparse.
SPARSE_AUTO_MIN_SPARSITY = 0.3

QUANTIZATION_MODES = (None, "dynamic", "float16", "int8", "int16x8")
# The modes whose activation ranges come from running representative_data.
CALIBRATED_MODES = ("int8", "int16x8")

REPRESENTATIVE_DATA_FORMS = (
    "a numpy array of samples (batch first); an (x, y) or (x, y, sample_weight) "
    "tuple; a tf.data.Dataset; or an iterable, generator or callable returning "
    "an iterator, yielding samples or batches as arrays or (x, y) tuples"
)


def to_tflite(
    model,
    output=None,
    *,
    quantization=None,
    representative_data=None,
    calibration_steps=100,
    int8_io=False,
    sparse="auto",
    batch_size=1,
):
    """Converts a Keras model to a TFLite (LiteRT) flatbuffer.

    The model is traced in inference mode, saved as a SavedModel through
    `keras.export.ExportArchive` and converted with `tf.lite.TFLiteConverter`
    using builtin TFLite ops only, so the file runs on any LiteRT runtime
    without the Flex delegate. Pruning wrappers need not be stripped first:
    their masks are folded into the weights during conversion.

    Args:
        model: a built `keras.Model` with known inputs.
        output: optional path; when given, the flatbuffer is also written there.
        quantization: post-training quantization, one of:
            - `None` (default): float32 weights and activations.
            - `"dynamic"`: dynamic-range quantization; int8 weights, float
              activations, quantized on the fly inside the kernels. The
              converter keeps weight tensors of fewer than 1024 values float.
            - `"float16"`: float16 weights, dequantized to float32 when the
              model loads (half the file; GPU delegates run them in float16).
            - `"int8"`: full integer; int8 weights and activations, with
              activation ranges calibrated on `representative_data`. Inputs
              and outputs stay float unless `int8_io=True`.
            - `"int16x8"`: int16 activations and int8 weights, calibrated on
              `representative_data`; more accurate than `"int8"` where
              activations have outliers. Conversion fails on an op that has
              no int16x8 kernel.
            A model trained with quantization-aware training (fake-quant
            layers) converts with `"int8"` without `representative_data`,
            its ranges having been learned; given, the data calibrates the
            ops that the fake-quant does not cover.
        representative_data: calibration inputs for `"int8"` and `"int16x8"`
            (ignored by the other modes), for a single-input model. One of: a
            numpy array of samples, batch first; an `(x, y)` or
            `(x, y, sample_weight)` tuple, whose `x` is used; a
            `tf.data.Dataset` yielding `x` or `(x, y)`, batched or not; or an
            iterable, a generator, or a callable returning an iterator
            (such as a generator function), yielding single samples or
            batches, as arrays or `(x, y)` tuples. It is checked against the
            model's input shape before converting and cast to its dtype.
        calibration_steps: how many samples calibrate (default 100); the data
            is read only up to that many samples.
        int8_io: with `quantization="int8"` only: make the model's inputs
            and outputs int8 as well (their scale and zero point are in the
            file, see `inspect_tflite`), as integer-only accelerators need.
            `predict_tflite` quantizes and dequantizes for you.
        sparse: `"auto"` (default): when some weight tensor of rank >= 2 is
            at least 30% zeros (a pruned model), converts with and without the
            converter's sparse weight encoding and keeps the smaller file, so
            pruning shrinks the file without a flag and never grows it (the
            encoding's indices cost more than they save on int8 weights below
            about 70% zeros); `True` always asks for the encoding; `False`
            never does.
        batch_size: the batch dimension of the converted inputs. Default 1,
            the usual on-device shape; `None` keeps it dynamic.

    Returns:
        The flatbuffer as `bytes`.

    Example:

    ```python
    flatbuffer = kc.to_tflite(kc.pruning.strip_pruning(pruned), "pruned.tflite")
    int8 = kc.to_tflite(model, quantization="int8", representative_data=x_train)
    ```
    """
    _check_arguments(model, output, quantization, calibration_steps, int8_io, sparse, batch_size)
    calibration = None
    if _needs_calibration(model, quantization, representative_data):
        calibration = _calibration_samples(
            model, quantization, representative_data, calibration_steps
        )

    with tempfile.TemporaryDirectory() as saved_model, _quiet_tensorflow_logger():
        _export_saved_model(model, saved_model, batch_size)
        encodings = [True, False] if sparse == "auto" and _has_sparse_weights(model) else [sparse is True]
        flatbuffer = min(
            (_convert(saved_model, quantization, calibration, batch_size, int8_io, e) for e in encodings),
            key=len,
        )

    if output is not None:
        with open(output, "wb") as f:
            f.write(flatbuffer)
    return flatbuffer


def _check_arguments(model, output, quantization, calibration_steps, int8_io, sparse, batch_size):
    """Raises on an argument of the wrong type or value, before anything slow."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"to_tflite expects a keras.Model, got {type(model).__name__}.")
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            f"to_tflite needs a built model with known inputs; model '{model.name}' "
            "has none. Give it a keras.Input or call it on data first."
        )
    check_finite_weights(model, "to_tflite")
    if sparse not in ("auto", True, False):
        raise ValueError(f"to_tflite: sparse must be 'auto', True or False, got {sparse!r}.")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"to_tflite: batch_size must be an int >= 1 or None, got {batch_size!r}.")
    if output is not None and not isinstance(output, (str, os.PathLike)):
        raise TypeError(f"to_tflite: output must be a file path or None, got {output!r}.")
    if quantization not in QUANTIZATION_MODES:
        raise ValueError(
            f"to_tflite: quantization must be one of {QUANTIZATION_MODES}, got {quantization!r}."
        )
    if (
        isinstance(calibration_steps, bool)
        or not isinstance(calibration_steps, int)
        or calibration_steps < 1
    ):
        raise ValueError(
            f"to_tflite: calibration_steps must be an int >= 1, got {calibration_steps!r}."
        )
    if not isinstance(int8_io, bool):
        raise TypeError(f"to_tflite: int8_io must be True or False, got {int8_io!r}.")
    if int8_io and quantization != "int8":
        raise ValueError(
            "to_tflite: int8_io=True needs quantization='int8' (only a fully int8 model "
            f"has int8 inputs and outputs), got quantization={quantization!r}."
        )


def _needs_calibration(model, quantization, data):
    """Calibrated modes read `data`; only int8 on a quantization-aware model
    may go without, its fake-quant ranges having been learned."""
    if quantization not in CALIBRATED_MODES:
        return False
    return data is not None or quantization != "int8" or not _is_quantization_aware(model)


def _is_quantization_aware(model):
    """Whether `model` holds quantization-aware-training layers, whose learned
    fake-quant ranges make calibration optional."""
    return any(getattr(layer, "_kc_quantization_aware", False) is True for layer in walk_layers(model))


def _calibration_samples(model, quantization, data, steps):
    """Up to `steps` validated samples of `data`, stacked and cast to the
    model's input dtype.

    Read up front, so that bad data fails before the slow conversion and a
    one-shot generator can be used.
    """
    if data is None:
        raise ValueError(
            f"to_tflite: quantization={quantization!r} needs representative_data to "
            f"calibrate activations: {REPRESENTATIVE_DATA_FORMS}."
        )
    if len(model.inputs) != 1:
        raise ValueError(
            f"to_tflite: calibration supports single-input models; model '{model.name}' "
            f"has {len(model.inputs)} inputs."
        )
    tensor = model.inputs[0]
    expected = tuple(tensor.shape[1:])
    if isinstance(data, tuple):
        data = _first_of_tuple(data)
    if _is_array(data):
        data = np.asarray(data)
        chunks = [_check_batch(data, model, expected)[:steps]] if data.size else []
    else:
        chunks, count = [], 0
        for element in _elements(data):
            chunk = _as_batch(np.asarray(_drop_targets(element)), model, expected)
            chunks.append(chunk[: steps - count])
            count += len(chunks[-1])
            if count >= steps:
                break
    if not sum(len(c) for c in chunks):
        raise ValueError("to_tflite: representative_data is empty.")
    return np.concatenate(chunks).astype(tensor.dtype)


def _is_array(data):
    # np.ndarray and the tensors numpy converts whole (tf, jax, torch), rather
    # than row by row as an iterable; a tf.data.Dataset has no __array__.
    return isinstance(data, np.ndarray) or hasattr(data, "__array__")


def _first_of_tuple(data):
    if not 1 <= len(data) <= 3:
        raise TypeError(
            f"to_tflite: a representative_data tuple must be (x,), (x, y) or "
            f"(x, y, sample_weight); got a tuple of {len(data)} items."
        )
    return data[0]


def _drop_targets(element):
    # (x, y) / (x, y, sample_weight) from a dataset or generator, or the
    # [x] lists of the TFLite converter's own representative_dataset convention.
    if isinstance(element, tuple) or (isinstance(element, list) and len(element) == 1):
        return _first_of_tuple(tuple(element))
    return element


def _elements(data):
    """An iterator over the items of a dataset, iterable or generator function."""
    if callable(data):
        data = data()
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes, Mapping)):
        raise TypeError(
            f"to_tflite: representative_data must be {REPRESENTATIVE_DATA_FORMS}; "
            f"got {type(data).__name__}."
        )
    return iter(data)


def _as_batch(element, model, expected):
    """A yielded element as a batch: single samples get a batch axis."""
    batch = element[None] if element.ndim == len(expected) else element
    return _check_batch(batch, model, expected, element=element)


def _check_batch(batch, model, expected, element=None):
    """`batch` if its samples fit the model's input; `element` is what a
    generator or dataset yielded, when it is one."""
    tensor = model.inputs[0]
    received = "has" if element is None else "yielded an element of"
    shape = batch.shape if element is None else element.shape
    samples = "" if element is None else f" or single samples {expected}"
    wanted = f"(batch, {', '.join(map(str, expected))})"
    if batch.ndim != len(expected) + 1 or any(
        e is not None and e != s for e, s in zip(expected, batch.shape[1:])
    ):
        raise ValueError(
            f"to_tflite: representative_data {received} shape {shape}, but model "
            f"'{model.name}' expects {wanted}{samples} for its input '{_layer_name(tensor)}'."
        )
    if batch.dtype.kind not in "biuf":
        raise ValueError(
            f"to_tflite: representative_data {received} dtype {batch.dtype}, but model "
            f"'{model.name}' expects numbers for its input '{_layer_name(tensor)}' "
            f"(shape {wanted}, dtype {tensor.dtype})."
        )
    return batch


def _layer_name(tensor):
    # The InputLayer's name is the one the user chose or sees in summary();
    # an unnamed Sequential input tensor is just "keras_tensor".
    history = getattr(tensor, "_keras_history", None)
    return history.operation.name if history is not None else tensor.name


def _export_saved_model(model, directory, batch_size):
    """Traces `model` in inference mode into a SavedModel with a `serve`
    endpoint of fixed `batch_size` (or a dynamic batch for `None`)."""
    import tensorflow as tf  # Conversion is TensorFlow's; Keras has no converter API.

    specs = [
        tf.TensorSpec((batch_size, *x.shape[1:]), x.dtype, name=_input_name(x, i))
        for i, x in enumerate(model.inputs)
    ]

    def serve(*xs):
        return model(xs[0] if len(xs) == 1 else list(xs), training=False)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=specs)
    archive.write_out(directory, verbose=False)


@contextlib.contextmanager
def _quiet_tensorflow_logger():
    """Hides TensorFlow's INFO lines ("Assets written to ...") during the
    export; they show in notebooks, where its Python logger runs at INFO."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _convert(saved_model, quantization, calibration, batch_size, int8_io, sparse):
    """Runs the TFLite converter on a SavedModel with the options of one mode."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    optimizations = []
    if quantization is not None:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    # An uncalibrated (quantization-aware) int8 model keeps the default op set:
    # the converter refuses TFLITE_BUILTINS_INT8 without a representative_dataset
    # before it looks for fake-quant ops. Ops the fake-quant covers still come
    # out int8; inspect_tflite(...).float_compute_ops() lists any that do not.
    elif quantization == "int8" and calibration is not None:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif quantization == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    if calibration is not None:
        converter.representative_dataset = _representative_dataset(calibration, batch_size)
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def _representative_dataset(samples, batch_size):
    """The converter's `representative_dataset`: batches of the converted
    input's fixed size, as the calibrator cannot resize a fixed batch."""
    size = batch_size or 1

    def batches():
        for start in range(0, len(samples), size):
            batch = samples[start : start + size]
            # Padding with repeated samples leaves the calibrated min/max as is.
            yield [np.resize(batch, (size, *batch.shape[1:]))]

    return batches


def _input_name(tensor, index):
    name = getattr(tensor, "name", None) or f"input_{index}"
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in name)


def _has_sparse_weights(model):
    for w in model.weights:
        if len(w.shape) >= 2 and w.dtype.startswith("float"):
            value = keras.ops.convert_to_numpy(w)
            if np.count_nonzero(value == 0) >= SPARSE_AUTO_MIN_SPARSITY * value.size:
                return True
    return False
