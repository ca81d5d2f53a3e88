"""Conversion-time rewrites: the same math, in ops that TFLite quantizes.

`to_tflite` applies them, for the integer modes only, to a clone of a
Sequential or Functional model (the user's model is never modified):

- A recurrent layer (`LSTM`, `GRU`, `SimpleRNN`, any `keras.layers.RNN`,
  also inside `Bidirectional` or another wrapper) with a static number of time steps, at most
  `MAX_UNROLL_STEPS`, is exported unrolled (`unroll=True`). Keras 3 traces a
  recurrent layer to a WHILE loop, whose body TFLite's quantizer leaves
  float and whose calibration can crash TensorFlow; unrolled, each step is
  plain FULLY_CONNECTED, LOGISTIC, TANH, MUL and ADD ops, all int8.
- `LayerNormalization` is exported as `x * inv + (beta - mean * inv)`.
  Keras computes `x * inv + (-mean * inv + beta)`, and TFLite has no int8
  NEG, so each normalization would keep a float NEG between a DEQUANTIZE
  and a QUANTIZE. (The centred `(x - mean) * inv + beta` has no NEG
  either, but its int8 file agreed with the Keras model on 4 points fewer
  argmaxes of a transformer block: 0.926 against 0.988, 3 seeds.) For
  int16x8 its variance is `mean(d * d)` with `d = x - mean`: the
  SQUARED_DIFFERENCE of `ops.moments` has no int16 kernel in LiteRT, which
  then refuses to run the file.

Subclassed models convert as they are; `to_tflite`'s float-op warning
names what stays float.
"""

import copy
import warnings

import keras
from keras import ops
from keras.src.models.functional import Functional  # Keras has no public name for it.

from keras_compress._models import clone_model, walk_layers

# Longer sequences stay loops: an unrolled step is about 15 TFLite ops.
MAX_UNROLL_STEPS = 100


def conversion_model(model, quantization="int8"):
    """The model to export for an integer conversion, and what was rewritten.

    Args:
        model: the model being converted.
        quantization: the integer mode, `"int8"` or `"int16x8"`.

    Returns:
        `(model_to_export, notes)`: `model` itself when nothing needs
        rewriting or it is subclassed, otherwise a clone with the rewritten
        layers; `notes` says, one line per layer, what was rewritten. A
        model that cannot be cloned (a custom layer without a working
        `get_config`) is exported as it is, with a warning.
    """
    if not isinstance(model, (keras.Sequential, Functional)):
        return model, []
    notes = {}
    for layer in walk_layers(model):
        note = _why_rewrite(layer)
        if note:
            notes[id(layer)] = f"layer '{layer.name}' ({type(layer).__name__}): {note}"
    if not notes:
        return model, []

    def transform(layer):
        if id(layer) not in notes:
            return None
        new = _rewritten(layer, quantization)
        return new, lambda built, source=layer: built.set_weights(source.get_weights())

    try:
        return clone_model(model, transform), list(notes.values())
    except Exception as error:  # any layer's config may fail to rebuild it
        warnings.warn(
            f"to_tflite: cannot clone model '{model.name}' to export "
            f"{', '.join(n.split(':')[0] for n in notes.values())} in int8-friendly form "
            f"({type(error).__name__}: {error}); converting the model as it is.",
            stacklevel=3,
        )
        return model, []


def _why_rewrite(layer):
    """What the export changes in `layer`, or `None` to leave it alone."""
    if isinstance(layer, keras.layers.LayerNormalization) and not layer.rms_scaling:
        return "exported as x * inv + (beta - mean * inv), without the NEG that has no int8 kernel"
    steps = _static_time_steps(layer)
    if steps is not None:
        return f"exported unrolled over its {steps} time steps (int8 ops instead of a float WHILE loop)"
    return None


def _static_time_steps(layer):
    """The time steps of a recurrent layer that can be unrolled (also inside
    a wrapper such as `Bidirectional`), else `None`."""
    recurrent = wrapped_recurrent(layer)
    if recurrent is None or recurrent.unroll or recurrent.stateful:
        return None
    axis = 0 if getattr(recurrent, "time_major", False) else 1
    steps = {
        keras.tree.flatten(node.input_tensors)[0].shape[axis] for node in layer._inbound_nodes  # noqa: SLF001
    }
    if len(steps) != 1 or None in steps:
        return None
    (count,) = steps
    return count if count <= MAX_UNROLL_STEPS else None


def wrapped_recurrent(layer):
    """The `keras.layers.RNN` that `layer` is or wraps (in a `Bidirectional`
    or another wrapper), else `None`."""
    while True:
        if isinstance(layer, keras.layers.Bidirectional):  # not a keras.layers.Wrapper
            layer = layer.forward_layer
        elif isinstance(layer, keras.layers.Wrapper):
            layer = layer.layer
        else:
            return layer if isinstance(layer, keras.layers.RNN) else None


def _rewritten(layer, quantization):
    """An unbuilt replacement of `layer`, with the same weights' layout."""
    config = copy.deepcopy(layer.get_config())
    if isinstance(layer, keras.layers.LayerNormalization):
        norm = NegFreeLayerNormalization.from_config(config)
        norm.variance_by_product = quantization == "int16x8"
        return norm
    _unroll(config)
    return layer.__class__.from_config(config)


def _unroll(config):
    """Sets `unroll=True` in a recurrent layer's config, or in the configs of
    the layers a wrapper's config holds (a Bidirectional's two directions)."""
    if "unroll" in config:
        config["unroll"] = True
    for key in ("layer", "backward_layer"):
        if isinstance(config.get(key), dict):
            _unroll(config[key]["config"])


class NegFreeLayerNormalization(keras.layers.LayerNormalization):
    """`LayerNormalization` computed as `x * inv + (beta - mean * inv)`.

    Keras's `ops.layer_normalization` computes `x * inv + (-mean * inv + beta)`
    with `inv = rsqrt(variance + epsilon) * gamma`: the same value, but its
    NEG has no int8 TFLite kernel. Used only inside `to_tflite`'s export.
    With `variance_by_product` (int16x8), the variance is `mean(d * d)`,
    `d = x - mean`, as LiteRT has no int16 SQUARED_DIFFERENCE.
    """

    variance_by_product = False

    def call(self, inputs):
        if self.rms_scaling:
            return super().call(inputs)
        # As Keras: at least float32 inside, for half-precision inputs.
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        axes = sorted([self.axis] if isinstance(self.axis, int) else self.axis)
        if self.variance_by_product:
            mean = ops.mean(x, axis=axes, keepdims=True)
            centred = x - mean
            variance = ops.mean(centred * centred, axis=axes, keepdims=True)
        else:
            mean, variance = ops.moments(x, axes=axes, keepdims=True)
        inv = ops.rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            inv = inv * self._broadcast(ops.cast(self.gamma, x.dtype), x, axes)
        shift = mean * inv
        if self.beta is not None:
            shift = self._broadcast(ops.cast(self.beta, x.dtype), x, axes) - shift
            return ops.cast(x * inv + shift, self.compute_dtype)
        return ops.cast(x * inv - shift, self.compute_dtype)

    @staticmethod
    def _broadcast(value, x, axes):
        # As Keras: gamma and beta span the normalized axes only.
        rank = len(x.shape)
        if len(value.shape) == rank or axes == [rank - 1]:
            return value
        shape = [1] * rank
        for axis in axes:
            shape[axis] = x.shape[axis]
        return ops.reshape(value, shape)
