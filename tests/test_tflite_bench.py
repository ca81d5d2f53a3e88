"""tflite_bench.benchmark_model: each field against an independent measurement."""

import gzip

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from conftest import compile_for_test, small_cnn, toy_data

import keras_compress as kc
from tflite_bench import BenchmarkRecord, benchmark_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    keras.utils.set_random_seed(0)
    x, y = toy_data(64)
    model = compile_for_test(small_cnn())
    model.fit(x, y, epochs=2, verbose=0)
    folder = tmp_path_factory.mktemp("models")
    float_path, int8_path = folder / "float.tflite", folder / "int8.tflite"
    kc.to_tflite(model, float_path)
    kc.to_tflite(model, int8_path, quantization="int8", representative_data=x, int8_io=True)
    return str(float_path), str(int8_path), (x, y)


def test_record_fields_match_independent_measurements(files):
    float_path, _, (x, y) = files
    record = benchmark_model(float_path, threads=1, warmup=2, runs=20, data=(x, y))
    assert isinstance(record, BenchmarkRecord) and record.name == "float.tflite"
    content = open(float_path, "rb").read()
    assert record.bytes == len(content)
    assert record.gzip_bytes == len(gzip.compress(content, compresslevel=9))
    interpreter = Interpreter(model_path=float_path)
    ops = interpreter._get_ops_details()
    assert sum(record.op_counts.values()) == len(ops)
    assert record.op_counts["CONV_2D/float32"] == 2
    assert record.int8_compute_fraction == 0.0
    assert record.accuracy == kc.evaluate_tflite(float_path, x, y)["accuracy"]
    assert record.runs == 20 and record.threads == 1 and record.runtime == "interpreter"
    assert 0 < record.min_ms <= record.p50_ms <= record.p90_ms <= record.p99_ms <= record.max_ms
    assert record.min_ms <= record.mean_ms <= record.max_ms
    assert record.init_ms > 0 and record.first_inference_ms > 0 and record.rss_growth_mb >= 0
    assert set(record.as_dict()) >= {"p50_ms", "bytes", "gzip_bytes", "accuracy"}


def test_int8_io_model_is_all_int8_and_its_accuracy_is_scaled(files):
    float_path, int8_path, (x, y) = files
    record = benchmark_model(int8_path, warmup=1, runs=5, data=(x, y))
    assert record.int8_compute_fraction == 1.0
    assert "QUANTIZE/int8" not in record.op_counts  # int8 in, int8 out
    float_accuracy = benchmark_model(float_path, warmup=1, runs=5, data=(x, y)).accuracy
    assert abs(record.accuracy - float_accuracy) <= 0.1


@pytest.mark.parametrize(
    "kwargs, match", [({"threads": 0}, "threads"), ({"runs": 0}, "runs"), ({"warmup": -1}, "warmup")]
)
def test_bad_arguments(files, kwargs, match):
    with pytest.raises(ValueError, match=match):
        benchmark_model(files[0], **kwargs)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ValueError, match="No TFLite file"):
        benchmark_model(str(tmp_path / "missing.tflite"))
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"not a model at all")
    with pytest.raises(ValueError):
        benchmark_model(str(corrupt))


def test_pareto_front_by_hand():
    from tflite_bench.report import pareto_front

    # (cost, accuracy): b beats a on both; c is cheaper than b but less accurate;
    # d ties b's cost with lower accuracy.
    points = [(10, 0.90), (8, 0.95), (5, 0.91), (8, 0.93), (12, 0.99)]
    assert pareto_front(points) == [1, 2, 4]


