"""Fake quantization of weights and activations, as the TFLite converter reads it.

Everything goes through `keras.quantizers.fake_quant_with_min_max_vars`: on the
TensorFlow backend it lowers to `tf.quantization.fake_quant_*`, which the TFLite
converter turns into real int8 tensors with the same scale and zero point, so
the converted model computes what the trained one did.
"""

import keras
from keras import ops
from keras.quantizers import fake_quant_with_min_max_vars

from keras_compress._backend import counter_dtype
from tflite_bench.checks import check_bool

# int8 weights are symmetric with zero point 0 in TFLite: [-127, 127].
WEIGHT_BITS = 8
# Keeps a range of all-zero weights (a pruned channel) from collapsing to
# min == max, which fake quantization cannot represent.
_MIN_RANGE = 1e-6


def weight_range(kernel, axis=None):
    """The symmetric int8 range of a kernel: `max|w|`, per channel along `axis`
    (or over the whole tensor when `axis` is `None`), without a gradient."""
    kernel = ops.stop_gradient(ops.cast(kernel, "float32"))
    reduce = None
    if axis is not None:
        axis = axis % len(kernel.shape)
        reduce = tuple(i for i in range(len(kernel.shape)) if i != axis)
    # max|w| as max(max w, -min w): the same value from two reductions,
    # without writing |w| out first (this runs at every training step).
    limit = ops.maximum(ops.max(kernel, axis=reduce), -ops.min(kernel, axis=reduce))
    return ops.maximum(limit, _MIN_RANGE)


def fake_quant_weights(kernel, limit, axis=None):
    """Symmetric int8 fake quantization of a kernel.

    Args:
        kernel: the float kernel.
        limit: the range, `weight_range(kernel, axis)` or a stored copy of it.
        axis: the per-channel axis, or `None` for one range for the whole tensor.

    Returns:
        The kernel rounded to the 255 levels of `[-limit, limit]` (zero point
        0); values outside are clipped. Gradients pass straight through.
    """
    kernel = ops.cast(kernel, "float32")
    axis = None if axis is None else axis % len(kernel.shape)
    last = len(kernel.shape) - 1
    if axis is not None and axis != last and keras.backend.backend() != "tensorflow":
        # Keras's fake quantization outside TensorFlow broadcasts per-channel
        # ranges along the last axis whatever `axis` says (a depthwise
        # kernel's channels are its third axis): quantize with the channels
        # last, as TensorFlow's per-channel op does, and move them back.
        moved = fake_quant_with_min_max_vars(ops.moveaxis(kernel, axis, -1), -limit, limit,
                                             num_bits=WEIGHT_BITS, narrow_range=True, axis=last)
        return ops.moveaxis(moved, -1, axis)
    return fake_quant_with_min_max_vars(kernel, -limit, limit, num_bits=WEIGHT_BITS, narrow_range=True, axis=axis)


def keep_zeros(weight):
    """`weight` with its exact zeros held at zero: they get no gradient, so an
    optimizer step leaves them at zero (sparsity-preserving training)."""
    return weight * ops.stop_gradient(ops.cast(ops.not_equal(weight, 0), weight.dtype))


def quantize_kernel(kernel, stored_range, axis, training):
    """Fake-quantizes `kernel` with the int8 range it will have in TFLite.

    In training the range is `weight_range(kernel, axis)` and is written to
    `stored_range`; in inference the stored range is read instead, because
    the converter needs the range as a constant and does not fold the
    reduction over a large kernel into one.
    """
    if training:
        limit = weight_range(kernel, axis)
        stored_range.assign(limit)
    else:
        limit = stored_range
    return fake_quant_weights(kernel, limit, axis)


def _global_min_max(x, with_min=True):
    """The minimum and maximum of `x` over the whole batch.

    Under a `tf.distribute` strategy each replica holds a slice of the batch,
    and the learned range must be the one a single device learns from the
    whole batch. Keras has no cross-replica reduction (its synchronized
    BatchNormalization calls `tf.distribute` too), and `tf.distribute`
    reduces only by sum and mean, so the replicas' extremes are gathered. A
    replica with an empty slice contributes +inf / -inf, which drop out.
    """
    # Without the minimum (an output known to be >= 0) it is reported as 0.
    low, high = (ops.min(x) if with_min else ops.zeros((), x.dtype)), ops.max(x)
    if keras.backend.backend() != "tensorflow":
        return low, high
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return low, high
    extremes = ops.max(context.all_gather(ops.stack([-low, high])[None], axis=0), axis=0)
    return -extremes[0], extremes[1]


def check_float32_policy(where, subject, policy):
    """Raises unless the dtype `policy` computes and stores float32.

    Quantization-aware training simulates int8 inference on float32 values.
    Under `mixed_float16` or `mixed_bfloat16` every fake-quantized value is
    rounded again to 16 bits between layers, so training no longer sees what
    the int8 model computes, and the TFLite converter cannot turn the casts
    around the fake quantization into int8 ops.

    Args:
        where: the caller, for the message.
        subject: what has the policy ("the global dtype policy", "layer 'x'").
        policy: a `keras.DTypePolicy`.
    """
    if policy.compute_dtype == "float32" and policy.variable_dtype == "float32":
        return
    raise ValueError(
        f"{where}: quantization-aware training needs the 'float32' dtype policy, but "
        f"{subject} is '{policy.name}'. Fake quantization simulates int8 inference on "
        "float32 values, which float16 and bfloat16 compute cannot reproduce, and the "
        "TFLite converter cannot make int8 ops of it. Call "
        "keras.mixed_precision.set_global_policy('float32') and build the model under "
        "it (a model trained in mixed precision passes its weights on with "
        "get_weights() and set_weights())."
    )


