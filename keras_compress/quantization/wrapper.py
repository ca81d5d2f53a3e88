"""`QuantizeWrapper`: int8 fake quantization of a layer's kernel, with the
BatchNormalization and activation after it folded in."""

import keras
from keras import layers as L
from keras import ops

from keras_compress.quantization.quantizers import (
    check_float32_policy,
    fake_quant_weights,
    weight_range,
)

# Layers whose kernel is fake-quantized, with the kernel axis that gets its own
# int8 range (`None`: one range per tensor) and the kernel axes that hold the
# output channels (where a folded BatchNormalization scales them).
# Per-channel ranges only where the TFLite converter accepts them: per-channel
# Dense kernels break it ("tfl.transpose op has mismatched quantized axes").
# Order matters: Conv2DTranspose and DepthwiseConv2D subclass Conv2D's base.
QUANTIZABLE_KERNELS = (
    (L.DepthwiseConv2D, "depthwise", (2, 3)),
    (L.Conv2DTranspose, None, (2,)),
    (L.Conv2D, -1, (3,)),
    (L.Conv1D, None, (2,)),
    (L.Dense, None, (1,)),
)

SUPPORTED_LAYER_NAMES = ", ".join(cls.__name__ for cls, _, _ in QUANTIZABLE_KERNELS)

# Activations TFLite fuses into the op before them, so they cost no extra
# quantization step.
FUSABLE_ACTIVATIONS = ("linear", "relu", "relu6")


def _rule_for(layer):
    for cls, axis, channel_axes in QUANTIZABLE_KERNELS:
        if isinstance(layer, cls):
            return axis, channel_axes
    return None


def activation_name(layer):
    """The name of the activation function a layer applies, or `None`."""
    function = getattr(layer, "activation", None)
    if function is None:
        return None
    return getattr(function, "__name__", None)


def why_not_quantizable(layer):
    """`None` if `QuantizeWrapper` can wrap `layer`, else the reason."""
    if isinstance(layer, QuantizeWrapper):
        return f"layer '{layer.name}' is already a QuantizeWrapper."
    if _rule_for(layer) is None:
        return (
            f"layer '{layer.name}' ({type(layer).__name__}) has no kernel "
            f"quantization rule. Supported types: {SUPPORTED_LAYER_NAMES}."
        )
    if getattr(layer, "groups", 1) != 1:
        return f"layer '{layer.name}' is a grouped convolution (groups={layer.groups})."
    if getattr(layer, "quantization_mode", None):
        return f"layer '{layer.name}' is already quantized ({layer.quantization_mode})."
    if getattr(layer, "lora_enabled", False):
        return f"layer '{layer.name}' has LoRA enabled; merge it first."
    return None


