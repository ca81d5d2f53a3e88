"""`QuantizeWrapper`: int8 fake quantization of a layer's kernel, with the
BatchNormalization and activation after it folded in."""

import keras
import numpy as np
from keras import layers as L
from keras import ops

from keras_compress._clusters import lookup, shared_values
from keras_compress._wrappers import Wrapper
from keras_compress.quantization.quantizers import (
    check_wrapper_policies,
    keep_zeros,
    quantize_kernel,
    weight_range,
)

# Layers whose kernel is fake-quantized, one row per kind:
# (class, the weight attribute quantized, the kernel axis that gets its own
# int8 range, the kernel axes that hold the output channels).
# The range axis is `None` for one range per tensor, "depthwise" for per
# channel when the depth multiplier is 1. Per-channel ranges only where the
# TFLite converter accepts them: per-channel Dense kernels break it
# ("tfl.transpose op has mismatched quantized axes"), and so do per-channel 1D
# kernels, which it reshapes to 2D ("'tfl.reshape' op requires ... cast
# compatible"); an EinsumDense becomes FULLY_CONNECTED, per tensor too. An
# Embedding table is per tensor: GATHER's output shares the table's one scale.
# The channel axes are where a folded BatchNormalization scales the kernel;
# `None` where no BatchNormalization folds (the output channels of an
# EinsumDense span several kernel axes, an Embedding has no bias to take the
# shift).
# Order matters: Conv2DTranspose and DepthwiseConv2D subclass Conv2D's base.
QUANTIZABLE_KERNELS = (
    (L.DepthwiseConv2D, "kernel", "depthwise", (2, 3)),
    (L.DepthwiseConv1D, "kernel", None, (1, 2)),
    (L.Conv2DTranspose, "kernel", None, (2,)),
    (L.Conv2D, "kernel", -1, (3,)),
    (L.Conv1D, "kernel", None, (2,)),
    (L.Dense, "kernel", None, (1,)),
    (L.EinsumDense, "kernel", None, None),
    (L.Embedding, "embeddings", None, None),
)

SUPPORTED_LAYER_NAMES = ", ".join(row[0].__name__ for row in QUANTIZABLE_KERNELS)

# Activations TFLite fuses into the op before them, so they cost no extra
# quantization step.
FUSABLE_ACTIVATIONS = ("linear", "relu", "relu6")


def _rule_for(layer):
    for row in QUANTIZABLE_KERNELS:
        if isinstance(layer, row[0]):
            return row[1:]
    return None


def ranged_per_output_channel(layer):
    """Whether `layer`'s kernel gets an int8 range per output channel (its
    last axis): a Conv2D."""
    rule = _rule_for(layer)
    return rule is not None and rule[1] == -1


def activation_name(layer):
    """The name of the activation function a layer applies, or `None`."""
    function = getattr(layer, "activation", None)
    if function is None:
        return None
    return getattr(function, "__name__", None)


def own_activation(layer):
    """The activation a kernel layer applies; "linear" for one without any
    (an Embedding)."""
    return activation_name(layer) or "linear"


def folds_batch_norm(layer):
    """Whether a BatchNormalization after `layer` can fold into its kernel."""
    rule = _rule_for(layer)
    return rule is not None and rule[2] is not None


def has_kernel_rule(layer):
    """Whether `layer` is of a kind `QuantizeWrapper` has a row for."""
    return isinstance(layer, L.Layer) and _rule_for(layer) is not None


def why_not_quantizable(layer):
    """`None` if `QuantizeWrapper` can wrap `layer`, else the reason."""
    if isinstance(layer, QuantizeWrapper):
        return f"layer '{layer.name}' is already a QuantizeWrapper."
    if _rule_for(layer) is None:
        return (
            f"layer '{layer.name}' ({type(layer).__name__}) has no kernel "
            f"quantization rule. Supported types: {SUPPORTED_LAYER_NAMES}."
        )
    # A grouped Conv2D (ConvNeXt's depthwise convolutions) converts to a
    # grouped int8 CONV_2D with per-channel ranges; other grouped
    # convolutions were not checked.
    if getattr(layer, "groups", 1) != 1 and not isinstance(layer, L.Conv2D):
        return f"layer '{layer.name}' is a grouped convolution (groups={layer.groups})."
    if getattr(layer, "quantization_mode", None):
        return f"layer '{layer.name}' is already quantized ({layer.quantization_mode})."
    if getattr(layer, "lora_enabled", False):
        return f"layer '{layer.name}' has LoRA enabled; merge it first."
    return None


