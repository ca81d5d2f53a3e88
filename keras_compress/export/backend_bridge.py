"""`to_tflite` on a Keras backend other than TensorFlow.

TFLite's converter reads TensorFlow graphs. On JAX (or PyTorch) the model is
saved to a `.keras` file, which holds its configuration and weights
independently of the backend, and a child Python process with
`KERAS_BACKEND=tensorflow` loads it and runs the same `to_tflite`. The file
is therefore the one the TensorFlow backend gives for the same weights: the
same rewrites (unrolled recurrences, LayerNormalization, `float_layers`),
the same quantization-aware ranges, the same float-op report.

Why not Keras's own export from JAX (jax2tf): on a quantization-aware model
it gave a 278,960-byte file with 264 float ops and READ_VARIABLE /
ASSIGN_VARIABLE ops, without a message, where the TensorFlow backend gives a
63 kB all-int8 file; and this package's rewrites work on the TensorFlow
graph. The price is the start of a Python process with TensorFlow (a few
seconds) and a model that `.keras` files can hold (custom layers registered
with `keras.saving.register_keras_serializable` in a module the child can
import).

Run as a module (`python -m keras_compress.export.backend_bridge JOB`), it
converts the job `to_tflite_on_tensorflow` wrote.
"""

import json
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np

_MODEL = "model.keras"
_JOB = "job.json"
_DATA = "representative_data.npz"
_RESULT = "result.tflite"
_OUTCOME = "outcome.json"
_ERROR_TAIL_LINES = 12


def to_tflite_on_tensorflow(model, options, calibration):
    """`to_tflite(model, **options)` run by the TensorFlow backend in a child
    process, for a model of another backend.

    Args:
        model: the Keras model (any backend).
        options: `to_tflite` keyword arguments (JSON-serializable values).
        calibration: `None`, or one array of samples per model input (read
            and checked by the caller), given as `representative_data`.

    Returns:
        The flatbuffer `bytes`. Warnings the child's `to_tflite` raised are
        raised again here, with their category.

    Raises:
        ValueError / TypeError: as the child's `to_tflite` raised them, or
            the model cannot be saved to a `.keras` file.
        RuntimeError: the child process failed otherwise.
    """
    import keras

    backend = keras.backend.backend()
    with tempfile.TemporaryDirectory() as job:
        try:
            model.save(os.path.join(job, _MODEL))
        except Exception as error:  # noqa: BLE001 (any saving failure is reported the same way)
            raise ValueError(
                f"to_tflite: on the {backend} backend a model is converted by the TensorFlow backend in a "
                f"child process, through a .keras file, and model '{model.name}' could not be saved to one "
                f"({type(error).__name__}: {error}). Make its layers serializable (get_config, "
                "keras.saving.register_keras_serializable), or run the conversion with "
                "KERAS_BACKEND=tensorflow."
            ) from error
        if calibration is not None:
            np.savez(os.path.join(job, _DATA), *calibration)
        with open(os.path.join(job, _JOB), "w") as f:
            json.dump({"options": options, "inputs": 0 if calibration is None else len(calibration)}, f)
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        done = subprocess.run([sys.executable, "-m", __name__, job], capture_output=True, text=True, env=env,
                              check=False)
        outcome = _read_json(os.path.join(job, _OUTCOME))
        result = os.path.join(job, _RESULT)
        flatbuffer = open(result, "rb").read() if outcome.get("ok") and os.path.exists(result) else None
    for warning in outcome.get("warnings", []):
        warnings.warn(warning["message"], _warning_category(warning["category"]), stacklevel=3)
    if flatbuffer is not None:
        return flatbuffer
    if outcome.get("error_type") in ("ValueError", "TypeError"):
        raise {"ValueError": ValueError, "TypeError": TypeError}[outcome["error_type"]](outcome["message"])
    tail = "\n".join(done.stderr.strip().splitlines()[-_ERROR_TAIL_LINES:])
    detail = f"{outcome['error_type']}: {outcome['message']}" if outcome.get("error_type") else tail
    raise RuntimeError(
        f"to_tflite: the TensorFlow-backend process converting model '{model.name}' (from the {backend} "
        f"backend) failed with status {done.returncode}: {detail}"
    )


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _warning_category(name):
    from keras_compress.export.dense_zeros import DenseZerosWarning
    from keras_compress.export.float_ops import FloatOpsWarning

    known = {c.__name__: c for c in (FloatOpsWarning, DenseZerosWarning, UserWarning, RuntimeWarning)}
    return known.get(name, UserWarning)


def _run(job):
    """The child: load the model on the TensorFlow backend and convert it."""
    outcome = {"ok": False, "warnings": []}
    try:
        import keras

        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(f"the conversion process runs Keras on {keras.backend.backend()!r}, "
                               "not 'tensorflow'.")
        import keras_compress  # noqa: F401 (registers the package's layers for loading)
        from keras_compress.export.converter import to_tflite

        with open(os.path.join(job, _JOB)) as f:
            spec = json.load(f)
        data = None
        if spec["inputs"]:
            with np.load(os.path.join(job, _DATA)) as arrays:
                data = [arrays[f"arr_{i}"] for i in range(spec["inputs"])]
            data = data[0] if len(data) == 1 else data
        try:
            model = keras.saving.load_model(os.path.join(job, _MODEL), compile=False)
        except Exception as error:  # noqa: BLE001 (reported with the way out)
            raise ValueError(
                f"to_tflite: a model of another backend is converted by the TensorFlow backend in a child "
                f"process, which could not load it from its .keras file ({type(error).__name__}: {error}). "
                "Register its custom layers and models with keras.saving.register_keras_serializable in a "
                "module the child imports (or build it from Keras layers), or convert with "
                "KERAS_BACKEND=tensorflow."
            ) from error
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            flatbuffer = to_tflite(model, representative_data=data, **spec["options"])
        outcome["warnings"] = [{"category": w.category.__name__, "message": str(w.message)} for w in caught
                               if issubclass(w.category, UserWarning) and w.category is not DeprecationWarning]
        with open(os.path.join(job, _RESULT), "wb") as f:
            f.write(flatbuffer)
        outcome["ok"] = True
    except Exception as error:  # noqa: BLE001 (reported to the parent, which raises it)
        outcome.update(error_type=type(error).__name__, message=str(error))
    with open(os.path.join(job, _OUTCOME), "w") as f:
        json.dump(outcome, f)
    return 0 if outcome["ok"] else 1


if __name__ == "__main__":
    sys.exit(_run(sys.argv[1]))