def check_wrapper_policies(where, wrapper):
    """`check_float32_policy` for a quantization-aware wrapper and the layer it wraps."""
    for owner in (wrapper, wrapper.layer):
        check_float32_policy(where, f"the dtype policy of layer '{owner.name}'", owner.dtype_policy)


def check_ema_decay(where, ema_decay):
    """Raises unless `ema_decay` is a number in [0, 1); `where` names the caller."""
    if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not (
        0 <= ema_decay < 1
    ):
        raise ValueError(f"{where}: ema_decay must be a number in [0, 1), got {ema_decay!r}.")


@keras.saving.register_keras_serializable(package="keras_compress")
class ActivationQuantizer(keras.layers.Layer):
    """Fake-quantizes a tensor to int8 with a range learned from the data it sees.

    Asymmetric, one range per tensor. During training the range follows an
    exponential moving average of each batch's minimum and maximum (the first
    batch sets it outright); in inference the stored range is used. The range
    always contains 0 so that zero padding and ReLU zeros are exact. Before
    any training it is [-6, 6], as in tfmot.

    Under a `tf.distribute` strategy the range follows the whole global
    batch's minimum and maximum, as on one device, not each replica's slice.
    Like all quantization-aware training, it needs the `"float32"` dtype
    policy; under a mixed-precision policy it raises a `ValueError`.

    Outputs whose range is known in advance take a `fixed_range` instead:
    TFLite's int8 softmax and logistic write `[0, 255/256]` and its tanh
    `[-1, 127/128]`; learning a narrower range would clip probabilities.

    Args:
        ema_decay: weight of the old range in the moving average, in [0, 1).
            Default 0.99.
        num_bits: quantization bits, 2 to 16. Default 8 (int8).
        fixed_range: `None` (learn the range) or a `(min, max)` pair with
            `min <= 0 <= max`, used as is.
        non_negative: the input is never negative (a ReLU's output): in
            training the range's minimum is 0 and only its maximum is
            learned, which saves a reduction over the tensor at every step.
            The int8 values are the same, since the range always contains 0.

    Example:

    ```python
    x = kc.quantization.ActivationQuantizer()(keras.Input((28, 28, 1)))
    ```
    """

    _kc_quantization_aware = True

    def __init__(self, ema_decay=0.99, num_bits=8, fixed_range=None, non_negative=False, **kwargs):
        super().__init__(**kwargs)
        check_float32_policy(
            "ActivationQuantizer", f"the dtype policy of layer '{self.name}'", self.dtype_policy
        )
        if fixed_range is not None:
            try:
                low, high = (float(v) for v in fixed_range)
            except (TypeError, ValueError):
                low = high = None
            if low is None or not low <= 0 <= high or low == high:
                raise ValueError(
                    f"ActivationQuantizer '{self.name}': fixed_range must be None or "
                    f"a (min, max) pair with min <= 0 <= max and min < max, got "
                    f"{fixed_range!r}."
                )
            fixed_range = (low, high)
        self.fixed_range = fixed_range
        check_ema_decay(f"ActivationQuantizer '{self.name}'", ema_decay)
        if isinstance(num_bits, bool) or not isinstance(num_bits, int) or not 2 <= num_bits <= 16:
            raise ValueError(
                f"ActivationQuantizer '{self.name}': num_bits must be an int in "
                f"[2, 16], got {num_bits!r}."
            )
        self.ema_decay = float(ema_decay)
        self.num_bits = num_bits
        self.non_negative = check_bool(f"ActivationQuantizer '{self.name}'", "non_negative", non_negative)
        self.supports_masking = True

    def build(self, input_shape=None):
        if self.fixed_range is not None:
            super().build(input_shape)
            return
        # Every replica computes the same range (from the whole batch's
        # extremes), so averaging them across replicas keeps it; the update
        # counter is kept from the first replica only.
        def scalar(name, value, dtype="float32", aggregation="mean"):
            return self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(value),
                dtype=dtype,
                trainable=False,
                autocast=False,
                aggregation=aggregation,
                name=name,
            )

        self.range_min = scalar("range_min", -6.0)
        self.range_max = scalar("range_max", 6.0)
        self.updates = scalar("updates", 0, dtype=counter_dtype(), aggregation="only_first_replica")
        super().build(input_shape)

    def call(self, inputs, training=None):
        if self.fixed_range is not None:
            low, high = self.fixed_range
            return fake_quant_with_min_max_vars(inputs, low, high, num_bits=self.num_bits)
        low, high = self.range_min, self.range_max
        if training:
            x = ops.stop_gradient(ops.cast(inputs, "float32"))
            first = ops.equal(self.updates, 0)
            decay = self.ema_decay
            batch_low, batch_high = _global_min_max(x, with_min=not self.non_negative)
            if self.non_negative:
                low = batch_low  # 0: what the moving average of a ReLU's minima is
            else:
                low = ops.where(first, batch_low, decay * low + (1 - decay) * batch_low)
            self.range_min.assign(low)
            high = ops.where(first, batch_high, decay * high + (1 - decay) * batch_high)
            self.range_max.assign(high)
            self.updates.assign_add(1)
        low = ops.minimum(low, 0.0)
        high = ops.maximum(ops.maximum(high, 0.0), low + _MIN_RANGE)
        return fake_quant_with_min_max_vars(inputs, low, high, num_bits=self.num_bits)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "ema_decay": self.ema_decay,
                "num_bits": self.num_bits,
                "fixed_range": None if self.fixed_range is None else list(self.fixed_range),
                "non_negative": self.non_negative,
            }
        )
        return config