def test_cli_writes_tables_csv_json_and_plots(files, tmp_path, capsys):
    import csv
    import json

    from tflite_bench import cli

    float_path, int8_path, (x, y) = files
    data = tmp_path / "data.npz"
    np.savez(data, x_test=x, y_test=y)
    out = tmp_path / "report"
    code = cli.main(["run", float_path, int8_path, "--threads", "1,2", "--runs", "5", "--warmup", "1",
                     "--data", str(data), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("float.tflite") >= 2 and printed.count("int8.tflite") >= 2
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 4 and {r["threads"] for r in results} == {1, 2}
    assert all(r["accuracy"] is not None for r in results)
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 4
    report = (out / "report.md").read_text()
    assert report.count("| float.tflite |") == 2
    for png in ("accuracy_vs_size.png", "accuracy_vs_latency.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_cli_rejects_data_that_does_not_fit(files, tmp_path, capsys):
    from tflite_bench import cli

    data = tmp_path / "wrong.npz"
    np.savez(data, x=np.zeros((4, 5, 5, 1), "float32"), y=np.zeros(4, int))
    assert cli.main(["run", files[0], "--runs", "2", "--data", str(data)]) == 2
    assert "float.tflite" in capsys.readouterr().err


def _weight_counts(model):
    kernels = sum(int(np.prod(layer.kernel.shape)) for layer in model.layers if hasattr(layer, "kernel"))
    biases = sum(int(np.prod(layer.bias.shape)) for layer in model.layers if getattr(layer, "bias", None) is not None)
    return kernels, biases


def test_constant_bytes_are_the_weights_in_their_stored_dtype(files):
    float_path, int8_path, _ = files
    kernels, biases = _weight_counts(small_cnn())
    float_info, int8_info = kc.inspect_tflite(float_path), kc.inspect_tflite(int8_path)
    # Float: 4 bytes a weight, plus a few small shape constants (int32).
    assert float_info.constant_bytes["float32"] == 4 * (kernels + biases)
    # int8: one byte a kernel weight, biases in int32.
    assert int8_info.constant_bytes["int8"] == kernels
    assert int8_info.constant_bytes["int32"] >= 4 * biases
    record = benchmark_model(int8_path, warmup=0, runs=1)
    assert record.constant_bytes == sum(int8_info.constant_bytes.values())
    assert record.sparse_tensors == 0 and float_info.sparse_tensors == ()


def test_sparse_tensors_are_counted():
    model = small_cnn()
    kernel, bias = model.get_layer("dense_a").get_weights()
    kernel[np.abs(kernel) < np.quantile(np.abs(kernel), 0.8)] = 0
    model.get_layer("dense_a").set_weights([kernel, bias])
    info = kc.inspect_tflite(kc.to_tflite(model, sparse=True))
    assert len(info.sparse_tensors) == 1 and "dense_a" in info.sparse_tensors[0]
    assert "1 sparse" in info.summary()
    assert benchmark_model(kc.to_tflite(model, sparse=True), warmup=0, runs=1).sparse_tensors == 1


@pytest.mark.parametrize("which", [0, 1])
def test_compiled_runtime_gives_the_interpreters_predictions(files, which):
    """LiteRT's CompiledModel: same accuracy as the interpreter, on float and
    int8-I/O files, and consistent latency statistics."""
    path, (x, y) = files[which], files[2]
    compiled = benchmark_model(path, warmup=2, runs=20, data=(x, y), runtime="compiled")
    interpreted = benchmark_model(path, warmup=0, runs=1, data=(x, y))
    assert compiled.runtime == "compiled" and compiled.xnnpack
    assert compiled.accuracy == interpreted.accuracy
    assert 0 < compiled.min_ms <= compiled.p50_ms <= compiled.p90_ms <= compiled.p99_ms <= compiled.max_ms
    assert compiled.bytes == interpreted.bytes and compiled.op_counts == interpreted.op_counts
    builtin = benchmark_model(path, warmup=0, runs=2, data=(x, y), runtime="compiled", use_xnnpack=False)
    assert not builtin.xnnpack and abs(builtin.accuracy - interpreted.accuracy) <= 2 / len(y)


def test_runtime_is_checked(files):
    with pytest.raises(ValueError, match="runtime must be one of 'interpreter', 'compiled'; got 'gpu'"):
        benchmark_model(files[0], runtime="gpu")


def test_cli_compiled_runtime(files, tmp_path, capsys):
    from tflite_bench import cli

    assert cli.main(["run", files[0], "--runtime", "compiled", "--runs", "5", "--warmup", "1"]) == 0
    assert "compiled" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["run", files[0], "--runtime", "gpu"])
    assert "invalid choice: 'gpu'" in capsys.readouterr().err


def test_cli_report_records_the_run_settings(files, tmp_path, capsys):
    import datetime
    import importlib.metadata
    import json
    import platform

    from tflite_bench import cli

    float_path, _, _ = files
    out = tmp_path / "report"
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    assert cli.main(["run", float_path, "--threads", "1,2", "--runs", "7", "--warmup", "3", "--out", str(out)]) == 0
    after = datetime.datetime.now(datetime.timezone.utc)
    capsys.readouterr()
    text = (out / "report.md").read_text()
    litert = importlib.metadata.version("ai-edge-litert")
    for line in ("- runs: 7", "- warm-up runs: 3", "- threads: 1, 2", "- runtime: interpreter",
                 f"- LiteRT (ai-edge-litert): {litert}", f"- Python: {platform.python_version()}"):
        assert line + "\n" in text
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):  # not Linux on x86: whatever platform knows
        cpu = platform.processor() or platform.machine()
    assert f"- CPU: {cpu} (" in text
    assert "- **gzip bytes**:" in text and "- **RSS +MiB**:" in text
    for r in json.loads((out / "results.json").read_text()):
        assert r["runs"] == 7 and r["warmup"] == 3
        assert before <= datetime.datetime.fromisoformat(r["environment"]["date"]) <= after
        assert r["environment"]["litert"] == litert and r["environment"]["cpu"] == cpu


def test_litert_messages_are_split_where_litert_joins_them():
    from tflite_bench.interpreter import litert_message

    joined = RuntimeError("failed to delegate FULLY_CONNECTED node #5Node number 7 (TfLiteXNNPackDelegate) failed to prepare.\n")
    assert litert_message(joined) == (
        "failed to delegate FULLY_CONNECTED node #5; Node number 7 (TfLiteXNNPackDelegate) failed to prepare."
    )
    assert litert_message(RuntimeError("x" * 400), limit=50) == "x" * 47 + "..."
