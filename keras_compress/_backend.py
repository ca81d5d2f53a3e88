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
