import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import small_cnn
from keras_compress import to_tflite
from tflite_bench import cli as bench_cli
from tflite_bench import measure_latency


def test_measure_latency_statistics_are_consistent():
    result = measure_latency(to_tflite(small_cnn()), threads=1, warmup=2, runs=30)
    assert result["runs"] == 30 and result["threads"] == 1
    assert 0 < result["min_ms"] <= result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["min_ms"] <= result["mean_ms"] <= result["max_ms"]
    compiled = measure_latency(to_tflite(small_cnn()), warmup=1, runs=10, runtime="compiled")
    assert compiled["runtime"] == "compiled" and compiled["runs"] == 10
    assert compiled["min_ms"] <= compiled["p50_ms"] <= compiled["max_ms"]
    with pytest.raises(ValueError, match="runs must be an int >= 1"):
        measure_latency(to_tflite(small_cnn()), runs=0)


def test_tflite_bench_cli(tmp_path, capsys):
    path = tmp_path / "m.tflite"
    to_tflite(small_cnn(), path)
    capsys.readouterr()  # Keras 3.6 prints a line while exporting, whatever `verbose` says
    assert bench_cli.main(["run", str(path), "--threads", "1,2", "--runs", "5", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\r\b\x1b")  # captured, not a terminal: no redraws
    assert "1/2 measurements" in out and "2/2 measurements" in out
    rows = [line for line in out.splitlines() if line.startswith("m.tflite")]
    assert len(rows) == 2 and all(f"{os.path.getsize(path):,}" in row for row in rows)
    assert bench_cli.main(["run", str(tmp_path / "missing.tflite")]) == 2


@pytest.mark.slow
def test_demo_quick_writes_a_consistent_report(tmp_path):
    """The README's main command, shortened: every artefact exists and agrees.
    With the [tfmot] extra installed (as in CI), with tfmot's rows too."""
    out = tmp_path / "report"
    with_tfmot = importlib.util.find_spec("tensorflow_model_optimization") is not None
    done = subprocess.run(
        [sys.executable, "-m", "keras_compress.cli", "demo", "--quick", "--out", str(out),
         *(["--with-tfmot"] if with_tfmot else [])],
        capture_output=True, text=True, timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())["results"]
    names = [r["variant"] for r in results]
    tfmot_names = ["tfmot_pruned_sparse_float", "tfmot_pruned_sparse_int8", "tfmot_qat_int8"]
    assert names == [
        "baseline_float", "ptq_dynamic", "ptq_float16", "ptq_int8", "pruned_sparse_float",
        "pruned_sparse_int8", "l1_threshold_sparse_float", "qat_int8", "distilled_student_int8",
        "structured_50_float", "structured_50_int8",
    ] + (tfmot_names if with_tfmot else [])  # fmt: skip
    for r in results:
        assert (out / r["file"]).stat().st_size == r["bytes"]
        assert 0.5 < r["accuracy"] <= 1.0
    by_name = {r["variant"]: r for r in results}
    assert by_name["pruned_sparse_float"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert by_name["pruned_sparse_float"]["bytes"] < 0.4 * by_name["baseline_float"]["bytes"]
    for name in ("ptq_int8", "pruned_sparse_int8", "qat_int8", "distilled_student_int8"):
        assert by_name[name]["int8_compute_fraction"] == 1.0
        assert by_name[name]["bytes"] < 0.3 * by_name["baseline_float"]["bytes"]
    # Structured pruning: a smaller dense file, with no sparse encoding.
    assert by_name["structured_50_float"]["bytes"] < 0.35 * by_name["baseline_float"]["bytes"]
    assert by_name["structured_50_float"]["sparsity"] < 0.05
    assert by_name["structured_50_int8"]["int8_compute_fraction"] == 1.0
    # Fine-tuned after shrink (a frozen copy stayed at its post-shrink accuracy).
    assert by_name["structured_50_float"]["accuracy"] >= by_name["baseline_float"]["accuracy"] - 0.03
    if with_tfmot:  # the peer's rows are measured the same way and are comparable
        assert by_name["tfmot_pruned_sparse_float"]["sparsity"] == pytest.approx(0.8, abs=0.01)
        assert by_name["tfmot_qat_int8"]["int8_compute_fraction"] == 1.0
        assert "[tfmot peer] tfmot quantize_model" in done.stderr
    assert by_name["ptq_float16"]["bytes"] < 0.55 * by_name["baseline_float"]["bytes"]
    report = (out / "report.md").read_text()
    assert "| pruned_sparse_float |" in report and "accuracy_vs_size.png" in report
    assert (out / "accuracy_vs_latency.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "results.csv").read_text().strip().splitlines()) == 1 + len(names)


def test_demo_rejects_bad_arguments(capsys):
    from keras_compress import cli

    assert cli.main(["demo", "--epochs", "0", "--out", os.devnull + "_unused"]) == 2
    assert "epochs must be an int >= 1" in capsys.readouterr().err


def test_demo_with_tfmot_names_the_missing_extra(monkeypatch, capsys):
    from keras_compress import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tf_keras" else real(name, *a))
    assert cli.main(["demo", "--with-tfmot", "--out", os.devnull + "_unused"]) == 2
    assert "with_tfmot needs tf_keras: install the [tfmot] extra" in capsys.readouterr().err
