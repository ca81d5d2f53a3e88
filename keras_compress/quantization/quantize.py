"""Model-level quantization-aware training: `quantize_model`,
`quantize_annotate_layer` and `quantize_apply`."""

import warnings

import keras
import numpy as np
from keras import layers as L
from keras import ops

from keras_compress._backend import check_backend
from keras_compress._clusters import values_per_channel
from keras_compress import _models
from keras_compress.quantization import rules
from keras_compress.quantization.attention import (
    QuantizeMultiHeadAttention,
    why_not_quantizable_attention,
)
from keras_compress.quantization.normalization import QuantizeLayerNormalization
from keras_compress.quantization.quantizers import (
    ActivationQuantizer,
    check_ema_decay,
    check_float32_policy,
)
from keras_compress.quantization.sparsity import SparsityPreservingWrapper, has_zero_weights
from keras_compress.quantization.wrapper import (
    FUSABLE_ACTIVATIONS,
    QuantizeWrapper,
    folds_batch_norm,
    has_kernel_rule,
    own_activation,
    ranged_per_output_channel,
    why_not_quantizable,
)

_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
# preserve_clusters keeps a kernel's distinct values when it has at most this
# many (an int8 kernel cannot hold more).
MAX_CLUSTERS = 256
_RECURRENT_REASON = (
    "recurrent layer: quantization-aware training has no int8 rule for the ops of "
    "its cell, so without representative_data they convert float"
)
_MASKED_SOFTMAX_REASON = (
    "masked softmax: Keras adds a large negative number to the masked logits, "
    "which an int8 range that also holds the real logits cannot represent"
)
_MASKED_AVERAGE_REASON = (
    "its Keras mask makes it a masked average, whose CAST, SUM and DIV of the "
    "mask have no int8 rule and convert float"
)


def _activation_reason(activation):
    kernel = rules.NO_INT8_KERNEL.get(activation)
    if kernel:
        return f"TFLite has no int8 kernel for {kernel}"
    return f"no int8 rule for activation '{activation}'"


def _receives_mask(node):
    """Whether a graph node's layer is called with a Keras mask (passed, or
    attached to its input)."""
    arguments = node.arguments
    return arguments.kwargs.get("mask") is not None or any(
        _models.keras_mask(x) is not None for x in keras.tree.flatten(arguments.args)
    )


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


def quantize_model(model, *, float_layers=None, preserve_sparsity=True, preserve_clusters=False, ema_decay=0.99):
    """Makes a quantization-aware copy of a model, ready for `fit` and int8 export.

    Every layer and Keras op with an int8 rule is fake-quantized so that
    `kc.to_tflite(qat, quantization="int8")` makes each of its ops int8
    without representative data, and the file computes what training saw:

    - Dense, EinsumDense and convolution kernels (Conv1D/2D,
      Conv2DTranspose, DepthwiseConv1D/2D) symmetric int8, per channel for
      Conv2D and DepthwiseConv2D; a SeparableConv1D/2D becomes its two TFLite
      ops, a depthwise and a pointwise `QuantizeWrapper` with an int8 range
      between them. A BatchNormalization and ReLU / ReLU6 after a Dense or
      convolution fold into it (one int8 op).
    - Embedding tables int8 (GATHER keeps the table's scale; masks pass on).
    - MultiHeadAttention (`QuantizeMultiHeadAttention`) and
      LayerNormalization (`QuantizeLayerNormalization`) with a range at
      every intermediate TFLite computes.
    - Activations at the ranges of TFLite's int8 kernels: softmax and
      sigmoid `[0, 255/256]`, tanh `[-1, 127/128]`; swish as LOGISTIC then
      MUL; hard-swish, GELU, ReLU and leaky ReLU with learned ranges.
    - Adds, concatenations, pooling, reshapes, padding, rescaling, and Keras
      ops used directly in a functional graph (`x / 6.0`,
      `keras.ops.mean`, `keras.ops.relu`, `keras.ops.matmul`, ...), each as
      TFLite's int8 kernel needs (a new range, or its input's).

    Layers without an int8 form stay float and are listed in one warning with
    the reason (recurrent layers, masked attention, activations without an
    int8 kernel, ...). Nested models are inlined; pruning wrappers are
    stripped with their zeros kept (see `preserve_sparsity`).

    The result is a new Functional model (the input model is not modified);
    compile and fine-tune it, then convert it with
    `kc.to_tflite(qat_model, quantization="int8")`. It trains under
    `tf.distribute` strategies (build it inside `strategy.scope()`), but not
    in mixed precision: the global dtype policy and the model's layers must
    be `"float32"`, or a `ValueError` says which is not.

    Args:
        model: a built Sequential or Functional model.
        float_layers: names of layers (or Keras ops, as warnings and
            `model.summary()` name them) to leave float, for selective
            quantization; a nested model's name leaves all its layers float.
            They train float and stay float in the int8 file: their output
            goes through a float64 round trip (exact; two CAST ops in the
            file) before the next quantized layer, where the converter stops
            carrying int8 scales through ops it could quantize. A list,
            tuple or set of strings, or `None` (default) to quantize
            everything that has a rule. Unknown names raise a `ValueError`
            listing the model's layers and ops.
        preserve_sparsity: keep zero weights exactly zero during training
            (sparsity-preserving QAT for pruned models), in quantized layers
            and in the layers left float alike (these are wrapped in a
            `SparsityPreservingWrapper` when they hold zeros). Default `True`.
        preserve_clusters: cluster-preserving QAT, for a clustered model
            (`kc.clustering`; its wrappers are stripped first): every
            quantized kernel with at most 256 distinct values (and fewer
            than its entries) keeps them as
            shared values that train (each entry keeps its centroid), so the
            int8 file holds at most that many distinct values per kernel
            (one int8 range per kernel; per channel where a BatchNormalization
            folds in). Quantized kernels with more values, and layers this
            cannot apply to, are named in a warning. Default `False`.
        ema_decay: moving-average decay of the activation ranges, in [0, 1).

    Returns:
        The quantization-aware `keras.Model`.

    Example:

    ```python
    qat = kc.quantization.quantize_model(model, float_layers=["attention"])
    qat.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    qat.fit(x, y, epochs=1)
    kc.to_tflite(qat, "model_int8.tflite", quantization="int8")
    ```
    """
    check_backend("quantize_model")
    _check_model(model, "quantize_model")
    float_names = _check_float_layers(model, float_layers, "quantize_model")
    quantizer = _Quantizer(
        lambda op: not _names_of(op) & float_names, preserve_sparsity, ema_decay, "quantize_model",
        preserve_clusters,
    )
    return quantizer.apply(model)


