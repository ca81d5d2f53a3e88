"""Running converted models in the LiteRT interpreter: predictions and accuracy."""

import os
import warnings

import numpy as np


def load_interpreter(tflite, num_threads=None, use_xnnpack=True):
    """An allocated `ai_edge_litert` Interpreter for a flatbuffer or a file.

    Args:
        tflite: the flatbuffer `bytes`, or a path to a `.tflite` file.
        num_threads: interpreter threads (`None`: LiteRT's default).
        use_xnnpack: apply LiteRT's default XNNPACK delegate (the default).
            XNNPACK cannot prepare some models (for example sparse weights with
            dynamic-range int8 convolutions); those fall back to the builtin
            kernels with a warning. `interpreter.uses_xnnpack` tells which ran.

    Raises:
        ValueError: the file is missing or is not a TFLite flatbuffer.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    content = read_flatbuffer(tflite)
    builtin = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if use_xnnpack:
        try:
            interpreter = Interpreter(model_content=content, num_threads=num_threads)
            interpreter.allocate_tensors()
            interpreter.uses_xnnpack = True
            return interpreter
        except RuntimeError as error:
            warnings.warn(
                f"XNNPACK could not prepare this model ({str(error).strip()[:200]}); "
                "running it with the builtin kernels instead.",
                stacklevel=2,
            )
    interpreter = Interpreter(
        model_content=content, num_threads=num_threads, experimental_op_resolver_type=builtin
    )
    interpreter.allocate_tensors()
    interpreter.uses_xnnpack = False
    return interpreter


def read_flatbuffer(tflite):
    """The bytes of a TFLite flatbuffer given as bytes or a path; checks them."""
    if isinstance(tflite, (bytes, bytearray)):
        content, where = bytes(tflite), "the given bytes"
    elif isinstance(tflite, (str, os.PathLike)):
        where = f"file {os.fspath(tflite)!r}"
        if not os.path.isfile(tflite):
            raise ValueError(f"No TFLite file at {os.fspath(tflite)!r}.")
        with open(tflite, "rb") as f:
            content = f.read()
    else:
        raise TypeError(
            f"Expected TFLite flatbuffer bytes or a .tflite path, got {type(tflite).__name__}."
        )
    # A TFLite flatbuffer carries the file identifier "TFL3" at bytes 4..8.
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise ValueError(f"{where} is not a TFLite flatbuffer (no 'TFL3' identifier).")
    return content


def quantize_io(x, scale, zero_point, dtype):
    """Float values to an integer input tensor's dtype (a float input: a cast)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        x = np.clip(np.round(x / scale + zero_point), info.min, info.max)
    return x.astype(dtype)


def dequantize_io(y, scale, zero_point):
    """An integer output tensor's values back to float (a float output: as is)."""
    if np.issubdtype(y.dtype, np.integer) and scale:
        return (y.astype(np.float32) - zero_point) * scale
    return y


def predict_tflite(tflite, x, num_threads=None):
    """Runs a single-input TFLite model on `x`, in the LiteRT interpreter.

    Integer inputs and outputs (int8 / uint8 I/O) are quantized and
    dequantized with the tensors' own scale and zero point, so the results are
    comparable with the Keras model's.

    Args:
        tflite: flatbuffer `bytes` or a `.tflite` path.
        x: a numpy array of samples, with the batch as its first axis.
        num_threads: interpreter threads (`None`: LiteRT's default).

    Returns:
        The outputs as a float numpy array (a list of arrays for several outputs).
    """
    interpreter = load_interpreter(tflite, num_threads)
    inputs = interpreter.get_input_details()
    if len(inputs) != 1:
        raise ValueError(f"predict_tflite supports models with one input; this one has {len(inputs)}.")
    detail = inputs[0]
    x = np.asarray(x)
    expected = tuple(detail["shape_signature"][1:])
    if x.ndim != len(detail["shape"]) or any(
        e not in (-1, s) for e, s in zip(expected, x.shape[1:])
    ):
        raise ValueError(
            f"predict_tflite: x has shape {x.shape}, but the model's input "
            f"'{detail['name']}' expects (batch, {', '.join(map(str, expected))})."
        )
    batch = int(detail["shape"][0])
    if detail["shape_signature"][0] == -1:
        batch = len(x)
        interpreter.resize_tensor_input(detail["index"], [batch, *x.shape[1:]])
        interpreter.allocate_tensors()
    outputs = interpreter.get_output_details()
    results = [[] for _ in outputs]
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        if len(chunk) < batch:  # the last partial batch of a fixed-batch model
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
        interpreter.set_tensor(detail["index"], quantize_io(chunk, *detail["quantization"], detail["dtype"]))
        interpreter.invoke()
        for result, out in zip(results, outputs):
            result.append(dequantize_io(interpreter.get_tensor(out["index"]), *out["quantization"]))
    arrays = [np.concatenate(r)[: len(x)] for r in results]
    return arrays[0] if len(arrays) == 1 else arrays


def evaluate_tflite(tflite, x, y, num_threads=None):
    """Classification accuracy of a TFLite model, computed in LiteRT.

    Args:
        tflite: flatbuffer `bytes` or a `.tflite` path.
        x: input samples.
        y: integer class labels, or one-hot rows.
        num_threads: interpreter threads.

    Returns:
        `{"accuracy": float, "samples": int}`.
    """
    labels = class_labels("evaluate_tflite", x, y)
    logits = predict_tflite(tflite, x, num_threads)
    if isinstance(logits, list):
        raise ValueError("evaluate_tflite expects a model with one output.")
    return {"accuracy": float(np.mean(logits.argmax(-1) == labels)), "samples": int(len(labels))}


def class_labels(api, x, y):
    """Integer labels from `y` (labels or one-hot rows), checked against `x`."""
    y = np.asarray(y)
    if len(y) != len(np.asarray(x)):
        raise ValueError(f"{api}: x has {len(x)} samples but y has {len(y)}.")
    if len(y) == 0:
        raise ValueError(f"{api}: x and y are empty.")
    return y.argmax(-1) if y.ndim > 1 else y
