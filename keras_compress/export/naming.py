"""Which Keras layer a converted op comes from, read from its tensor name."""

import keras

# The converter joins the names of the TensorFlow ops it fused into one
# TFLite op with this separator.
FUSED_SEPARATOR = ";"


def layer_candidates(tensor_name, model):
    """The names of the Keras layers of `model` that may have produced a TFLite tensor.

    The TFLite converter names an op's output tensor after the TensorFlow
    name scopes of the ops it fused, joined by `;`, such as
    `"outer_1/backbone_1/brelu_1/Relu;outer_1/backbone_1/bconv_1/convolution"`.
    Keras opens one scope per layer call, named after the layer, inside the
    scopes of the models that contain it; TensorFlow makes scope names
    unique by appending `_N`, so a layer `"dense_1"` may appear as
    `"dense_1_2"`. Each scope path is matched from the model's own scope
    down through nested models to a layer, as `walk_layers` yields them
    (nested models are descended into; the sublayers of a layer, such as
    an LSTM's cell or a MultiHeadAttention's projections, count as the
    layer itself).

    A scope component matches a layer named like it, or like it without one
    `_N` suffix. Keras enters a layer's scope twice per call and the ops
    land in the second, suffixed one ("dense" appears as "dense_1"), so
    when both readings name a layer ("dense_1" may be layer "dense" or layer
    "dense_1") the suffix-stripped one comes first.

    Args:
        tensor_name: the tensor's name in the flatbuffer, as `OpInfo.name`
            or `TensorInfo.name` give it.
        model: the `keras.Model` that was converted.

    Returns:
        A list of layer names, most likely first: several when the op fuses
        ops of several layers (a convolution and its activation), or when a
        name is ambiguous. Empty when no layer matches: a Keras op applied
        directly in the model's graph (`"model_1/Relu"`), or a tensor the
        converter named (`"tfl.quantize"`, `"StatefulPartitionedCall_1:0"`).

    Raises:
        TypeError: `tensor_name` is not a string or `model` not a `keras.Model`.

    Example:

    ```python
    info = kc.inspect_tflite(kc.to_tflite(model, quantization="int8", representative_data=x))
    for op in info.float_compute_ops():
        print(op.type, layer_candidates(op.name, model))
    ```
    """
    if not isinstance(tensor_name, str):
        raise TypeError(f"layer_candidates: tensor_name must be a str, got {type(tensor_name).__name__}.")
    if not isinstance(model, keras.Model):
        raise TypeError(f"layer_candidates: model must be a keras.Model, got {type(model).__name__}.")
    names = []
    for path in tensor_name.split(FUSED_SEPARATOR):
        for name in resolve_scope(path, model)[0]:
            if name not in names:
                names.append(name)
    return names


def resolve_scope(path, model):
    """`(layer names, model names)` for one `/`-separated scope path.

    The layer names are `layer_candidates`' for this path. The model names
    are those of the models the path passes through, `model` first and the
    innermost nested one last; empty when the path does not start in
    `model`'s scope. An op outside any layer, such as `keras.ops.relu`
    applied in a Functional graph, has no layer names; the last model name
    is the graph it is in.
    """
    components = path.split("/")
    if len(components) < 2 or not _matches(components[0], (model.name,)):
        return [], []
    containers, found, chain = [model], [], [model.name]
    for component in components[1:]:
        nested = []
        for container in containers:
            children = {layer.name: layer for layer in container.layers}
            for name in _matches(component, children):
                if isinstance(children[name], keras.Model):
                    nested.append(children[name])
                else:
                    found.append(name)
        if found or not nested:
            break
        containers = nested
        chain.append(nested[0].name)
    return list(dict.fromkeys(found)), chain


def scope_matches(component, name):
    """Whether a name-scope component may stand for the Keras name `name`:
    it is `name`, or `name` with one `_N` suffix (see `layer_candidates`)."""
    if component == name:
        return True
    base, separator, suffix = component.rpartition("_")
    return bool(separator) and suffix.isdigit() and base == name


def _matches(component, names):
    """The names in `names` that scope `component` may stand for, the
    suffix-stripped reading first (see `layer_candidates`)."""
    base = component.rpartition("_")[0]
    return [n for n in (base, component) if n in names and scope_matches(component, n)]
