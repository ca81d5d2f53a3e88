"""The per-layer-kind table of structured pruning.

One row per kind of layer says all that structured pruning knows about it:
what the layer does to the channels (last axis) of its input, and, for each
of its weights, which axis holds the layer's units (output channels) and
which holds its input channels. The graph walk (`graph`), the slicing in
`shrink` (`shrinking`), the importance criteria (`importance`) and
`GroupLasso` (`callbacks`) all read this table; none of them asks a layer's
class. A new layer kind is one row:

```python
from keras_compress.pruning.structured import LAYER_KINDS, Axes, LayerKind

# A layer that scales each channel by its own weight `scale`, shape (channels,).
LAYER_KINDS[ChannelScale] = LayerKind("channelwise", {"scale": Axes(inputs=-1)})
```

A layer is looked up by its class, then by its base classes (a subclass of
Dense is a Dense). Keras ops called directly in a functional graph (`x + 3.0`)
are looked up by name in `OP_KINDS`.
"""

import dataclasses

import numpy as np
from keras import layers as L

# What a layer does to the channels (last axis) of its input:
#   units:       makes units of its own (Dense, Conv); its input channels are
#                its weights' `inputs` axis, its units their `units` axis.
#   channelwise: one weight slice per input channel; the output channels are
#                the input's, each repeated `multiplier` times (DepthwiseConv).
#   pass:        no weights, output channels are the input's.
#   flatten:     output positions are (spatial position, channel) pairs.
#   reshape:     passes channels on if it keeps the channel axis whole.
#   merge:       element-wise over inputs: channel i of each input is one unit.
#   concat:      the inputs' channels side by side (along the channel axis).
#   mixing:      output channels are the input's, but each depends on all of
#                them (softmax), so none of them can be removed.
ROLES = ("units", "channelwise", "pass", "flatten", "reshape", "merge", "concat", "mixing")


@dataclasses.dataclass(frozen=True)
class Axes:
    """Where one weight of a layer holds the channels that pruning slices.

    Attributes:
        units: the axis indexed by the layer's units (its output channels,
            for a `"units"` layer), or None.
        inputs: the axis indexed by the layer's input channels, or None.
        repeat: name of the layer attribute saying how many consecutive
            positions of the `inputs` axis each input channel takes (a
            DepthwiseConv's bias: `"depth_multiplier"`); None for one.
        penalize: whether `GroupLasso` shrinks this weight with its unit;
            False for a weight that shapes an activation (PReLU's alpha).
    """

    units: int = None
    inputs: int = None
    repeat: str = None
    penalize: bool = True

    def per_channel(self, layer):
        """Positions of the `inputs` axis per input channel of `layer`."""
        return 1 if self.repeat is None else int(getattr(layer, self.repeat))


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """What structured pruning knows about one kind of layer.

    Attributes:
        role: what the layer does to its input's channels, one of `ROLES`.
        weights: `{weight name: Axes}` for every weight the layer may hold;
            a layer holding another weight cannot be pruned through.
        width: for `"units"`: the config key of the number of units
            (`"units"`, `"filters"`).
        kernel: for `"units"`: the weight whose per-unit norms rank units
            for the `"l1"` and `"l2"` criteria.
        multiplier: for `"channelwise"`: name of the layer attribute giving
            its output channels per input channel; None for one.
        scale: the per-channel scale the `"bn_gamma"` criterion reads.
        follows_unit: the data criteria (`"taylor"`, `"apoz"`) measure a
            unit after this layer when it alone reads the unit's output
            (normalization and activations).
        check: `check(layer, rank) -> reason or None`, for settings of this
            kind that cannot be pruned through (`rank`: of its output).
    """

    role: str
    weights: dict = dataclasses.field(default_factory=dict)
    width: str = None
    kernel: str = "kernel"
    multiplier: str = None
    scale: str = None
    follows_unit: bool = False
    check: object = None

    def __post_init__(self):
        if self.role not in ROLES:
            accepted = ", ".join(map(repr, ROLES))
            raise ValueError(f"LayerKind: role must be one of {accepted}, got {self.role!r}.")
        if self.role == "units" and (self.width is None or self.kernel not in self.weights):
            raise ValueError("LayerKind: a 'units' row needs width= and a kernel= among its weights.")

    def channels_out(self, layer):
        """Output channels of a `"channelwise"` layer per input channel."""
        return 1 if self.multiplier is None else int(getattr(layer, self.multiplier))


