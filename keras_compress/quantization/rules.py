"""How `quantize_model` treats each layer kind, Keras op and activation: the
int8 rules, in tables.

Each rule says what TFLite's int8 kernel needs, checked op by op on the
converted files (tests/test_qat_rules.py):
- "same_scale": int8 in, int8 out with the input's scale (TFLite requires or
  keeps it), so no new range: the input is quantized and the output
  inherits its range.
- "new_range": an int8 op whose output gets its own learned range.
- a fixed `(min, max)`: an int8 kernel that writes a fixed output range.
- "silu", "hard_sigmoid": no int8 kernel of their own; rebuilt from int8 ops
  (LOGISTIC then MUL; ADD with a fused RELU6 then MUL), each with its range.
- "identity": nothing to compute.
"""

from keras import layers as L

from keras_compress.quantization.wrapper import activation_name

SAME_SCALE = "same_scale"
NEW_RANGE = "new_range"
IDENTITY = "identity"

# TFLite's int8 LOGISTIC and SOFTMAX write [0, 255/256] (scale 1/256, zero
# point -128), TANH [-1, 127/128] (scale 1/128, zero point 0), LOG_SOFTMAX
# [-255/16, 0] (scale 16/256, zero point 127). A learned range would differ
# and the converter would requantize, or clip probabilities.
SIGMOID_RANGE = (0.0, 255 / 256)
TANH_RANGE = (-1.0, 127 / 128)
SOFTMAX_RANGE = (0.0, 255 / 256)
LOG_SOFTMAX_RANGE = (-255 / 16, 0.0)

SAME_SCALE_LAYERS = (
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    L.Reshape, L.Flatten, L.Permute, L.Identity,
    L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D,
    L.Cropping1D, L.Cropping2D, L.Cropping3D,
    L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
    L.GaussianNoise, L.GaussianDropout, L.AlphaDropout,
    L.UpSampling1D,
    L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
)  # fmt: skip
NEW_RANGE_LAYERS = (
    L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum, L.Concatenate,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
    L.Rescaling, L.Normalization, L.BatchNormalization, L.UpSampling2D,
)  # fmt: skip

# Activation name -> its int8 rule (see the module docstring).
ACTIVATIONS = {
    "linear": IDENTITY,
    "relu": NEW_RANGE,
    "relu6": NEW_RANGE,
    "leaky_relu": NEW_RANGE,
    "gelu": NEW_RANGE,
    "hard_silu": NEW_RANGE,  # HARD_SWISH (Keras names hard_swish hard_silu)
    "exponential": NEW_RANGE,
    "sigmoid": SIGMOID_RANGE,
    "tanh": TANH_RANGE,
    "softmax": SOFTMAX_RANGE,
    "log_softmax": LOG_SOFTMAX_RANGE,
    "silu": "silu",  # swish
    "hard_sigmoid": "hard_sigmoid",
}

# Keras ops called directly in a functional graph (`x / 6.0`,
# `keras.ops.mean(x, axis=1)`), by class name.
SAME_SCALE_OPS = frozenset({
    "Reshape", "Transpose", "ExpandDims", "Squeeze", "GetItem", "Slice", "Tile", "Pad",
    "Split", "MaxPool", "Max", "Min",
})  # fmt: skip
NEW_RANGE_OPS = frozenset({
    "Add", "Subtract", "Multiply", "TrueDivide", "Divide", "Mean", "Sum", "Matmul", "Einsum",
    "Concatenate", "Stack", "Maximum", "Minimum", "Absolute", "Sqrt", "Rsqrt", "Clip",
    "Where", "AveragePool",
})  # fmt: skip
ACTIVATION_OPS = {
    "Relu": "relu",
    "Relu6": "relu6",
    "LeakyRelu": "leaky_relu",
    "Gelu": "gelu",
    "HardSilu": "hard_silu",
    "Exp": "exponential",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Softmax": "softmax",
    "LogSoftmax": "log_softmax",
    "Silu": "silu",
    "HardSigmoid": "hard_sigmoid",
    "Elu": "elu",  # no rule: see NO_INT8_KERNEL
    "Selu": "selu",
    "Softplus": "softplus",
}
# Ops and activations the converter keeps float for lack of an int8 kernel
# (checked on TF 2.21): the reason a warning gives.
NO_INT8_KERNEL = {
    "Negative": "NEG",
    "Square": "SQUARE",
    "elu": "ELU",
    "selu": "EXP and SELECT of SELU",
    "softplus": "EXP and LOG of softplus",
    "mish": "EXP, LOG and TANH of mish",
}

# Custom layers of keras.applications, by class name (their classes live in
# private modules): ConvNeXt's LayerScale is one MUL by a per-channel
# weight; InceptionResNetV2's CustomScaleLayer computes `x0 + x1 * scale`,
# a MUL then an ADD, rebuilt from two layers with a range each.
APPLICATION_LAYERS = {
    "LayerScale": NEW_RANGE,
    "CustomScaleLayer": "scale_add",
}

# Ops whose int8 kernels need their inputs at their output's scale: the
# converter has an input's producer write there when it has no other user.
CONCATENATING_OPS = frozenset({"Concatenate", "Stack"})

# Producers TFLite fuses a following ReLU / ReLU6 into (with Dense and
# convolutions, which QuantizeWrapper fuses itself).
FUSING_PRODUCERS = (L.Add, L.Subtract, L.Multiply)
FUSING_PRODUCER_OPS = frozenset({"Add", "Subtract", "Multiply"})


def is_op(operation):
    """Whether a graph node's operation is a Keras op, not a layer."""
    return not isinstance(operation, L.Layer)


def activation_of(operation):
    """The activation an activation layer or op applies (a key of
    `ACTIVATIONS` when it has a rule), or `None` for anything else."""
    if is_op(operation):
        return ACTIVATION_OPS.get(type(operation).__name__)
    if type(operation) is L.Activation:
        return activation_name(operation)
    if isinstance(operation, L.ReLU):
        return relu_kind(operation) or "relu_general"
    if isinstance(operation, L.LeakyReLU):
        return "leaky_relu"
    if isinstance(operation, L.Softmax):
        return "softmax"
    if isinstance(operation, L.ELU):
        return "elu"
    return None


def relu_kind(operation):
    """"relu" or "relu6" if `operation` is a ReLU TFLite fuses into the op
    before it, else `None`."""
    if is_op(operation):
        return {"Relu": "relu", "Relu6": "relu6"}.get(type(operation).__name__)
    if isinstance(operation, L.ReLU):
        if operation.negative_slope or operation.threshold or operation.max_value not in (None, 6):
            return None
        return "relu" if operation.max_value is None else "relu6"
    if type(operation) is L.Activation and activation_name(operation) in ("relu", "relu6"):
        return activation_name(operation)
    return None


def activation_rule(name):
    """The int8 rule of activation `name`, or `None` when it has none. A
    ReLU with a threshold or another cap ("relu_general") gets its own range."""
    if name == "relu_general":
        return NEW_RANGE
    return ACTIVATIONS.get(name)
