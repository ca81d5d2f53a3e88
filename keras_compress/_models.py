"""Walking and cloning Keras models: the one helper every technique shares.

Pruning, stripping, structured pruning and quantization all rewrite a model
layer by layer. They do it here, by cloning, so the model the user passed in is
never modified.

It also holds the hooks through which the techniques meet without importing
one another (`register_unwrap`, `unwrap_layer`, `is_removable_wrapper`: how a
technique's training wrapper is taken off by another technique).
"""

import keras
import numpy as np
from keras import layers as L
from keras.src.models.functional import Functional  # Keras has no public name for it.


def check_graph_model(model, api, layer_api):
    """Raises unless `model` is a built Sequential or Functional model.

    Args:
        model: the object a model-level API received.
        api: the API's name, for the message.
        layer_api: what a subclassed-model user should call instead.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"{api} expects a keras.Model (Sequential or Functional), got "
            f"{type(model).__name__}: {model!r}."
        )
    if not isinstance(model, (keras.Sequential, Functional)):
        raise ValueError(
            f"{api} cannot rewrite model '{model.name}': it is a subclassed "
            f"{type(model).__name__}, whose call() cannot be cloned. Build it as "
            f"a Sequential or Functional model, or use {layer_api} on its "
            "layers inside your own __init__."
        )
    if not model.built or not model.inputs:
        raise ValueError(
            f"{api} needs a built model with known inputs; model "
            f"'{model.name}' is not built. Give it a keras.Input or call it on "
            "data first."
        )


def check_finite_weights(model, api):
    """Raises, naming the layer and weight, if a weight holds NaN or Inf.

    Ranking weights by magnitude, folding them, quantizing them or learning
    from them is meaningless once one is not a number.
    """
    for layer in walk_layers(model):
        for weight in layer.weights:
            values = weight.numpy()
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                bad = "NaN" if np.isnan(values).any() else "Inf"
                raise ValueError(
                    f"{api}: layer '{layer.name}' of model '{model.name}' has non-finite ({bad}) "
                    f"values in its weight '{weight.path}'; every weight must be a finite number."
                )


# The weights a weight-level technique (pruning, clustering) acts on, per
# layer kind: the kernels, not the biases. A layer outside this table takes
# part through its own method (`get_prunable_weights()`,
# `get_clusterable_weights()`: tfmot's protocols) or through the sub-layers
# it owns that are in the table: MultiHeadAttention (its query/key/value/
# output EinsumDense kernels), LSTM / GRU / SimpleRNN (their cell's kernel and
# recurrent kernel), Bidirectional, TimeDistributed, and any custom layer
# built from such layers.
KERNEL_WEIGHTS = (
    ((L.Dense, L.EinsumDense), ("kernel",)),
    ((L.Conv1D, L.Conv2D, L.Conv3D), ("kernel",)),
    ((L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose), ("kernel",)),
    ((L.DepthwiseConv1D, L.DepthwiseConv2D), ("kernel",)),  # Keras 3 names it "kernel"
    ((L.SeparableConv1D, L.SeparableConv2D), ("depthwise_kernel", "pointwise_kernel")),
    ((L.Embedding,), ("embeddings",)),
    ((L.LSTMCell, L.GRUCell, L.SimpleRNNCell), ("kernel", "recurrent_kernel")),
)


def kernel_weights_names(protocol):
    """The layer kinds of `KERNEL_WEIGHTS` as a message lists them, with the
    containers built from them and the `protocol` method."""
    return (", ".join(cls.__name__ for classes, _ in KERNEL_WEIGHTS for cls in classes)
            + ", layers built from those (MultiHeadAttention, LSTM, GRU, SimpleRNN, "
            f"Bidirectional, TimeDistributed, ...), or any layer with {protocol}()")


def kernel_attributes(layer):
    """The attribute names of `layer`'s kernel weights in `KERNEL_WEIGHTS`, or None."""
    for classes, attributes in KERNEL_WEIGHTS:
        if isinstance(layer, classes):
            return attributes
    return None


