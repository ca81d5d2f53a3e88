"""Which Keras backends the package runs on, checked before any work."""

import keras

SUPPORTED_BACKENDS = ("tensorflow", "jax")


def check_backend(api):
    """Raises a `RuntimeError` naming `api`, the backend and the way out when
    Keras runs on a backend the package does not support (PyTorch, or any
    other than TensorFlow and JAX)."""
    backend = keras.backend.backend()
    if backend in SUPPORTED_BACKENDS:
        return
    raise RuntimeError(
        f"{api}: Keras runs on the {backend!r} backend; keras_compress trains and converts on "
        f"{' and '.join(map(repr, SUPPORTED_BACKENDS))} only (set KERAS_BACKEND before Keras is imported). "
        + ("PyTorch is not supported: its Linux wheel alone is 554 MB (a CUDA build), too large to test in "
           "CI here. " if backend == "torch" else "")
        + "A model saved as a .keras file on this backend loads on either supported one."
    )


def counter_dtype():
    """The dtype of step counters: int64, or int32 on JAX, whose default
    configuration has no 64-bit integers (it would truncate them with a
    warning at every variable); 2**31 steps is still plenty."""
    return "int32" if keras.backend.backend() == "jax" else "int64"


def require_tensorflow(api, why, alternative):
    """Raises a `RuntimeError` naming `api`, the backend, `why` the feature
    needs TensorFlow and the `alternative`, on any other backend."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(f"{api}: {why}, so it needs the 'tensorflow' backend; Keras runs on {backend!r}. "
                           f"{alternative}")
