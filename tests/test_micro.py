"""tflite_bench.micro: the C array is the file byte for byte (compiled and
run), and the arena estimate matches plans worked out by hand."""

import os
import re
import shutil
import subprocess

import keras
import numpy as np
import pytest

from keras_compress import examples, to_tflite
from tflite_bench.inspect import inspect_tflite
from tflite_bench.micro import arena_estimate, to_c_source

HAS_CC = shutil.which("cc") is not None


def chain_file():
    """input (1,4) -> FC -> (1,8) -> FC -> (1,2), float32."""
    return to_tflite(keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(2)]))


@pytest.mark.skipif(not HAS_CC, reason="needs a C compiler")
def test_c_source_compiles_and_its_array_is_the_file_aligned(tmp_path):
    flatbuffer = to_tflite(examples.build_cnn(), quantization="int8",
                           representative_data=np.random.default_rng(0).random((8, 28, 28, 1), "float32"))
    source, header = to_c_source(flatbuffer, tmp_path / "model_data.c", name="g_model")
    assert header == str(tmp_path / "model_data.h")
    text = open(source).read()
    assert "__attribute__((aligned(16)))" in text
    # Read back from the text, independently of the writer's loop.
    values = bytes(int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", text.split("{", 1)[1]))
    assert values == flatbuffer
    assert f"g_model_len = {len(flatbuffer)};" in text
    subprocess.run(["cc", "-c", "-std=c99", "-Wall", "-Wextra", "-Werror", source, "-o", str(tmp_path / "m.o")],
                   check=True, capture_output=True)
    # A program that includes the header writes the array and its address modulo 16.
    (tmp_path / "main.c").write_text(
        '#include <stdint.h>\n#include <stdio.h>\n#include "model_data.h"\n'
        "int main(void) {\n"
        "  fwrite(g_model, 1, g_model_len, stdout);\n"
        "  fprintf(stderr, \"%u\", (unsigned)((uintptr_t)g_model % 16));\n"
        "  return 0;\n}\n")
    subprocess.run(["cc", "-std=c99", "-Wall", "-Werror", str(tmp_path / "main.c"), source, "-o",
                    str(tmp_path / "dump")], check=True, capture_output=True, cwd=tmp_path)
    done = subprocess.run([str(tmp_path / "dump")], capture_output=True, check=True)
    assert done.stdout == flatbuffer and done.stderr == b"0"


def test_c_source_header_works_from_cpp_and_names_are_checked(tmp_path):
    flatbuffer = chain_file()
    source, header = to_c_source(flatbuffer, tmp_path / "net.cc", name="net", alignment=8)
    assert 'extern "C"' in open(header).read() and "aligned(8)" in open(source).read()
    if shutil.which("c++"):
        subprocess.run(["c++", "-c", "-Wall", "-Werror", source, "-o", str(tmp_path / "n.o")], check=True,
                       capture_output=True)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"tflite": b"not a model at all"}, ValueError, "not a TFLite flatbuffer"),
    ({"name": "2model"}, ValueError, "C identifier"),
    ({"name": "int"}, ValueError, "C identifier"),
    ({"name": 5}, ValueError, "C identifier"),
    ({"alignment": 12}, ValueError, "power of two"),
    ({"alignment": 0}, ValueError, "alignment"),
    ({"path": 3}, TypeError, "path must be a file path"),
])
def test_bad_c_export_arguments_write_nothing(tmp_path, kwargs, error, match):
    arguments = {"tflite": chain_file(), "path": tmp_path / "m.c", "name": "model", "alignment": 16, **kwargs}
    with pytest.raises(error, match=match):
        to_c_source(arguments.pop("tflite"), arguments.pop("path"), **arguments)
    assert os.listdir(tmp_path) == []


