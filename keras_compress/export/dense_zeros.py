"""Pruned weights the `.tflite` stores dense: zeros that do not shrink the file.

TFLite's sparse weight encoding (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`)
covers the constant weights of FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D
and TRANSPOSE_CONV ops (checked on TensorFlow 2.21: each gets a DENSIFY op
or a sparse tensor). Any other op keeps its constants dense, an Embedding's
GATHER table above all: pruning it leaves the file as large as before (gzip
still compresses the zeros). `to_tflite` warns about such weights by layer.
"""

import dataclasses

import numpy as np

from tflite_bench.inspect import _dtype_name, _indices, _op_name
from keras_compress.export.naming import layer_candidates

# Ops whose constant weights the converter can store in TFLite's sparse format.
SPARSE_ENCODED_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "DENSIFY")
# Below this many values a tensor's zeros are not worth a word.
MIN_VALUES = 256


class DenseZerosWarning(UserWarning):
    """Pruned weights are stored dense in a `.tflite` file, so they do not
    make it smaller: the warning names the layers and the ops that read them."""


@dataclasses.dataclass(frozen=True)
class DenseZeros:
    """One constant tensor of a file that is mostly zeros but stored dense."""

    layers: tuple
    op_type: str
    values: int
    zeros: int


def dense_zero_tensors(flatbuffer, model, min_sparsity):
    """The constant tensors of rank >= 2, at least `min_sparsity` zeros, that
    an op outside `SPARSE_ENCODED_OPS` reads: weights pruning cannot shrink.

    Args:
        flatbuffer: the converted file's bytes.
        model: the converted `keras.Model`, to name the layers.
        min_sparsity: the fraction of zeros that marks a pruned tensor.

    Returns:
        A list of `DenseZeros`.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    content = flatbuffer_utils.read_model_from_bytearray(flatbuffer)
    found, seen = [], set()
    for graph in content.subgraphs:
        for op in graph.operators or []:
            op_type = _op_name(content.operatorCodes[op.opcodeIndex])
            if op_type in SPARSE_ENCODED_OPS:
                continue
            for index in _indices(op.inputs):
                tensor = graph.tensors[index] if index >= 0 else None
                if tensor is None or (id(graph), index) in seen or tensor.sparsity is not None:
                    continue
                values = _constant(content, tensor)
                if values is None or values.ndim < 2 or values.size < MIN_VALUES:
                    continue
                zeros = int(np.count_nonzero(values == _zero_point(tensor)))
                if zeros >= min_sparsity * values.size:
                    seen.add((id(graph), index))
                    name = tensor.name.decode() if tensor.name else ""
                    found.append(DenseZeros(tuple(layer_candidates(name, model)), op_type, values.size, zeros))
    return found


def dense_zeros_message(found, model_name):
    parts = []
    for item in found:
        where = ", ".join(f"'{n}'" for n in item.layers) if item.layers else "a weight"
        parts.append(
            f"{where}: {item.zeros / item.values:.0%} of {item.values:,} values, read by {item.op_type}"
        )
    return (
        f"to_tflite: pruned weights of model '{model_name}' are stored dense in the .tflite, "
        f"so their zeros do not make the file smaller ({'; '.join(parts)}). TFLite's sparse "
        f"encoding covers only the weights of {', '.join(SPARSE_ENCODED_OPS[:-1])} ops; "
        "a gzip of the file still compresses the zeros."
    )


def _constant(content, tensor):
    """The values a tensor's buffer holds, or `None` for a computed tensor."""
    if not tensor.buffer or not content.buffers:
        return None
    data = content.buffers[tensor.buffer].data
    if data is None or not len(data):
        return None
    try:
        dtype = np.dtype(_dtype_name(tensor.type))
    except TypeError:  # strings, resources: not weights
        return None
    if dtype.kind not in "iuf":
        return None
    values = np.frombuffer(bytes(np.asarray(data, dtype=np.uint8)), dtype=dtype)
    shape = _indices(tensor.shape)
    return values.reshape(shape) if int(np.prod(shape)) == values.size else None


def _zero_point(tensor):
    """The stored value that means 0: the zero point of a per-tensor
    quantized tensor (0 otherwise, and for per-channel symmetric weights)."""
    quantization = tensor.quantization
    if quantization is None or quantization.zeroPoint is None or len(quantization.zeroPoint) != 1:
        return 0
    return int(quantization.zeroPoint[0])
