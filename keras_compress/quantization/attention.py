"""`QuantizeMultiHeadAttention`: multi-head attention as TFLite runs it in
int8, with every intermediate fake-quantized."""

import math
import string

import keras
from keras import layers as L
from keras import ops

from keras_compress._models import ATTENTION_MASK_REASON
from keras_compress._wrappers import Wrapper
from keras_compress.quantization.quantizers import (
    ActivationQuantizer,
    check_ema_decay,
    check_wrapper_policies,
    keep_zeros,
    quantize_kernel,
    weight_range,
)
from keras_compress.quantization.rules import SOFTMAX_RANGE

# The EinsumDense sub-layers, read through MultiHeadAttention's public
# properties (Keras 3.0 and later).
_PROJECTIONS = ("query_dense", "key_dense", "value_dense", "output_dense")
# The intermediates TFLite computes in int8, in order; each gets a range.
_INTERMEDIATES = ("query", "key", "value", "scaled_query", "scores", "context")


def why_not_quantizable_attention(layer):
    """`None` if `QuantizeMultiHeadAttention` can wrap `layer`, else the
    reason."""
    if not isinstance(layer, L.MultiHeadAttention):
        return f"it is a {type(layer).__name__}, not a MultiHeadAttention"
    missing = [name for name in _PROJECTIONS if not hasattr(type(layer), name)]
    if missing:
        return (
            f"this Keras version's MultiHeadAttention has no public {', '.join(missing)}, "
            "which the int8 rule reads"
        )
    config = layer.get_config()
    if config.get("use_gate"):
        return "gated attention (use_gate=True) has no int8 rule"
    if config.get("sliding_window") is not None:
        return f"its sliding window is an attention mask; {ATTENTION_MASK_REASON}"
    axes = config.get("attention_axes")
    if axes is not None and len(axes) != 1:
        return (
            f"it attends over {len(axes)} axes {tuple(axes)}, and TFLite's int8 SOFTMAX "
            "normalizes over one"
        )
    if layer.built:
        for name in _PROJECTIONS:
            dense = getattr(layer, name)
            if getattr(dense, "quantization_mode", None) or getattr(dense, "lora_enabled", False):
                return f"its {name} is already quantized or has LoRA enabled"
    return None


def _attention_equations(rank, axes):
    """The einsum equations of the scores and of the context, for projected
    tensors of `rank` (batch..., attended..., heads, channels) that attend
    over `axes`: the same equations MultiHeadAttention builds."""
    letters = string.ascii_lowercase
    target = letters[:rank]
    batch = [i for i in range(rank - 1) if i not in axes]
    extra = iter(letters[rank:])
    source = "".join(target[i] if i in batch or i == rank - 1 else next(extra) for i in range(rank))
    product = "".join(
        [target[i] for i in batch] + [target[i] for i in axes] + [source[i] for i in axes]
    )
    return f"{source},{target}->{product}", f"{product},{source}->{target}"