def test_arena_of_a_chain_by_hand():
    """FC0 reads the input (16 B) and writes t (32 B); FC1 reads t and
    writes the output (8 B, 16 aligned). Alive at FC0: input + t = 48; at
    FC1: t + output = 48. Greedy: t at 0, the input at 32, the output at 32
    again (the input is dead by then): 48."""
    flatbuffer = chain_file()
    assert [op.type for op in inspect_tflite(flatbuffer).ops] == ["FULLY_CONNECTED"] * 2
    plan = arena_estimate(flatbuffer)
    assert plan.greedy_bytes == plan.lower_bound_bytes == 48
    by_life = {(t.first, t.last): t for t in plan.tensors}
    assert by_life[(0, 1)].bytes == 32 and by_life[(0, 1)].offset == 0
    assert by_life[(0, 0)].offset == by_life[(1, 1)].offset == 32
    unaligned = arena_estimate(flatbuffer, alignment=1)
    assert sorted(t.bytes for t in unaligned.tensors) == [8, 16, 32]
    assert unaligned.greedy_bytes == 48


def test_arena_of_two_branches_by_hand():
    """in -> FC a; in -> FC b -> RESHAPE s (the converter's, for the bias
    folded into the ADD); ADD(a, s) -> c; FC(c) -> out. Float32, 16 B
    aligned: in 16, a b s c 32 each, out 16. Lifetimes (op indices): in 0-1,
    a 0-3, b 1-2, s 2-3, c 3-4, out 4-4. Alive: 48, 80, 96, 96, 48, so at
    least 96. Greedy, largest first: a at 0; b at 32; s at 64 (a and b
    alive); c at 32 (b is dead by then, a and s are not); in at 64 (s and c
    not yet alive); out at 0 (only c is alive): 96."""
    inputs = keras.Input((4,))
    a, b = keras.layers.Dense(8)(inputs), keras.layers.Dense(8)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Add()([a, b])))
    flatbuffer = to_tflite(model)
    assert [op.type for op in inspect_tflite(flatbuffer).ops] == [
        "FULLY_CONNECTED", "FULLY_CONNECTED", "RESHAPE", "ADD", "FULLY_CONNECTED"]
    plan = arena_estimate(flatbuffer)
    assert plan.lower_bound_bytes == 96 and plan.greedy_bytes == 96
    assert sorted((t.first, t.last, t.bytes, t.offset) for t in plan.tensors) == [
        (0, 1, 16, 64), (0, 3, 32, 0), (1, 2, 32, 32), (2, 3, 32, 64), (3, 4, 32, 32), (4, 4, 16, 0)]


def test_arena_plan_of_a_cnn_never_overlaps_live_tensors():
    flatbuffer = to_tflite(examples.build_cnn(), quantization="int8",
                           representative_data=np.random.default_rng(0).random((8, 28, 28, 1), "float32"))
    plan = arena_estimate(flatbuffer)
    assert plan.greedy_bytes >= plan.lower_bound_bytes > 0
    # The first conv's int8 output, 26x26x16 = 10,816 B, is alive with its input (784 B).
    assert plan.lower_bound_bytes >= 10_816 + 784
    for i, t in enumerate(plan.tensors):
        assert t.offset % 16 == 0 and t.bytes % 16 == 0
        for u in plan.tensors[i + 1:]:
            if not (t.last < u.first or u.last < t.first):
                assert t.offset + t.bytes <= u.offset or u.offset + u.bytes <= t.offset, (t, u)
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        arena_estimate(b"\x00" * 64)


def test_cli_writes_the_c_files_and_prints_the_plan(tmp_path):
    from tflite_bench.cli import main

    model = tmp_path / "chain.tflite"
    model.write_bytes(chain_file())
    assert main(["c-source", str(model), str(tmp_path / "chain_data.c"), "--name", "chain"]) == 0
    assert (tmp_path / "chain_data.h").exists() and "chain_len" in (tmp_path / "chain_data.c").read_text()
    assert main(["c-source", str(tmp_path / "missing.tflite"), str(tmp_path / "x.c")]) == 2
    assert main(["c-source", str(model), str(tmp_path / "y.c"), "--alignment", "3"]) == 2
    assert not (tmp_path / "y.c").exists()