def ruled_sublayers(layer, has_rule):
    """`[layer]` when `has_rule(layer)`, else its nested layers that have a
    rule, outermost first (a sub-layer with a rule is taken whole: its own
    sub-layers are its business, as for the outer layer)."""
    if has_rule(layer):
        return [layer]
    found = []
    for sub in layer._flatten_layers(include_self=False, recursive=True):
        if has_rule(sub) and not any(sub in f._flatten_layers() for f in found):
            found.append(sub)
    return found


def walk_layers(model):
    """Yields the layers of `model` once each, descending into nested models.

    Nested Sequential and Functional models are expanded; wrappers (such as
    `PruneWrapper`) are yielded as single layers. A model that trains another
    one (a `Distiller`) names it in `_kc_walk_target`, and only that model is
    walked, so callbacks never touch a frozen teacher.
    """
    seen = set()

    def walk(model):
        model = getattr(model, "_kc_walk_target", None) or model
        for layer in model.layers:
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            if isinstance(layer, keras.Model):
                yield from walk(layer)
            else:
                yield layer

    yield from walk(model)


def copy_layer(layer):
    """A new, unbuilt layer with the same config as `layer`."""
    return layer.__class__.from_config(layer.get_config())


def _named_inputs(model):
    """New inputs named like the model's InputLayers (Keras's clone would name
    them after the tensors, which renames the converted model's inputs)."""
    if not _is_functional(model):
        return None
    return _inputs_like(model, (model.input,))


def _is_functional(layer):
    return isinstance(layer, Functional) and not isinstance(layer, keras.Sequential)


def _inputs_like(model, args):
    """New Inputs for a nested Functional `model`, named like its own and
    shaped like the tensors `args` it is now called with (a layer before it
    may have been narrowed), in the structure of `model.input`."""
    old = keras.tree.flatten(model.input)
    given = keras.tree.flatten(args[0] if len(args) == 1 else args)
    if len(given) != len(old) or not all(isinstance(t, keras.KerasTensor) for t in given):
        given = old  # called some other way: keep its own shapes
    return keras.tree.pack_sequence_as(model.input, [
        keras.Input(batch_shape=t.shape, dtype=o.dtype, sparse=o.sparse, name=o._keras_history.operation.name)
        for o, t in zip(old, given)
    ])


