"""`inspect_tflite`: what a converted model holds, op by op and dtype by dtype.

LiteRT-only, like `tflite_bench.interpreter`; `keras_compress.export` re-exports it.
"""

import collections
import dataclasses
import functools

import numpy as np

from tflite_bench.interpreter import read_flatbuffer

# Ops that only move values between float and integer: not computation.
CONVERSION_OPS = ("QUANTIZE", "DEQUANTIZE")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor of a TFLite model.

    Attributes:
        name: the tensor's name in the flatbuffer.
        shape: its shape, `None` for a dynamic dimension (such as the batch
            of a model converted with `batch_size=None`).
        dtype: its type as a lowercase numpy-style name: `"float32"`, `"int8"`...
        scale: its quantization scale, `None` when it is not quantized (a
            tuple for per-channel quantization).
        zero_point: its quantization zero point, like `scale`.
    """

    name: str
    shape: tuple
    dtype: str
    scale: object = None
    zero_point: object = None


@dataclasses.dataclass(frozen=True)
class OpInfo:
    """One operator of a TFLite model.

    Attributes:
        index: its position in its subgraph's execution order.
        type: the builtin operator's name (`"CONV_2D"`, `"FULLY_CONNECTED"`...),
            or a custom op's custom code.
        input_dtypes: the dtypes of its inputs, in order; `None` for an
            optional input that is absent (such as a missing bias).
        output_dtypes: the dtypes of its outputs, in order.
        subgraph: the index of the subgraph it runs in: 0 for the main
            subgraph, which the interpreter invokes; others hold the bodies
            and conditions of control-flow ops (WHILE, IF).
        name: the name of its first output tensor, which the converter
            builds from the TensorFlow name scopes of the ops it fused
            (`"model_1/conv_1/Relu;model_1/conv_1/convolution"`);
            `layer_candidates` maps it back to Keras layers.
    """

    index: int
    type: str
    input_dtypes: tuple
    output_dtypes: tuple
    subgraph: int = 0
    name: str = ""

    @property
    def dtype(self):
        """The dtype of the first output: what the op computes in."""
        return self.output_dtypes[0] if self.output_dtypes else None


@dataclasses.dataclass(frozen=True)
class TFLiteInfo:
    """The contents of a TFLite flatbuffer, as `inspect_tflite` reads them.

    Attributes:
        size_bytes: the size of the flatbuffer.
        tensor_count: how many tensors the main subgraph has (constants
            included), as `Interpreter.get_tensor_details()` lists them.
        ops: the operators (`OpInfo`) of every subgraph: the main
            subgraph's in execution order first, then those of each
            control-flow body or condition (`op.subgraph` tells which).
        inputs: the model's input tensors (`TensorInfo`), in the main
            subgraph's order (the Keras model's order for files written by
            `to_tflite`).
        outputs: the model's output tensors (`TensorInfo`), likewise.
        subgraph_count: how many subgraphs the file has; more than one when
            control-flow ops (an LSTM's WHILE loop) keep their bodies in
            subgraphs of their own.
        constant_bytes: `{dtype: bytes}` of the constant tensors (weights,
            biases, shapes) of all subgraphs as stored in the file's
            buffers, each buffer counted once.
        sparse_tensors: the names of the tensors stored in TFLite's sparse
            format (with sparsity parameters), such as pruned weights
            converted with `sparse=True`.
        subgraph_names: the name of each subgraph, main first (`"main"`,
            `"lstm_1/while_body"`...).
    """

    size_bytes: int
    tensor_count: int
    ops: tuple
    inputs: tuple
    outputs: tuple
    subgraph_count: int
    constant_bytes: dict = dataclasses.field(default_factory=dict)
    sparse_tensors: tuple = ()
    subgraph_names: tuple = ()

    def op_counts(self):
        """How many ops of each type and dtype the model has.

        Returns:
            A dict `{(type, dtype): count}`, where an op's dtype is the dtype
            of its first output.
        """
        return dict(collections.Counter((op.type, op.dtype) for op in self.ops))

    def float_compute_ops(self):
        """The ops that compute in floating point, in every subgraph.

        QUANTIZE and DEQUANTIZE ops, which convert at the model's float inputs
        and outputs, are not counted. An empty list means every compute op
        runs on integers, as in a fully int8 model. Ops inside control-flow
        bodies count too: an LSTM traced to a WHILE loop whose body stayed
        float shows here.

        Returns:
            A list of `OpInfo` whose first output is float16, bfloat16,
            float32 or float64.

        Example:

        ```python
        info = kc.inspect_tflite(kc.to_tflite(model, quantization="int8", representative_data=x))
        assert not info.float_compute_ops()
        ```
        """
        return [op for op in self.ops if op.type not in CONVERSION_OPS and op.dtype in FLOAT_DTYPES]

    def summary(self):
        """A readable table: size, inputs and outputs, then the ops of each
        subgraph in order, with the name of the tensor each op writes."""
        lines = [
            f"TFLite model: {self.size_bytes:,} bytes, {self.tensor_count} tensors, "
            f"{len(self.ops)} ops"
            + (f", {self.subgraph_count} subgraphs" if self.subgraph_count > 1 else "")
        ]
        if self.constant_bytes:
            lines.append("Constants: " + ", ".join(f"{n:,} bytes {d}" for d, n in self.constant_bytes.items())
                         + (f"; {len(self.sparse_tensors)} sparse" if self.sparse_tensors else ""))
        for title, tensors in (("Inputs", self.inputs), ("Outputs", self.outputs)):
            lines.append(f"{title}:")
            for t in tensors:
                quantized = "" if t.scale is None else f"  scale={t.scale} zero_point={t.zero_point}"
                lines.append(f"  {t.name}  {_shape_text(t.shape)}  {t.dtype}{quantized}")
        header = ("#", "op", "inputs", "outputs", "tensor")
        rows = [
            (op.subgraph, (str(op.index), op.type, _dtypes_text(op.input_dtypes),
                           _dtypes_text(op.output_dtypes), _shorten(op.name)))
            for op in self.ops
        ]
        widths = [max(len(r[i]) for r in [header] + [r for _, r in rows]) for i in range(4)]

        def line(row):
            return "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[4]

        lines.append(line(header))
        shown = 0
        for subgraph, row in rows:
            if subgraph != shown:
                shown = subgraph
                name = self.subgraph_names[subgraph] if subgraph < len(self.subgraph_names) else ""
                lines.append(f"Subgraph {subgraph} {name!r}:")
            lines.append(line(row))
        return "\n".join(lines)

    def __str__(self):
        return self.summary()


def inspect_tflite(tflite):
    """Reads the ops and tensors of a TFLite flatbuffer.

    To check what a conversion produced: which ops run in which dtype, and
    how the inputs and outputs are quantized.

    Args:
        tflite: the flatbuffer `bytes`, or a path to a `.tflite` file.

    Returns:
        A `TFLiteInfo`; `print` it for a table.

    Raises:
        ValueError: the file is missing, or is not a readable TFLite flatbuffer.
        TypeError: `tflite` is neither bytes nor a path.

    Example:

    ```python
    info = kc.inspect_tflite("model.tflite")
    print(info)
    info.op_counts()  # {("CONV_2D", "int8"): 2, ("FULLY_CONNECTED", "int8"): 2, ...}
    ```
    """
    from ai_edge_litert.tools import flatbuffer_utils

    content = read_flatbuffer(tflite)
    try:
        model = flatbuffer_utils.read_model_from_bytearray(content)
        graph = model.subgraphs[0]
    except Exception as error:  # a damaged flatbuffer fails anywhere in the generated reader
        raise ValueError(f"Cannot read the TFLite flatbuffer: {error!r}.") from error
    op_names = [_op_name(code) for code in model.operatorCodes or []]
    ops = tuple(
        op for number, subgraph in enumerate(model.subgraphs) for op in _ops(subgraph, number, op_names)
    )
    return TFLiteInfo(
        size_bytes=len(content),
        tensor_count=len(graph.tensors or []),
        ops=ops,
        inputs=tuple(_tensor_info(graph.tensors[i]) for i in _indices(graph.inputs)),
        outputs=tuple(_tensor_info(graph.tensors[i]) for i in _indices(graph.outputs)),
        subgraph_count=len(model.subgraphs),
        constant_bytes=_constant_bytes(model),
        sparse_tensors=tuple(
            t.name.decode() for g in model.subgraphs for t in g.tensors or [] if t.sparsity is not None
        ),
        subgraph_names=tuple(_text(g.name) for g in model.subgraphs),
    )


def _ops(graph, number, op_names):
    """The `OpInfo`s of one subgraph, in execution order."""

    def dtypes(indices):
        return tuple(None if i < 0 else _dtype_name(graph.tensors[i].type) for i in indices)

    for i, op in enumerate(graph.operators or []):
        outputs = _indices(op.outputs)
        yield OpInfo(
            index=i,
            type=op_names[op.opcodeIndex],
            input_dtypes=dtypes(_indices(op.inputs)),
            output_dtypes=dtypes(outputs),
            subgraph=number,
            name=_text(graph.tensors[outputs[0]].name) if outputs else "",
        )


def _constant_bytes(model):
    """`{dtype: bytes}` of the tensors whose data the file stores; a buffer
    that several tensors share (the converter deduplicates them) counts once."""
    totals = collections.Counter()
    seen = set()
    for graph in model.subgraphs:
        for tensor in graph.tensors or []:
            if not tensor.buffer or tensor.buffer in seen or not model.buffers:
                continue
            seen.add(tensor.buffer)
            buffer = model.buffers[tensor.buffer]
            # Models over 2 GB keep their data after the flatbuffer (offset, size).
            size = len(buffer.data) if buffer.data is not None else int(buffer.size or 0)
            if size:
                totals[_dtype_name(tensor.type)] += size
    return dict(totals)


def _text(name):
    return name.decode() if isinstance(name, bytes) else (name or "")


def _shorten(name, limit=80):
    return name if len(name) <= limit else name[: limit - 3] + "..."


def _indices(vector):
    # Older LiteRT readers leave int vectors as numpy arrays, not lists.
    return [] if vector is None else [int(i) for i in vector]


@functools.cache
def _schema_names():
    """`{code: name}` for LiteRT's builtin operators and tensor types."""
    from ai_edge_litert import schema_py_generated as schema

    def names(enum):
        return {value: name for name, value in vars(enum).items() if not name.startswith("_")}

    return names(schema.BuiltinOperator), names(schema.TensorType)


def _op_name(code):
    from ai_edge_litert.tools import flatbuffer_utils

    builtin = flatbuffer_utils.get_builtin_code_from_operator_code(code)
    name = _schema_names()[0].get(builtin, f"BUILTIN_{builtin}")
    # A custom op is known by its custom code ("FlexConv2D", "TFLite_Detection_PostProcess").
    return code.customCode.decode() if name == "CUSTOM" and code.customCode else name


def _dtype_name(tensor_type):
    return _schema_names()[1].get(tensor_type, f"TYPE_{tensor_type}").lower()


def _tensor_info(tensor):
    shape = tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape
    quantization = tensor.quantization
    scale = zero_point = None
    if quantization is not None and quantization.scale is not None and len(quantization.scale):
        scale = _scalar_or_tuple(quantization.scale)
        zero_point = _scalar_or_tuple(quantization.zeroPoint)
    return TensorInfo(
        name=_text(tensor.name),
        shape=tuple(None if d < 0 else d for d in _indices(shape)),
        dtype=_dtype_name(tensor.type),
        scale=scale,
        zero_point=zero_point,
    )


def _scalar_or_tuple(values):
    values = np.asarray(values).tolist()
    return values[0] if len(values) == 1 else tuple(values)


def _shape_text(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _dtypes_text(dtypes):
    return ", ".join("-" if d is None else d for d in dtypes)
