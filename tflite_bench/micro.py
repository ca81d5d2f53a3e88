"""A `.tflite` file for microcontrollers: C source and an arena estimate.

TensorFlow Lite for Microcontrollers reads the model from a byte array
compiled into the firmware (no file system) and runs it in one "tensor
arena" the application allocates. `to_c_source` writes the array as `xxd -i`
would, but `const` (in flash) and aligned to 16 bytes, which TFLM needs to
read the flatbuffer's tables in place. `arena_estimate` plans the
activation tensors of the main subgraph the way TFLM's greedy memory planner
does (largest first, each at the lowest offset free over its lifetime), and
gives the lower bound no planner can beat: the most bytes alive at one op.

The estimate covers the non-persistent part of the arena (activations and
graph inputs and outputs). TFLM also allocates, per model, the tensor and
node structs, kernels' op data and scratch buffers (often a few kB); size
the arena with some headroom and check it with TFLM's
`RecordingMicroInterpreter` on the device.
"""

import dataclasses
import math
import os
import re

from tflite_bench.checks import check_int, describe
from tflite_bench.inspect import _indices, _schema_names, _text, read_flatbuffer

# Bytes per element of LiteRT's tensor types (INT4 is packed two a byte).
_ITEM_BYTES = {
    "FLOAT32": 4, "FLOAT16": 2, "BFLOAT16": 2, "FLOAT64": 8, "INT32": 4, "UINT32": 4, "INT64": 8, "UINT64": 8,
    "INT16": 2, "UINT16": 2, "INT8": 1, "UINT8": 1, "BOOL": 1, "COMPLEX64": 8, "COMPLEX128": 16, "INT4": 0.5,
}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if inline int long "
    "register restrict return short signed sizeof static struct switch typedef union unsigned void volatile "
    "while alignas alignof bool class delete false namespace new private protected public template this throw "
    "true try typename using virtual".split()
)


def _check_flatbuffer(api, tflite):
    content = read_flatbuffer(tflite)
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise ValueError(
            f"{api}: tflite is not a TFLite flatbuffer (its bytes 4-8 are {bytes(content[4:8])!r}, a "
            "TFLite file has b'TFL3' there). Give a .tflite file or the bytes to_tflite returned."
        )
    return content


def _check_alignment(api, alignment):
    check_int(api, "alignment", alignment, minimum=1)
    if alignment & (alignment - 1):
        raise ValueError(f"{api}: alignment must be a power of two (1, 2, 4, 8, 16, ...), got {alignment}.")


def to_c_source(tflite, path, *, name="model", alignment=16):
    """Writes a `.tflite` as a C source file and its header.

    `path` (`"model_data.c"` or `.cc`) gets
    `const unsigned char NAME[] __attribute__((aligned(ALIGNMENT))) = {...};`
    and `const unsigned int NAME_len = N;`, and `path` with the extension
    `.h` declares both (`extern`, with include guards and `extern "C"` for
    C++). The array is the file byte for byte.

    Args:
        tflite: the flatbuffer `bytes` or a path to a `.tflite` file.
        path: the C file to write; the header goes next to it.
        name: the array's C identifier (`NAME_len` is its length).
        alignment: the array's alignment in bytes, a power of two; TFLM
            needs 16.

    Returns:
        `(source_path, header_path)`.

    Raises:
        ValueError: `tflite` is not a TFLite flatbuffer, `name` is not a C
            identifier, or `alignment` is not a power of two. Nothing is
            written then.
        TypeError: an argument of the wrong type.
    """
    api = "to_c_source"
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{api}: path must be a file path, got {describe(path)}.")
    if not isinstance(name, str) or not _IDENTIFIER.match(name) or name in _C_KEYWORDS:
        raise ValueError(f"{api}: name must be a C identifier (letters, digits and _, not starting with a "
                         f"digit, not a keyword), got {name!r}.")
    _check_alignment(api, alignment)
    content = _check_flatbuffer(api, tflite)
    path = os.fspath(path)
    header = os.path.splitext(path)[0] + ".h"
    guard = re.sub(r"[^A-Za-z0-9]", "_", os.path.basename(header)).upper() + "_"
    rows = ",\n".join(
        "  " + ", ".join(f"0x{b:02x}" for b in content[i:i + 12]) for i in range(0, len(content), 12)
    )
    with open(header, "w") as f:
        f.write(
            f"// The TFLite model {name}: {len(content):,} bytes, aligned to {alignment}.\n"
            f"#ifndef {guard}\n#define {guard}\n\n"
            "#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n"
            f"extern const unsigned char {name}[];\nextern const unsigned int {name}_len;\n\n"
            "#ifdef __cplusplus\n}\n#endif\n\n"
            f"#endif  // {guard}\n"
        )
    with open(path, "w") as f:
        f.write(
            f'#include "{os.path.basename(header)}"\n\n'
            f"const unsigned char {name}[] __attribute__((aligned({alignment}))) = {{\n{rows}\n}};\n"
            f"const unsigned int {name}_len = {len(content)};\n"
        )
    return path, header