def clone_model(model, transform):
    """Clones a Sequential or Functional model (nested ones too), copying weights.

    Args:
        model: a model accepted by `check_graph_model`.
        transform: called on every non-model layer with the layer (Keras
            ops in the graph, such as `x + 3.0`, are stateless and shared
            by the clone without a call). Returns
            `None` to copy the layer unchanged (config and weights), or a pair
            `(new_layer, fill)` where `new_layer` is an unbuilt layer put in its
            place and `fill(new_layer)` sets its weights once the clone is built.

    Returns:
        The new model. `model` is not modified.
    """
    pending = []
    cache = {}

    def clone_function(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer
        if _is_functional(layer):
            # Rebuilt by `call_function` at its call, on Inputs shaped like
            # the (maybe narrowed) tensors it is called with.
            return layer
        if id(layer) in cache:  # a layer shared across nested models stays shared
            return cache[id(layer)]
        if isinstance(layer, keras.Sequential):
            # A nested Sequential is rebuilt without its Input, so that it
            # takes the width its (maybe narrowed) input now has.
            new = keras.Sequential([in_sequential(l) for l in layer.layers], name=layer.name,
                                   trainable=layer.trainable)
        else:
            replaced = transform(layer)
            if replaced is None:
                new = copy_layer(layer)
                replaced = (new, lambda built, source=layer: built.set_weights(source.get_weights()))
            pending.append(replaced)
            new = replaced[0]
        cache[id(layer)] = new
        return new

    def functional_clone(layer, args):
        """A nested Functional `layer`'s clone (once), on Inputs shaped like `args`."""
        if id(layer) not in cache:
            cache[id(layer)] = keras.models.clone_model(
                layer, input_tensors=_inputs_like(layer, args), clone_function=clone_function,
                call_function=call_function,
            )
        return cache[id(layer)]

    def call_function(layer, *args, **kwargs):
        if _is_functional(layer):
            layer = functional_clone(layer, args)
        return layer(*args, **kwargs)

    def in_sequential(layer):
        # A Sequential lists its layers uncalled: a Functional among them is
        # cloned at once, with its own Input shapes.
        return functional_clone(layer, (layer.input,)) if _is_functional(layer) else clone_function(layer)

    if isinstance(model, keras.Sequential):
        clone = keras.models.clone_model(model, clone_function=in_sequential)
    else:
        clone = keras.models.clone_model(
            model, input_tensors=_named_inputs(model), clone_function=clone_function, call_function=call_function
        )
    for new, fill in pending:
        fill(new)
    return clone


def wrap_layers(to_wrap, wrap):
    """tfmot's layer forms: `wrap(layer)` for one layer (not a model), the
    list of `wrap(layer)` for a list or tuple of layers; `None` for anything
    else (a model, which the caller clones)."""
    if isinstance(to_wrap, (list, tuple)) and all(
        isinstance(x, keras.layers.Layer) and not isinstance(x, keras.Model) for x in to_wrap
    ):
        return [wrap(layer) for layer in to_wrap]
    if isinstance(to_wrap, keras.layers.Layer) and not isinstance(to_wrap, keras.Model):
        return wrap(to_wrap)
    return None


def strip_wrappers(model, wrapper_type, weights_of, api):
    """`model` with every `wrapper_type` layer replaced by a plain copy of the
    layer it wraps, whose weights are `weights_of(wrapper)` (its
    `layer.weights` with the technique's result baked in): a clone; `model`
    is not modified. A single wrapper gives back a copy of its inner layer.
    `api` names the caller in errors."""
    if isinstance(model, wrapper_type):
        layer = copy_layer(model.layer)
        if model.layer.built:
            layer.build_from_config(model.layer.get_build_config())
            layer.set_weights(weights_of(model))
        return layer
    check_graph_model(model, api, f"{api}(wrapper)")

    def transform(layer):
        if not isinstance(layer, wrapper_type):
            return None
        return copy_layer(layer.layer), lambda built, source=layer: built.set_weights(weights_of(source))

    return clone_model(model, transform)


def graph_of(model):
    """The Functional graph behind a built Sequential or Functional model."""
    if isinstance(model, keras.Sequential):
        if model._functional is None:  # Keras builds it once the input shape is known.
            raise ValueError(f"model '{model.name}' has no known input shape.")
        return model._functional
    return model


def graph_nodes(model):
    """The call nodes of `model`'s graph in execution order (inputs excluded)."""
    graph = graph_of(model)
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                yield node


def consumers_of(model):
    """Maps `id(tensor)` of every tensor in `model`'s graph to the nodes that
    read it. Model outputs count as a consumer `None`."""
    graph = graph_of(model)
    consumers = {}
    for node in graph_nodes(model):
        for tensor in node.input_tensors:
            consumers.setdefault(id(tensor), []).append(node)
    for tensor in keras.tree.flatten(graph.outputs):
        consumers.setdefault(id(tensor), []).append(None)
    return consumers


def run_graph(model, inputs, call_node):
    """Rebuilds `model`'s graph on new symbolic `inputs`, node by node.

    Args:
        model: a built Sequential or Functional model.
        inputs: new tensors, one per model input (flat list).
        call_node: `call_node(node, args, kwargs)` returns the new outputs of
            `node`, given its arguments with every tensor already replaced by
            its new counterpart. It may call a replacement layer, insert
            layers, inline a nested model or return an argument unchanged.

    Returns:
        The new outputs, in the structure of `model.outputs`.
    """
    graph = graph_of(model)
    new = {id(x): y for x, y in zip(graph.inputs, keras.tree.flatten(inputs))}
    for node in graph_nodes(model):
        args, kwargs = node.arguments.fill_in(new)
        outputs = call_node(node, args, kwargs)
        for old, value in zip(node.outputs, keras.tree.flatten(outputs)):
            new[id(old)] = value
    return keras.tree.map_structure(lambda t: new[id(t)], graph._outputs_struct)


def new_inputs_like(model):
    """Fresh `keras.Input`s with the names, shapes and dtypes of `model`'s."""
    graph = graph_of(model)
    return [
        keras.Input(
            batch_shape=t.shape,
            dtype=t.dtype,
            sparse=t.sparse,
            name=t._keras_history.operation.name,
        )
        for t in graph.inputs
    ]


# -- attention masks ----------------------------------------------------------

ATTENTION_MASK_REASON = (
    "an int8 attention mask is not exact: TFLite fills masked scores with a large "
    "negative number, which int8 clips to the low end of the scores' range, so "
    "masked positions keep attention weight"
)


def keras_mask(tensor):
    """The Keras mask attached to a tensor, or `None`.

    Keras keeps it in the private `_keras_mask` attribute (its own
    `backend.get_keras_mask` reads it) and has no public getter."""
    return getattr(tensor, "_keras_mask", None)


def attention_mask_reason(args, kwargs):
    """Why a MultiHeadAttention call with `args` and `kwargs` (a graph node's
    arguments) applies an attention mask, or `None` when it applies none."""
    if kwargs.get("attention_mask") is not None:
        return f"it is called with an attention_mask; {ATTENTION_MASK_REASON}"
    if kwargs.get("use_causal_mask"):
        return f"it is called with use_causal_mask=True; {ATTENTION_MASK_REASON}"
    names = ("query", "value", "key")
    tensors = list(args[:3]) + [kwargs.get(name) for name in names[len(args[:3]) :]]
    for name, tensor in zip(names, tensors):
        if tensor is not None and keras_mask(tensor) is not None:
            return f"its {name} carries a Keras mask (padding); {ATTENTION_MASK_REASON}"
    return None


def masked_attention(model):
    """`[(layer, reason)]` for the MultiHeadAttention calls of a Sequential or
    Functional `model` (nested models included) that apply an attention
    mask; `layer` is the graph's layer (a wrapper around the attention, if
    it is wrapped)."""
    found = []

    def visit(graph):
        for node in graph_nodes(graph):
            op = node.operation
            if isinstance(op, (keras.Sequential, Functional)):
                visit(op)
                continue
            layer = getattr(op, "layer", op)
            if isinstance(layer, keras.layers.MultiHeadAttention):
                reason = attention_mask_reason(node.arguments.args, node.arguments.kwargs)
                if reason:
                    found.append((op, reason))

    if isinstance(model, (keras.Sequential, Functional)):
        visit(model)
    return found


# Cross-technique hooks. A technique never imports another: pruning,
# quantization and distillation meet here. A technique whose training wrapper
# another technique must see through registers how to take it off.
_UNWRAPPERS = {}


def register_unwrap(wrapper_type, unwrap):
    """Declares how to take a training wrapper of `wrapper_type` off.

    Args:
        wrapper_type: a wrapper class (subclasses are covered too).
        unwrap: `unwrap(wrapper)` returns a new plain layer that computes
            what the wrapper computes in inference, built and with its
            weights set (pruning registers `strip_pruning`, which bakes the
            masks into the weights, so the pruned zeros are in the layer).
    """
    _UNWRAPPERS[wrapper_type] = unwrap


def _unwrapper(layer):
    for cls in type(layer).__mro__:
        if cls in _UNWRAPPERS:
            return _UNWRAPPERS[cls]
    return None


def is_removable_wrapper(layer):
    """Whether `layer` is a training wrapper of some technique that
    `unwrap_layer` takes off (a pruning wrapper)."""
    return _unwrapper(layer) is not None


def unwrap_layer(layer):
    """The plain layer a registered training wrapper stands for (see
    `register_unwrap`), or `layer` itself when it is no such wrapper."""
    unwrap = _unwrapper(layer)
    return layer if unwrap is None else unwrap(layer)
