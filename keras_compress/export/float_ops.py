"""Which ops an integer conversion left float, which Keras layers they come
from, and why: what `to_tflite` warns about (or, with `strict=True`, refuses)."""

import collections
import dataclasses

import keras

from keras_compress._models import walk_layers
from tflite_bench.inspect import CONVERSION_OPS, FLOAT_DTYPES, _dtype_name, _indices, _op_name
from keras_compress.export.naming import FUSED_SEPARATOR, layer_candidates, resolve_scope
from keras_compress.export.rewrites import MAX_UNROLL_STEPS, wrapped_recurrent

# Op types TFLite's quantizer leaves float for want of an integer kernel
# (each seen left float by an int8 conversion on TensorFlow 2.21).
NO_INTEGER_KERNEL = ("COS", "CUMSUM", "ELU", "FLOOR", "NEG", "POW", "ROUND", "SIGN", "SIN", "SQUARE")
_CONSTANTS_ONLY = (
    "it computes on constants only (such as a GRU's first step from a zero state), "
    "which the quantizer leaves float"
)
_UNUSED_OUTPUT = (
    "one of its outputs is never read (such as a gate of a recurrent layer's first step, "
    "which acts on a zero state), so calibration gave that output no range"
)
# Ops whose subgraph indices name the bodies of control flow.
_CONTROL_FLOW_FIELDS = {
    "WHILE": ("condSubgraphIndex", "bodySubgraphIndex"),
    "IF": ("thenSubgraphIndex", "elseSubgraphIndex"),
    "CALL_ONCE": ("initSubgraphIndex",),
}


class FloatOpsWarning(UserWarning):
    """Ops of an integer `.tflite` file stayed float: the warning names the
    op types, how many, the Keras layers they come from and why."""


@dataclasses.dataclass
class FloatOpGroup:
    """Float ops of one origin, left float for one reason.

    Attributes:
        origin: where they come from, such as `"layer 'ffn_norm' (LayerNormalization)"`.
        layers: the candidate layer names (empty for ops outside any layer).
        reason: why they stayed float.
        types: a `Counter` of their op types.
    """

    origin: str
    layers: tuple
    reason: str
    types: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def describe(self):
        kinds = ", ".join(f"{n} {t}" for t, n in sorted(self.types.items()))
        return f"{self.origin}: {kinds}; {self.reason}"


def op_layers(flatbuffer_model, model, output_layers=None):
    """The candidate Keras layers of every op of a converted file.

    Names come from `layer_candidates` on the op's first output tensor. The
    converter names a model output's producer after the SavedModel signature
    (`StatefulPartitionedCall_1:0`), so an op with no name match that writes
    an output (through QUANTIZE or DEQUANTIZE ops only) gets that output's
    layer from `output_layers`.

    Args:
        flatbuffer_model: the file as `flatbuffer_utils` reads it (`ModelT`).
        model: the converted `keras.Model`.
        output_layers: the layer making each of the main subgraph's outputs,
            in its order, or `None`.

    Returns:
        `{(subgraph, op index): [layer names]}`.
    """
    found = {}
    for number, graph in enumerate(flatbuffer_model.subgraphs):
        for i, op in enumerate(graph.operators or []):
            found[(number, i)] = layer_candidates(_output_name(graph, op), model) if _outputs(op) else []
    graph = flatbuffer_model.subgraphs[0]
    producers = {t: i for i, op in enumerate(graph.operators or []) for t in _outputs(op)}
    codes = [_op_name(c) for c in flatbuffer_model.operatorCodes or []]
    for tensor, layer in zip(_indices(graph.outputs), output_layers or []):
        # Walk back from the output through the conversion ops to its producer.
        while layer is not None and tensor in producers:
            op_index = producers[tensor]
            op = graph.operators[op_index]
            if not found[(0, op_index)]:
                found[(0, op_index)] = [layer]
            if codes[op.opcodeIndex] not in CONVERSION_OPS:
                break
            tensor = _indices(op.inputs)[0]
    return found


