"""The benchmark scripts run end to end (tiny settings; figures come from full runs)."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")


def run_script(name, *arguments):
    """Runs benchmarks/<name> with `arguments`; returns its stdout, failing on a non-zero exit."""
    command = [sys.executable, os.path.join(BENCHMARKS, name), *map(str, arguments)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_pruning_benchmark_with_tfmot_peer(tmp_path):
    with_tfmot = importlib.util.find_spec("tensorflow_model_optimization") is not None
    out = tmp_path / "pruning.json"
    stdout = run_script(
        "pruning_benchmark.py", "--seeds", 1, "--epochs", 1, "--finetune-epochs", 2, "--l1-epochs", 1,
        "--end-step", 300, "--pairs", 1, "--out", out, *(["--with-tfmot"] if with_tfmot else []),
    )
    assert "training time per step, pruned / plain" in stdout
    result = json.loads(out.read_text())
    table = result["table"]
    assert table["pruned sparse float"]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert table["pruned sparse float"]["size_ratio"] < 0.35
    assert table["pruned sparse int8"]["size_ratio"] < table["pruned sparse float"]["size_ratio"]
    assert table["L1+threshold sparse float"]["sparsity"] > 0.3
    assert table["baseline float"]["accuracy_mean"] > 80
    assert result["timing"]["ratio_median"] > 0
    if with_tfmot:
        peer = result["tfmot"][0]
        assert peer["pruned_sparsity"] == pytest.approx(0.8, abs=1e-3)
        assert peer["size_ratio_sparse_float"] < 0.35


@pytest.mark.slow
def test_quantization_benchmark_with_tfmot_peer(tmp_path):
    with_tfmot = importlib.util.find_spec("tensorflow_model_optimization") is not None
    out = tmp_path / "quantization.json"
    stdout = run_script(
        "quantization_benchmark.py", "--seeds", 1, "--epochs", 1, "--qat-epochs", 1, "--pairs", 1,
        "--out", out, *(["--with-tfmot"] if with_tfmot else []),
    )
    assert "QAT time per step / plain fit" in stdout
    result = json.loads(out.read_text())
    rows = result["seeds"][0]
    float_bytes = rows["float tflite"]["bytes"]
    for name in ("PTQ int8 tflite", "QAT int8 tflite"):
        assert rows[name]["float_compute_ops"] == []
        assert rows[name]["bytes"] < 0.3 * float_bytes
    assert rows["QAT int8 tflite"]["agreement"] >= 0.99
    assert rows["QAT int8 tflite"]["accuracy"] > 0.8
    assert result["timing"]["ratio_median"] > 0
    if with_tfmot:
        peer = result["tfmot"][0]
        assert peer["bytes_qat_int8"] < 0.3 * peer["bytes_float"]
        assert peer["timing"]["ratio_median"] > 0


@pytest.mark.slow
def test_distillation_unlabelled_benchmark_quick(tmp_path):
    out = tmp_path / "distillation_unlabelled.json"
    stdout = run_script("distillation_unlabelled.py", "--quick", "--out", out)
    assert "(b) distilled, 1,000 labels + 7,000 unlabelled" in stdout
    result = json.loads(out.read_text())
    assert result["teacher"] > 0.8  # one epoch of the demo CNN on 8,000 images
    (row,) = result["seeds"]
    for key in ("labels_only", "distilled"):
        assert 0.5 < row[key] <= 1  # a trained 10-class student, well above chance
    assert row["epochs_labels_only"] == 8  # same number of steps: 125 over 16 per epoch


@pytest.mark.slow
def test_distillation_benchmark(tmp_path):
    out = tmp_path / "distillation.json"
    stdout = run_script(
        "distillation_benchmark.py", "--seeds", 1, "--epochs", 1, "--teacher-epochs", 1, "--pairs", 1,
        "--out", out,
    )
    assert "teacher caching" in stdout
    result = json.loads(out.read_text())
    rows = result["seeds"][0]
    # Same loss, same data order, same initial weights: the same student, up
    # to float rounding (a few of the 2,000 test images at most).
    ours = rows["ours (alpha 0.1, T 4)"]
    assert ours == pytest.approx(rows["hand-written KD (alpha 0.1, T 4)"], abs=0.005)
    assert ours == pytest.approx(rows["keras Distiller, weight 0.1, KLDivergence()"], abs=0.005)
    assert result["caching"]["ratio_median"] > 1  # cached epochs are faster


@pytest.mark.slow
def test_p50_agrees_with_litert_benchmark_tool_within_15_percent():
    """The issue's anchor: on the same model and thread count, in the same run,
    our p50 is within 15% of `benchmark_litert_model`'s median (median of
    alternating rounds), for both runtimes.

    A machine busy with other work can skew one short run; a runtime outside
    the bar gets a second, longer run, and the bar holds if either run meets
    it (a real disagreement misses both)."""
    pattern = r"thread\(s\), (\w+): ratio ours / LiteRT tool median ([\d.]+)"
    outside = {"interpreter", "compiled"}
    attempts = []
    for rounds in (3, 5):
        if not outside:
            break
        stdout = run_script("latency_anchor.py", "--rounds", rounds, "--runs", 100, "--warmup", 10,
                            "--runtimes", ",".join(sorted(outside)))
        medians = {runtime: float(ratio) for runtime, ratio in re.findall(pattern, stdout)}
        assert set(medians) == outside, stdout
        attempts.append(medians)
        outside = {runtime for runtime, ratio in medians.items() if not 0.85 <= ratio <= 1.15}
    assert not outside, f"ratios ours / LiteRT tool outside 0.85-1.15 for {outside}: {attempts}"


@pytest.mark.slow
def test_architecture_matrix_and_conversion_table_scripts(tmp_path):
    out = tmp_path / "matrix.json"
    stdout = run_script("architecture_matrix.py", "--seeds", 1, "--families", "conv1d", "--out", out)
    row = [line for line in stdout.splitlines() if line.startswith("| conv1d |")]
    assert row and row[0].endswith("| yes | yes |"), stdout[-2000:]
    assert json.loads(out.read_text())["conv1d"][0]["qat_float_ops"] == []
    table = run_script("conversion_table.py", "--only", "Dense,elu")
    assert "| Dense | int8: FULLY_CONNECTED |" in table
    assert "| elu | float ELU (of ELU) |" in table  # no int8 kernel: said, not hidden


@pytest.mark.slow
def test_sensitivity_benchmark_prints_a_correlation_per_proxy(tmp_path):
    out = tmp_path / "sensitivity.json"
    stdout = run_script("sensitivity.py", "--seeds", 1, "--epochs", 1, "--sparsities", "0.5,0.9", "--fractions", "0.5",
                        "--out", out)
    found = dict(re.findall(r"^  (magnitude|fisher|taylor) +([+-][\d.]+) \(", stdout, re.M))
    assert set(found) == {"magnitude", "fisher", "taylor"}, stdout
    assert all(-1 <= float(v) <= 1 for v in found.values())
    result = json.loads(out.read_text())
    rows = result["reports"][0]["rows"]
    assert len(rows) == 4 * 2 + 3  # 4 layers x 2 sparsities, and 3 groups (not the output's) x 1 fraction


def test_auto_compress_benchmark_quick_size_budget(tmp_path):
    """About 40 s: one seed, one training epoch, at most two recovery rounds."""
    out = tmp_path / "auto_compress.json"
    stdout = run_script("auto_compress.py", "--quick", "--only", "size", "--out", out)
    assert "(a) size budget: max_bytes = 0.04 x" in stdout
    assert re.search(r"^  chosen bytes / float file +[\d.]+ \+- ", stdout, re.M), stdout
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"size"}
    (row,) = result["runs"]["size"]
    assert row["max_bytes"] == int(0.04 * row["float_bytes"])
    assert row["bytes"] < 0.1 * row["float_bytes"]  # int8 and narrowed, near the 4% budget
    assert row["p50_ratio"] > 0 and row["search_over_training"] > 0
    assert -0.1 < row["test_drop_vs_float_file"] < 0.5  # a trained classifier, not chance
    assert {b["kind"] for b in row["baselines"]} == {"uniform-structured", "uniform-sparsity"}
    assert set(row["correlations"]) == {"magnitude", "fisher", "taylor"}
    assert result["summary"]["size"]["runs"] == 1


@pytest.mark.slow
def test_m_by_n_benchmark(tmp_path):
    out = tmp_path / "m_by_n.json"
    stdout = run_script("m_by_n.py", "--seeds", 1, "--epochs", 1, "--rounds", 1, "--out", out)
    assert "2:4 minus unstructured" in stdout
    row = json.loads(out.read_text())["rows"][0]
    assert row["2:4"]["two_of_four"] is True and row["unstructured 50%"]["two_of_four"] is False
    assert row["unstructured 50%"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert 0.45 < row["2:4"]["sparsity"] <= 0.5
    assert row["2:4"]["accuracy"] > 0.8 and row["unstructured 50%"]["accuracy"] > 0.8


@pytest.mark.slow
def test_low_rank_benchmark(tmp_path):
    out = tmp_path / "low_rank.json"
    stdout = run_script("low_rank.py", "--seeds", 1, "--epochs", 1, "--finetune-epochs", 1, "--rounds", 1,
                        "--runs", 20, "--out", out)
    assert "low-rank minus structured" in stdout
    row = json.loads(out.read_text())["rows"][0]
    # Rank 16 factorizes the 144 x 32 conv and the 800 x 64 Dense of the demo CNN:
    # 56,714 - (4,608 + 51,200) + 16 * (144 + 32) + 16 * (800 + 64) = 17,546.
    assert row["low-rank"]["params"] == 17_546
    assert abs(row["structured"]["params"] - 17_546) <= 0.02 * 17_546
    assert [r["name"] for r in row["report"] if r["skipped"] is None] == [r["name"] for r in row["report"]][1:3]
    for name in ("low-rank", "structured"):
        assert row[name]["accuracy"]["int8"] > 0.8
        assert row[name]["bytes"]["int8"] < 0.5 * row["original"]["bytes"]["int8"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tensorflow_model_optimization") is None, reason="needs the [tfmot] extra")
def test_clustering_benchmark_against_tfmot(tmp_path):
    out = tmp_path / "clustering.json"
    stdout = run_script("clustering.py", "--seeds", 1, "--epochs", 1, "--cluster-epochs", 1, "--qat-epochs", 1,
                        "--train", 2000, "--clusters", 8, "--out", out)
    assert "keras-compress minus tfmot" in stdout
    row = json.loads(out.read_text())["rows"][0]
    # 8 clusters: at most 8 int8 values in each of the 4 kernels where the
    # scales are per tensor; per channel spreads them (the converter's default).
    for label in ("kc CQAT", "kc PTQ per-tensor"):
        assert len(row[label]["distinct"]) == 4 and max(row[label]["distinct"]) <= 8, label
    assert max(row["kc PTQ"]["distinct"]) > 8
    for label in ("kc PTQ", "kc PTQ per-tensor", "kc CQAT", "tfmot PTQ", "tfmot CQAT"):
        assert row[label]["gzip_bytes"] < 0.8 * row["float int8 (no clustering)"]["gzip_bytes"], label
        assert row[label]["accuracy"] > 0.8, label
