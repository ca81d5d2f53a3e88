"""The inputs and outputs of a converted model: what the Keras model takes
and returns, and the post-processing that gives the `.tflite` file the same
order and names."""

import collections

import keras

ModelInput = collections.namedtuple("ModelInput", ["name", "shape", "dtype"])
ModelInput.__doc__ = """One input of the model being converted: its name, its
shape without the batch axis, and its dtype name."""

INPUT_SIGNATURE_FORMS = (
    "a keras.InputSpec, a tf.TensorSpec or a (shape, dtype) pair, batch axis first, "
    "or a list (one per input) or dict (by input name) of them"
)


def model_inputs(model, input_signature=None):
    """The inputs to trace `model` with, and how to call it on them.

    Taken from `input_signature` when given; else from `model.inputs`
    (Sequential and Functional models); else, for a subclassed model that
    was built by calling it on data, from its build config's input shapes,
    as float32.

    Args:
        model: a `keras.Model`.
        input_signature: `None`, or what `to_tflite` documents.

    Returns:
        `(inputs, pack)`: a list of `ModelInput` and a function that packs
        one tensor per input into what `model` is called on.

    Raises:
        ValueError: the inputs are unknown, or `input_signature` does not
            fit the model's inputs.
        TypeError: `input_signature` has the wrong type.
    """
    if not model.built:
        raise ValueError(
            f"to_tflite needs a built model with known inputs; model '{model.name}' is not "
            "built: its weights do not exist yet. Call it on a batch of data first (model(x)) "
            "or train it; or give a Sequential model a keras.Input as its first layer."
        )
    known = getattr(model, "inputs", None)
    if input_signature is not None:
        inputs, structure = _signature_inputs(input_signature)
        if known:
            _check_signature_fits(model, known, inputs)
            inputs = [i._replace(name=_input_name(t)) for i, t in zip(inputs, known)]
            structure = _input_structure(model, known)
    elif known:
        inputs = [ModelInput(_input_name(t), tuple(t.shape[1:]), str(t.dtype)) for t in known]
        structure = _input_structure(model, known)
    else:
        inputs, structure = _build_config_inputs(model)
    return inputs, lambda tensors: keras.tree.pack_sequence_as(structure, list(tensors))


def _input_structure(model, known):
    """What a Sequential or Functional model is called on: a Functional
    model's `input` (a tensor, a list or a dict), else its one tensor."""
    try:
        return model.input
    except AttributeError:  # a Sequential model that was never called
        return known[0] if len(known) == 1 else list(known)


def _build_config_inputs(model):
    """The inputs of a subclassed model built by a call, from its build config."""
    shapes = (model.get_build_config() or {}).get("input_shape")
    if shapes is None:
        raise ValueError(
            f"to_tflite needs a built model with known inputs; model '{model.name}' was built "
            "without input shapes (build() was called with none), so its inputs are unknown. "
            "Pass input_signature=[keras.InputSpec(shape=(None, ...), dtype=...)], or call the "
            "model on a batch of data (model(x)) before converting it."
        )
    # The structures hold each input's name where the model takes a tensor.
    if _is_shape(shapes):
        return [ModelInput("input_0", tuple(shapes[1:]), "float32")], "input_0"
    if isinstance(shapes, dict):
        names = sorted(shapes)
        return [ModelInput(n, tuple(shapes[n][1:]), "float32") for n in names], {n: n for n in names}
    return [ModelInput(f"input_{i}", tuple(s[1:]), "float32") for i, s in enumerate(shapes)], [
        f"input_{i}" for i in range(len(shapes))
    ]


def _is_shape(value):
    return isinstance(value, (list, tuple)) and all(d is None or isinstance(d, int) for d in value)


def _signature_inputs(signature):
    """`(inputs, structure)` from an `input_signature` argument."""
    if isinstance(signature, dict):
        names = sorted(signature)
        return [_spec_input(signature[n], n, n) for n in names], {n: n for n in names}
    if isinstance(signature, (list, tuple)) and not _is_spec_pair(signature):
        if not signature:
            raise ValueError(f"to_tflite: input_signature is empty; it must be {INPUT_SIGNATURE_FORMS}.")
        inputs = [_spec_input(s, f"input_signature[{i}]", f"input_{i}") for i, s in enumerate(signature)]
        # One spec in a list calls the model on a single tensor.
        return inputs, inputs[0].name if len(inputs) == 1 else [i.name for i in inputs]
    spec = _spec_input(signature, "input_signature", "input_0")
    return [spec], spec.name


def _is_spec_pair(value):
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and _is_shape(value[0])
        and not isinstance(value[1], (list, tuple))
    )


