"""`to_tflite`: the package's one Keras -> TFLite conversion entry point."""

import contextlib
import logging
import os
import tempfile
import warnings

import keras
import numpy as np

from keras_compress._backend import check_backend
from keras_compress._clusters import values_per_channel
from keras_compress._models import (
    check_finite_weights,
    kernel_attributes,
    masked_attention,
    ruled_sublayers,
    walk_layers,
)
from keras_compress.export import backend_bridge, conversion, isolation
from keras_compress.export.converter_output import captured_converter_output
from keras_compress.export.calibration import calibration_samples
from keras_compress.export.dense_zeros import (
    DenseZerosWarning,
    dense_zero_tensors,
    dense_zeros_message,
)
from keras_compress.export.float_ops import (
    FloatOpsWarning,
    float_op_groups,
    float_ops_message,
    in_layers,
    op_layers,
)
from keras_compress.export.naming import resolve_scope
from keras_compress.export.rewrites import conversion_model, wrapped_recurrent
from keras_compress.export.signature import (
    model_inputs,
    order_and_name_io,
    output_layers,
    output_names,
)
from keras_compress.export.splits import integer_splits
from tflite_bench.checks import check_bool, check_choice, check_int

logger = logging.getLogger(__name__)

# The converter skips tensors below this fraction of zeros (its own
# minimum for sparse encoding), so "auto" tries the encoding only when some
# weight tensor is at least this sparse.
SPARSE_AUTO_MIN_SPARSITY = 0.3

QUANTIZATION_MODES = ("auto", None, "dynamic", "float16", "int8", "int16x8")
# The modes whose activation ranges come from running representative_data.
CALIBRATED_MODES = ("int8", "int16x8")


