"""`profile_ops`: where a `.tflite` model's invoke time goes, op by op.

LiteRT's Python wheel (`ai-edge-litert` 2.3) exposes no per-op profiler:
neither `Interpreter` nor its `_interpreter` wrapper nor `CompiledModel` has
a profiling call (the profiler lives in `libLiteRt.so`'s C API only, and
`experimental_force_delegate_node_profiling` has no effect without a
profiler attached). So this module *estimates* the time of each op and
checks the estimate against the whole model:

1. Each op of the main subgraph becomes a model of its own: its constant
   inputs (weights, biases, shapes) stay constant buffers, its other inputs
   become the model's inputs, its outputs the model's outputs.
2. The inputs of each single-op model are the values the op sees in the
   whole model (one run of the whole model with LiteRT's builtin kernels and
   all intermediate tensors kept, on seeded random inputs).
3. The whole model, a trivial model (one ADD of two single floats: the fixed
   cost of one `invoke` from Python) and every single-op model are timed in
   interleaved rounds, with the same threads and XNNPACK setting. An op's
   time in a round is its model's median invoke time minus the trivial
   model's, floored at 0; the op's time is the median over rounds.
4. The check: the sum of the op times against the whole model's median
   invoke time. A sum near the whole says the estimate accounts for the
   time; `OpProfile.ratio` and its spread over rounds say how near.

What the estimate cannot see: XNNPACK delegates each single-op model as a
graph of its own, so work it shares or skips across ops of the whole model
(a RESHAPE that becomes a no-op, a packed weight or a layout change reused
between ops, one delegate call for many ops) is counted per op here; an op
XNNPACK does not support runs in the builtin kernels in both. Caches are
warm with one op's data here, shared with all ops there. The ratio shows
how much all of that adds up to.

Models with control flow (WHILE, IF: more than one subgraph) are refused:
their bodies run a data-dependent number of times and cannot be timed op
by op this way.

LiteRT-only (numpy, `ai_edge_litert`, the standard library), like the rest
of `tflite_bench`.
"""

import copy
import dataclasses
import statistics
import warnings

import numpy as np

from tflite_bench.checks import check_bool, check_int
from tflite_bench.inspect import _indices, _op_name, _text, _dtype_name
from tflite_bench.interpreter import load_interpreter, read_flatbuffer
from tflite_bench.latency import time_invokes
from tflite_bench.record import default_name
from tflite_bench.runtime import random_input


@dataclasses.dataclass(frozen=True)
class OpTime:
    """The estimated time of one op.

    Attributes:
        index: the op's position in the main subgraph's execution order.
        type: the builtin op's name (`"CONV_2D"`), or a custom op's code.
        name: the name of its first output tensor (the converter builds it
            from the TensorFlow name scopes of the ops it fused).
        dtype: the dtype of its first output.
        ms: its estimated time per invoke, in milliseconds.
        share: `ms` as a fraction of the sum over all ops.
    """

    index: int
    type: str
    name: str
    dtype: str
    ms: float
    share: float