def float_op_groups(flatbuffer, model, *, output_layers=None, keep_float=(), uncalibrated_qat=False):
    """The float compute ops of a converted integer file, grouped by origin and reason.

    Args:
        flatbuffer: the converted `bytes`.
        model: the converted `keras.Model`.
        output_layers: as in `op_layers`.
        keep_float: layer (or nested model) names whose ops the user asked
            to keep float; their ops are not reported.
        uncalibrated_qat: the file comes from a quantization-aware model
            converted without representative data, so only fake-quantized
            ops have ranges.

    Returns:
        A list of `FloatOpGroup`, in the order their first op runs.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    content = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    codes = [_op_name(c) for c in content.operatorCodes or []]
    layers = op_layers(content, model, output_layers)
    by_name = {layer.name: layer for layer in walk_layers(model)}
    owners = _control_flow_owners(content, codes)
    groups = {}
    for number, graph in enumerate(content.subgraphs):
        producers = {t: o for o in graph.operators or [] for t in _outputs(o)}
        read = {t for o in graph.operators or [] for t in _indices(o.inputs)} | set(_indices(graph.outputs))
        for i, op in enumerate(graph.operators or []):
            op_type = codes[op.opcodeIndex]
            outputs = _outputs(op)
            if op_type in CONVERSION_OPS or not outputs or _dtype(graph, outputs[0]) not in FLOAT_DTYPES:
                continue
            name = _output_name(graph, op)
            if keep_float and in_layers(name, layers[(number, i)], model, keep_float):
                continue
            candidates = layers[(number, i)]
            origin = _origin(name, candidates, by_name, model)
            reason = _reason(op_type, number, owners, candidates, by_name, uncalibrated_qat)
            if reason is None and _on_constants_only(graph, op, content, producers, codes):
                reason = _CONSTANTS_ONLY
            if reason is None and len(outputs) > 1 and not set(outputs) <= read:
                reason = _UNUSED_OUTPUT
            reason = reason or "TFLite's quantizer left it float"
            group = groups.setdefault((origin, reason), FloatOpGroup(origin, tuple(candidates), reason))
            group.types[op_type] += 1
    return list(groups.values())


def float_ops_message(groups, model_name, quantization, strict=False):
    """The warning (or, with `strict`, error) text for `groups`."""
    count = sum(sum(g.types.values()) for g in groups)
    lines = [
        f"to_tflite: {count} op(s) of model '{model_name}' stay float in the "
        f"quantization={quantization!r} file:"
    ]
    lines += [f"  - {g.describe()}." for g in groups]
    lines.append(
        "They run in float between DEQUANTIZE and QUANTIZE ops, slower, and integer-only "
        "accelerators cannot run them. Pass float_layers=[...] to keep layers float on "
        "purpose (they are then not reported), or "
        + ("strict=False to convert anyway." if strict else "strict=True to make this an error.")
    )
    return "\n".join(lines)


def in_layers(name, candidates, model, names):
    """Whether the op writing tensor `name`, of candidate layers `candidates`
    (see `op_layers`), belongs to one of the layers or nested models `names`.

    Where the name resolves to layers, each fused path counts with its most
    likely layer only: scope `dense_1` is layer `dense` (Keras's second
    entry into its scope) rather than layer `dense_1`, whose ops are under
    `dense_1_2`; matching every reading kept both layers float for
    `float_layers=["dense_1"]`."""
    names = set(names)
    resolved = [resolve_scope(path, model) for path in name.split(FUSED_SEPARATOR)]
    likely = {layers[0] for layers, _ in resolved if layers}
    if (likely or set(candidates)) & names:
        return True
    return any(set(chain[1:]) & names for _, chain in resolved)


def _origin(name, candidates, by_name, model):
    if candidates:
        return ", ".join(_describe_layer(by_name[n]) if n in by_name else f"'{n}'" for n in candidates)
    for path in name.split(FUSED_SEPARATOR):
        chain = resolve_scope(path, model)[1]
        if chain:
            # The op's own name, without the uniquifying suffix of a repeated op.
            op_name = path.rsplit("/", 1)[-1].rstrip("0123456789").rstrip("_") or path
            return f"a Keras op applied in model '{chain[-1]}' ('{op_name}')"
    return f"tensor '{name}' (no Keras layer matches its name)"


def _describe_layer(layer):
    """`layer 'name' (Type)`, with the layer a wrapper wraps."""
    kind = type(layer).__name__
    inner = getattr(layer, "layer", None)
    if isinstance(layer, keras.layers.Wrapper) and isinstance(inner, keras.layers.Layer):
        kind += f" of {type(inner).__name__} '{inner.name}'"
    return f"layer '{layer.name}' ({kind})"


def _reason(op_type, subgraph, owners, candidates, by_name, uncalibrated_qat):
    """Why an op stayed float, when its type or place says; else `None`."""
    if subgraph in owners:
        reason = (
            f"inside the body of a {owners[subgraph]} op (control flow), which TFLite's "
            "quantizer does not quantize"
        )
        if any(wrapped_recurrent(by_name.get(n)) for n in candidates):
            reason += (
                "; to_tflite exports a recurrent layer unrolled, in int8, when it is in a "
                f"Sequential or Functional model and has a fixed number of time steps (at most "
                f"{MAX_UNROLL_STEPS})"
            )
        return reason
    if op_type in NO_INTEGER_KERNEL:
        return f"TFLite has no integer kernel for {op_type}"
    if uncalibrated_qat and not any(
        getattr(by_name.get(n), "_kc_quantization_aware", False) is True for n in candidates
    ):
        return (
            "no quantization-aware layer gives it an int8 range, and no representative_data "
            "calibrated it (pass representative_data to calibrate the ops that quantization-aware "
            "training does not cover)"
        )
    return None


def _on_constants_only(graph, op, content, producers, codes):
    """Whether every float input of `op` is a constant, or a constant dequantized."""

    def constant(tensor):
        buffer = graph.tensors[tensor].buffer
        if buffer and content.buffers[buffer].data is not None:
            return True
        producer = producers.get(tensor)
        return (
            producer is not None
            and codes[producer.opcodeIndex] == "DEQUANTIZE"
            and constant(_indices(producer.inputs)[0])
        )

    inputs = [t for t in _indices(op.inputs) if t >= 0 and _dtype(graph, t) in FLOAT_DTYPES]
    return bool(inputs) and all(constant(t) for t in inputs)


def _control_flow_owners(content, codes):
    """`{subgraph index: op type}` for the subgraphs that are control-flow bodies."""
    owners = {}
    for graph in content.subgraphs:
        for op in graph.operators or []:
            for field in _CONTROL_FLOW_FIELDS.get(codes[op.opcodeIndex], ()):
                index = getattr(op.builtinOptions, field, None)
                if index is not None:
                    owners[index] = codes[op.opcodeIndex]
    return owners


def _outputs(op):
    return [t for t in _indices(op.outputs) if t >= 0]


def _output_name(graph, op):
    name = graph.tensors[_outputs(op)[0]].name
    return name.decode() if isinstance(name, bytes) else (name or "")


def _dtype(graph, tensor):
    return _dtype_name(graph.tensors[tensor].type)