@dataclasses.dataclass(frozen=True)
class ArenaTensor:
    """One activation tensor of the plan: `first` and `last` are the
    indices of the ops that produce and last read it (graph inputs start at
    0, graph outputs end at the last op); `offset` is where the greedy plan
    puts it in the arena, `bytes` its size rounded up to the alignment."""

    name: str
    bytes: int
    first: int
    last: int
    offset: int


@dataclasses.dataclass(frozen=True)
class ArenaEstimate:
    """`greedy_bytes`: the arena the greedy plan needs; `lower_bound_bytes`:
    the most bytes alive at one op, which no plan can go under;
    `tensors`: the plan; `persistent`: variable tensors (kept out of the
    plan: TFLM holds them for the model's life)."""

    greedy_bytes: int
    lower_bound_bytes: int
    tensors: tuple
    persistent: tuple
    alignment: int

    def summary(self):
        lines = [f"arena estimate: {self.greedy_bytes:,} bytes greedy plan, {self.lower_bound_bytes:,} bytes "
                 f"at least (most alive at one op), alignment {self.alignment}"]
        lines += [f"  {t.offset:>8,} +{t.bytes:>8,}  ops {t.first}-{t.last}  {t.name}"
                  for t in sorted(self.tensors, key=lambda t: (t.offset, t.first))]
        return "\n".join(lines)

    def __str__(self):
        return self.summary()


def arena_estimate(tflite, *, alignment=16):
    """Plans the activation memory of a `.tflite`'s main subgraph as
    TensorFlow Lite for Microcontrollers' greedy planner does.

    Args:
        tflite: the flatbuffer `bytes` or a path to a `.tflite` file.
        alignment: every tensor's size is rounded up to this (TFLM: 16).

    Returns:
        An `ArenaEstimate` (`greedy_bytes`, `lower_bound_bytes`, the plan).

    Raises:
        ValueError: not a TFLite flatbuffer, or an alignment that is not a
            power of two.
    """
    api = "arena_estimate"
    _check_alignment(api, alignment)
    content = _check_flatbuffer(api, tflite)
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(content)
    graph = model.subgraphs[0]
    tensors = graph.tensors or []
    operators = graph.operators or []
    last_op = max(len(operators) - 1, 0)
    constant = {i for i, t in enumerate(tensors)
                if t.buffer and model.buffers and model.buffers[t.buffer].data is not None
                and len(model.buffers[t.buffer].data)}
    variables = tuple(_text(t.name) for t in tensors if t.isVariable)
    first, last = {}, {}
    for i in _indices(graph.inputs):
        first[i] = last[i] = 0
    for step, op in enumerate(operators):
        for i in _indices(op.inputs):
            if i >= 0 and i not in constant and not tensors[i].isVariable:
                first.setdefault(i, step)
                last[i] = step
        for i in _indices(op.outputs):
            if i not in constant and not tensors[i].isVariable:
                first.setdefault(i, step)
                last[i] = max(last.get(i, step), step)
    for i in _indices(graph.outputs):
        if i in first:
            last[i] = last_op
    type_names = _schema_names()[1]
    sizes = {}
    for i in first:
        t = tensors[i]
        count = 1
        for d in _indices(t.shape):
            count *= max(d, 1)
        raw = math.ceil(count * _ITEM_BYTES.get(type_names.get(t.type, ""), 4))
        sizes[i] = -(-raw // alignment) * alignment
    order = sorted(first, key=lambda i: (-sizes[i], first[i], i))
    placed = []  # (offset, size, first, last)
    offsets = {}
    for i in order:
        busy = sorted((o, s) for o, s, a, b in placed if not (b < first[i] or last[i] < a))
        offset = 0
        for o, s in busy:
            if offset + sizes[i] <= o:
                break
            offset = max(offset, o + s)
        offsets[i] = offset
        placed.append((offset, sizes[i], first[i], last[i]))
    greedy = max((o + s for o, s, _, _ in placed), default=0)
    lower = max((sum(sizes[i] for i in first if first[i] <= step <= last[i]) for step in range(last_op + 1)),
                default=0)
    plan = tuple(ArenaTensor(_text(tensors[i].name), sizes[i], first[i], last[i], offsets[i]) for i in order)
    return ArenaEstimate(greedy, lower, plan, variables, alignment)