def quantize_apply(model, *, preserve_sparsity=True, preserve_clusters=False, ema_decay=0.99):
    """Quantizes the layers marked with `quantize_annotate_layer`; the rest stay float.

    The unmarked layers stay float in the int8 file too (see `float_layers`
    in `quantize_model`), and keep their pruned zeros.

    Args:
        model: a built Sequential or Functional model with at least one
            `QuantizeAnnotate` layer.
        preserve_sparsity: as in `quantize_model`.
        preserve_clusters: as in `quantize_model`.
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
    selected = lambda op: isinstance(op, QuantizeAnnotate)  # noqa: E731
    return _Quantizer(selected, preserve_sparsity, ema_decay, "quantize_apply", preserve_clusters).apply(model)


def _check_model(model, api):
    _models.check_graph_model(model, api, "QuantizeWrapper")
    _models.check_finite_weights(model, api)
    # The layers it adds take the global policy; the layers it copies keep theirs.
    check_float32_policy(api, "the global dtype policy", keras.mixed_precision.global_policy())
    for layer in _models.walk_layers(model):
        if getattr(layer, "_kc_quantization_aware", False) is True:
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


def _names_of(op):
    """The names `float_layers` can use for a graph operation: its own and,
    for a pruning or annotation wrapper, its inner layer's."""
    names = {op.name}
    inner = getattr(op, "layer", None)
    if (isinstance(op, QuantizeAnnotate) or _models.is_removable_wrapper(op)) and inner is not None:
        names.add(inner.name)
    return names


def _operations(model):
    """`{name: operation}` for every layer and op of `model`'s graph,
    nested models included (under their own name too)."""
    found = {}
    for node in _models.graph_nodes(model):
        op = node.operation
        if isinstance(op, keras.Model):
            found[op.name] = op
            found.update(_operations(op))
        else:
            found.update(dict.fromkeys(_names_of(op), op))
    return found


def _check_float_layers(model, float_layers, api):
    """The set of operation names `float_layers` leaves float; raises on a
    bad value, naming the model's layers."""
    if float_layers is None:
        return frozenset()
    if isinstance(float_layers, str) or not isinstance(float_layers, (list, tuple, set, frozenset)):
        raise TypeError(
            f"{api}: float_layers must be a list, tuple or set of layer names, or None; "
            f"got {type(float_layers).__name__}: {float_layers!r}."
        )
    operations = _operations(model)
    bad = [name for name in float_layers if not isinstance(name, str)]
    if bad:
        raise TypeError(
            f"{api}: float_layers must hold layer names (strings), got {bad[0]!r} "
            f"({type(bad[0]).__name__})."
        )
    unknown = [name for name in float_layers if name not in operations]
    if unknown:
        raise ValueError(
            f"{api}: float_layers names {unknown}, which model '{model.name}' does not "
            f"have. Its layers and ops: {sorted(operations)}."
        )
    names = set(float_layers)
    for name in float_layers:
        if isinstance(operations[name], keras.Model):
            names.update(_operations(operations[name]))
    return frozenset(names)


