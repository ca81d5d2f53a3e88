"""`QuantizeLayerNormalization`: a LayerNormalization computed in the int8
ops TFLite has, with a learned range at every step."""

import keras
from keras import layers as L
from keras import ops

from keras_compress._wrappers import Wrapper
from keras_compress.quantization.quantizers import (
    ActivationQuantizer,
    check_ema_decay,
    check_wrapper_policies,
)

# The steps of the int8 formula, in order; each output gets its own range
# (the last one, the layer's output, gets it from `quantize_model`).
_STEPS = (
    "mean", "centered", "square", "variance", "variance_epsilon", "inverse_std",
    "normalized", "scaled",
)  # fmt: skip


def _why_not_layer_normalization(layer):
    if not isinstance(layer, L.LayerNormalization):
        return f"it is a {type(layer).__name__}, not a LayerNormalization"
    return None


@keras.saving.register_keras_serializable(package="keras_compress")
class QuantizeLayerNormalization(Wrapper):
    """Trains a LayerNormalization as TFLite computes it in int8.

    Keras computes `x * inv + (beta - mean * inv)` with
    `inv = gamma / sqrt(var + epsilon)`; converted, the `-mean` is a NEG op,
    which has no int8 kernel and stays float. This wrapper computes the same
    function with ops that all have int8 kernels, and fake-quantizes every
    intermediate with its own learned range, so the converter makes each op
    int8 without representative data and the file computes what training saw:

    ```
    mean = MEAN(x)                      centered = SUB(x, mean)
    square = MUL(centered, centered)    variance = MEAN(square)
    variance_epsilon = ADD(variance, epsilon)
    inverse_std = RSQRT(MAXIMUM(variance_epsilon, epsilon))
    normalized = MUL(centered, inverse_std)   (x, not centered, with rms_scaling)
    scaled = MUL(normalized, gamma)     output = ADD(scaled, beta)
    ```

    A variance that rounds to int8 zero would make the reciprocal square root
    infinite; TFLite's int8 RSQRT then writes the top of its range, and the
    MAXIMUM keeps training finite where the int8 file saturates. Gamma and
    beta keep training. The output is not quantized here (`quantize_model`
    puts an `ActivationQuantizer` after it). Keras masks pass through.

    Args:
        layer: a `keras.layers.LayerNormalization`.
        ema_decay: moving-average decay of the intermediate ranges, in [0, 1).
            Default 0.99.

    Example:

    ```python
    norm = kc.quantization.QuantizeLayerNormalization(keras.layers.LayerNormalization())
    ```
    """

    _kc_quantization_aware = True
    name_prefix = "quant_"

    def __init__(self, layer, ema_decay=0.99, **kwargs):
        self.expect_layer(layer, _why_not_layer_normalization)
        check_ema_decay(f"QuantizeLayerNormalization '{layer.name}'", ema_decay)
        super().__init__(layer, **kwargs)
        check_wrapper_policies("QuantizeLayerNormalization", self)
        self.ema_decay = ema_decay
        self.quantizers = {
            step: ActivationQuantizer(ema_decay=ema_decay, name=f"{step}_quant")
            for step in _STEPS
        }
        self.supports_masking = True

    def build(self, input_shape):
        super().build(input_shape)
        for quantizer in self.quantizers.values():
            quantizer.build(None)

    def _axes(self, rank):
        axes = self.layer.axis if isinstance(self.layer.axis, (list, tuple)) else [self.layer.axis]
        return sorted(a % rank for a in axes)

    def _broadcast(self, weight, rank, axes):
        """gamma or beta shaped to broadcast against the input (they hold
        only the normalized axes)."""
        if axes == [rank - 1]:
            return weight
        shape = [1] * rank
        for axis, size in zip(axes, weight.shape):
            shape[axis] = size
        return ops.reshape(weight, shape)

    def call(self, inputs, training=None):
        layer = self.layer
        quantize = lambda step, x: self.quantizers[step](x, training=training)  # noqa: E731
        x = ops.cast(inputs, "float32")
        rank = len(x.shape)
        axes = self._axes(rank)
        mean = quantize("mean", ops.mean(x, axis=axes, keepdims=True))
        centered = quantize("centered", x - mean)
        square = quantize("square", centered * centered)
        variance = quantize("variance", ops.mean(square, axis=axes, keepdims=True))
        variance = quantize("variance_epsilon", variance + layer.epsilon)
        inverse_std = quantize("inverse_std", ops.rsqrt(ops.maximum(variance, layer.epsilon)))
        # Keras's rms_scaling divides x itself by the (centered) standard deviation.
        outputs = (x if layer.rms_scaling else centered) * inverse_std
        # Each op's output gets a range, except the last (the layer's output).
        if layer.gamma is not None:
            outputs = quantize("normalized", outputs)
            outputs = outputs * self._broadcast(ops.cast(layer.gamma, "float32"), rank, axes)
        if layer.beta is not None:
            outputs = quantize("scaled" if layer.gamma is not None else "normalized", outputs)
            outputs = outputs + self._broadcast(ops.cast(layer.beta, "float32"), rank, axes)
        return ops.cast(outputs, inputs.dtype)

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config["ema_decay"] = self.ema_decay
        return config