def to_tflite(
    model,
    output=None,
    *,
    quantization="auto",
    representative_data=None,
    calibration_steps=100,
    int8_io=False,
    sparse="auto",
    size_by="raw",
    batch_size=1,
    input_signature=None,
    float_layers=None,
    strict=False,
    isolate="auto",
    strip_names=False,
    per_channel=True,
):
    """Converts a Keras model to a TFLite (LiteRT) flatbuffer.

    The model is traced in inference mode, saved as a SavedModel through
    `keras.export.ExportArchive` and converted with `tf.lite.TFLiteConverter`
    using builtin TFLite ops only, so the file runs on any LiteRT runtime
    without the Flex delegate. Pruning wrappers need not be stripped first:
    their masks are folded into the weights during conversion.

    The file's inputs and outputs follow `model.inputs` and `model.outputs`
    (the order of the model's call for a subclassed model); their tensor
    names and signature keys are the Keras input names and output names
    (the layer names of `model.output_names`, or the keys of a dict of
    outputs), with or without `int8_io`.

    For the integer modes (`"int8"`, `"int16x8"`) a Sequential or Functional
    model is exported through a clone that computes the same function in ops
    TFLite quantizes (the model itself is not modified; the rewritten layers
    are logged at INFO level on the `keras_compress.export.converter`
    logger): recurrent layers (`LSTM`, `GRU`, `SimpleRNN`, also inside
    `Bidirectional` or another wrapper) with a fixed number of time steps, at most 100, are
    unrolled instead of traced to a WHILE loop, and `LayerNormalization` is
    computed as `x * inv + (beta - mean * inv)`, without a NEG. A float SPLIT the
    quantizer leaves between a DEQUANTIZE and QUANTIZEs of one scale (an
    unrolled LSTM's first step, whose forget gate is never read) is made an
    int8 SPLIT, which gives the same values. Any op that still
    computes in float after an integer conversion is reported in a
    `FloatOpsWarning` naming the op types, how many, the Keras layers they
    come from and why they stayed float (`strict=True` makes it an error).

    Args:
        model: a built `keras.Model`: Sequential or Functional, or a
            subclassed model that has been called on data (or is given an
            `input_signature`).
        output: optional path; when given, the flatbuffer is also written there.
        quantization: post-training quantization, one of:
            - `"auto"` (default): `"int8"` for a quantization-aware model
              (made by `kc.quantization.quantize_model` or
              `quantize_apply`), whose learned ranges make it an int8 model;
              `None` otherwise.
            - `None`: float32 weights and activations, also for a
              quantization-aware model (its fake-quant ops then stay as
              float arithmetic in the file).
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
            A quantization-aware model converts with `"int8"` without
            `representative_data`, its ranges having been learned; given,
            the data calibrates the ops that the fake-quant does not cover.
        representative_data: calibration inputs for `"int8"` and `"int16x8"`
            (ignored by the other modes). One of: a numpy array of samples,
            batch first; for a model with several inputs, a dict of arrays
            keyed by input name, or a list (or tuple) with one array per
            input in the model's order; an `(x, y)` or `(x, y,
            sample_weight)` tuple of those, whose `x` is used; a
            `tf.data.Dataset` yielding any of those, batched or not; or an
            iterable, a generator, or a callable returning an iterator (such
            as a generator function), yielding single samples or batches in
            any of those forms. Each input is checked against the model's
            (shape, numeric dtype) before converting, and cast to its dtype.
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
            never does. The encoding covers the weights of FULLY_CONNECTED,
            CONV_2D, DEPTHWISE_CONV_2D and TRANSPOSE_CONV ops; pruned weights
            read by any other op (an Embedding's GATHER table) stay dense, and
            a `DenseZerosWarning` names their layers.
        size_by: what "smaller" means for `sparse="auto"`: `"raw"`
            (default) compares the files' bytes, what a device stores and
            loads; `"gzip"` compares their gzip-compressed bytes (level 9),
            what a compressed download carries. The two can disagree: zeros
            compress well, so the dense int8 file of a pruned model is often
            the smaller download while the sparse-encoded one is the smaller
            file.
        batch_size: the batch dimension of the converted inputs. Default 1,
            the usual on-device shape; `None` keeps it dynamic.
        input_signature: the inputs to trace the model with, when
            `model.inputs` does not say (a subclassed model) or to give
            their dtype: a `keras.InputSpec`, a `tf.TensorSpec` or a
            `(shape, dtype)` pair, batch axis first (its size is replaced by
            `batch_size`); a list of them for several inputs (the model is
            called on the list; a list of one calls it on a single tensor);
            or a dict of them by input name (the model is called on the
            dict). Default: `model.inputs`, or for a subclassed model called
            on data, the input shapes it was built with, as float32.
        float_layers: names of layers (or nested models) of `model` whose
            ops stay float in an `"int8"` file, for instance a layer that
            quantizes badly (`fidelity_report` finds it). A
            MultiHeadAttention that applies an attention mask (causal,
            padding or given) is kept float without being named, with a
            `FloatOpsWarning`: int8 cannot hold its masked scores; the ops around them are quantized as usual, with
            DEQUANTIZE / QUANTIZE ops at their edges. Needs
            `representative_data`. These ops are not reported as leftover
            float ops. (TensorFlow's int16x8 quantizer cannot leave chosen
            ops float, nor can the converter leave float the layers a
            quantization-aware model fake-quantizes: both are refused; for
            the latter, use `quantize_model(model, float_layers=[...])`.)
        strict: with an integer mode, raise a `ValueError` instead of a
            `FloatOpsWarning` when ops other than `float_layers`' stay
            float, and write no file.
        isolate: run the TFLite converter in a child Python process, so
            that a crash of TensorFlow's calibrator (a segmentation fault on
            some control flow) raises a `RuntimeError` instead of killing
            this process. `"auto"` (default): when the conversion calibrates
            (`representative_data` is read) and the traced graph has control
            flow (While or If ops, such as a recurrent layer that is not
            unrolled); `True`: always; `False`: never. A child process costs
            the start of a Python process with TensorFlow (a few seconds).
        strip_names: remove the names of the file's internal tensors (debug
            information, a few hundred bytes of a small model; the inputs,
            outputs and signatures keep theirs): what a microcontroller
            deployment ships. `fidelity_report` needs the names.
        per_channel: `True` (default, the converter's): int8 weights of
            convolutions and Dense layers get one scale per output channel.
            `False`: one scale per weight tensor ("dynamic", "int8" and
            "int16x8"), so a clustered kernel's N values stay N int8 values
            and the file compresses better (see `kc.clustering`), at some
            accuracy cost where channels differ in range. A
            quantization-aware model's weights follow their fake-quant
            ranges either way.

    The TFLite converter's own log lines (`fully_quantize: 0, ...`) are
    kept off the terminal: a failed conversion's error ends with them, and
    the environment variable `KERAS_COMPRESS_CONVERTER_OUTPUT=1` shows them
    as they come. Python warnings reach the caller as usual.

    Returns:
        The flatbuffer as `bytes`.

    Raises:
        ValueError: an argument has a wrong value (the message names it and
            what is accepted), the model is not built, `representative_data`
            does not fit its inputs, a `float_layers` name is not a layer of
            the model, or, with `strict=True`, ops stayed float.
        TypeError: an argument has a wrong type.
        RuntimeError: the converter crashed in its child process; the
            message names the signal and the layers with control flow.

    Example:

    ```python
    flatbuffer = kc.to_tflite(kc.pruning.strip_pruning(pruned), "pruned.tflite")
    int8 = kc.to_tflite(model, quantization="int8", representative_data=x_train)
    two = kc.to_tflite(two_inputs, quantization="int8",
                       representative_data={"numbers": numbers, "image": images})
    ```
    """
    check_backend("to_tflite")
    check_choice("to_tflite", "size_by", size_by, conversion.SIZE_MEASURES)
    check_bool("to_tflite", "strip_names", strip_names)
    check_bool("to_tflite", "per_channel", per_channel)
    _check_arguments(model, output, quantization, calibration_steps, int8_io, sparse, batch_size,
                     strict, isolate)
    quantization = _resolve_quantization(model, quantization)
    _check_int8_io(int8_io, quantization)
    if not per_channel and quantization not in ("dynamic", *CALIBRATED_MODES):
        raise ValueError(
            "to_tflite: per_channel=False chooses how int8 weights are scaled; it needs quantization "
            f"'dynamic', 'int8' or 'int16x8', got quantization={quantization!r}."
        )
    inputs, pack = model_inputs(model, input_signature)
    _check_int16x8_inputs(model, inputs, quantization)
    check_finite_weights(model, "to_tflite")
    if per_channel and quantization in ("dynamic", *CALIBRATED_MODES) and not _is_quantization_aware(model):
        _warn_shared_values(model)
    if keras.backend.backend() != "tensorflow":
        flatbuffer = _to_tflite_on_tensorflow(
            model, inputs, representative_data, input_signature,
            {"quantization": quantization, "calibration_steps": calibration_steps, "int8_io": int8_io,
             "sparse": sparse, "size_by": size_by, "batch_size": batch_size, "float_layers": float_layers,
             "strict": strict, "isolate": isolate, "strip_names": strip_names, "per_channel": per_channel})
        if output is not None:
            with open(output, "wb") as f:
                f.write(flatbuffer)
        return flatbuffer
    float_layers = _check_float_layers(model, float_layers, quantization, representative_data)
    float_layers += _masked_attention_kept_float(model, quantization, representative_data, float_layers, strict)
    calibration = None
    if _needs_calibration(model, quantization, representative_data):
        calibration = calibration_samples(
            model.name, inputs, quantization, representative_data, calibration_steps
        )
    exported = model
    if quantization in CALIBRATED_MODES:
        exported, notes = conversion_model(model, quantization)
        for note in notes:
            logger.info("to_tflite: %s", note)

    # The converter's C++ log lines show only in an error, or with KERAS_COMPRESS_CONVERTER_OUTPUT=1.
    with tempfile.TemporaryDirectory() as saved_model, _quiet_tensorflow_logger(), captured_converter_output():
        names = _export_saved_model(exported, saved_model, inputs, pack, batch_size)
        options = {
            "quantization": quantization,
            "input_keys": names["input_keys"],
            "batch_size": batch_size,
            "int8_io": int8_io,
            "encodings": [True, False] if sparse == "auto" and has_sparse_weights(model) else [sparse is True],
            "calibrate_only": bool(float_layers),
            "size_by": size_by,
            "per_channel": per_channel,
        }
        converted, float_nodes = _convert(model, saved_model, options, calibration, isolate, float_layers, names)

    flatbuffer = order_and_name_io(
        converted, names["input_keys"], [i.name for i in inputs], names["output_keys"], names["outputs"]
    )
    if quantization in CALIBRATED_MODES:
        flatbuffer, _ = integer_splits(flatbuffer, keep=float_nodes)
        _report_float_ops(flatbuffer, model, quantization, names, float_layers, calibration, strict)
    if True in options["encodings"]:
        dense = dense_zero_tensors(flatbuffer, model, SPARSE_AUTO_MIN_SPARSITY)
        if dense:
            warnings.warn(dense_zeros_message(dense, model.name), DenseZerosWarning, stacklevel=2)
    if strip_names:
        flatbuffer = conversion.strip_names(flatbuffer)
    if output is not None:
        with open(output, "wb") as f:
            f.write(flatbuffer)
    return flatbuffer