def _is_float(tensor):
    return keras.backend.standardize_dtype(tensor.dtype).startswith(("float", "bfloat"))


def _float_tensors(structure):
    return [
        x
        for x in keras.tree.flatten(structure)
        if isinstance(x, keras.KerasTensor) and _is_float(x)
    ]


def _float_barrier(tensor):
    if not isinstance(tensor, keras.KerasTensor) or not _is_float(tensor):
        return tensor
    return keras.ops.cast(keras.ops.cast(tensor, "float64"), tensor.dtype)


def _separable_parts(layer, activation):
    """A SeparableConv1D/2D as the two layers TFLite runs it as: a depthwise
    convolution (strides, padding and dilation) and a pointwise (1x1) one
    (filters, bias, and `activation`), unbuilt, each with the weights it
    takes.

    Two `QuantizeWrapper`s with an `ActivationQuantizer` between them, rather
    than one wrapper for the separable layer: that is exactly the graph TFLite
    runs (DEPTHWISE_CONV_2D, an int8 tensor, CONV_2D), and it reuses what each
    part needs as it is (the per-channel depthwise range, BatchNormalization
    folding into the pointwise kernel, kept zeros), where one wrapper would
    need a second kernel, a range of its own and its own call path.
    """
    config = layer.get_config()
    one_d = isinstance(layer, L.SeparableConv1D)
    common = {key: config[key] for key in ("data_format", "dtype", "trainable")}
    depthwise = (L.DepthwiseConv1D if one_d else L.DepthwiseConv2D)(
        kernel_size=config["kernel_size"],
        strides=config["strides"],
        padding=config["padding"],
        depth_multiplier=config["depth_multiplier"],
        dilation_rate=config["dilation_rate"],
        use_bias=False,
        depthwise_initializer=config["depthwise_initializer"],
        depthwise_regularizer=config["depthwise_regularizer"],
        depthwise_constraint=config["depthwise_constraint"],
        name=f"{layer.name}_depthwise",
        **common,
    )
    pointwise = (L.Conv1D if one_d else L.Conv2D)(
        config["filters"],
        1,
        activation=activation,
        use_bias=config["use_bias"],
        kernel_initializer=config["pointwise_initializer"],
        bias_initializer=config["bias_initializer"],
        kernel_regularizer=config["pointwise_regularizer"],
        bias_regularizer=config["bias_regularizer"],
        activity_regularizer=config["activity_regularizer"],
        kernel_constraint=config["pointwise_constraint"],
        bias_constraint=config["bias_constraint"],
        name=f"{layer.name}_pointwise",
        **common,
    )
    bias = [layer.bias] if config["use_bias"] else []
    return [(depthwise, [layer.depthwise_kernel]), (pointwise, [layer.pointwise_kernel, *bias])]