@keras.saving.register_keras_serializable(package="keras_compress")
class QuantizeWrapper(L.Wrapper):
    """Trains a Dense or convolution layer with its kernel fake-quantized to int8.

    The kernel is quantized symmetrically (zero point 0, 255 levels): per
    output channel for Conv2D and DepthwiseConv2D (depth multiplier 1), per
    tensor for the rest, as TFLite's int8 kernels expect. A
    BatchNormalization that followed the layer is folded into it: the kernel
    is scaled by `gamma / sqrt(moving_variance + epsilon)` before it is
    quantized, so training sees the same int8 kernel the converter will
    write. The moving statistics are frozen (gamma and beta still train):
    one convolution per step, and no drift between training and inference.

    Zero weights stay exactly zero when `preserve_sparsity` is on (the
    default): they get no gradient, so a pruned model stays pruned through
    quantization-aware training and export.

    The wrapper does not quantize its output; `quantize_model` puts an
    `ActivationQuantizer` after it.

    Args:
        layer: a Dense, Conv1D, Conv2D, Conv2DTranspose or DepthwiseConv2D
            layer whose activation is linear, ReLU or ReLU6.
        batch_norm: a `BatchNormalization` layer (channels last) to fold, or
            `None`. The wrapped layer's own activation must then be linear.
        activation: `None`, `"relu"` or `"relu6"`: an activation applied after
            the folded batch normalization (the one TFLite fuses into the op).
        preserve_sparsity: keep zero weights at zero. Default `True`.

    Example:

    ```python
    conv = kc.quantization.QuantizeWrapper(
        keras.layers.Conv2D(8, 3, use_bias=False),
        batch_norm=keras.layers.BatchNormalization(),
        activation="relu",
    )
    ```
    """

    _kc_quantization_aware = True

    def __init__(
        self, layer, batch_norm=None, activation=None, preserve_sparsity=True, **kwargs
    ):
        if not isinstance(layer, L.Layer):
            raise TypeError(
                f"QuantizeWrapper expects a keras layer, got {type(layer).__name__}: {layer!r}."
            )
        reason = why_not_quantizable(layer)
        if reason:
            raise ValueError(f"QuantizeWrapper cannot wrap {reason}")
        own_activation = activation_name(layer)
        if own_activation not in FUSABLE_ACTIVATIONS:
            raise ValueError(
                f"QuantizeWrapper: layer '{layer.name}' has activation "
                f"'{own_activation}'; the wrapped layer's activation must be one "
                f"of {FUSABLE_ACTIVATIONS}. Apply other activations in a separate "
                "layer (quantize_model does this for you)."
            )
        if batch_norm is not None:
            if not isinstance(batch_norm, L.BatchNormalization):
                raise TypeError(
                    f"QuantizeWrapper '{layer.name}': batch_norm must be a "
                    f"BatchNormalization layer or None, got {batch_norm!r}."
                )
            if own_activation != "linear":
                raise ValueError(
                    f"QuantizeWrapper '{layer.name}': cannot fold batch_norm "
                    f"'{batch_norm.name}' after activation '{own_activation}'; "
                    "the wrapped layer's activation must be linear."
                )
        if activation not in (None, "relu", "relu6"):
            raise ValueError(
                f"QuantizeWrapper '{layer.name}': activation must be None, 'relu' "
                f"or 'relu6', got {activation!r}."
            )
        if activation is not None and own_activation != "linear":
            raise ValueError(
                f"QuantizeWrapper '{layer.name}': activation={activation!r} given "
                f"but the layer already applies '{own_activation}'."
            )
        if not isinstance(preserve_sparsity, bool):
            raise TypeError(
                f"QuantizeWrapper '{layer.name}': preserve_sparsity must be a bool, "
                f"got {preserve_sparsity!r}."
            )
        kwargs.setdefault("name", f"quant_{layer.name}")
        super().__init__(layer, **kwargs)
        for owner in (self, layer):
            check_float32_policy(
                "QuantizeWrapper", f"the dtype policy of layer '{owner.name}'", owner.dtype_policy
            )
        self.batch_norm = batch_norm
        self.activation = activation
        self.preserve_sparsity = preserve_sparsity

    def build(self, input_shape=None):
        super().build(input_shape)
        if self.batch_norm is not None:
            output_shape = self.layer.compute_output_shape(input_shape)
            if not self.batch_norm.built:
                self.batch_norm.build(output_shape)
            if self.batch_norm.axis not in (-1, len(output_shape) - 1):
                raise ValueError(
                    f"QuantizeWrapper '{self.name}': batch_norm "
                    f"'{self.batch_norm.name}' normalizes axis {self.batch_norm.axis}; "
                    "only the channels-last axis can be folded."
                )
        axis, _ = self._kernel_axes()
        kernel = self.layer.kernel
        self.kernel_range = self.add_weight(
            shape=() if axis is None else (kernel.shape[axis],),
            initializer="ones",
            dtype="float32",
            trainable=False,
            autocast=False,
            aggregation="mean",
            name="kernel_range",
        )
        self.refresh_kernel_range()

    def refresh_kernel_range(self):
        """Sets the stored int8 kernel range from the current weights.

        Training refreshes it at every step; call this after assigning new
        weights by hand. Inference and export read the stored range, which
        the converter needs as a constant.
        """
        axis, _ = self._kernel_axes()
        kernel, _ = self.folded_weights()
        self.kernel_range.assign(weight_range(kernel, axis))

    def _kernel_axes(self):
        axis, channel_axes = _rule_for(self.layer)
        if axis == "depthwise":
            # Per channel only with depth multiplier 1, where output channel c
            # is input channel c (kernel axis 2).
            axis = 2 if self.layer.kernel.shape[3] == 1 else None
        return axis, channel_axes

    def folded_weights(self):
        """The float kernel and bias the wrapper quantizes and adds.

        With a folded BatchNormalization they are
        `kernel * gamma / sqrt(var + eps)` and
        `beta + (bias - mean) * gamma / sqrt(var + eps)`; without one, the
        layer's own kernel and bias (`None` when it has none).
        """
        kernel = ops.cast(self.layer.kernel, "float32")
        if self.preserve_sparsity:
            # Zero weights get a zero gradient, so they stay exactly zero.
            kernel = kernel * ops.stop_gradient(ops.cast(ops.not_equal(kernel, 0), "float32"))
        bias = self.layer.bias if getattr(self.layer, "use_bias", False) else None
        bias = None if bias is None else ops.cast(bias, "float32")
        bn = self.batch_norm
        if bn is None:
            return kernel, bias
        scale = ops.rsqrt(ops.cast(bn.moving_variance, "float32") + bn.epsilon)
        if bn.scale:
            scale = scale * ops.cast(bn.gamma, "float32")
        shift = -ops.cast(bn.moving_mean, "float32") * scale
        if bias is not None:
            shift = shift + bias * scale
        if bn.center:
            shift = shift + ops.cast(bn.beta, "float32")
        _, channel_axes = self._kernel_axes()
        shape = [1] * len(kernel.shape)
        for axis in channel_axes:
            shape[axis] = kernel.shape[axis]
        return kernel * ops.reshape(scale, shape), shift

    def call(self, inputs, training=None):
        kernel, bias = self.folded_weights()
        axis, _ = self._kernel_axes()
        if training:
            limit = weight_range(kernel, axis)
            self.kernel_range.assign(limit)
        else:
            # A stored range, not one computed from the kernel: the converter
            # does not fold the reduction over large kernels into a constant.
            limit = self.kernel_range
        kernel = ops.cast(fake_quant_weights(kernel, limit, axis), self.layer.kernel.dtype)
        mapping = [(self.layer.kernel, kernel)]
        add_bias_after = False
        if bias is not None:
            if getattr(self.layer, "bias", None) is not None:
                mapping.append((self.layer.bias, ops.cast(bias, self.layer.bias.dtype)))
            else:
                add_bias_after = True
        mapping += [(v, v.value) for v in self.layer.variables if all(v is not m for m, _ in mapping)]
        # The wrapped layer runs unchanged but reads the quantized kernel.
        with keras.StatelessScope(mapping, collect_losses=True) as scope:
            outputs = self.layer(inputs)
        for loss in scope.losses:
            self.add_loss(loss)
        if add_bias_after:
            outputs = outputs + ops.cast(bias, outputs.dtype)
        if self.activation == "relu":
            outputs = ops.relu(outputs)
        elif self.activation == "relu6":
            outputs = ops.relu6(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "batch_norm": None
                if self.batch_norm is None
                else keras.saving.serialize_keras_object(self.batch_norm),
                "activation": self.activation,
                "preserve_sparsity": self.preserve_sparsity,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(
            config.pop("layer"), custom_objects=custom_objects
        )
        batch_norm = config.pop("batch_norm", None)
        if batch_norm is not None:
            batch_norm = keras.saving.deserialize_keras_object(
                batch_norm, custom_objects=custom_objects
            )
        return cls(layer, batch_norm=batch_norm, **config)