def _to_tflite_on_tensorflow(model, inputs, representative_data, input_signature, options):
    """The conversion of a model of another backend, by the TensorFlow
    backend in a child process (`backend_bridge`), with the calibration
    samples read and checked here."""
    if input_signature is not None:
        raise ValueError(
            f"to_tflite: input_signature is for subclassed models on the TensorFlow backend; on the "
            f"{keras.backend.backend()} backend the model is converted from a .keras file, which must "
            "describe its inputs: give a Functional or Sequential model, or convert on "
            "KERAS_BACKEND=tensorflow."
        )
    if isinstance(options["float_layers"], str):
        options["float_layers"] = [options["float_layers"]]
    elif options["float_layers"] is not None:
        options["float_layers"] = list(options["float_layers"])
    calibration = None
    if _needs_calibration(model, options["quantization"], representative_data):
        calibration = calibration_samples(model.name, inputs, options["quantization"], representative_data,
                                          options["calibration_steps"])
    return backend_bridge.to_tflite_on_tensorflow(model, options, calibration)


def _check_arguments(model, output, quantization, calibration_steps, int8_io, sparse, batch_size,
                     strict, isolate):
    """Raises on an argument of the wrong type or value, before anything slow."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"to_tflite expects a keras.Model, got {type(model).__name__}.")
    if sparse not in ("auto", True, False):
        raise ValueError(f"to_tflite: sparse must be 'auto', True or False, got {sparse!r}.")
    check_int("to_tflite", "batch_size", batch_size, minimum=1, allow_none=True)
    if output is not None and not isinstance(output, (str, os.PathLike)):
        raise TypeError(f"to_tflite: output must be a file path or None, got {output!r}.")
    if quantization not in QUANTIZATION_MODES:
        raise ValueError(
            f"to_tflite: quantization must be one of {QUANTIZATION_MODES}, got {quantization!r}."
        )
    check_int("to_tflite", "calibration_steps", calibration_steps, minimum=1)
    check_bool("to_tflite", "int8_io", int8_io)
    if not isinstance(strict, bool):
        raise TypeError(f"to_tflite: strict must be True or False, got {strict!r}.")
    if isolate not in isolation.ISOLATE_MODES or isinstance(isolate, int) and not isinstance(isolate, bool):
        raise ValueError(f"to_tflite: isolate must be 'auto', True or False, got {isolate!r}.")


# A kernel counts as clustered (weight sharing) when its non-zero values are
# at most this many and each is shared by two weights on average.
_MAX_SHARED_VALUES = 256


def _warn_shared_values(model):
    """Warns, naming the layers, when kernels hold few shared values (a
    clustered model): per-channel int8 scales turn each channel's copy of a
    value into a different int8 value, which `per_channel=False` avoids."""
    found = []
    for layer in walk_layers(model):
        for sub in ruled_sublayers(layer, lambda l: kernel_attributes(l) is not None):
            for attribute in kernel_attributes(sub):
                values = np.asarray(getattr(sub, attribute))
                nonzero = values[values != 0]
                distinct = len(np.unique(nonzero))
                if len(values.shape) >= 2 and 0 < distinct <= _MAX_SHARED_VALUES and 2 * distinct <= nonzero.size \
                        and values_per_channel(values, distinct) is None:
                    found.append(f"'{layer.name}' ({distinct} values)")
    if found:
        warnings.warn(
            f"to_tflite: the kernels of {', '.join(found)} of model '{model.name}' hold few shared values "
            "(clustered weights). Per-channel int8 scales give each output channel its own int8 copy of a "
            "value, so the file keeps more distinct values and compresses less; per_channel=False quantizes "
            "each kernel with one scale and keeps them.",
            stacklevel=3,
        )


def _resolve_quantization(model, quantization):
    """The mode `"auto"` stands for: int8 for a quantization-aware model."""
    if quantization != "auto":
        return quantization
    return "int8" if _is_quantization_aware(model) else None


def _check_int8_io(int8_io, quantization):
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


def _masked_attention_kept_float(model, quantization, representative_data, float_layers, strict):
    """The names of the MultiHeadAttention layers that a post-training int8
    conversion keeps float because they apply an attention mask.

    Their int8 form is not exact: the masked scores' large negative fill
    stretches the scores' int8 range, and the file's attention leaks into
    masked positions (a causal block measured 50% relative output error,
    3% with the layer float). Warned about; `strict=True` refuses instead.
    """
    if quantization != "int8" or representative_data is None or _is_quantization_aware(model):
        return ()
    masked = [(layer, reason) for layer, reason in masked_attention(model) if layer.name not in float_layers]
    if not masked:
        return ()
    message = (
        f"to_tflite: {len(masked)} attention layer(s) of model '{model.name}' stay float in the "
        f"quantization='int8' file: "
        + "; ".join(f"layer '{layer.name}' ({type(layer).__name__}): {reason}" for layer, reason in masked)
        + ". Their ops run in float between DEQUANTIZE and QUANTIZE ops."
    )
    if strict:
        raise ValueError(message + " (strict=True refuses a file with float compute ops.)")
    warnings.warn(message, FloatOpsWarning, stacklevel=3)
    return tuple(layer.name for layer, _ in masked)


def _check_int16x8_inputs(model, inputs, quantization):
    """TensorFlow's int16x8 quantizer wants a calibrated float range for every
    tensor, model inputs included, and fails on integer ones ("Max and min
    for dynamic tensors should be recorded"): refuse before converting."""
    integer = [i for i in inputs if not str(i.dtype).startswith(("float", "bfloat"))]
    if quantization == "int16x8" and integer:
        raise ValueError(
            f"to_tflite: quantization='int16x8' cannot convert model '{model.name}': its input "
            f"{', '.join(f'{i.name!r} ({i.dtype})' for i in integer)} is not float, and "
            "TensorFlow's int16x8 quantizer needs a float range for every tensor, inputs "
            "included (token ids into an Embedding fail there). Use quantization='int8'."
        )


def _check_float_layers(model, float_layers, quantization, representative_data):
    """`float_layers` as a tuple of names, checked against the model."""
    if float_layers is None:
        return ()
    if isinstance(float_layers, str) or not isinstance(float_layers, (list, tuple, set)):
        raise TypeError(
            f"to_tflite: float_layers must be a list of layer names, got {float_layers!r}."
        )
    float_layers = tuple(dict.fromkeys(float_layers))
    if not float_layers:
        return ()
    if not all(isinstance(n, str) for n in float_layers):
        raise TypeError(f"to_tflite: float_layers must hold layer names (str), got {list(float_layers)!r}.")
    if quantization != "int8":
        # TensorFlow quantizes int16x8 with its older quantizer, which has no
        # way to leave chosen ops float; its MLIR quantizer's int16 mode
        # writes zero points that TFLite's int16 kernels refuse.
        raise ValueError(
            "to_tflite: float_layers keeps layers float in an int8 file; it needs "
            f"quantization='int8', got quantization={quantization!r} (TensorFlow's int16x8 "
            "quantizer cannot leave chosen ops float)."
        )
    if _is_quantization_aware(model):
        # Its fake-quant ops carry their ranges into the converter's graph,
        # which quantizes those ops whatever the quantizer is told to leave out.
        raise ValueError(
            f"to_tflite: float_layers cannot keep layers of model '{model.name}' float: it is "
            "quantization-aware, and its fake-quant ops make the converter quantize the layers "
            "they cover. Leave them float when making it: "
            "quantize_model(model, float_layers=[...])."
        )
    if representative_data is None:
        raise ValueError(
            "to_tflite: float_layers needs representative_data: the file is quantized from "
            "calibrated ranges, leaving those layers out."
        )
    known = _layer_and_model_names(model)
    unknown = [n for n in float_layers if n not in known]
    if unknown:
        raise ValueError(
            f"to_tflite: float_layers names {unknown}, which are not layers of model "
            f"'{model.name}'. Its layers are: {known}."
        )
    return float_layers


def _layer_and_model_names(model):
    """The names of the layers of `model` and of the models nested in it."""
    names = []

    def walk(container):
        for layer in container.layers:
            names.append(layer.name)
            if isinstance(layer, keras.Model):
                walk(layer)

    walk(model)
    return list(dict.fromkeys(names))


def _export_saved_model(model, directory, inputs, pack, batch_size):
    """Traces `model` in inference mode into a SavedModel with a `serve`
    endpoint of fixed `batch_size` (or a dynamic batch for `None`).

    The signature's keys are positional (`input_0`, `output_0`...), so that
    `order_and_name_io` finds each input and output whatever order the
    converter gives them.

    Returns:
        A dict: `input_keys`, `output_keys`, `outputs` (the Keras output
        names) and `output_layers` (the layer making each output, or None).
    """
    import tensorflow as tf  # Conversion is TensorFlow's; Keras has no converter API.

    keys = [f"input_{i}" for i in range(len(inputs))]
    specs = [
        tf.TensorSpec((batch_size, *i.shape), i.dtype, name=key) for i, key in zip(inputs, keys)
    ]
    names = {"input_keys": keys}

    def serve(*xs):
        outputs = model(pack(xs), training=False)
        flat = keras.tree.flatten(outputs)
        names["outputs"] = output_names(model, outputs)
        names["output_keys"] = [f"output_{i}" for i in range(len(flat))]
        layers = output_layers(model)
        names["output_layers"] = layers if layers and len(layers) == len(flat) else [None] * len(flat)
        return dict(zip(names["output_keys"], flat))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=specs)
    archive.write_out(directory, verbose=False)
    return names


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


