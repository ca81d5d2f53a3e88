"""tflite_bench.profile_ops: single-op models reproduce the whole model's
tensors exactly, the rows follow the flatbuffer, the op times add up to the
whole invoke (the issue's bar), and the report, CLI and errors."""

import json
import warnings

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

import keras_compress as kc
from keras_compress.examples import build_cnn
from tflite_bench import OpProfile, inspect_tflite, profile_ops
from tflite_bench.cli import main
from tflite_bench.op_profile import _trivial_model, single_op_model
from tflite_bench.report import op_profile_figure, write_report

# The bar: the sum of per-op times within 20% of the whole invoke.
BAR = 0.2


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    """The demo CNN (untrained: timing and exactness do not need trained
    weights) as a float and an int8 `.tflite`."""
    keras.utils.set_random_seed(0)
    model = build_cnn()
    x = np.random.default_rng(0).random((32, 28, 28, 1)).astype("float32")
    folder = tmp_path_factory.mktemp("op_profile")
    paths = {"float": str(folder / "cnn_float.tflite"), "int8": str(folder / "cnn_int8.tflite")}
    kc.to_tflite(model, paths["float"])
    kc.to_tflite(model, paths["int8"], quantization="int8", representative_data=x)
    return paths


@pytest.fixture(scope="module")
def shared_input_file(tmp_path_factory):
    """Two inputs, a concatenation and a MUL that reads one tensor twice."""
    keras.utils.set_random_seed(1)
    a, b = keras.Input((3,), name="a"), keras.Input((5,), name="b")
    h = keras.layers.Dense(4, name="dense")(keras.layers.Concatenate(name="concat")([a, b]))
    model = keras.Model([a, b], keras.layers.Multiply(name="square")([h, h]))
    path = tmp_path_factory.mktemp("shared") / "shared.tflite"
    kc.to_tflite(model, path)
    return str(path)