class _Quantizer:
    """One rewrite of a model: walks its graph and rebuilds it quantized."""

    def __init__(self, selected, preserve_sparsity, ema_decay, api, preserve_clusters=False):
        for name, value in (("preserve_sparsity", preserve_sparsity), ("preserve_clusters", preserve_clusters)):
            if not isinstance(value, bool):
                raise TypeError(f"{api}: {name} must be a bool, got {value!r}.")
        self.preserve_clusters = preserve_clusters
        self.unclustered = []  # layers preserve_clusters could not keep clustered
        check_ema_decay(api, ema_decay)
        self.selected = selected
        self.preserve_sparsity = preserve_sparsity
        self.ema_decay = ema_decay
        self.api = api
        self.quantized = set()  # ids of new tensors that carry an int8 range
        self.input_quantized = {}  # id(new float tensor) -> its quantized twin
        self.learned_outputs = {}  # id(output with a learned range) -> the tensor before it
        # id(ReLU output of a Conv/Dense read only by a max pooling) -> the
        # layer's name: its range is learned after the pooling (see
        # `_pooled_after`).
        self.pooled = {}
        self.copies = {}  # id(old layer) -> new layer, so shared layers stay shared
        self.unwrapped = {}  # id(op) -> (op, the layer it stands for, selected)
        self.fills = []  # set weights once the new model is built
        self.left_float = {}  # layer name -> "'name' (Type): reason"
        self.names = set()

    def apply(self, model):
        self.names.update(_operations(model))
        inputs = _models.new_inputs_like(model)
        outputs = self._run(model, inputs)
        self._keep_output_names(model, inputs, outputs)
        new = keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs, name=model.name)
        for fill in self.fills:
            fill()
        if self.left_float:
            warnings.warn(
                f"{self.api}: {len(self.left_float)} layer(s) of model '{model.name}' "
                f"have no int8 rule and stay float: {'; '.join(self.left_float.values())}. "
                "Training gives their ops no int8 range; to_tflite(..., "
                "quantization='int8') names the ops that the file keeps float.",
                stacklevel=3,
            )
        if self.unclustered:
            warnings.warn(
                f"{self.api}: preserve_clusters=True cannot keep the clusters of {len(self.unclustered)} "
                f"layer(s) of model '{model.name}': {'; '.join(self.unclustered)}. At most {MAX_CLUSTERS} "
                "distinct values per kernel (fewer than its entries) are kept, in the layers quantize_model "
                "quantizes with a QuantizeWrapper.",
                stacklevel=3,
            )
        return new

    def _keep_output_names(self, model, inputs, outputs):
        """Names each output's final quantizer after the float model's output
        layer, so that `output_names` stay the same: losses and metrics keyed
        by output name, and the `.tflite` signature, carry over unchanged.

        The float layer copied in front of it (a Softmax with its own name)
        becomes `<name>_float`; an output left float keeps its own name.
        """
        new_outputs = keras.tree.flatten(outputs)
        ops = {l.name: l for l in keras.Model(inputs, outputs).operations}
        for name, tensor in zip(_models.graph_of(model).output_names, new_outputs):
            last = tensor._keras_history.operation
            if not isinstance(last, ActivationQuantizer) or last.name == name:
                continue
            holder = ops.get(name)
            if holder is not None:
                if getattr(holder, "weights", None):  # renaming would leave its variables' paths stale
                    continue
                holder.name = self._unique(f"{name}_float")
            ops.pop(last.name, None)
            last.name = name
            ops[name] = last

    # -- graph walk ---------------------------------------------------------

    def _run(self, model, inputs):
        consumers = _models.consumers_of(model)
        plan = self._plan_folding(model, consumers)
        return _models.run_graph(
            model, inputs, lambda node, args, kwargs: self._call(node, args, kwargs, consumers, plan)
        )

    def _unwrap(self, op):
        """(the layer or op to rebuild, whether it is selected for quantization)."""
        # Once per op: a pruning or clustering wrapper comes off as a new
        # layer (its masks or centroids baked into the weights, as the
        # technique registered in `_models.register_unwrap`), and
        # `self.copies` is keyed by that layer's id, so the layer must stay
        # alive and be the same at every visit (a freed one's id can be
        # reused by the next wrapper's layer, which would then get its copy).
        if id(op) not in self.unwrapped:
            selected = self.selected(op)
            layer = op.layer if isinstance(op, QuantizeAnnotate) else op
            self.unwrapped[id(op)] = (op, _models.unwrap_layer(layer), selected)
        return self.unwrapped[id(op)][1:]

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
            layer, selected = self._unwrap(user.operation)
            if calls[id(user.operation)] != 1 or not selected or not wanted(layer):
                return None, None
            return user, layer

        plan = {}
        for node in nodes:
            layer, selected = self._unwrap(node.operation)
            if not selected or rules.is_op(layer) or calls[id(node.operation)] != 1:
                continue
            foldable = isinstance(layer, _SEPARABLE) or (
                why_not_quantizable(layer) is None and folds_batch_norm(layer)
            )
            if not foldable or own_activation(layer) != "linear":
                continue
            rank = len(node.outputs[0].shape)
            bn_node, bn = single_next(
                node,
                lambda x: isinstance(x, L.BatchNormalization) and x.axis in (-1, rank - 1),
            )
            tail = bn_node or node
            act_node, act = single_next(tail, lambda x: rules.relu_kind(x) is not None)
            if bn_node is None and act_node is None:
                continue
            plan[id(node)] = (bn, rules.relu_kind(act) if act is not None else None)
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
            outputs = args[0]
        else:
            outputs = self._call_layer(node, step, args, kwargs, consumers)
        if not self._unwrap(op)[1] and self._feeds_quantized_layer(node, consumers):
            # Left float on request, before a quantized layer. The converter
            # would otherwise make it int8 too, when its int8 kernel exists:
            # it carries int8 scales through any op it can quantize, and
            # stops only at an op it cannot (a float64 round trip: exact,
            # two CAST ops in the file).
            outputs = keras.tree.map_structure(_float_barrier, outputs)
        user = self._single_user(node, consumers)
        if user is not None and (
            isinstance(user, L.Concatenate)
            or (rules.is_op(user) and type(user).__name__ in rules.CONCATENATING_OPS)
        ):
            # TFLite's int8 CONCATENATION and PACK have their inputs written at
            # their own scale: an op whose only user one is writes there
            # directly, and a range of its own would be a rounding the file
            # skips (or, for PACK, a scale it would clip to).
            outputs = keras.tree.map_structure(self._without_learned_range, outputs)
        return outputs

    def _feeds_quantized_layer(self, node, consumers):
        users = [u for x in node.outputs for u in consumers.get(id(x), []) if u is not None]
        return any(
            self._unwrap(u.operation)[1] and not isinstance(u.operation, keras.Model) for u in users
        )

    def _pooled_after(self, layer, node, consumers):
        """Whether `layer` (a Conv or Dense with a ReLU or ReLU6 of its own)
        is read only by a max pooling: then its output's range is learned
        after the pooling instead. The forward pass is the same (fake
        quantization is monotone, so it commutes with max; the maximum is
        the same and a ReLU's range starts at 0 either way), TFLite gives a
        max pooling's input its output's range, and fake quantization costs
        a quarter as much on the pooled tensor, at every training step. The
        gradient reaches each window's largest value, not the first of the
        values quantization made equal."""
        return own_activation(layer) in ("relu", "relu6") and isinstance(
            self._single_user(node, consumers), _MAX_POOLING
        )

    def _single_user(self, node, consumers):
        """The layer or op that alone reads `node`'s single output, if it is
        selected for quantization, else `None`."""
        users = consumers.get(id(node.outputs[0]), [])
        if len(node.outputs) != 1 or len(users) != 1 or users[0] is None:
            return None
        user, selected = self._unwrap(users[0].operation)
        return user if selected else None

    def _without_learned_range(self, tensor):
        """The input of the learned-range output quantizer that made `tensor`
        (marked as carrying a range: its consumer's), or `tensor` itself."""
        source = self.learned_outputs.get(id(tensor))
        if source is None:
            return tensor
        self.quantized.add(id(source))
        return source

    def _call_layer(self, node, step, args, kwargs, consumers):
        """The new outputs of one layer or op, by the first rule that fits."""
        layer, selected = self._unwrap(node.operation)
        if not selected or isinstance(layer, L.InputLayer):
            return self._call_float(layer, args, kwargs)
        if not _float_tensors((args, kwargs)) and not _float_tensors(node.outputs):
            # Integer and boolean work (token ids, masks): nothing to quantize.
            return self._copy(layer)(*args, **kwargs)
        if isinstance(layer, _SEPARABLE) or has_kernel_rule(layer):
            reason = None if isinstance(layer, _SEPARABLE) else why_not_quantizable(layer)
            if reason:
                return self._call_float(layer, args, kwargs, reason)
            bn, act = step if step is not None else (None, None)
            pooled = act is None and self._pooled_after(layer, node, consumers)
            return self._call_kernel_layer(layer, bn, act, args, kwargs, pooled)
        if isinstance(layer, L.LayerNormalization):
            return self._call_wrapped(layer, QuantizeLayerNormalization, args, kwargs)
        if isinstance(layer, L.MultiHeadAttention):
            reason = why_not_quantizable_attention(layer) or _models.attention_mask_reason(
                node.arguments.args, node.arguments.kwargs
            )
            if reason:
                return self._call_float(layer, args, kwargs, reason)
            return self._call_wrapped(layer, QuantizeMultiHeadAttention, args, kwargs)
        if isinstance(layer, (L.RNN, L.Bidirectional)):
            return self._call_float(layer, args, kwargs, _RECURRENT_REASON)
        if isinstance(layer, L.Rescaling) and _has_offset(layer):
            config = layer.get_config()
            return self._call_affine(layer.name, config["scale"], config["offset"], args[0])
        rank = len(node.outputs[0].shape)
        if isinstance(layer, L.BatchNormalization) and layer.axis in (-1, rank - 1):
            return self._call_affine(layer.name, *_batch_norm_affine(layer), args[0])
        if isinstance(layer, L.Normalization) and _normalization_affine(layer) is not None:
            return self._call_affine(layer.name, *_normalization_affine(layer), args[0])
        name = type(layer).__name__
        application_rule = rules.APPLICATION_LAYERS.get(name) if _from_keras(layer) else None
        if application_rule == "scale_add":
            return self._call_scale_add(layer, args)
        activation = rules.activation_of(layer)
        if activation is not None:
            return self._call_activation_layer(node, layer, activation, args, kwargs)
        if isinstance(layer, _MAX_POOLING) and args and id(args[0]) in self.pooled:
            pooled = self._copy(layer)(*args, **kwargs)  # of a ReLU's output: never negative
            return self._quantize_output(pooled, self.pooled.pop(id(args[0])), non_negative=True)
        if isinstance(layer, rules.SAME_SCALE_LAYERS) or (
            rules.is_op(layer) and name in rules.SAME_SCALE_OPS
        ):
            args, kwargs = self._quantize_inputs(args, kwargs)
            outputs = self._copy(layer)(*args, **kwargs)
            self.quantized.update(id(x) for x in _float_tensors(outputs))
            return outputs
        if isinstance(layer, rules.NEW_RANGE_LAYERS) or application_rule == rules.NEW_RANGE or (
            rules.is_op(layer) and name in rules.NEW_RANGE_OPS
        ):
            return self._call_new_range(node, layer, args, kwargs, consumers)
        if name in rules.NO_INT8_KERNEL:
            reason = f"TFLite has no int8 kernel for {rules.NO_INT8_KERNEL[name]}"
        else:
            reason = f"no int8 rule for {'the Keras op ' if rules.is_op(layer) else ''}{name}"
        return self._call_float(layer, args, kwargs, reason)

    def _call_new_range(self, node, layer, args, kwargs, consumers):
        if isinstance(layer, L.GlobalAveragePooling1D) and _receives_mask(node):
            self._report(layer, _MASKED_AVERAGE_REASON)
        args, kwargs = self._quantize_inputs(args, kwargs)
        outputs = self._copy(layer)(*args, **kwargs)
        fusing = isinstance(layer, rules.FUSING_PRODUCERS) or (
            rules.is_op(layer) and type(layer).__name__ in rules.FUSING_PRODUCER_OPS
        )
        user = self._single_user(node, consumers)
        if fusing and user is not None and rules.relu_kind(user) is not None:
            # TFLite fuses the ReLU after it, whose output range covers
            # both: no range of its own, and none at the ReLU's input.
            self.quantized.update(id(x) for x in _float_tensors(outputs))
            return outputs
        return self._quantize_output(outputs, layer.name)

    def _report(self, layer, reason):
        """Names `layer` in the warning, with the reason it keeps float ops."""
        self.left_float[layer.name] = f"'{layer.name}' ({type(layer).__name__}): {reason}"

    def _call_float(self, layer, args, kwargs, reason=None):
        """Calls a copy of `layer` as it is; `reason` (why it has no int8
        form) goes into the warning. Its zeros are kept if it has any."""
        if reason is not None:
            self._report(layer, reason)
        return self._copy(layer)(*args, **kwargs)

    def _call_kernel_layer(self, layer, bn, fused, args, kwargs, pooled=False):
        own = own_activation(layer)
        split = own not in FUSABLE_ACTIVATIONS
        key = id(layer)
        if key not in self.copies:
            if isinstance(layer, _SEPARABLE):
                parts = _separable_parts(layer, "linear" if split else own)
            else:
                config = layer.get_config()
                if split:
                    config["activation"] = "linear"
                parts = [(layer.__class__.from_config(config), layer.weights)]
            wrappers = []
            for i, (inner, weights) in enumerate(parts):
                last = i == len(parts) - 1
                bn_copy = None if bn is None or not last else _models.copy_layer(bn)
                clusters, per_channel = self._clusters(layer, inner, weights)
                wrapper = QuantizeWrapper(
                    inner,
                    batch_norm=bn_copy,
                    activation=fused if last else None,
                    preserve_sparsity=self._keeps_zeros(layer),
                    clusters=clusters,
                    cluster_per_channel=per_channel,
                    name=self._unique(f"quant_{inner.name}"),
                )

                def fill(inner=inner, weights=weights, bn_copy=bn_copy, wrapper=wrapper):
                    inner.set_weights([w.numpy() for w in weights])
                    if bn_copy is not None:
                        bn_copy.set_weights(bn.get_weights())
                    if wrapper.clusters is not None:
                        wrapper.refresh_clusters()
                    wrapper.refresh_kernel_range()

                self.fills.append(fill)
                wrappers.append(wrapper)
            self.copies[key] = wrappers
        wrappers = self.copies[key]
        args, kwargs = self._quantize_inputs(args, kwargs)
        outputs = wrappers[0](*args, **kwargs)
        for wrapper in wrappers[1:]:
            # A separable convolution is two int8 ops with an int8 tensor between.
            outputs = wrapper(self._quantize_output(outputs, wrappers[0].layer.name))
        if isinstance(layer, L.Embedding):
            # GATHER gives its output the int8 table's scale: no range of its own.
            self.quantized.update(id(x) for x in _float_tensors(outputs))
        elif pooled:
            self.pooled[id(outputs)] = layer.name
        else:
            relu = (not split and own in ("relu", "relu6")) or fused in ("relu", "relu6")
            outputs = self._quantize_output(outputs, layer.name, non_negative=relu)
        if split:
            if rules.activation_rule(own) is None:
                self._report(layer, f"its activation: {_activation_reason(own)}")
            activation = L.Activation(own, name=self._unique(f"{layer.name}_{own}"))
            outputs = self._activation(outputs, own, activation, activation.name)
        return outputs

    def _clusters(self, layer, inner, weights):
        """`(k, per_channel)`: the number of distinct values the kernel among
        `weights` keeps in cluster-preserving QAT, per output channel when
        they are shared within each channel and not across them (a Conv2D
        clustered per channel), or `(None, False)`."""
        if not self.preserve_clusters:
            return None, False
        kernel = ops.convert_to_numpy(next(w for w in weights if len(w.shape) >= 2))
        distinct = len(np.unique(kernel))
        if ranged_per_output_channel(inner):
            per_channel = values_per_channel(kernel, distinct)
            if per_channel is not None and per_channel <= MAX_CLUSTERS and \
                    per_channel < kernel.size // kernel.shape[-1]:
                return per_channel, True
        # Not clustered: every entry its own value, or more than int8 holds.
        if distinct > MAX_CLUSTERS or distinct == kernel.size:
            self.unclustered.append(f"'{layer.name}' ({distinct} distinct values in {kernel.size})")
            return None, False
        return distinct, False

    def _keeps_zeros(self, layer):
        """Whether `layer`'s wrapper holds its zeros at zero: asked for, and
        there are zeros to hold. A kernel without an exact zero (one not
        pruned) skips the mask, which would multiply by ones at every step."""
        return self.preserve_sparsity and has_zero_weights(layer)

    def _call_wrapped(self, layer, wrapper_class, args, kwargs):
        """A LayerNormalization or MultiHeadAttention through its
        quantization-aware wrapper, its (first) output quantized."""
        key = id(layer)
        if key not in self.copies:
            inner = _models.copy_layer(layer)
            options = {"ema_decay": self.ema_decay}
            if wrapper_class is QuantizeMultiHeadAttention:
                options["preserve_sparsity"] = self._keeps_zeros(layer)
                if self.preserve_clusters:
                    self.unclustered.append(f"'{layer.name}' (MultiHeadAttention: its projections train free)")
            wrapper = wrapper_class(inner, name=self._unique(f"quant_{layer.name}"), **options)

            def fill(inner=inner, wrapper=wrapper):
                inner.set_weights(layer.get_weights())
                if hasattr(wrapper, "refresh_kernel_range"):
                    wrapper.refresh_kernel_range()

            self.fills.append(fill)
            self.copies[key] = wrapper
        args, kwargs = self._quantize_inputs(args, kwargs)
        outputs = self.copies[key](*args, **kwargs)
        if isinstance(outputs, (list, tuple)):
            # The attention scores: the int8 softmax output, already ranged.
            self.quantized.update(id(x) for x in outputs[1:])
            return (self._quantize_output(outputs[0], layer.name), *outputs[1:])
        return self._quantize_output(outputs, layer.name)

    def _call_activation_layer(self, node, layer, activation, args, kwargs):
        if rules.activation_rule(activation) is None:
            return self._call_float(layer, args, kwargs, _activation_reason(activation))
        if activation == "softmax" and _receives_mask(node):
            return self._call_float(layer, args, kwargs, _MASKED_SOFTMAX_REASON)
        args, kwargs = self._quantize_inputs(args, kwargs)
        op = self._copy(layer)
        apply = lambda x: op(x, *args[1:], **kwargs)  # noqa: E731
        return self._activation(args[0], activation, apply, layer.name)

    def _activation(self, x, activation, apply, name):
        """Applies `activation` (with `apply`, as the model does) to the
        quantized `x`, with the ranges its int8 TFLite kernels need (none
        when it has no rule: the caller reports it)."""
        rule = rules.activation_rule(activation)
        if rule is None:
            return apply(x)
        if rule == rules.IDENTITY:
            y = apply(x)
            self.quantized.add(id(y))
            return y
        if rule == "silu":
            # TFLite has no int8 swish: LOGISTIC, with its fixed range, then MUL.
            sigmoid = L.Activation("sigmoid", name=self._unique(f"{name}_sigmoid"))
            gate = self._quantize_output(sigmoid(x), sigmoid.name, rules.SIGMOID_RANGE)
            return self._quantize_output(
                L.Multiply(name=self._unique(f"{name}_multiply"))([x, gate]), name
            )
        if rule == "hard_sigmoid":
            # relu6(x + 3) / 6: ADD with a fused RELU6, then MUL.
            shifted = self._quantize_output(keras.ops.relu6(x + 3.0), f"{name}_relu6")
            return self._quantize_output(shifted * (1 / 6), name)
        fixed = rule if isinstance(rule, tuple) else None
        return self._quantize_output(apply(x), name, fixed)

    def _call_affine(self, name, scale, offset, x):
        # `x * scale + offset` is two int8 ops, MUL then ADD; without a range
        # between them the converter leaves both float. Split it in two.
        scale = L.Rescaling(scale, name=self._unique(f"{name}_scale"))
        offset = L.Rescaling(1.0, offset, name=self._unique(f"{name}_offset"))
        (x,), _ = self._quantize_inputs((x,), {})
        x = self._quantize_output(scale(x), scale.name)
        return self._quantize_output(offset(x), offset.name)

    def _call_scale_add(self, layer, args):
        """InceptionResNetV2's `CustomScaleLayer`, `x0 + x1 * scale`, as a
        Rescaling and an Add, each an int8 op with its own range."""
        x0, x1 = args[0]
        (x0, x1), _ = self._quantize_inputs((x0, x1), {})
        if float(layer.scale) != 1.0:
            # (A MUL by 1 is folded away by the converter, leaving two ranges
            # on one tensor, which it refuses.)
            scale = L.Rescaling(float(layer.scale), name=self._unique(f"{layer.name}_scale"))
            x1 = self._quantize_output(scale(x1), scale.name)
        add = L.Add(name=self._unique(f"{layer.name}_add"))
        return self._quantize_output(add([x0, x1]), layer.name)

    # -- building blocks ----------------------------------------------------

    def _copy(self, layer):
        """A new layer with `layer`'s config and weights (stateless Keras ops
        are reused). A layer with zero weights is wrapped in a
        `SparsityPreservingWrapper` so that training keeps them."""
        if rules.is_op(layer):
            return layer
        if id(layer) not in self.copies:
            new = _models.copy_layer(layer)
            if layer.weights:
                self.fills.append(lambda new=new, layer=layer: new.set_weights(layer.get_weights()))
            if self.preserve_sparsity and has_zero_weights(layer):
                new = SparsityPreservingWrapper(new, name=self._unique(f"sparse_{layer.name}"))
            if self.preserve_clusters and any(len(w.shape) >= 2 and w.trainable for w in layer.weights):
                self.unclustered.append(f"'{layer.name}' (left float, its weights train free)")
            self.copies[id(layer)] = new
        return self.copies[id(layer)]

    def _quantizer(self, name, fixed_range=None, non_negative=False):
        return ActivationQuantizer(
            ema_decay=self.ema_decay, fixed_range=fixed_range, non_negative=non_negative,
            name=self._unique(name),
        )

    def _quantize_output(self, outputs, name, fixed_range=None, non_negative=False):
        def quantize(x):
            if not isinstance(x, keras.KerasTensor) or not _is_float(x):
                return x
            y = self._quantizer(f"{name}_quant", fixed_range, non_negative)(x)
            self.quantized.add(id(y))
            if fixed_range is None:
                self.learned_outputs[id(y)] = x
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