def _convert(model, saved_model, options, calibration, isolate, float_layers, names):
    """The converter's flatbuffer, and the tensors of `float_layers` kept float.

    With `float_layers`, the converter stops after calibration and the
    calibrated file is quantized here, leaving those layers' ops out.
    """
    control_flow = conversion.control_flow_ops(saved_model)
    child = isolate is True or (isolate == "auto" and calibration is not None and bool(control_flow))
    converted = _run(model, saved_model, options, calibration, child, control_flow)
    if not float_layers:
        return converted, ()
    float_nodes = _float_nodes(converted, model, float_layers, names["output_layers"], names["output_keys"])
    quantized = (
        conversion.quantize_calibrated(converted, int8_io=options["int8_io"], float_nodes=float_nodes, sparse=e,
                                       per_channel=options["per_channel"])
        for e in options["encodings"]
    )
    return conversion.smallest(quantized, options["size_by"]), float_nodes


def _run(model, saved_model, options, calibration, child, control_flow):
    """The converter's flatbuffer, converted here or in a child process."""
    if not child:
        return conversion.convert(saved_model, options, calibration)
    try:
        return isolation.convert_in_child(saved_model, options, calibration)
    except isolation.ChildConversionError as error:
        if error.signal_name:
            cause = f"TensorFlow's TFLite converter crashed ({error.signal_name})"
        else:
            cause = f"TensorFlow's TFLite converter failed (exit status {error.returncode})"
        message = (
            f"to_tflite: {cause} while converting model '{model.name}' with "
            f"quantization={options['quantization']!r}, in a child process, so this process "
            "is intact."
        )
        where, recurrent = _control_flow_layers(control_flow, model)
        if where:
            message += (
                f" The traced graph has control flow from {where}; TensorFlow's calibrator runs "
                "it in TFLite's interpreter and can crash on such loops."
            )
        if recurrent:
            message += (
                " Give the recurrent layers a fixed number of time steps in a Sequential or "
                "Functional model (to_tflite then exports them unrolled), or convert with "
                "quantization='dynamic' or None."
            )
        if error.output:
            message += f" The converter's last output:\n{error.output}"
        raise RuntimeError(message) from None