@keras.saving.register_keras_serializable(package="keras_compress")
class QuantizeWrapper(Wrapper):
    """Trains a layer with its kernel (or embedding table) fake-quantized to int8.

    The kernel is quantized symmetrically (zero point 0, 255 levels): per
    output channel for Conv2D and DepthwiseConv2D (depth multiplier 1), per
    tensor for the rest, as TFLite's int8 kernels expect. An Embedding's
    table is quantized per tensor; TFLite's int8 GATHER gives its output the
    table's scale, so the looked-up vectors are already on the int8 grid. A
    BatchNormalization that followed a Dense or convolution layer is folded
    into it: the kernel is scaled by `gamma / sqrt(moving_variance + epsilon)`
    before it is quantized, so training sees the same int8 kernel the
    converter will write. The moving statistics are frozen (gamma and beta
    still train): one convolution per step, and no drift between training and
    inference.

    Zero weights stay exactly zero when `preserve_sparsity` is on (the
    default): they get no gradient, so a pruned model stays pruned through
    quantization-aware training and export.

    With `clusters=k` (cluster-preserving QAT, for a clustered model) the
    kernel trains as `k` shared values, as tfmot's cluster-preserving QAT
    does: the wrapper holds its `k` distinct values as trainable centroids
    and each entry's centroid index; in training each entry joins its
    nearest centroid again and the kernel variable trains through the
    centroids (straight through), so clusters can empty but never
    multiply. Such a kernel is quantized with one range for the whole
    tensor (unless a BatchNormalization folds into it, which scales each
    channel), so the int8 file holds at most `k` distinct int8 values per
    kernel. With `cluster_per_channel=True` (a Conv2D kernel clustered per
    output channel) each channel keeps its own `k` values and its own int8
    range, so the file holds at most `k` int8 values per channel. The
    converter folds `centroids[indices]` into the file's constant kernel.

    The wrapper does not quantize its output; `quantize_model` puts an
    `ActivationQuantizer` after it (after an Embedding it needs none). Keras
    masks pass through: an `Embedding(mask_zero=True)` still masks its
    padding.

    Args:
        layer: a Dense, EinsumDense, Conv1D, Conv2D, Conv2DTranspose,
            DepthwiseConv1D, DepthwiseConv2D or Embedding layer whose
            activation is linear, ReLU or ReLU6.
        batch_norm: a `BatchNormalization` layer (channels last) to fold, or
            `None`. Dense and convolution layers only; the wrapped layer's own
            activation must then be linear.
        activation: `None`, `"relu"` or `"relu6"`: an activation applied after
            the folded batch normalization (the one TFLite fuses into the op).
        preserve_sparsity: keep zero weights at zero. Default `True`.
        clusters: `None` (default), or the number of distinct values the
            kernel keeps (an integer >= 1): the kernel's values when the
            wrapper builds, or, when it has more (a fresh layer), a linear
            spread of `clusters` values that loading weights overwrites.
        cluster_per_channel: with `clusters`, the number is per output
            channel of a Conv2D kernel (each channel its own values). Default
            False.

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
    name_prefix = "quant_"
    nested_config = ("batch_norm",)

    def __init__(
        self, layer, batch_norm=None, activation=None, preserve_sparsity=True, clusters=None,
        cluster_per_channel=False, **kwargs
    ):
        self.expect_layer(layer)
        reason = why_not_quantizable(layer)
        if reason:
            raise ValueError(f"QuantizeWrapper cannot wrap {reason}")
        own = own_activation(layer)
        if own not in FUSABLE_ACTIVATIONS:
            raise ValueError(
                f"QuantizeWrapper: layer '{layer.name}' has activation "
                f"'{own}'; the wrapped layer's activation must be one "
                f"of {FUSABLE_ACTIVATIONS}. Apply other activations in a separate "
                "layer (quantize_model does this for you)."
            )
        if batch_norm is not None:
            if not isinstance(batch_norm, L.BatchNormalization):
                raise TypeError(
                    f"QuantizeWrapper '{layer.name}': batch_norm must be a "
                    f"BatchNormalization layer or None, got {batch_norm!r}."
                )
            if not folds_batch_norm(layer):
                raise ValueError(
                    f"QuantizeWrapper '{layer.name}': cannot fold batch_norm "
                    f"'{batch_norm.name}' into a {type(layer).__name__}; only "
                    "Dense and convolution layers take a folded BatchNormalization."
                )
            if own != "linear":
                raise ValueError(
                    f"QuantizeWrapper '{layer.name}': cannot fold batch_norm "
                    f"'{batch_norm.name}' after activation '{own}'; "
                    "the wrapped layer's activation must be linear."
                )
        if activation not in (None, "relu", "relu6"):
            raise ValueError(
                f"QuantizeWrapper '{layer.name}': activation must be None, 'relu' "
                f"or 'relu6', got {activation!r}."
            )
        if activation is not None and own != "linear":
            raise ValueError(
                f"QuantizeWrapper '{layer.name}': activation={activation!r} given "
                f"but the layer already applies '{own}'."
            )
        if not isinstance(preserve_sparsity, bool):
            raise TypeError(
                f"QuantizeWrapper '{layer.name}': preserve_sparsity must be a bool, "
                f"got {preserve_sparsity!r}."
            )
        if clusters is not None and (isinstance(clusters, bool) or not isinstance(clusters, (int, np.integer))
                                     or clusters < 1):
            raise ValueError(
                f"QuantizeWrapper '{layer.name}': clusters must be None or an integer >= 1, got {clusters!r}."
            )
        if not isinstance(cluster_per_channel, bool):
            raise TypeError(f"QuantizeWrapper '{layer.name}': cluster_per_channel must be a bool, "
                            f"got {cluster_per_channel!r}.")
        if cluster_per_channel and (clusters is None or not ranged_per_output_channel(layer)):
            raise ValueError(
                f"QuantizeWrapper '{layer.name}': cluster_per_channel=True needs clusters= and a layer whose "
                f"kernel is quantized per output channel (Conv2D), got clusters={clusters!r} on a "
                f"{type(layer).__name__}."
            )
        super().__init__(layer, **kwargs)
        check_wrapper_policies("QuantizeWrapper", self)
        self.batch_norm = batch_norm
        self.activation = activation
        self.preserve_sparsity = preserve_sparsity
        self.clusters = None if clusters is None else int(clusters)
        self.cluster_per_channel = cluster_per_channel

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
        kernel = self.kernel_variable
        if self.clusters is not None:
            self._build_clusters(kernel)
        axis, _ = self._kernel_axes()
        self.kernel_range = self.add_state(
            "kernel_range", () if axis is None else (kernel.shape[axis],), initializer="ones"
        )
        self.refresh_kernel_range()

    def _build_clusters(self, kernel):
        shape = (kernel.shape[-1], self.clusters) if self.cluster_per_channel else (self.clusters,)
        self.cluster_centroids = self.add_weight(
            name="cluster_centroids", shape=shape, initializer="zeros", trainable=True, autocast=False
        )
        self.cluster_indices = self.add_state("cluster_indices", kernel.shape, dtype="int32", aggregation="none")
        # A fresh layer (more values than clusters) gets its weights next:
        # loading a file, or quantize_model, which then calls refresh_clusters.
        self.refresh_clusters(strict=False)

    def refresh_clusters(self, strict=True):
        """Sets the centroids and each entry's centroid from the kernel's
        current values (at most `clusters` distinct ones). Call it after
        assigning a clustered kernel by hand. With more values it raises, or
        with `strict=False` leaves the clusters as they are."""
        kernel = self.kernel_variable
        values = ops.convert_to_numpy(ops.cast(kernel, "float32"))
        groups = [values[..., c] for c in range(values.shape[-1])] if self.cluster_per_channel else [values]
        found = [np.unique(g, return_inverse=True) for g in groups]
        most = max(distinct.size for distinct, _ in found)
        if most > self.clusters:
            if not strict:
                return
            raise ValueError(
                f"QuantizeWrapper '{self.name}': the kernel of layer '{self.layer.name}' has {most} distinct "
                f"values{' in an output channel' if self.cluster_per_channel else ''}, more than "
                f"clusters={self.clusters}."
            )
        # Unused slots repeat the last value (no entry points at them).
        centroids = [np.concatenate([d, np.full(self.clusters - d.size, d[-1])]) for d, _ in found]
        indices = [i.reshape(g.shape) for g, (_, i) in zip(groups, found)]
        if self.cluster_per_channel:
            centroids, indices = np.stack(centroids), np.stack(indices, axis=-1)
        else:
            centroids, indices = centroids[0], indices[0]
        self.cluster_centroids.assign(centroids.astype(np.float32))
        self.cluster_indices.assign(indices.astype(np.int32))

    def clustered_kernel(self, training=False):
        """The kernel as the centroids give it, `centroids[indices]` (a
        zero centroid held at zero, and zero weights at zero, when
        `preserve_sparsity` is on). In training every kernel entry first
        joins its nearest centroid again (tfmot's rule)."""
        centroids = ops.cast(self.cluster_centroids, "float32")
        if self.preserve_sparsity:
            centroids = keep_zeros(centroids)
        if not training:
            return lookup(centroids, self.cluster_indices)
        kernel = ops.cast(self.kernel_variable, "float32")
        if self.preserve_sparsity:
            kernel = keep_zeros(kernel)
        return shared_values(kernel, centroids, self.cluster_indices)

    @property
    def kernel_variable(self):
        """The variable that is fake-quantized: the kernel, or an
        Embedding's table."""
        attribute, _, _ = _rule_for(self.layer)
        return getattr(self.layer, attribute)

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
        _, axis, channel_axes = _rule_for(self.layer)
        if self.clusters is not None and self.batch_norm is None and not self.cluster_per_channel:
            # One range for the tensor keeps its k values k int8 values.
            return None, channel_axes
        if axis == "depthwise":
            # Per channel only with depth multiplier 1, where output channel c
            # is input channel c (kernel axis 2).
            axis = 2 if self.kernel_variable.shape[3] == 1 else None
        return axis, channel_axes

    def folded_weights(self, training=False):
        """The float kernel and bias the wrapper quantizes and adds.

        With a folded BatchNormalization they are
        `kernel * gamma / sqrt(var + eps)` and
        `beta + (bias - mean) * gamma / sqrt(var + eps)`; without one, the
        layer's own kernel and bias (`None` when it has none, or when the
        layer adds its bias itself, as an EinsumDense does). With
        `clusters`, the kernel is `clustered_kernel(training)`.
        """
        if self.clusters is not None:
            kernel = self.clustered_kernel(training)
        else:
            kernel = ops.cast(self.kernel_variable, "float32")
            if self.preserve_sparsity:
                kernel = keep_zeros(kernel)
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
        kernel, bias = self.folded_weights(bool(training))
        axis, _ = self._kernel_axes()
        variable = self.kernel_variable
        kernel = quantize_kernel(kernel, self.kernel_range, axis, training)
        kernel = ops.cast(kernel, variable.dtype)
        mapping = [(variable, kernel)]
        add_bias_after = False
        if bias is not None:
            if getattr(self.layer, "bias", None) is not None:
                mapping.append((self.layer.bias, ops.cast(bias, self.layer.bias.dtype)))
            else:
                add_bias_after = True
        mapping += [(v, v.value) for v in self.layer.variables if all(v is not m for m, _ in mapping)]
        # The wrapped layer runs unchanged but reads the quantized kernel.
        outputs, _ = self.call_layer(mapping, inputs)
        if add_bias_after:
            outputs = outputs + ops.cast(bias, outputs.dtype)
        if self.activation == "relu":
            outputs = ops.relu(outputs)
        elif self.activation == "relu6":
            outputs = ops.relu6(outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update({"activation": self.activation, "preserve_sparsity": self.preserve_sparsity,
                       "clusters": self.clusters, "cluster_per_channel": self.cluster_per_channel})
        return config
