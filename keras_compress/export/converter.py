"""`to_tflite`: the package's one Keras -> TFLite conversion entry point."""

import os
import tempfile

import keras
import numpy as np

# The converter skips tensors below this fraction of zeros (its own
# minimum for sparse encoding), so "auto" asks for the encoding only when some
# weight tensor is at least this sparse.
SPARSE_AUTO_MIN_SPARSITY = 0.3


QUANTIZATION_MODES = (None, "dynamic", "int8")


def to_tflite(
    model,
    output=None,
    *,
    quantization=None,
    representative_data=None,
    calibration_steps=100,
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
        quantization: `None` (float32), `"dynamic"` (int8 weights, float
            activations: dynamic-range quantization), or `"int8"` (int8
            weights and activations, calibrated on `representative_data`;
            float inputs and outputs).
        representative_data: calibration inputs for `"int8"`: a numpy array of
            samples, or an `(x, y)` tuple whose `x` is used.
        calibration_steps: how many samples calibrate `"int8"` (default 100).
        sparse: `"auto"` (default) uses the converter's sparse weight encoding
            when some weight tensor of rank >= 2 is at least 30% zeros (a pruned
            model), so pruning shrinks the file without a flag; `True` always
            asks for it; `False` never does.
        batch_size: the batch dimension of the converted inputs. Default 1,
            the usual on-device shape; `None` keeps it dynamic.

    Returns:
        The flatbuffer as `bytes`.

    Example:

    ```python
    flatbuffer = kc.to_tflite(kc.pruning.strip_pruning(pruned), "pruned.tflite")
    ```
    """
    import tensorflow as tf  # Conversion is TensorFlow's; Keras has no converter API.

    if not isinstance(model, keras.Model):
        raise TypeError(f"to_tflite expects a keras.Model, got {type(model).__name__}.")
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            f"to_tflite needs a built model with known inputs; model '{model.name}' "
            "has none. Give it a keras.Input or call it on data first."
        )
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
    calibration = None
    if quantization == "int8":
        calibration = _calibration_samples(model, representative_data, calibration_steps)

    specs = [
        tf.TensorSpec((batch_size, *x.shape[1:]), x.dtype, name=_input_name(x, i))
        for i, x in enumerate(model.inputs)
    ]
    if len(specs) == 1:
        serve = lambda x: model(x, training=False)  # noqa: E731
    else:
        serve = lambda *xs: model(list(xs), training=False)  # noqa: E731

    with tempfile.TemporaryDirectory() as saved_model:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", serve, input_signature=specs)
        archive.write_out(saved_model, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        optimizations = []
        if quantization is not None:
            optimizations.append(tf.lite.Optimize.DEFAULT)
        if sparse is True or (sparse == "auto" and _has_sparse_weights(model)):
            optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
        converter.optimizations = optimizations
        if calibration is not None:
            converter.representative_dataset = lambda: ([sample[None]] for sample in calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        flatbuffer = converter.convert()

    if output is not None:
        with open(output, "wb") as f:
            f.write(flatbuffer)
    return flatbuffer


def _calibration_samples(model, data, steps):
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"to_tflite: calibration_steps must be an int >= 1, got {steps!r}.")
    if data is None:
        raise ValueError(
            "to_tflite: quantization='int8' needs representative_data (a numpy "
            "array of input samples, or an (x, y) tuple) to calibrate activations."
        )
    if isinstance(data, tuple):
        data = data[0]
    data = np.asarray(data)
    if len(model.inputs) != 1:
        raise ValueError("to_tflite: int8 calibration supports single-input models.")
    expected = tuple(model.inputs[0].shape[1:])
    if data.ndim != len(expected) + 1 or any(
        e is not None and e != s for e, s in zip(expected, data.shape[1:])
    ):
        raise ValueError(
            f"to_tflite: representative_data has shape {data.shape}, but model "
            f"'{model.name}' expects (batch, {', '.join(map(str, expected))})."
        )
    if len(data) == 0:
        raise ValueError("to_tflite: representative_data is empty.")
    return data[:steps].astype(model.inputs[0].dtype)


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
