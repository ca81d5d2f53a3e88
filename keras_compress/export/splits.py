"""Integer SPLITs where TFLite's quantizer left a float one.

At the first step of an unrolled LSTM or GRU the state is zero, so one gate
(the LSTM's forget gate, which multiplies the zero cell state) is never
read. Calibration records no range for a tensor nothing reads, and the
quantizer then leaves the SPLIT that makes the gates float: it dequantizes
the int8 gate pre-activations, splits them in float and quantizes each gate
back with the very same scale and zero point. Splitting moves values without
changing them, so the int8 SPLIT, reading the int8 tensor directly, computes
the same thing; this rewrites the file that way.
"""

import copy

import numpy as np

from keras_compress.export.conversion import refresh_model_hash
from tflite_bench.inspect import _indices, _op_name


def integer_splits(flatbuffer, keep=()):
    """Turns float SPLITs between a DEQUANTIZE and same-scale QUANTIZEs into int8 SPLITs.

    A SPLIT is rewritten when its data comes from a DEQUANTIZE of an int8
    tensor that nothing else reads, and each of its outputs is read only by
    QUANTIZE ops back to int8 with that tensor's scale and zero point (or by
    nothing, and is no model output). The SPLIT then reads the int8 tensor,
    its outputs become int8 with the same quantization, and the DEQUANTIZE
    and QUANTIZE ops go. The values are unchanged.

    Args:
        flatbuffer: the converted `bytes`.
        keep: names of tensors whose ops must stay as they are (the ops of
            `float_layers`).

    Returns:
        `(flatbuffer, count)`: the new `bytes` (the same object when nothing
        changed) and how many SPLITs were rewritten.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    codes = [_op_name(c) for c in model.operatorCodes or []]
    count = sum(_rewrite_graph(model, graph, codes, set(keep), schema) for graph in model.subgraphs)
    if not count:
        return flatbuffer, 0
    _order_operator_codes(model)
    _drop_unused_buffers(model)
    refresh_model_hash(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), count


def _rewrite_graph(model, graph, codes, keep, schema):
    operators = list(graph.operators or [])
    producers = {t: i for i, op in enumerate(operators) for t in _indices(op.outputs)}
    consumers = {}
    for i, op in enumerate(operators):
        for t in _indices(op.inputs):
            consumers.setdefault(t, []).append(i)
    outputs = set(_indices(graph.outputs))
    removed, renamed, count = set(), {}, 0
    for i, op in enumerate(operators):
        plan = _plan(i, operators, graph, codes, producers, consumers, outputs, keep, schema)
        if plan is None:
            continue
        dequantize, source, quantizes = plan
        inputs = _indices(op.inputs)
        inputs[1] = source
        op.inputs = _vector(inputs)
        for t in _indices(op.outputs):
            graph.tensors[t].type = schema.TensorType.INT8
            graph.tensors[t].quantization = copy.deepcopy(graph.tensors[source].quantization)
        for q in quantizes:
            renamed[_indices(operators[q].outputs)[0]] = _indices(operators[q].inputs)[0]
        removed |= {dequantize, *quantizes}
        op.opcodeIndex = _integer_split_code(model, codes, op.opcodeIndex, schema)
        count += 1
    if count:
        for op in operators:
            op.inputs = _vector(renamed.get(t, t) for t in _indices(op.inputs))
        graph.operators = [op for i, op in enumerate(operators) if i not in removed]
        _drop_unused_tensors(model, graph)
    return count


def _order_operator_codes(model):
    """Keeps the operator codes still used, in the order of their first use,
    as the converter writes them."""
    order = []
    for graph in model.subgraphs:
        for op in graph.operators or []:
            if op.opcodeIndex not in order:
                order.append(op.opcodeIndex)
    new = {old: i for i, old in enumerate(order)}
    model.operatorCodes = [model.operatorCodes[i] for i in order]
    for graph in model.subgraphs:
        for op in graph.operators or []:
            op.opcodeIndex = new[op.opcodeIndex]


def _drop_unused_buffers(model):
    """Removes the buffers of the removed tensors (the converter gives every
    tensor a buffer, empty when it holds no constant), renumbering the others."""
    used = {0}  # buffer 0 is the empty sentinel every file starts with
    used |= {t.buffer for g in model.subgraphs for t in g.tensors or []}
    used |= {m.buffer for m in model.metadata or []}
    new = {old: i for i, old in enumerate(b for b in range(len(model.buffers)) if b in used)}
    model.buffers = [b for i, b in enumerate(model.buffers) if i in used]
    for graph in model.subgraphs:
        for tensor in graph.tensors or []:
            tensor.buffer = new[tensor.buffer]
    for entry in model.metadata or []:
        entry.buffer = new[entry.buffer]


def _drop_unused_tensors(model, graph):
    """Removes the tensors the removed ops wrote, renumbering the others, so
    that the file is the one the quantizer writes when it makes the SPLIT
    int8 itself (it does so in some runs and not in others)."""
    number = model.subgraphs.index(graph)
    used = set(_indices(graph.inputs)) | set(_indices(graph.outputs))
    for op in graph.operators:
        used |= {t for t in _indices(op.inputs) + _indices(op.outputs) if t >= 0}
    for signature in model.signatureDefs or []:
        if signature.subgraphIndex == number:
            used |= {e.tensorIndex for e in signature.inputs + signature.outputs}
    new = {old: i for i, old in enumerate(t for t in range(len(graph.tensors)) if t in used)}
    renumber = lambda ts: _vector(new[t] if t >= 0 else t for t in _indices(ts))  # noqa: E731 (-1: absent input)
    graph.tensors = [t for i, t in enumerate(graph.tensors) if i in used]
    graph.inputs, graph.outputs = renumber(graph.inputs), renumber(graph.outputs)
    for op in graph.operators:
        op.inputs, op.outputs = renumber(op.inputs), renumber(op.outputs)
        if op.intermediates is not None:
            op.intermediates = renumber(op.intermediates)
    for signature in model.signatureDefs or []:
        if signature.subgraphIndex == number:
            for entry in signature.inputs + signature.outputs:
                entry.tensorIndex = new[entry.tensorIndex]


def _plan(index, operators, graph, codes, producers, consumers, outputs, keep, schema):
    """`(dequantize op, int8 source tensor, quantize ops)` when operator
    `index` is a float SPLIT that can be rewritten, else `None`."""
    op = operators[index]
    if codes[op.opcodeIndex] != "SPLIT":
        return None
    data, results = _indices(op.inputs)[1], _indices(op.outputs)
    if graph.tensors[results[0]].type != schema.TensorType.FLOAT32 or _name(graph, results[0]) in keep:
        return None
    dequantize = producers.get(data)
    if dequantize is None or codes[operators[dequantize].opcodeIndex] != "DEQUANTIZE" or consumers[data] != [index]:
        return None
    source = _indices(operators[dequantize].inputs)[0]
    if graph.tensors[source].type != schema.TensorType.INT8:
        return None
    quantizes = []
    for t in results:
        if t in outputs:
            return None
        for reader in consumers.get(t, []):
            written = _indices(operators[reader].outputs)[0]
            if codes[operators[reader].opcodeIndex] != "QUANTIZE" or not _same_quantization(
                graph.tensors[written], graph.tensors[source], schema
            ):
                return None
            quantizes.append(reader)
    return dequantize, source, quantizes


def _vector(indices):
    # As the flatbuffer reader gives them: the builder writes numpy vectors
    # and lists with different padding, and the file must not depend on it.
    return np.fromiter(indices, dtype=np.int32)


def _name(graph, tensor):
    name = graph.tensors[tensor].name
    return name.decode() if isinstance(name, bytes) else name


def _same_quantization(a, b, schema):
    if a.type != schema.TensorType.INT8 or a.quantization is None or b.quantization is None:
        return False
    return list(a.quantization.scale) == list(b.quantization.scale) and list(a.quantization.zeroPoint) == list(
        b.quantization.zeroPoint
    )


def _integer_split_code(model, codes, index, schema):
    """The operator code of an int8 SPLIT (version 2 or later), added if missing."""
    for i, code in enumerate(model.operatorCodes):
        if codes[i] == "SPLIT" and (code.version or 1) >= 2:
            return i
    code = copy.deepcopy(model.operatorCodes[index])
    code.version = 2
    model.operatorCodes.append(code)
    codes.append("SPLIT")
    return len(model.operatorCodes) - 1
