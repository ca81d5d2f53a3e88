"""`to_tflite`: the package's one Keras -> TFLite conversion entry point."""

import os
import tempfile

import keras
import numpy as np

# The converter skips tensors below this fraction of zeros (its own
# minimum for sparse encoding), so "auto" asks for the encoding only when some
# weight tensor is at least this sparse.
SPARSE_AUTO_MIN_SPARSITY = 0.3


def to_tflite(model, output=None, *, sparse="auto", batch_size=1):
    """Converts a Keras model to a TFLite (LiteRT) flatbuffer.

    The model is traced in inference mode, saved as a SavedModel through
    `keras.export.ExportArchive` and converted with `tf.lite.TFLiteConverter`
    using builtin TFLite ops only, so the file runs on any LiteRT runtime
    without the Flex delegate. Pruning wrappers need not be stripped first:
    their masks are folded into the weights during conversion.

    Args:
        model: a built `keras.Model` with known inputs.
        output: optional path; when given, the flatbuffer is also written there.
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
        if sparse is True or (sparse == "auto" and _has_sparse_weights(model)):
            converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        flatbuffer = converter.convert()

    if output is not None:
        with open(output, "wb") as f:
            f.write(flatbuffer)
    return flatbuffer


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