def _control_flow_layers(control_flow, model):
    """`(text, recurrent)`: a readable list of the layers (or models) the
    control-flow ops come from, and whether one is a recurrent layer."""
    by_name = {layer.name: layer for layer in walk_layers(model)}
    found, recurrent = [], False
    for op_type, node in control_flow:
        layers, chain = resolve_scope(node, model)
        for name in layers:
            found.append(f"layer '{name}' ({type(by_name[name]).__name__}, {op_type})")
            recurrent |= wrapped_recurrent(by_name[name]) is not None
        if not layers:
            found.append(f"{op_type} '{node}'" + (f" in model '{chain[-1]}'" if chain else ""))
    return ", ".join(dict.fromkeys(found)), recurrent


def _float_nodes(calibrated, model, float_layers, layers_of_outputs, output_keys):
    """The names of the calibrated file's tensors written by ops of `float_layers`."""
    from ai_edge_litert.tools import flatbuffer_utils

    content = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    graph = content.subgraphs[0]
    by_key = {e.name.decode(): e.tensorIndex for e in content.signatureDefs[0].outputs}
    order = {tensor: i for i, tensor in enumerate(int(t) for t in graph.outputs)}
    # The main subgraph's outputs in its own order, each with its layer.
    layers = [None] * len(order)
    for key, layer in zip(output_keys, layers_of_outputs):
        layers[order[by_key[key]]] = layer
    nodes = []
    for (number, i), candidates in op_layers(content, model, layers).items():
        op = content.subgraphs[number].operators[i]
        tensors = [content.subgraphs[number].tensors[t].name.decode() for t in op.outputs if t >= 0]
        if tensors and in_layers(tensors[0], candidates, model, float_layers):
            nodes += tensors
    return nodes


def _report_float_ops(flatbuffer, model, quantization, names, float_layers, calibration, strict):
    """Warns (or with `strict`, raises) about the ops an integer file left float."""
    groups = float_op_groups(
        flatbuffer,
        model,
        output_layers=names["output_layers"],
        keep_float=float_layers,
        uncalibrated_qat=calibration is None,
    )
    if not groups:
        return
    message = float_ops_message(groups, model.name, quantization, strict)
    if strict:
        raise ValueError(message)
    warnings.warn(message, FloatOpsWarning, stacklevel=3)


def has_sparse_weights(model):
    """Whether `to_tflite(sparse=\"auto\")` tries the sparse encoding for `model`:
    some float weight of rank >= 2 is at least `SPARSE_AUTO_MIN_SPARSITY` zeros."""
    for w in model.weights:
        if len(w.shape) >= 2 and w.dtype.startswith("float"):
            value = w.numpy()  # convert_to_numpy warns about numpy 2's copy keyword
            if np.count_nonzero(value == 0) >= SPARSE_AUTO_MIN_SPARSITY * value.size:
                return True
    return False