@keras.saving.register_keras_serializable(package="keras_compress")
class QuantizeMultiHeadAttention(Wrapper):
    """Trains a MultiHeadAttention layer as TFLite runs it in int8.

    The query, key, value and output projections (EinsumDense layers, which
    the converter turns into FULLY_CONNECTED) get per-tensor symmetric int8
    kernels, and every tensor TFLite computes in between gets a learned int8
    range: the projections, the scaled query (MUL), the scores
    (BATCH_MATMUL), the softmax (SOFTMAX, with its fixed range
    `[0, 255/256]`) and the context (BATCH_MATMUL). The converter then makes
    every op int8 without representative data, and the file computes what
    training saw. The layer's weights (kernels and biases) keep training;
    zero kernel weights stay zero when `preserve_sparsity` is on.

    Attention masks are refused (`ValueError`): int8 cannot hold the large
    negative fill of masked scores beside the real ones. `quantize_model`
    leaves a masked MultiHeadAttention float and says so. Gated attention
    (`use_gate=True`), sliding windows and attention over several axes are
    refused too.

    The output is not quantized here (`quantize_model` puts an
    `ActivationQuantizer` after it); with `return_attention_scores=True` the
    scores returned are the int8 softmax output.

    Args:
        layer: a `keras.layers.MultiHeadAttention`.
        preserve_sparsity: keep zero kernel weights at zero. Default `True`.
        ema_decay: moving-average decay of the intermediate ranges, in [0, 1).
            Default 0.99.

    Example:

    ```python
    attention = kc.quantization.QuantizeMultiHeadAttention(
        keras.layers.MultiHeadAttention(num_heads=2, key_dim=16)
    )
    y = attention(x, x)
    ```
    """

    _kc_quantization_aware = True
    name_prefix = "quant_"

    def __init__(self, layer, preserve_sparsity=True, ema_decay=0.99, **kwargs):
        self.expect_layer(layer, why_not_quantizable_attention)
        if not isinstance(preserve_sparsity, bool):
            raise TypeError(
                f"QuantizeMultiHeadAttention '{layer.name}': preserve_sparsity must be a "
                f"bool, got {preserve_sparsity!r}."
            )
        check_ema_decay(f"QuantizeMultiHeadAttention '{layer.name}'", ema_decay)
        super().__init__(layer, **kwargs)
        check_wrapper_policies("QuantizeMultiHeadAttention", self)
        self.preserve_sparsity = preserve_sparsity
        self.ema_decay = ema_decay
        self.quantizers = {
            name: ActivationQuantizer(ema_decay=ema_decay, name=f"{name}_quant")
            for name in _INTERMEDIATES
        }
        self.probabilities_quantizer = ActivationQuantizer(
            fixed_range=SOFTMAX_RANGE, name="probabilities_quant"
        )
        config = layer.get_config()
        self.attention_dropout = L.Dropout(config["dropout"], seed=config.get("seed"))
        self.supports_masking = True

    def build(self, query_shape, value_shape, key_shape=None):
        if not self.layer.built:
            self.layer.build(query_shape, value_shape, key_shape)
        self.kernel_ranges = [
            self.add_state(f"{name.removesuffix('_dense')}_kernel_range", initializer="ones")
            for name in _PROJECTIONS
        ]
        for quantizer in [*self.quantizers.values(), self.probabilities_quantizer]:
            quantizer.build(None)
        self.refresh_kernel_range()
        self.built = True

    def _kernels(self):
        kernels = [ops.cast(getattr(self.layer, name).kernel, "float32") for name in _PROJECTIONS]
        return [keep_zeros(k) for k in kernels] if self.preserve_sparsity else kernels

    def refresh_kernel_range(self):
        """Sets the stored int8 ranges of the four projection kernels from
        the current weights (training refreshes them at every step)."""
        for kernel, stored in zip(self._kernels(), self.kernel_ranges):
            stored.assign(weight_range(kernel))

    def _project(self, index, x, training):
        dense = getattr(self.layer, _PROJECTIONS[index])
        kernel = quantize_kernel(self._kernels()[index], self.kernel_ranges[index], None, training)
        y = ops.einsum(dense.equation, x, kernel)
        return y if dense.bias is None else y + ops.cast(dense.bias, y.dtype)

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
    ):
        if any(m is not None for m in (query_mask, value_mask, key_mask, attention_mask)) or (
            use_causal_mask
        ):
            raise ValueError(
                f"QuantizeMultiHeadAttention '{self.name}' cannot apply an attention mask: "
                f"{ATTENTION_MASK_REASON}. Leave the layer float (quantize_model does)."
            )
        quantize = lambda name, x: self.quantizers[name](x, training=training)  # noqa: E731
        key = value if key is None else key
        q = quantize("query", self._project(0, query, training))
        k = quantize("key", self._project(1, key, training))
        v = quantize("value", self._project(2, value, training))
        rank = len(q.shape)
        axes = self.layer.get_config()["attention_axes"]
        axes = tuple(range(1, rank - 2)) if axes is None else tuple(a % (rank - 1) for a in axes)
        scores_equation, context_equation = _attention_equations(rank, axes)
        q = quantize("scaled_query", q * (1.0 / math.sqrt(self.layer.key_dim)))
        scores = quantize("scores", ops.einsum(scores_equation, k, q))
        probabilities = self.probabilities_quantizer(ops.softmax(scores, axis=-1))
        context = ops.einsum(
            context_equation, self.attention_dropout(probabilities, training=training), v
        )
        outputs = self._project(3, quantize("context", context), training)
        if return_attention_scores:
            return outputs, probabilities
        return outputs

    # Shapes and specs are traced from call() (Keras's default), not taken
    # from the MultiHeadAttention: call() refuses attention masks when the
    # model is built.
    compute_output_shape = L.Layer.compute_output_shape
    compute_output_spec = L.Layer.compute_output_spec

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update({"preserve_sparsity": self.preserve_sparsity, "ema_decay": self.ema_decay})
        return config
