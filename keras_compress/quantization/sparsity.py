"""`SparsityPreservingWrapper`: a float layer of a quantization-aware model
whose pruned zeros stay zero while it trains."""

import keras
from keras import layers as L

from keras_compress._wrappers import Wrapper
from keras_compress.quantization.quantizers import keep_zeros


def has_zero_weights(layer):
    """Whether `layer` has a kernel-like weight (see `_preserved`) with an
    exact zero: the trace of pruning (trained kernels are never exactly zero)."""
    return any(
        _preserved(w) and bool(keras.ops.any(keras.ops.equal(w, 0))) for w in layer.weights
    )


def _preserved(variable):
    """The weights whose zeros are kept: trainable float kernels, recurrent
    kernels and tables of rank >= 2. Not biases, even of rank 2 (an
    attention projection's): they start at zero, and must leave it."""
    return (
        variable.trainable
        and len(variable.shape) >= 2
        and not variable.name.endswith("bias")
        and keras.backend.standardize_dtype(variable.dtype).startswith(("float", "bfloat"))
    )


@keras.saving.register_keras_serializable(package="keras_compress")
class SparsityPreservingWrapper(Wrapper):
    """Trains a layer with its zero weights held at exactly zero.

    Every trainable float weight of rank >= 2 except biases (kernels,
    recurrent kernels, embedding tables, attention projections) is read as
    `w * stop_gradient(w != 0)` during training: a zero gets no gradient, so
    the optimizer never moves it and the pruned sparsity survives the fit.
    In inference the layer runs unchanged (its zeros are already in its
    variables), so the exported graph has no extra ops.

    `quantize_model` puts it around the layers it leaves float (recurrent
    layers, layers listed in `float_layers`, layers without an int8 rule)
    when they hold pruned zeros; the layers it quantizes keep their zeros in
    `QuantizeWrapper` and the other quantization-aware layers.

    Args:
        layer: the layer to wrap. Its call arguments, masks and state updates
            pass through unchanged.

    Example:

    ```python
    lstm = kc.quantization.SparsityPreservingWrapper(keras.layers.LSTM(16))
    ```
    """

    name_prefix = "sparse_"

    def __init__(self, layer, **kwargs):
        if not isinstance(layer, L.Layer) or isinstance(layer, keras.Model):
            raise TypeError(
                "SparsityPreservingWrapper expects a keras layer (not a model), got "
                f"{type(layer).__name__}: {layer!r}."
            )
        super().__init__(layer, **kwargs)

    def build(self, input_shape=None):
        # The wrapped layer may take several inputs (a MultiHeadAttention's
        # query, value and key) whose shapes build() is not given; it builds
        # itself on its first call, which building or loading a Functional
        # model always makes.
        self.built = True

    def call(self, inputs, *args, training=None, **kwargs):
        # `training` reaches the wrapped layer through Keras's call context.
        if not training or not self.layer.built:
            return self.layer(inputs, *args, **kwargs)
        originals = {id(v): v.value for v in self.layer.variables}
        mapping = [
            (v, keep_zeros(originals[id(v)]) if _preserved(v) else originals[id(v)])
            for v in self.layer.variables
        ]
        outputs, scope = self.call_layer(mapping, inputs, *args, **kwargs)
        self.keep_state(mapping, scope)
        return outputs
