"""Model-level quantization-aware training: `quantize_model`,
`quantize_annotate_layer` and `quantize_apply`."""

import warnings

import keras
import numpy as np
from keras import layers as L

from keras_compress import _models
from keras_compress.pruning.prune import strip_pruning
from keras_compress.pruning.wrapper import PruneWrapper
from keras_compress.quantization.quantizers import (
    ActivationQuantizer,
    check_ema_decay,
    check_float32_policy,
)
from keras_compress.quantization.wrapper import (
    FUSABLE_ACTIVATIONS,
    QuantizeWrapper,
    activation_name,
    why_not_quantizable,
)

# How the layers without a quantized kernel are treated, in one table.
# "same_scale": int8 in, int8 out with the input's scale (TFLite requires it),
#   so no new range: the input is quantized and the output inherits it.
# "new_range": int8 op whose output gets its own learned range.
_SAME_SCALE = (
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
_NEW_RANGE = (
    L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum, L.Concatenate,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
    L.Activation, L.ReLU, L.LeakyReLU, L.Softmax,
    L.Rescaling, L.Normalization, L.BatchNormalization, L.UpSampling2D,
)  # fmt: skip
# Keras ops used directly in a functional graph (`x + 3.0` in MobileNetV3).
_NEW_RANGE_OPS = ("Add", "Subtract", "Multiply")
# Activations whose int8 TFLite kernels write a fixed output range.
_FIXED_RANGES = {
    "softmax": (0.0, 255 / 256),
    "sigmoid": (0.0, 255 / 256),
    "tanh": (-1.0, 127 / 128),
}
# Producers TFLite fuses a following ReLU / ReLU6 into.
_FUSING_PRODUCERS = (L.Add, L.Subtract, L.Multiply)


@keras.saving.register_keras_serializable(package="keras_compress")
class QuantizeAnnotate(L.Wrapper):
    """Marks a layer for `quantize_apply`; until then it runs unchanged.

    Made by `quantize_annotate_layer`.
    """

    def call(self, inputs, *args, **kwargs):
        return self.layer(inputs, *args, **kwargs)

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        return self.layer.compute_output_spec(*args, **kwargs)


def quantize_annotate_layer(layer):
    """Marks one layer to be quantized by `quantize_apply`.

    Use it while building a model to quantize only some layers; the others
    stay float. A Conv or Dense layer followed by BatchNormalization and a
    ReLU is quantized as one fused block when the Conv or Dense layer is
    annotated.

    Args:
        layer: a `keras.layers.Layer` (not a model).

    Returns:
        A `QuantizeAnnotate` wrapper that runs `layer` unchanged.

    Example:

    ```python
    x = kc.quantization.quantize_annotate_layer(keras.layers.Conv2D(8, 3))(inputs)
    quantized = kc.quantization.quantize_apply(keras.Model(inputs, outputs))
    ```
    """
    if not isinstance(layer, L.Layer) or isinstance(layer, keras.Model):
        raise TypeError(
            "quantize_annotate_layer expects a keras layer (not a model), got "
            f"{type(layer).__name__}: {layer!r}. For a whole model use quantize_model."
        )
    if isinstance(layer, (QuantizeAnnotate, QuantizeWrapper, ActivationQuantizer)):
        raise ValueError(
            f"quantize_annotate_layer: layer '{layer.name}' is already "
            f"{type(layer).__name__}."
        )
    return QuantizeAnnotate(layer, name=f"quantize_annotate_{layer.name}")


def quantize_model(model, *, preserve_sparsity=True, ema_decay=0.99):
    """Makes a quantization-aware copy of a model, ready for `fit` and int8 export.

    Every layer with an int8 rule is fake-quantized: Dense and convolution
    kernels symmetric int8 (per channel for Conv2D and DepthwiseConv2D),
    activations asymmetric int8 with moving-average ranges. A Conv or Dense
    layer followed by BatchNormalization and ReLU / ReLU6 becomes one
    `QuantizeWrapper` with the normalization folded into the kernel, which
    converts to one int8 TFLite op. Adds, concatenations, pooling, reshapes,
    padding, rescaling and activations (hard-swish, sigmoid, ...) are
    quantized too. Layers without a rule stay float and are listed in a
    warning. Nested models are inlined; pruning wrappers are stripped with
    their zeros kept (see `preserve_sparsity`).

    The result is a new Functional model (the input model is not modified);
    compile and fine-tune it, then convert it with
    `kc.to_tflite(qat_model, quantization="int8")`. It trains under
    `tf.distribute` strategies (build it inside `strategy.scope()`), but not
    in mixed precision: the global dtype policy and the model's layers must
    be `"float32"`, or a `ValueError` says which is not.

    Args:
        model: a built Sequential or Functional model.
        preserve_sparsity: keep zero weights exactly zero during training
            (sparsity-preserving QAT for pruned models). Default `True`.
        ema_decay: moving-average decay of the activation ranges, in [0, 1).

    Returns:
        The quantization-aware `keras.Model`.

    Example:

    ```python
    qat = kc.quantization.quantize_model(model)
    qat.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    qat.fit(x, y, epochs=1)
    kc.to_tflite(qat, "model_int8.tflite", quantization="int8")
    ```
    """
    _check_model(model, "quantize_model")
    return _Quantizer(lambda layer: True, preserve_sparsity, ema_decay, "quantize_model").apply(
        model
    )


def quantize_apply(model, *, preserve_sparsity=True, ema_decay=0.99):
    """Quantizes the layers marked with `quantize_annotate_layer`; the rest stay float.

    Args:
        model: a built Sequential or Functional model with at least one
            `QuantizeAnnotate` layer.
        preserve_sparsity: as in `quantize_model`.
        ema_decay: as in `quantize_model`.

    Returns:
        A new quantization-aware `keras.Model`; `model` is not modified.
    """
    _check_model(model, "quantize_apply")
    if not any(isinstance(layer, QuantizeAnnotate) for layer in _models.walk_layers(model)):
        raise ValueError(
            f"quantize_apply: model '{model.name}' has no layer marked with "
            "quantize_annotate_layer. Annotate the layers to quantize, or use "
            "quantize_model to quantize them all."
        )
    selected = lambda layer: isinstance(layer, QuantizeAnnotate)  # noqa: E731
    return _Quantizer(selected, preserve_sparsity, ema_decay, "quantize_apply").apply(model)


def _check_model(model, api):
    _models.check_graph_model(model, api, "QuantizeWrapper on its layers")
    _models.check_finite_weights(model, api)
    # The layers it adds take the global policy; the layers it copies keep theirs.
    check_float32_policy(api, "the global dtype policy", keras.mixed_precision.global_policy())
    for layer in _models.walk_layers(model):
        if isinstance(layer, (QuantizeWrapper, ActivationQuantizer)):
            raise ValueError(
                f"{api}: model '{model.name}' is already quantization-aware "
                f"(layer '{layer.name}' is a {type(layer).__name__})."
            )
        if not isinstance(layer, L.InputLayer):
            check_float32_policy(
                api,
                f"the dtype policy of layer '{layer.name}' of model '{model.name}'",
                layer.dtype_policy,
            )


def _fusable_activation(layer):
    """"relu" or "relu6" if `layer` is an activation TFLite fuses, else None."""
    if isinstance(layer, L.ReLU):
        if layer.negative_slope or layer.threshold or layer.max_value not in (None, 6):
            return None
        return "relu" if layer.max_value is None else "relu6"
    if type(layer) is L.Activation and activation_name(layer) in ("relu", "relu6"):
        return activation_name(layer)
    return None


class _Quantizer:
    """One rewrite of a model: walks its graph and rebuilds it quantized."""

    def __init__(self, selected, preserve_sparsity, ema_decay, api):
        if not isinstance(preserve_sparsity, bool):
            raise TypeError(f"{api}: preserve_sparsity must be a bool, got {preserve_sparsity!r}.")
        check_ema_decay(api, ema_decay)
        self.selected = selected
        # Keras ops in a functional graph cannot be annotated; they follow
        # quantize_model, not quantize_apply.
        self.ops_selected = api == "quantize_model"
        self.preserve_sparsity = preserve_sparsity
        self.ema_decay = ema_decay
        self.api = api
        self.quantized = set()  # ids of new tensors that carry an int8 range
        self.input_quantized = {}  # id(new float tensor) -> its quantized twin
        self.copies = {}  # id(old layer) -> new layer, so shared layers stay shared
        self.fills = []  # set weights once the new model is built
        self.left_float = []
        self.names = set()

    def apply(self, model):
        self.names.update(layer.name for layer in _models.walk_layers(model))
        inputs = _models.new_inputs_like(model)
        outputs = self._run(model, inputs)
        new = keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs, name=model.name)
        for fill in self.fills:
            fill()
        if self.left_float:
            warnings.warn(
                f"{self.api}: {len(self.left_float)} layer(s) of model '{model.name}' "
                f"have no int8 rule and stay float: {', '.join(self.left_float)}.",
                stacklevel=3,
            )
        return new

    # -- graph walk ---------------------------------------------------------

    def _run(self, model, inputs):
        consumers = _models.consumers_of(model)
        plan = self._plan_folding(model, consumers)
        return _models.run_graph(
            model, inputs, lambda node, args, kwargs: self._call(node, args, kwargs, consumers, plan)
        )

    def _unwrap(self, op):
        """(the layer to rebuild, whether it is selected for quantization)."""
        selected = self.selected(op) if isinstance(op, L.Layer) else self.ops_selected
        if isinstance(op, QuantizeAnnotate):
            op = op.layer
        if isinstance(op, PruneWrapper):
            op = strip_pruning(op)
        return op, selected

    def _plan_folding(self, model, consumers):
        """Finds Conv/Dense -> BatchNormalization -> ReLU chains to fuse.

        Returns `{id(node): (bn, activation)}` for the kernel layer's node and
        `{id(node): "absorbed"}` for the BN and activation nodes it takes in.
        """
        nodes = list(_models.graph_nodes(model))
        calls = {}
        for node in nodes:
            calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1

        def single_next(node, wanted):
            users = consumers.get(id(node.outputs[0]), [])
            if len(node.outputs) != 1 or len(users) != 1 or users[0] is None:
                return None, None
            user = users[0]
            layer, _ = self._unwrap(user.operation)
            if calls[id(user.operation)] != 1 or not wanted(layer):
                return None, None
            return user, layer

        plan = {}
        for node in nodes:
            layer, selected = self._unwrap(node.operation)
            if not selected or why_not_quantizable(layer) or activation_name(layer) != "linear":
                continue
            if calls[id(node.operation)] != 1:
                continue
            rank = len(node.outputs[0].shape)
            bn_node, bn = single_next(
                node,
                lambda x: isinstance(x, L.BatchNormalization) and x.axis in (-1, rank - 1),
            )
            tail = bn_node or node
            act_node, act = single_next(tail, lambda x: _fusable_activation(x) is not None)
            if bn_node is None and act_node is None:
                continue
            plan[id(node)] = (bn, _fusable_activation(act) if act is not None else None)
            for absorbed in (bn_node, act_node):
                if absorbed is not None:
                    plan[id(absorbed)] = "absorbed"
        return plan

    def _call(self, node, args, kwargs, consumers, plan):
        op = node.operation
        if isinstance(op, keras.Model):
            return self._run(op, keras.tree.flatten(args[0]))
        step = plan.get(id(node))
        if step == "absorbed":
            return args[0]
        layer, selected = self._unwrap(op)
        if not selected:
            return self._copy(layer)(*args, **kwargs)
        if why_not_quantizable(layer) is None:
            bn, act = step if step is not None else (None, None)
            return self._call_kernel_layer(layer, bn, act, args, kwargs)
        if isinstance(layer, _SAME_SCALE):
            args, kwargs = self._quantize_inputs(args, kwargs)
            outputs = self._copy(layer)(*args, **kwargs)
            for x in keras.tree.flatten(outputs):
                self.quantized.add(id(x))
            return outputs
        if isinstance(layer, L.Rescaling) and _has_offset(layer):
            config = layer.get_config()
            return self._call_affine(layer.name, config["scale"], config["offset"], args[0])
        if isinstance(layer, L.BatchNormalization) and layer.axis in (-1, len(node.outputs[0].shape) - 1):
            return self._call_affine(layer.name, *_batch_norm_affine(layer), args[0])
        is_op = not isinstance(layer, L.Layer) and type(layer).__name__ in _NEW_RANGE_OPS
        if isinstance(layer, _NEW_RANGE) or is_op:
            args, kwargs = self._quantize_inputs(args, kwargs)
            outputs = self._copy(layer)(*args, **kwargs)
            if self._feeds_fused_activation(node, layer, consumers):
                # TFLite fuses the ReLU after it, whose output range covers
                # both: no range of its own, and none at the ReLU's input.
                self.quantized.update(id(x) for x in keras.tree.flatten(outputs))
                return outputs
            activation = "softmax" if isinstance(layer, L.Softmax) else activation_name(layer)
            return self._quantize_output(outputs, layer.name, activation)
        if not isinstance(layer, L.InputLayer):
            self.left_float.append(f"'{layer.name}' ({type(layer).__name__})")
        return self._copy(layer)(*args, **kwargs)

    def _feeds_fused_activation(self, node, layer, consumers):
        if not (isinstance(layer, _FUSING_PRODUCERS) or type(layer).__name__ in _NEW_RANGE_OPS):
            return False
        users = consumers.get(id(node.outputs[0]), [])
        if len(users) != 1 or users[0] is None:
            return False
        user, selected = self._unwrap(users[0].operation)
        return selected and _fusable_activation(user) is not None

    def _call_kernel_layer(self, layer, bn, fused, args, kwargs):
        own = activation_name(layer)
        split = own not in FUSABLE_ACTIVATIONS
        key = id(layer)
        if key not in self.copies:
            config = layer.get_config()
            if split:
                config["activation"] = "linear"
            inner = layer.__class__.from_config(config)
            bn_copy = None if bn is None else _models.copy_layer(bn)
            wrapper = QuantizeWrapper(
                inner,
                batch_norm=bn_copy,
                activation=fused,
                preserve_sparsity=self.preserve_sparsity,
                name=self._unique(f"quant_{layer.name}"),
            )

            def fill(inner=inner, bn_copy=bn_copy, layer=layer, bn=bn, wrapper=wrapper):
                inner.set_weights(layer.get_weights())
                if bn_copy is not None:
                    bn_copy.set_weights(bn.get_weights())
                wrapper.refresh_kernel_range()

            self.fills.append(fill)
            self.copies[key] = wrapper
        args, kwargs = self._quantize_inputs(args, kwargs)
        outputs = self._quantize_output(self.copies[key](*args, **kwargs), layer.name)
        if split:
            activation = L.Activation(own, name=self._unique(f"{layer.name}_{own}"))
            outputs = self._quantize_output(activation(outputs), activation.name, own)
        return outputs

    def _call_affine(self, name, scale, offset, x):
        # `x * scale + offset` is two int8 ops, MUL then ADD; without a range
        # between them the converter leaves both float. Split it in two.
        scale = L.Rescaling(scale, name=self._unique(f"{name}_scale"))
        offset = L.Rescaling(1.0, offset, name=self._unique(f"{name}_offset"))
        (x,), _ = self._quantize_inputs((x,), {})
        x = self._quantize_output(scale(x), scale.name)
        return self._quantize_output(offset(x), offset.name)

    # -- building blocks ----------------------------------------------------

    def _copy(self, layer):
        """A new layer with `layer`'s config and weights (stateless Keras ops are reused)."""
        if not isinstance(layer, L.Layer):
            return layer
        if id(layer) not in self.copies:
            new = _models.copy_layer(layer)
            if layer.weights:
                self.fills.append(lambda new=new, layer=layer: new.set_weights(layer.get_weights()))
            self.copies[id(layer)] = new
        return self.copies[id(layer)]

    def _quantizer(self, name, fixed_range=None):
        return ActivationQuantizer(
            ema_decay=self.ema_decay, fixed_range=fixed_range, name=self._unique(name)
        )

    def _quantize_output(self, outputs, name, activation=None):
        def quantize(x):
            if not isinstance(x, keras.KerasTensor) or not _is_float(x):
                return x
            y = self._quantizer(f"{name}_quant", _FIXED_RANGES.get(activation))(x)
            self.quantized.add(id(y))
            return y

        return keras.tree.map_structure(quantize, outputs)

    def _quantize_inputs(self, args, kwargs):
        def quantize(x):
            if not isinstance(x, keras.KerasTensor) or not _is_float(x):
                return x
            if id(x) in self.quantized:
                return x
            if id(x) not in self.input_quantized:
                producer = x._keras_history.operation.name
                y = self._quantizer(f"{producer}_quant")(x)
                self.quantized.add(id(y))
                self.input_quantized[id(x)] = y
            return self.input_quantized[id(x)]

        return keras.tree.map_structure(quantize, (args, kwargs))

    def _unique(self, name):
        candidate, i = name, 1
        while candidate in self.names:
            candidate, i = f"{name}_{i}", i + 1
        self.names.add(candidate)
        return candidate


def _batch_norm_affine(layer):
    """A BatchNormalization in inference as per-channel `(scale, offset)` lists.

    A BatchNormalization that follows no Conv or Dense (or one whose
    activation comes first) cannot be folded; as an affine map it converts to
    int8 MUL and ADD. Its parameters are frozen from then on.
    """
    mean = keras.ops.convert_to_numpy(layer.moving_mean).astype("float64")
    variance = keras.ops.convert_to_numpy(layer.moving_variance).astype("float64")
    scale = 1 / np.sqrt(variance + layer.epsilon)
    if layer.scale:
        scale = scale * keras.ops.convert_to_numpy(layer.gamma)
    offset = -mean * scale
    if layer.center:
        offset = offset + keras.ops.convert_to_numpy(layer.beta)
    return [float(v) for v in scale], [float(v) for v in offset]


def _has_offset(layer):
    offset = layer.get_config()["offset"]
    return any(v != 0 for v in keras.tree.flatten(offset))


def _is_float(tensor):
    return keras.backend.standardize_dtype(tensor.dtype).startswith(("float", "bfloat"))