def _all_tensors(path, seed=3):
    """Every tensor of the whole model after one builtin-kernel invoke on
    random inputs, read with LiteRT's own preserve-all-tensors switch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_path=path, experimental_preserve_all_tensors=True,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(seed)
    for detail in interpreter.get_input_details():
        value = rng.uniform(-1, 1, detail["shape"]) if detail["dtype"] == np.float32 else \
            rng.integers(-128, 128, detail["shape"])
        interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
    interpreter.invoke()
    return interpreter


@pytest.mark.parametrize("kind", ["float", "int8", "shared"])
def test_single_op_models_reproduce_the_whole_models_tensors_exactly(kind, demo_files, shared_input_file):
    path = shared_input_file if kind == "shared" else demo_files[kind]
    whole = _all_tensors(path)
    ops = whole._get_ops_details()
    assert len(ops) == len(inspect_tflite(path).ops)
    for op in ops:
        single = Interpreter(model_content=single_op_model(path, op["index"]),
                             experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        single.allocate_tensors()
        (single_op,) = single._get_ops_details()
        assert single_op["op_name"] == op["op_name"]
        # Its inputs are the op's computed inputs (a graph input or another op's
        # output; constants stay inside), each once, in the op's order.
        produced = {d["index"] for d in whole.get_input_details()} | {int(i) for o in ops for i in o["outputs"]}
        computed = list(dict.fromkeys(int(i) for i in op["inputs"] if i in produced))
        inputs = single.get_input_details()
        assert [d["name"] for d in inputs] == [whole._get_tensor_details(i, 0)["name"] for i in computed]
        for detail, index in zip(inputs, computed):
            single.set_tensor(detail["index"], whole.get_tensor(index))
        single.invoke()
        for detail, index in zip(single.get_output_details(), op["outputs"]):
            np.testing.assert_array_equal(single.get_tensor(detail["index"]), whole.get_tensor(int(index)),
                                          err_msg=f"{kind} op {op['index']} {op['op_name']}")


def test_shared_input_becomes_one_model_input(shared_input_file):
    info = inspect_tflite(shared_input_file)
    (mul,) = [op for op in info.ops if op.type == "MUL"]
    single = inspect_tflite(single_op_model(shared_input_file, mul.index))
    assert [op.type for op in single.ops] == ["MUL"] and len(single.inputs) == 1


def test_single_op_model_keeps_the_ops_weights(demo_files):
    # The first CONV_2D of the float file holds 16 3x3x1 kernels and 16 biases.
    info = inspect_tflite(single_op_model(demo_files["float"], 0))
    assert [op.type for op in info.ops] == ["CONV_2D"]
    assert info.constant_bytes == {"float32": (16 * 9 + 16) * 4}
    assert [t.shape for t in info.inputs] == [(1, 28, 28, 1)] and [t.shape for t in info.outputs] == [(1, 26, 26, 16)]


def test_trivial_model_adds_one():
    interpreter = Interpreter(model_content=_trivial_model())
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.array([2.5], np.float32))
    interpreter.invoke()
    assert interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).tolist() == [3.5]


def test_profile_rows_follow_the_flatbuffer(demo_files):
    profile = profile_ops(demo_files["int8"], rounds=2, runs=5, warmup=1)
    ops = inspect_tflite(demo_files["int8"]).ops
    assert isinstance(profile, OpProfile) and profile.name == "cnn_int8.tflite"
    def fields(rows):
        return [(o.index, o.type, o.name, o.dtype) for o in rows]

    assert fields(profile.ops) == fields(ops)
    assert all(o.ms >= 0 for o in profile.ops) and profile.whole_ms > 0 and profile.overhead_ms > 0
    assert sum(o.share for o in profile.ops) == pytest.approx(1.0)
    assert profile.op_sum_ms == pytest.approx(sum(o.ms for o in profile.ops))
    assert profile.ratio == pytest.approx(profile.op_sum_ms / profile.whole_ms)
    assert len(profile.round_ratios) == 2 and (profile.threads, profile.runs, profile.warmup) == (1, 5, 1)
    data = json.loads(json.dumps(profile.as_dict()))
    assert [o["type"] for o in data["ops"]] == [o.type for o in ops] and data["ratio"] == profile.ratio
    text = str(profile)
    assert "CONV_2D" in text and "sum of op times" in text and text.count("\n") == len(ops) + 2


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_op_times_add_up_to_the_whole_invoke(kind, demo_files):
    # The bar. Each round times the whole model, the trivial model and
    # every single-op model in turn, so drift on this shared 2-core machine
    # hits them alike, and medians over 7 rounds of 100 runs keep a burst out.
    # The run takes about a second; a machine busy enough to move the ratio
    # by 20% gets one re-measure, as benchmarking.md asks of a figure.
    for attempt in range(2):
        profile = profile_ops(demo_files[kind], rounds=7, runs=100, warmup=20)
        if abs(profile.ratio - 1) <= BAR:
            break
    assert abs(profile.ratio - 1) <= BAR, profile.validation()


def test_control_flow_is_refused(tmp_path):
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(_trivial_model())
    model.subgraphs.append(model.subgraphs[0])
    path = tmp_path / "two_subgraphs.tflite"
    path.write_bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    with pytest.raises(ValueError, match="profile_ops: the model has 2 subgraphs.*one subgraph"):
        profile_ops(str(path))


@pytest.mark.parametrize("arguments, error, message", [
    ({"threads": 0}, ValueError, "profile_ops: threads must be an int >= 1, got 0"),
    ({"rounds": 0}, ValueError, "profile_ops: rounds must be an int >= 1, got 0"),
    ({"runs": "5"}, TypeError, "profile_ops: runs must be an int >= 1, got '5'"),
    ({"warmup": -1}, ValueError, "profile_ops: warmup must be an int >= 0, got -1"),
    ({"use_xnnpack": "yes"}, TypeError, "profile_ops: use_xnnpack must be True or False"),
])
def test_bad_arguments_name_the_argument(arguments, error, message, demo_files):
    with pytest.raises(error, match=message):
        profile_ops(demo_files["float"], **arguments)


def test_not_a_tflite_file(tmp_path, demo_files):
    path = tmp_path / "model.keras"
    path.write_bytes(b"PK\x03\x04 not a flatbuffer")
    with pytest.raises(ValueError, match="profile_ops: tflite must be a TFLite flatbuffer.*TFL3"):
        profile_ops(str(path))
    with pytest.raises(ValueError, match="profile_ops: tflite must be a TFLite flatbuffer.*No TFLite file"):
        profile_ops(str(tmp_path / "missing.tflite"))
    with pytest.raises(ValueError, match="single_op_model: index must be an int in \\[0, 6\\], got 7"):
        single_op_model(demo_files["float"], 7)


def test_report_has_table_and_bar_chart(demo_files, tmp_path):
    from tflite_bench import benchmark_model

    records = [benchmark_model(demo_files[k], runs=5, warmup=1) for k in ("float", "int8")]
    profiles = [profile_ops(demo_files[k], rounds=2, runs=5, warmup=1) for k in ("float", "int8")]
    written = write_report(records, tmp_path, profiles=profiles)
    names = sorted(p.split("/")[-1] for p in written)
    assert names == ["op_profile_1.png", "op_profile_2.png", "op_profiles.json", "report.md", "results.csv",
                     "results.json"]
    report = (tmp_path / "report.md").read_text()
    assert "## Per-op profiles" in report and "![op_profile_2.png](op_profile_2.png)" in report
    for profile in profiles:
        assert f"### {profile.name}, 1 thread" in report
        for op in profile.ops:
            assert f"| {op.index} | {op.type} | {op.dtype} |" in report
    assert [p["name"] for p in json.loads((tmp_path / "op_profiles.json").read_text())] == [
        "cnn_float.tflite", "cnn_int8.tflite"]


def test_bar_chart_has_one_bar_per_op(demo_files):
    import matplotlib.pyplot as plt

    profile = profile_ops(demo_files["float"], rounds=1, runs=5, warmup=1)
    figure = op_profile_figure(profile)
    bars = figure.axes[0].patches
    _, scale = profile.unit()
    assert [round(b.get_width(), 9) for b in bars] == [round(o.ms * scale, 9) for o in profile.ops]
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == [f"{o.index}  {o.type}" for o in profile.ops]
    plt.close(figure)


def test_cli_profile(demo_files, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["profile", demo_files["int8"], "--rounds", "2", "--runs", "5", "--warmup", "1",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2/2 rounds" in text and "Per-op profile of cnn_int8.tflite: 9 ops" in text
    assert "sum of op times" in text and text.count("CONV_2D") == 2
    assert sorted(p.name for p in out.iterdir()) == ["op_profile.md", "op_profile.png", "op_profiles.json"]
    assert "| 1 | CONV_2D | int8 |" in (out / "op_profile.md").read_text()


def test_cli_run_with_profile_ops(demo_files, tmp_path, capsys):
    assert main(["run", demo_files["float"], "--runs", "5", "--warmup", "1", "--profile-ops",
                 "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "Per-op profile of cnn_float.tflite: 7 ops" in text
    assert "## Per-op profiles" in (tmp_path / "report.md").read_text()


def test_cli_profile_rejects_bad_input(tmp_path, capsys, demo_files):
    bad = tmp_path / "notes.tflite"
    bad.write_text("not a model")
    assert main(["profile", str(bad)]) == 2
    assert "profile_ops: tflite must be a TFLite flatbuffer" in capsys.readouterr().err
    assert main(["profile", demo_files["float"], "--threads", "0"]) == 2
    assert "threads must be an int >= 1, got 0" in capsys.readouterr().err
    assert main(["profile", str(tmp_path / "missing.tflite")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_script_prints_the_ratio_table(tmp_path):
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "op_profile.py")
    out = tmp_path / "op_profile.json"
    done = subprocess.run([sys.executable, script, "--no-mobilenet", "--repeats", "1", "--rounds", "1", "--runs", "5",
                           "--warmup", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Per-op profile of demo CNN int8: 9 ops" in done.stdout and "sum of op times / whole invoke" in done.stdout
    results = json.loads(out.read_text())
    assert [len(r["profiles"]) for k, r in results.items() if k != "settings"] == [1, 1]
