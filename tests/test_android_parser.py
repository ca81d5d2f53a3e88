"""The parser of TensorFlow benchmark_model output, on text in its two formats.

No device is attached here: the samples follow the tool's console format
(older: no percentiles; newer: INFO prefixes, percentiles, exponents), with
numbers of our own, and the expected values are worked out by hand.
"""

import pytest

from tflite_bench.android import parse_benchmark_model_output, run_on_device

OLDER = """STARTING!
Min num runs: [50]
Num threads: [4]
Graph: [/data/local/tmp/cnn.tflite]
Loaded model /data/local/tmp/cnn.tflite
The input model file size (MB): 0.230088
Initialized session in 3.25ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=2000 first=410 curr=230 min=201 max=1100 avg=250.5 std=40

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=4100 first=260 curr=240 min=199 max=900 avg=241.25 std=35

Inference timings in us: Init: 3250, First inference: 410, Warmup (avg): 250.5, Inference (avg): 241.25
Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
Peak memory footprint (MB): init=2.5 overall=3.75
"""

NEWER = """INFO: Num threads: [1]
INFO: The input model file size (MB): 3.5
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=3 first=40000 curr=21000 min=21000 max=40000 avg=28000 std=8000 p5=21000 median=23000 p95=40000

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=50 first=22000 curr=20500 min=20000 max=30000 avg=2.1e+04 std=1500 p5=20100 median=20800 p95=25000

INFO: Inference timings in us: Init: 12500, First inference: 40000, Warmup (avg): 2.8e+04, Inference (avg): 2.1e+04
INFO: Memory footprint delta from the start of the tool (MB): init=6.25 overall=40.5
INFO: Overall peak memory footprint (MB) via periodic monitoring: 52.75
"""


def test_older_format():
    r = parse_benchmark_model_output(OLDER)
    assert r["runs"] == 4100  # the timed run, not the warm-up's count=2000
    assert r["init_ms"] == pytest.approx(3.25)
    assert r["first_inference_ms"] == pytest.approx(0.41)
    assert r["warmup_mean_ms"] == pytest.approx(0.2505)
    assert r["mean_ms"] == pytest.approx(0.24125)
    assert (r["min_ms"], r["max_ms"], r["std_ms"]) == pytest.approx((0.199, 0.9, 0.035))
    assert r["threads"] == 4 and r["model_mb"] == pytest.approx(0.230088)
    assert (r["memory_init_mb"], r["memory_overall_mb"]) == (2.5, 3.75)
    assert "p50_ms" not in r


def test_newer_format_with_percentiles_and_exponents():
    r = parse_benchmark_model_output(NEWER)
    assert r["runs"] == 50 and r["threads"] == 1
    assert r["mean_ms"] == pytest.approx(21.0) and r["warmup_mean_ms"] == pytest.approx(28.0)
    assert (r["p5_ms"], r["p50_ms"], r["p95_ms"]) == pytest.approx((20.1, 20.8, 25.0))
    assert r["peak_memory_mb"] == 52.75 and r["memory_overall_mb"] == 40.5


def test_errors():
    with pytest.raises(ValueError, match="printed no result; its last lines: .*Failed to load"):
        parse_benchmark_model_output("STARTING!\nERROR: Failed to load model\n")
    with pytest.raises(ValueError, match="adb executable 'no-such-adb' not found"):
        run_on_device("m.tflite", adb="no-such-adb")


def test_cli_adb_without_adb_fails_clearly(tmp_path, capsys, monkeypatch):
    from tflite_bench import cli

    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    monkeypatch.setenv("PATH", str(tmp_path))  # no adb on the PATH
    assert cli.main(["run", str(model), "--adb"]) == 2
    assert "adb executable 'adb' not found" in capsys.readouterr().err


def test_cli_adb_records_go_into_the_same_report(tmp_path, capsys, monkeypatch):
    """A stand-in `adb` that accepts the push and answers the shell command
    with the newer sample: the figures land in the same record and report."""
    import json
    import os

    from conftest import small_cnn
    from keras_compress import to_tflite
    from tflite_bench import cli

    model = tmp_path / "m.tflite"
    to_tflite(small_cnn(), model)
    sample = tmp_path / "output.txt"
    sample.write_text(NEWER)
    log = tmp_path / "calls.txt"
    adb = tmp_path / "adb"
    adb.write_text(f'#!/bin/sh\necho "$@" >> {log}\nif [ "$1" = shell ]; then cat {sample}; fi\n')
    adb.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    capsys.readouterr()
    out = tmp_path / "report"
    assert cli.main(["run", str(model), "--adb", "--runs", "50", "--warmup", "5", "--out", str(out)]) == 0
    calls = log.read_text().splitlines()
    assert calls[0] == f"push {model} /data/local/tmp/m.tflite"
    assert "--num_runs=50" in calls[1] and "--warmup_runs=5" in calls[1] and "--num_threads=1" in calls[1]
    (record,) = json.loads((out / "results.json").read_text())
    assert record["runtime"] == "android" and record["bytes"] == os.path.getsize(model)
    assert record["p50_ms"] == pytest.approx(20.8) and record["max_ms"] == pytest.approx(30.0)
    assert record["runs"] == 50 and record["p90_ms"] is None and record["accuracy"] is None
    assert record["op_counts"]["CONV_2D/float32"] == 2
    assert "| m.tflite | 1 | android |" in (out / "report.md").read_text()


def test_device_record_from_the_older_format(tmp_path):
    from conftest import small_cnn
    from keras_compress import to_tflite
    from tflite_bench import device_record

    model = tmp_path / "m.tflite"
    to_tflite(small_cnn(), model)
    record = device_record(str(model), parse_benchmark_model_output(OLDER), threads=1)
    assert record.threads == 4  # what the device ran, as printed
    assert (record.mean_ms, record.min_ms, record.max_ms) == pytest.approx((0.24125, 0.199, 0.9))
    assert record.p50_ms is None and record.rss_growth_mb == 3.75
