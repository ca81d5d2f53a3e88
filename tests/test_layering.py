"""Dependencies run one way (keras_compress -> tflite_bench), the CLIs parse
before Keras loads, and progress output stays plain outside a terminal."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras_compress.export as export
import keras_compress.export.inspect as export_inspect
import keras_compress.export.interpreter as export_interpreter
import tflite_bench
import tflite_bench.inspect
import tflite_bench.interpreter
from tflite_bench.progress import Progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("keras", "tensorflow", "keras_compress")


def _modules_after(code):
    """`{name: imported?}` for HEAVY after running `code` in a fresh interpreter."""
    probe = code + "\nimport json, sys\nprint('MODULES ' + json.dumps({m: m in sys.modules for m in %r}))" % (HEAVY,)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    line = [s for s in done.stdout.splitlines() if s.startswith("MODULES ")][-1]
    return json.loads(line[len("MODULES "):])


def test_import_tflite_bench_loads_neither_keras_nor_tensorflow():
    # The bar, plus every module of the package (the CLI too).
    modules = ["tflite_bench", *(f"tflite_bench.{m}" for m in (
        "android", "checks", "cli", "inspect", "interpreter", "latency", "mnist", "op_profile", "progress", "record",
        "report", "runtime"))]
    loaded = _modules_after("\n".join(f"import {m}" for m in modules))
    assert loaded == {"keras": False, "tensorflow": False, "keras_compress": False}


def test_no_tflite_bench_module_imports_keras_compress():
    # Not even lazily inside a function: the layering holds for every code path.
    folder = os.path.dirname(tflite_bench.__file__)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as f:
                lines = [line.strip() for line in f]
            assert not [line for line in lines if line.startswith(("import keras", "from keras", "import tensorflow",
                                                                  "from tensorflow"))], name


@pytest.mark.parametrize("code", [
    "from keras_compress_cli import main; main(['--help'])",
    "from keras_compress_cli import main; main(['demo', '--help'])",
    "from tflite_bench.cli import main; main(['--help'])",
    "from tflite_bench.cli import main; main(['run', '--help'])",
])
def test_cli_help_parses_before_keras_loads(code):
    loaded = _modules_after(f"try:\n    {code}\nexcept SystemExit as e:\n    assert e.code == 0, e.code")
    assert loaded == {"keras": False, "tensorflow": False, "keras_compress": False}


def test_old_import_paths_give_the_litert_layers_objects():
    import keras_compress as kc
    from keras_compress.cli import main as package_main
    from keras_compress_cli import main

    interpreter, inspect = tflite_bench.interpreter, tflite_bench.inspect
    assert kc.predict_tflite is export.predict_tflite is export_interpreter.predict_tflite is interpreter.predict_tflite
    assert kc.evaluate_tflite is interpreter.evaluate_tflite
    assert export.load_interpreter is interpreter.load_interpreter
    assert export.read_flatbuffer is interpreter.read_flatbuffer
    for name in ("class_labels", "quantize_io", "dequantize_io", "key_problems"):
        assert getattr(export_interpreter, name) is getattr(interpreter, name)
    assert kc.inspect_tflite is export_inspect.inspect_tflite is inspect.inspect_tflite
    for name in ("TFLiteInfo", "OpInfo", "TensorInfo"):
        assert getattr(export, name) is getattr(export_inspect, name) is getattr(inspect, name)
    assert package_main is main
    assert tflite_bench.predict_tflite is interpreter.predict_tflite
    assert tflite_bench.inspect_tflite is inspect.inspect_tflite


def test_io_scaling_round_trips_by_hand():
    # int8 with scale 0.5 and zero point -3: 1.0 -> round(2 - 3) = -1; clipped at -128/127.
    x = tflite_bench.interpreter.quantize_io(
        np.array([1.0, -100.0, 100.0]), 0.5, -3, "int8")
    assert x.dtype.name == "int8" and x.tolist() == [-1, -128, 127]
    y = tflite_bench.interpreter.dequantize_io(x, 0.5, -3)
    assert y.tolist() == [1.0, -62.5, 65.0]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_into_a_pipe_is_one_plain_line_per_step():
    stream = io.StringIO()
    progress = Progress(3, "variant", stream=stream)
    for i, name in enumerate(("a", "b", "c"), 1):
        progress.update(i, name)
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text and "\b" not in text
    lines = text.splitlines()
    assert len(lines) == 3 and lines[0].startswith("1/3 variants (") and lines[2].endswith(": c")


def test_progress_on_a_terminal_redraws_one_line():
    stream = _Terminal()
    progress = Progress(2, "measurement", stream=stream)
    progress.update(1, "a long first label")
    progress.update(2, "b")
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.count("\n") == 1 and text.endswith("\n")
    first, second = text.split("\r")[1:]
    assert len(second.rstrip("\n")) >= len(first)  # the shorter line covers the longer one


def test_tflite_bench_reads_an_mnist_folder_without_keras_compress(tmp_path):
    from keras_compress import datasets

    folder = os.path.join(ROOT, "keras_compress", "data")
    out = tmp_path / "labels.npy"
    loaded = _modules_after(
        "import numpy as np\nfrom tflite_bench.cli import load_labelled_data\n"
        f"x, y = load_labelled_data({folder!r})\nnp.save({str(out)!r}, y)\nassert x.shape == (2000, 28, 28, 1)"
    )
    assert loaded == {"keras": False, "tensorflow": False, "keras_compress": False}
    (_, _), (_, y_test) = datasets.load_mnist()
    assert np.array_equal(np.load(out), y_test)