def _spec_input(spec, where, default_name):
    """A `ModelInput` from one spec of `input_signature`."""
    if _is_spec_pair(spec):
        shape, dtype, name = spec[0], spec[1], None
    elif hasattr(spec, "shape") and hasattr(spec, "dtype") and not hasattr(spec, "__array__"):
        # keras.InputSpec and tf.TensorSpec both have these.
        shape, dtype, name = spec.shape, spec.dtype, getattr(spec, "name", None)
    else:
        raise TypeError(
            f"to_tflite: {where} must be {INPUT_SIGNATURE_FORMS}; got {type(spec).__name__}: {spec!r}."
        )
    shape = None if shape is None else tuple(getattr(shape, "as_list", lambda: shape)())
    if not shape or not _is_shape(shape):
        raise ValueError(
            f"to_tflite: {where} needs a full shape with the batch axis first, such as "
            f"(None, 28, 28, 1); got shape {shape}."
        )
    try:
        dtype = keras.backend.standardize_dtype(getattr(dtype, "name", dtype))
    except ValueError as error:
        raise ValueError(f"to_tflite: {where} has an unknown dtype {dtype!r}.") from error
    return ModelInput(name or default_name, tuple(shape[1:]), dtype)


def _check_signature_fits(model, known, inputs):
    if len(inputs) != len(known):
        raise ValueError(
            f"to_tflite: input_signature describes {len(inputs)} input(s), but model "
            f"'{model.name}' has {len(known)}: {[_input_name(t) for t in known]}."
        )
    for spec, tensor in zip(inputs, known):
        expected = tuple(tensor.shape[1:])
        if len(spec.shape) != len(expected) or any(
            e is not None and s != e for s, e in zip(spec.shape, expected)
        ):
            raise ValueError(
                f"to_tflite: input_signature gives shape (batch, {_dims(spec.shape)}) for input "
                f"'{_input_name(tensor)}' of model '{model.name}', which expects (batch, {_dims(expected)})."
            )


def _dims(shape):
    return ", ".join(map(str, shape))


def _input_name(tensor):
    # The InputLayer's name is the one the user chose or sees in summary();
    # an unnamed Sequential input tensor is just "keras_tensor".
    history = getattr(tensor, "_keras_history", None)
    return history.operation.name if history is not None else tensor.name


def output_names(model, outputs):
    """The names of a model's outputs, in the order of `keras.tree.flatten(outputs)`.

    The keys of a dict of outputs; else the names of the layers that make
    the outputs of a Sequential or Functional model (`model.output_names`);
    else `"output_0"`, `"output_1"`... A name that repeats gets a `_1`,
    `_2`... suffix, so that each is unique.

    Args:
        model: the model.
        outputs: what calling the model returned.

    Returns:
        A list of strings, one per output.
    """
    flat = keras.tree.flatten(outputs)
    if isinstance(outputs, dict) and all(not isinstance(v, (dict, list, tuple)) for v in outputs.values()):
        names = [str(k) for k in sorted(outputs)]
    else:
        names = output_layers(model)
        if names is None or len(names) != len(flat) or None in names:
            names = [f"output_{i}" for i in range(len(flat))]
    unique = []
    for name in names:
        candidate, n = name, 0
        while candidate in unique:
            n += 1
            candidate = f"{name}_{n}"
        unique.append(candidate)
    return unique


def output_layers(model):
    """The name of the layer (or Keras op) that makes each output of a
    Sequential or Functional model, in `model.outputs` order; `None` for a
    subclassed model."""
    try:
        tensors = model.outputs
    except (AttributeError, ValueError):
        return None
    if not tensors:
        return None
    histories = [getattr(t, "_keras_history", None) for t in tensors]
    return [h.operation.name if h is not None else None for h in histories]


def order_and_name_io(flatbuffer, input_keys, input_names, output_keys, output_names):
    """Gives a converted file the Keras model's input and output order and names.

    The converter orders the main subgraph's inputs and outputs as the
    SavedModel signature sorts its keys, and names their tensors after
    TensorFlow ops (`serving_default_x:0`, `StatefulPartitionedCall_1:1`).
    This puts the inputs and outputs in the model's order and names their
    tensors and signature keys after the Keras ones, with or without int8
    I/O, finding each by its signature key.

    Args:
        flatbuffer: the converter's `bytes`, whose only signature has the
            keys `input_keys` and `output_keys`.
        input_keys, output_keys: the signature keys, in the model's order.
        input_names, output_names: the Keras names, in the same order.

    Returns:
        The new flatbuffer `bytes`.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    (signature,) = model.signatureDefs
    graph = model.subgraphs[signature.subgraphIndex]

    def ordered(entries, keys, names):
        index = {entry.name.decode(): entry.tensorIndex for entry in entries}
        renamed = []
        for key, name in zip(keys, names):
            graph.tensors[index[key]].name = name.encode()
            entry = schema.TensorMapT()
            entry.name, entry.tensorIndex = name.encode(), index[key]
            renamed.append(entry)
        return renamed

    signature.inputs = ordered(signature.inputs, input_keys, input_names)
    signature.outputs = ordered(signature.outputs, output_keys, output_names)
    graph.inputs = [entry.tensorIndex for entry in signature.inputs]
    graph.outputs = [entry.tensorIndex for entry in signature.outputs]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