_MAX_POOLING = (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D)


def _batch_norm_affine(layer):
    """A BatchNormalization in inference as per-channel `(scale, offset)` lists.

    A BatchNormalization that follows no Conv or Dense (or one whose
    activation comes first) cannot be folded; as an affine map it converts to
    int8 MUL and ADD. Its parameters are frozen from then on.
    """
    mean = _numpy(layer.moving_mean).astype("float64")
    variance = _numpy(layer.moving_variance).astype("float64")
    scale = 1 / np.sqrt(variance + layer.epsilon)
    if layer.scale:
        scale = scale * _numpy(layer.gamma)
    offset = -mean * scale
    if layer.center:
        offset = offset + _numpy(layer.beta)
    return [float(v) for v in scale], [float(v) for v in offset]


def _normalization_affine(layer):
    """A `Normalization` layer as per-channel `(scale, offset)` lists over its
    last axis (`(x - mean) / std`, or `x * std + mean` inverted), or `None`
    when its statistics vary along another axis. Keras computes it as two
    ops (SUB then DIV, or MUL then ADD), which need a range in between."""
    if layer.mean is None:
        return None
    mean = _numpy(layer.mean).astype("float64")
    variance = _numpy(layer.variance).astype("float64")
    if any(d != 1 for d in mean.shape[:-1]) or mean.shape != variance.shape:
        return None
    std = np.maximum(np.sqrt(variance.reshape(-1)), keras.backend.epsilon())
    mean = mean.reshape(-1)
    scale, offset = (std, mean) if layer.invert else (1 / std, -mean / std)
    return [float(v) for v in scale], [float(v) for v in offset]


def _numpy(value):
    """A variable or tensor as a numpy array (a Keras variable through its own
    `numpy()`: numpy 2 warns about its `__array__`)."""
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def _from_keras(layer):
    """Whether `layer`'s class is Keras's own (a `keras.applications` layer),
    not a user's class that happens to share its name."""
    return type(layer).__module__.startswith("keras.")


def _has_offset(layer):
    offset = layer.get_config()["offset"]
    return any(v != 0 for v in keras.tree.flatten(offset))