@dataclasses.dataclass(frozen=True)
class OpProfile:
    """Per-op times of one model, and the whole-model time they are checked against.

    Attributes:
        name: the model's name (its file name, or the name given).
        ops: the `OpTime`s, in execution order.
        whole_ms: the whole model's median invoke time (median over rounds
            of each round's median).
        overhead_ms: the trivial model's median invoke time, taken off
            every op's time (the fixed cost of one invoke).
        round_ratios: per round, the sum of that round's op times over that
            round's whole-model time.
        threads, xnnpack, rounds, runs, warmup: how it was measured;
            `xnnpack` says whether the whole model ran with XNNPACK.
    """

    name: str
    ops: tuple
    whole_ms: float
    overhead_ms: float
    round_ratios: tuple
    threads: int
    xnnpack: bool
    rounds: int
    runs: int
    warmup: int

    @property
    def op_sum_ms(self):
        """The sum of the op times (each a median over rounds)."""
        return sum(op.ms for op in self.ops)

    @property
    def ratio(self):
        """`op_sum_ms / whole_ms`: 1.0 when the op times account for the whole invoke."""
        return self.op_sum_ms / self.whole_ms if self.whole_ms > 0 else float("nan")

    def unit(self):
        """`(name, per ms)` of the unit the tables and the chart show: `("us", 1000)`
        when the whole invoke is under a millisecond, else `("ms", 1)`."""
        return ("us", 1000.0) if self.whole_ms < 1 else ("ms", 1.0)

    def validation(self):
        """One line: the sum of op times against the whole invoke, with the
        spread over rounds, and what the invoke's own fixed cost adds."""
        unit, scale = self.unit()
        low, high = min(self.round_ratios), max(self.round_ratios)
        with_overhead = (self.op_sum_ms + self.overhead_ms) / self.whole_ms if self.whole_ms > 0 else float("nan")
        return (f"sum of op times {self.op_sum_ms * scale:.2f} {unit} / whole invoke {self.whole_ms * scale:.2f} "
                f"{unit} = {self.ratio:.3f} (per round {low:.3f} to {high:.3f}, {self.rounds} rounds of "
                f"{self.runs} runs); the fixed cost of one invoke, {self.overhead_ms * scale:.2f} {unit}, is in "
                f"the whole but in no op: with it {with_overhead:.3f}")

    def _rows(self):
        _, scale = self.unit()
        return [(str(op.index), op.type, op.dtype or "-", f"{op.ms * scale:.2f}", f"{op.share:.1%}", op.name)
                for op in self.ops]

    def summary(self):
        """A fixed-width table for the terminal, then the validation line."""
        header = ("#", "op", "dtype", self.unit()[0], "share", "name")
        rows = [header] + self._rows()
        widths = [max(len(r[i]) for r in rows) for i in range(5)]

        def line(row):
            cells = [c.rjust(w) if i in (0, 3, 4) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
            return "  ".join(cells) + "  " + _shorten(row[5])

        title = (f"Per-op profile of {self.name}: {len(self.ops)} ops, {self.threads} thread"
                 f"{'s' if self.threads > 1 else ''}, XNNPACK {'on' if self.xnnpack else 'off'}")
        return "\n".join([title] + [line(r) for r in rows] + [self.validation()])

    def markdown(self):
        """A Markdown table, then the validation line."""
        lines = [f"| # | op | dtype | {self.unit()[0]} | share | name |", "|---:|---|---|---:|---:|---|"]
        lines += ["| " + " | ".join(row[:5] + (f"`{_shorten(row[5])}`",)) + " |" for row in self._rows()]
        return "\n".join(lines) + "\n\n" + self.validation() + "."

    def as_dict(self):
        """Plain Python: every field, the ops as dicts, plus `op_sum_ms` and `ratio`."""
        return {**dataclasses.asdict(self), "op_sum_ms": self.op_sum_ms, "ratio": self.ratio}

    def __str__(self):
        return self.summary()


def profile_ops(tflite, threads=1, rounds=5, runs=100, warmup=10, use_xnnpack=True, seed=0, name=None,
                progress=None):
    """Estimates the time of each op of a TFLite model and checks the sum
    against the whole model's invoke time.

    LiteRT's Python wheel has no per-op profiler, so each op is cut out into
    a single-op model (its constant inputs kept, fed the values it sees in
    the whole model) and timed in the LiteRT interpreter, interleaved with
    the whole model and a trivial model whose time (the fixed cost of one
    invoke) is taken off each op. See the module docstring for what the
    estimate cannot see: XNNPACK delegates each single-op model on its own,
    so ops it fuses, skips or shares work between in the whole model are
    counted separately here; `OpProfile.ratio` (sum of op times / whole
    invoke time) says how much that adds up to.

    Args:
        tflite: flatbuffer `bytes` or a `.tflite` path.
        threads: interpreter threads (int >= 1), for every model timed.
        rounds: interleaved rounds (int >= 1); each round times every
            model once, so drift on a shared machine hits all of them.
        runs: timed invokes per model per round (int >= 1).
        warmup: untimed invokes per model per round first (int >= 0).
        use_xnnpack: apply LiteRT's default XNNPACK delegate to every model
            (the default), or run the builtin kernels only.
        seed: seed of the random inputs of the whole model.
        name: the model's name in reports (default: the file name, or "model").
        progress: a `tflite_bench.progress.Progress`-like object, or `True`
            for one on stdout, or `None`/`False` for none: one step per round.

    Returns:
        An `OpProfile`; `print` it for a table, `.markdown()` for report.md,
        `tflite_bench.report.plot_op_profile` for a bar chart.

    Raises:
        ValueError: not a TFLite flatbuffer; a model with control flow
            (several subgraphs) or no ops; threads, rounds, runs or warmup
            out of range.
        TypeError: an argument of the wrong type.

    Example:

    ```python
    profile = tflite_bench.profile_ops("model.tflite", threads=1)
    print(profile)          # time and share per op, then sum / whole invoke
    profile.ratio           # about 1.0 when the estimate accounts for the invoke
    ```
    """
    api = "profile_ops"
    for argument, value, minimum in (("threads", threads, 1), ("rounds", rounds, 1), ("runs", runs, 1),
                                     ("warmup", warmup, 0)):
        check_int(api, argument, value, minimum=minimum)
    check_bool(api, "use_xnnpack", use_xnnpack)
    try:
        content = read_flatbuffer(tflite)
    except ValueError as error:
        raise ValueError(f"{api}: tflite must be a TFLite flatbuffer or a .tflite path; {error}") from None
    model = _read_model(api, content)
    graph = model.subgraphs[0]
    values = intermediate_values(content, seed)

    whole = load_interpreter(content, num_threads=threads, use_xnnpack=use_xnnpack)
    _set_inputs(whole, [values[i] for i in _indices(graph.inputs)])
    # Where XNNPACK could not prepare the whole model, its ops run in the builtin kernels: so do the single ops.
    use_xnnpack = whole.uses_xnnpack
    trivial = load_interpreter(_trivial_model(), num_threads=threads, use_xnnpack=use_xnnpack)
    singles = []
    for index, op in enumerate(graph.operators):
        interpreter = load_interpreter(single_op_model(model, index), num_threads=threads, use_xnnpack=use_xnnpack)
        _set_inputs(interpreter, [values[i] for i in _variable_inputs(model, op)])
        singles.append(interpreter)

    if progress is True:
        from tflite_bench.progress import Progress

        progress = Progress(rounds, "round")
    whole_times, overheads, op_times = [], [], []
    for r in range(rounds):
        whole_times.append(time_invokes(whole, warmup, runs)["p50_ms"])
        overheads.append(time_invokes(trivial, warmup, runs)["p50_ms"])
        op_times.append([max(0.0, time_invokes(s, warmup, runs)["p50_ms"] - overheads[-1]) for s in singles])
        if progress:
            progress.update(r + 1, f"{len(singles)} ops, whole {whole_times[-1]:.3f} ms")

    per_op = [statistics.median(times[i] for times in op_times) for i in range(len(singles))]
    total = sum(per_op)
    names = [_op_name(code) for code in model.operatorCodes]
    rows = []
    for index, (op, ms) in enumerate(zip(graph.operators, per_op)):
        outputs = _indices(op.outputs)
        rows.append(OpTime(
            index=index,
            type=names[op.opcodeIndex],
            name=_text(graph.tensors[outputs[0]].name) if outputs else "",
            dtype=_dtype_name(graph.tensors[outputs[0]].type) if outputs else None,
            ms=ms,
            share=ms / total if total > 0 else 0.0,
        ))
    return OpProfile(
        name=default_name(tflite) if name is None else name,
        ops=tuple(rows),
        whole_ms=statistics.median(whole_times),
        overhead_ms=statistics.median(overheads),
        round_ratios=tuple(sum(t) / w if w > 0 else float("nan") for t, w in zip(op_times, whole_times)),
        threads=threads,
        xnnpack=whole.uses_xnnpack,
        rounds=rounds,
        runs=runs,
        warmup=warmup,
    )


def _read_model(api, content):
    """The flatbuffer as a mutable `ModelT`, checked to be profilable op by op."""
    from ai_edge_litert.tools import flatbuffer_utils

    try:
        model = flatbuffer_utils.read_model_from_bytearray(content)
        graph = model.subgraphs[0]
    except Exception as error:  # a damaged flatbuffer fails anywhere in the generated reader
        raise ValueError(f"{api}: cannot read the TFLite flatbuffer: {error!r}.") from error
    if len(model.subgraphs) > 1:
        names = [_op_name(code) for code in model.operatorCodes]
        flow = sorted({names[op.opcodeIndex] for op in graph.operators or []} & {"WHILE", "IF", "CALL_ONCE"})
        raise ValueError(
            f"{api}: the model has {len(model.subgraphs)} subgraphs (control flow: "
            f"{', '.join(flow) or 'ops that call other subgraphs'}); per-op profiles need a model with one "
            "subgraph, since a loop body runs a data-dependent number of times. Time it whole with "
            "measure_latency."
        )
    if not graph.operators:
        raise ValueError(f"{api}: the model has no ops to profile.")
    return model


def intermediate_values(tflite, seed=0):
    """`{tensor index: value}` of every tensor of the main subgraph after
    one invoke on seeded random inputs, with LiteRT's builtin kernels
    (XNNPACK would hide the tensors inside its delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with warnings.catch_warnings():  # "intended for debugging purposes": it is what we do
        warnings.simplefilter("ignore")
        interpreter = Interpreter(
            model_content=read_flatbuffer(tflite),
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            experimental_preserve_all_tensors=True,
        )
    interpreter.allocate_tensors()
    rng = np.random.default_rng(seed)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], random_input(detail["dtype"], detail["shape"], rng))
    interpreter.invoke()
    values = {}
    for detail in interpreter.get_tensor_details():
        try:
            values[detail["index"]] = interpreter.get_tensor(detail["index"])
        except ValueError:  # a tensor with no data (an absent optional input)
            pass
    return values


def _is_constant(model, tensor):
    buffer = model.buffers[tensor.buffer] if tensor.buffer and model.buffers else None
    return buffer is not None and buffer.data is not None and len(buffer.data) > 0


def _variable_inputs(model, op):
    """The indices of the op's inputs that a single-op model takes as inputs, in order, once each."""
    tensors = model.subgraphs[0].tensors
    seen = []
    for i in _indices(op.inputs):
        if i >= 0 and i not in seen and not _is_constant(model, tensors[i]) and not tensors[i].isVariable:
            seen.append(i)
    return seen


def single_op_model(tflite, index):
    """The flatbuffer of a model holding only op `index` of the main subgraph.

    Its constant inputs are kept with their buffers (and their quantization,
    shapes and sparsity), its other inputs become the model's inputs (in the
    order the op reads them, each once), its outputs the model's outputs.
    Variable tensors (an op's state) stay variables.

    Args:
        tflite: flatbuffer `bytes`, a `.tflite` path, or a `ModelT` as
            `ai_edge_litert.tools.flatbuffer_utils` reads it.
        index: the op's position in the main subgraph (int, 0 to ops - 1).

    Returns:
        The flatbuffer `bytes`.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = tflite if isinstance(tflite, schema.ModelT) else _read_model("single_op_model", read_flatbuffer(tflite))
    graph = model.subgraphs[0]
    check_int("single_op_model", "index", index, minimum=0, maximum=len(graph.operators) - 1)
    op = graph.operators[index]
    new = {}  # old tensor index -> new one
    tensors, buffers = [], [schema.BufferT()]  # buffer 0 stays the empty buffer, as converters write it

    def take(i):
        if i < 0:
            return i
        if i not in new:
            tensor = copy.copy(graph.tensors[i])
            if _is_constant(model, tensor):
                buffers.append(model.buffers[tensor.buffer])
                tensor.buffer = len(buffers) - 1
            else:
                tensor.buffer = 0
            new[i] = len(tensors)
            tensors.append(tensor)
        return new[i]

    single = copy.copy(op)
    single.inputs = [take(i) for i in _indices(op.inputs)]
    single.outputs = [take(i) for i in _indices(op.outputs)]
    single.intermediates = [take(i) for i in _indices(op.intermediates)] or None
    single.opcodeIndex = 0
    subgraph = schema.SubGraphT()
    subgraph.tensors = tensors
    subgraph.inputs = [new[i] for i in _variable_inputs(model, op)]
    subgraph.outputs = list(single.outputs)
    subgraph.operators = [single]
    subgraph.name = graph.name
    result = schema.ModelT()
    result.version = model.version
    result.description = b"single op"
    result.operatorCodes = [model.operatorCodes[op.opcodeIndex]]
    result.subgraphs = [subgraph]
    result.buffers = buffers
    return bytes(flatbuffer_utils.convert_object_to_bytearray(result))


def _trivial_model():
    """A model of one ADD of two float32 scalars (one a constant): timing it
    gives the fixed cost of one invoke from Python, kernel dispatch included."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    def tensor(name, buffer):
        t = schema.TensorT()
        t.shape, t.type, t.buffer, t.name = [1], schema.TensorType.FLOAT32, buffer, name
        return t

    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.ADD
    code.version = 1
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.AddOptions, schema.AddOptionsT()
    graph = schema.SubGraphT()
    graph.tensors = [tensor(b"x", 0), tensor(b"one", 1), tensor(b"y", 0)]
    graph.inputs, graph.outputs, graph.operators = [0], [2], [op]
    one = schema.BufferT()
    one.data = np.array([1.0], np.float32).view(np.uint8)
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [graph]
    model.buffers = [schema.BufferT(), one]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _set_inputs(interpreter, arrays):
    """Sets the interpreter's inputs, in order, resizing those whose shape differs."""
    details = interpreter.get_input_details()
    resized = False
    for detail, array in zip(details, arrays):
        if tuple(detail["shape"]) != array.shape:
            interpreter.resize_tensor_input(detail["index"], list(array.shape))
            resized = True
    if resized:
        interpreter.allocate_tensors()
    for detail, array in zip(details, arrays):
        interpreter.set_tensor(detail["index"], array)


def _shorten(name, limit=60):
    return name if len(name) <= limit else name[: limit - 3] + "..."
