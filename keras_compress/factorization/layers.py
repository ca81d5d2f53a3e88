"""Which layers factorize and how: one row per layer kind.

A row says how a layer's kernel reads as a matrix (inputs x outputs) and
which two plain Keras layers compute `x @ a @ b` in its place: the first
projects to `rank` channels (no bias, no activation), the second maps them
to the layer's outputs with the layer's bias and activation.
"""

import keras

def _dense_pair(layer, rank):
    config = layer.get_config()
    first = keras.layers.Dense.from_config({
        **config, "name": f"{layer.name}_u", "units": rank, "use_bias": False,
        "activation": "linear", "activity_regularizer": None,
    })
    second = keras.layers.Dense.from_config({**config, "name": f"{layer.name}_v"})
    return first, second


def _conv_pair(layer, rank):
    config = layer.get_config()
    first = keras.layers.Conv2D.from_config({
        **config, "name": f"{layer.name}_u", "filters": rank, "use_bias": False,
        "activation": "linear", "activity_regularizer": None,
    })
    second = keras.layers.Conv2D.from_config({
        **config, "name": f"{layer.name}_v", "kernel_size": (1, 1), "strides": (1, 1),
        "padding": "valid", "dilation_rate": (1, 1),
    })
    return first, second


class _Kind:
    """How one layer class factorizes.

    Attributes:
        layer_type: the class (exactly; a subclass may compute something else).
        pair: `pair(layer, rank)` -> the two new, unbuilt layers.
        conv: whether the kernel is a (kh, kw, in, out) convolution kernel,
            read as a (kh * kw * in, out) matrix.
    """

    def __init__(self, layer_type, pair, conv):
        self.layer_type, self.pair, self.conv = layer_type, pair, conv

    def matrix(self, kernel):
        return kernel.reshape(-1, kernel.shape[-1])

    def factor_kernels(self, kernel, a, b):
        """The two new layers' kernels from the factors `a` (in x rank) and
        `b` (rank x out) of `matrix(kernel)`."""
        if not self.conv:
            return a, b
        kh, kw = kernel.shape[:2]
        return a.reshape(kh, kw, kernel.shape[2], -1), b.reshape(1, 1, *b.shape)


KINDS = (
    _Kind(keras.layers.Dense, _dense_pair, conv=False),
    _Kind(keras.layers.Conv2D, _conv_pair, conv=True),
)
SUPPORTED = "Dense, Conv2D (groups=1)"


def kind_of(layer):
    """The `_Kind` row of `layer`'s exact class, or None."""
    for kind in KINDS:
        if type(layer) is kind.layer_type:
            return kind
    return None


def why_not_factorizable(layer):
    """Why `layer` cannot be factorized, or None when it can."""
    kind = kind_of(layer)
    if kind is None:
        return f"it is a {type(layer).__name__}; factorize rewrites {SUPPORTED} layers"
    if not layer.built:
        return "it is not built (call the model on data, or give it a keras.Input)"
    if getattr(layer, "quantization_mode", None):
        return (f"its kernel is quantized ({layer.quantization_mode!r}, by model.quantize); "
                "factorize the float model, then quantize")
    if getattr(layer, "lora_enabled", False):
        return "it has LoRA enabled; merge or disable it (its kernel is not the whole weight) first"
    if kind.conv and layer.groups != 1:
        return f"it is a grouped convolution (groups={layer.groups}); only groups=1 factorizes"
    return None
