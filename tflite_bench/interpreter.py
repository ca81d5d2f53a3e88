"""Running TFLite models in the LiteRT interpreter: predictions and accuracy.

LiteRT-only (numpy, `ai_edge_litert` and the standard library), so
`tflite_bench` and the tfmot peer scripts use it without loading Keras or
TensorFlow; `keras_compress.export` re-exports it.
"""

import os
import re
import warnings

import numpy as np


def litert_message(error, limit=300):
    """LiteRT's error text on one line: it joins its messages with no
    separator ("... node #5Node number 7 (...) failed to prepare."), so each
    message after the first is put after a "; "."""
    text = " ".join(str(error).split())
    text = re.sub(r"(?<=[^\s;])(?=Node number \d)", "; ", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
                f"XNNPACK could not prepare this model ({litert_message(error)}); "
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
    """Runs a TFLite model on `x`, in the LiteRT interpreter.

    Integer inputs and outputs (int8 / uint8 I/O) are quantized and
    dequantized with the tensors' own scale and zero point, so the results are
    comparable with the Keras model's.

    Args:
        tflite: flatbuffer `bytes` or a `.tflite` path.
        x: for a model with one input, a numpy array of samples, batch
            first (or a dict with that array under the input's name). For
            several inputs, a dict of arrays by input name (the tensor name,
            or the signature key), or a list or tuple of arrays in the
            file's input order, which `to_tflite` makes the Keras model's.
            Every input has the same number of samples.
        num_threads: interpreter threads (`None`: LiteRT's default).

    Returns:
        The outputs as float numpy arrays: one array for a model with one
        output, else a list in the file's output order (`model.outputs`'
        order for files written by `to_tflite`).

    Raises:
        ValueError: `x` does not fit the model's inputs (the message names
            the input and the shape it expects).

    Example:

    ```python
    logits = kc.predict_tflite("model.tflite", x_test)
    label, score = kc.predict_tflite(two_outputs, {"numbers": n, "image": images})
    ```
    """
    interpreter = load_interpreter(tflite, num_threads)
    arrays = _input_arrays("predict_tflite", x, interpreter)
    results = _run(interpreter, arrays)
    return results[0] if len(results) == 1 else results


def _run(interpreter, arrays):
    """The dequantized outputs of `interpreter` on one array per input."""
    inputs = interpreter.get_input_details()
    count = len(arrays[0])
    batch = int(inputs[0]["shape"][0])
    if any(d["shape_signature"][0] == -1 for d in inputs):
        batch = count
        for detail, array in zip(inputs, arrays):
            interpreter.resize_tensor_input(detail["index"], [batch, *array.shape[1:]])
        interpreter.allocate_tensors()
    outputs = interpreter.get_output_details()
    results = [[] for _ in outputs]
    for start in range(0, count, batch):
        for detail, array in zip(inputs, arrays):
            chunk = array[start : start + batch]
            if len(chunk) < batch:  # the last partial batch of a fixed-batch model
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
            interpreter.set_tensor(detail["index"], quantize_io(chunk, *detail["quantization"], detail["dtype"]))
        interpreter.invoke()
        for result, out in zip(results, outputs):
            result.append(dequantize_io(interpreter.get_tensor(out["index"]), *out["quantization"]))
    return [np.concatenate(r)[:count] for r in results]


def key_problems(missing, unknown):
    """`"missing [...]; unknown keys [...]"`, for the errors about dicts of inputs or labels."""
    parts = ([f"missing {missing}"] if missing else []) + ([f"unknown keys {unknown}"] if unknown else [])
    return "; ".join(parts)


def _signature_keys(interpreter, kind):
    """`{signature key: tensor index}` of the file's only signature, if it has one."""
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return {}
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    details = runner.get_input_details() if kind == "inputs" else runner.get_output_details()
    return {key: detail["index"] for key, detail in details.items()}


def _input_arrays(api, x, interpreter):
    """`x` as one checked array per input, in the file's input order."""
    details = interpreter.get_input_details()
    names = [d["name"] for d in details]
    if isinstance(x, dict):
        keys = _signature_keys(interpreter, "inputs")
        by_index = {d["index"]: i for i, d in enumerate(details)}
        aliases = {**{key: by_index[index] for key, index in keys.items() if index in by_index},
                   **{name: i for i, name in enumerate(names)}}
        unknown = [k for k in x if k not in aliases]
        given = {aliases[k]: v for k, v in x.items() if k in aliases}
        missing = [names[i] for i in range(len(names)) if i not in given]
        if unknown or missing:
            raise ValueError(
                f"{api}: x as a dict needs one array per model input, keyed by input name "
                f"{names}; {key_problems(missing, unknown)}."
            )
        if len(given) != len(x):
            raise ValueError(f"{api}: x gives an input twice, by its tensor name and its signature key.")
        arrays = [given[i] for i in range(len(names))]
    elif len(details) > 1:
        if not isinstance(x, (list, tuple)) or len(x) != len(details):
            got = f"a {type(x).__name__} of {len(x)}" if isinstance(x, (list, tuple)) else f"a {type(x).__name__}"
            raise ValueError(
                f"{api}: the model has {len(details)} inputs {names}; x must be a dict of arrays "
                f"by input name or a list of one array per input in that order; got {got}."
            )
        arrays = list(x)
    else:
        arrays = [x]
    arrays = [np.asarray(a) for a in arrays]
    for array, detail in zip(arrays, details):
        expected = tuple(detail["shape_signature"][1:])
        if array.ndim != len(detail["shape"]) or any(e not in (-1, s) for e, s in zip(expected, array.shape[1:])):
            what = "x" if len(details) == 1 else f"input '{detail['name']}'"
            raise ValueError(
                f"{api}: {what} has shape {array.shape}, but the model's input "
                f"'{detail['name']}' expects (batch, {', '.join(map(str, expected))})."
            )
    counts = {d["name"]: len(a) for d, a in zip(details, arrays)}
    if len(set(counts.values())) > 1:
        raise ValueError(f"{api}: the inputs have different numbers of samples: {counts}.")
    if not len(arrays[0]):
        raise ValueError(f"{api}: x is empty.")
    return arrays


def evaluate_tflite(tflite, x, y, num_threads=None):
    """Classification accuracy of a TFLite model, computed in LiteRT.

    The accuracy compares the argmax of each output's class scores (its
    last axis, so per pixel for segmentation) with the labels.

    Args:
        tflite: flatbuffer `bytes` or a `.tflite` path.
        x: input samples, as `predict_tflite` takes them.
        y: for a model with one output, integer class labels or one-hot
            rows. For several outputs, a dict of labels by output name (the
            outputs to score; others are left out), or a list with the
            labels of each output in the file's output order (`None` to
            leave one out).
        num_threads: interpreter threads.

    Returns:
        `{"accuracy": float, "samples": int}` for one output; for several,
        `{"accuracy": {output name: float}, "samples": int}`.

    Raises:
        ValueError: `x` or `y` does not fit the model (the message names
            the output), or an output has a single unit (no class scores).

    Example:

    ```python
    kc.evaluate_tflite("model.tflite", x_test, y_test)["accuracy"]
    kc.evaluate_tflite(two_outputs, [n, images], {"zeta_class": labels})["accuracy"]["zeta_class"]
    ```
    """
    api = "evaluate_tflite"
    interpreter = load_interpreter(tflite, num_threads)
    outputs = interpreter.get_output_details()
    names = [d["name"] for d in outputs]
    labels = _labels_by_output(api, y, interpreter)
    if len(names) == 1 and isinstance(x, np.ndarray):
        _checked_labels(api, x, y)  # the sample counts, before checking x's shape
    arrays = _input_arrays(api, x, interpreter)
    for position, y_output in labels.items():
        if outputs[position]["shape"][-1] == 1:
            raise ValueError(
                f"{api}: output '{names[position]}' has a single unit, not class scores, so it has "
                "no argmax accuracy; leave it out of y."
            )
        labels[position] = _checked_labels(api, arrays[0], y_output)
    scores = _run(interpreter, arrays)
    accuracy = {}
    for position, expected in labels.items():
        # One-hot rows have the rank of the scores; per-pixel labels one less.
        if expected.ndim == scores[position].ndim:
            expected = expected.argmax(-1)
        accuracy[names[position]] = float(np.mean(scores[position].argmax(-1) == expected))
    samples = int(len(arrays[0]))
    if len(names) == 1:
        return {"accuracy": accuracy[names[0]], "samples": samples}
    return {"accuracy": accuracy, "samples": samples}


def _labels_by_output(api, y, interpreter):
    """`{output position: labels}` from `y`."""
    outputs = interpreter.get_output_details()
    names = [d["name"] for d in outputs]
    if len(names) == 1:
        return {0: y}
    if isinstance(y, dict):
        keys = _signature_keys(interpreter, "outputs")
        by_index = {d["index"]: i for i, d in enumerate(outputs)}
        aliases = {**{k: by_index[i] for k, i in keys.items() if i in by_index},
                   **{n: i for i, n in enumerate(names)}}
        unknown = [k for k in y if k not in aliases]
        if unknown or not y:
            raise ValueError(
                f"{api}: y as a dict gives labels by output name, of {names}; "
                + (f"got {key_problems([], unknown)}." if unknown else "got an empty dict.")
            )
        return {aliases[k]: v for k, v in y.items()}
    if not isinstance(y, (list, tuple)) or len(y) != len(names):
        got = f"a {type(y).__name__} of {len(y)}" if isinstance(y, (list, tuple)) else f"a {type(y).__name__}"
        raise ValueError(
            f"{api}: the model has {len(names)} outputs {names}; y must be a dict of labels by "
            f"output name or a list of labels per output in that order (None to skip one); got {got}."
        )
    chosen = {i: v for i, v in enumerate(y) if v is not None}
    if not chosen:
        raise ValueError(f"{api}: y gives no labels for any output of {names}.")
    return chosen


def class_labels(api, x, y):
    """Integer labels from `y` (labels or one-hot rows), checked against `x`."""
    y = _checked_labels(api, x, y)
    return y.argmax(-1) if y.ndim > 1 else y


def _checked_labels(api, x, y):
    """`y` as an array, checked to have as many samples as `x` (an array of samples)."""
    y = np.asarray(y)
    if len(y) != len(x):
        raise ValueError(f"{api}: x has {len(x)} samples but y has {len(y)}.")
    if len(y) == 0:
        raise ValueError(f"{api}: x and y are empty.")
    return y