def _normalizes_channels(layer, rank):
    if layer.axis not in (-1, rank - 1):
        return f"normalizes axis {layer.axis}, not the channel axis"
    return None


def _units(width, transposed=False):
    kernel = Axes(units=-2, inputs=-1) if transposed else Axes(units=-1, inputs=-2)
    return LayerKind("units", {"kernel": kernel, "bias": Axes(units=-1)}, width=width)


_CONV = _units("filters")
_CONV_TRANSPOSE = _units("filters", transposed=True)
_DEPTHWISE = LayerKind(
    "channelwise",
    {"kernel": Axes(inputs=-2), "bias": Axes(inputs=-1, repeat="depth_multiplier")},
    multiplier="depth_multiplier",
)
_ACTIVATION = LayerKind("pass", follows_unit=True)
_PASS = LayerKind("pass")
_MERGE = LayerKind("merge")

# The table. Its order is the order of the "supported" listing in messages.
LAYER_KINDS = {
    L.Dense: _units("units"),
    L.Conv1D: _CONV,
    L.Conv2D: _CONV,
    L.Conv3D: _CONV,
    L.Conv1DTranspose: _CONV_TRANSPOSE,
    L.Conv2DTranspose: _CONV_TRANSPOSE,
    L.Conv3DTranspose: _CONV_TRANSPOSE,
    L.BatchNormalization: LayerKind(
        "channelwise",
        dict.fromkeys(("gamma", "beta", "moving_mean", "moving_variance"), Axes(inputs=-1)),
        scale="gamma",
        follows_unit=True,
        check=_normalizes_channels,
    ),
    L.PReLU: LayerKind("channelwise", {"alpha": Axes(inputs=-1, penalize=False)}, follows_unit=True),
    L.DepthwiseConv1D: _DEPTHWISE,
    L.DepthwiseConv2D: _DEPTHWISE,
    L.Flatten: LayerKind("flatten"),
    L.Reshape: LayerKind("reshape"),
    **dict.fromkeys((L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum), _MERGE),
    L.Concatenate: LayerKind("concat"),
    L.Softmax: LayerKind("mixing"),
    **dict.fromkeys((L.Activation, L.ReLU, L.LeakyReLU, L.ELU), _ACTIVATION),
    **dict.fromkeys(
        (
            L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
            L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.Identity,
            L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
            L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
            L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
            L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
            L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D,
            L.Cropping1D, L.Cropping2D, L.Cropping3D,
            L.UpSampling1D, L.UpSampling2D, L.UpSampling3D,
        ),
        _PASS,
    ),
}  # fmt: skip

# Keras ops called directly in a functional graph (`x + 3.0` in MobileNetV3),
# by class name: Keras has no public names for their classes.
OP_KINDS = {"Add": _MERGE, "Subtract": _MERGE, "Multiply": _MERGE}

# What an activation that mixes the channels it is applied to makes of a
# "pass" layer (an Activation("softmax")).
MIXING = LayerKind("mixing")

SUPPORTED_LAYERS = ", ".join(cls.__name__ for cls in LAYER_KINDS)


def supported_layers():
    """The names of the layer classes in the table now, for messages."""
    return ", ".join(cls.__name__ for cls in LAYER_KINDS)


def layer_kind(op):
    """The row of `op` (a layer or a Keras op), or None."""
    if not isinstance(op, L.Layer):
        return OP_KINDS.get(type(op).__name__)
    return next((LAYER_KINDS[cls] for cls in type(op).__mro__ if cls in LAYER_KINDS), None)


def weight_axes(layer, weight):
    """The `Axes` of one of `layer`'s weights."""
    return layer_kind(layer).weights[weight.name]


def spread(keep, count):
    """The positions of channels `keep` along an axis where each channel
    takes `count` consecutive positions."""
    if count == 1:
        return keep
    return (np.asarray(keep)[:, None] * count + np.arange(count)).reshape(-1)
