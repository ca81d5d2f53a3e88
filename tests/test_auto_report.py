"""The report of an `AutoResult` (Markdown, JSON, plot, folder) and the
`keras-compress auto` command, on a result made by hand."""

import json
import os

import keras
import numpy as np
import pytest

import keras_compress
import keras_compress.auto
from keras_compress import cli
from keras_compress.auto import SensitivityReport, SensitivityRow
from keras_compress.auto.report import plot_pareto, save_report, to_markdown
from keras_compress.auto.result import AutoResult, Candidate


def tiny_model():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")], name="tiny")


def candidate(name, kind, bytes_, latency, metric, *, plan=None, feasible=False, predicted=None, note=""):
    quantization = "float" if name == "float" else "int8"
    return Candidate(name=name, kind=kind, plan=plan or {}, quantization=quantization,
                     bytes=bytes_, gzip_bytes=int(bytes_ * 0.8), latency_ms=latency,
                     latency_spread_ms=None if latency is None else (latency * 0.9, latency * 1.2),
                     macs=bytes_ * 3, params=bytes_ // 4, metric=metric, drop=0.9850 - metric,
                     predicted=predicted or {}, feasible=feasible, note=note)


def sensitivity():
    rows = tuple(
        SensitivityRow(layer, "prune", amount, 0.985 - drop, drop, 10,
                       {"magnitude": drop, "fisher": drop, "taylor": 0.0})
        for layer, amount, drop in [("conv", 0.5, 0.001), ("conv", 0.9, 0.02),
                                    ("dense", 0.5, 0.0), ("dense", 0.9, 0.004)]
    ) + (SensitivityRow("conv+dense", "shrink", 0.25, 0.98, 0.005, 40, {}),)
    return SensitivityReport("tiny", "accuracy", 0.985, 2000, rows,
                             {"magnitude": 0.8, "fisher": 0.9123, "taylor": float("nan")})


def make_result(latency=True, with_sensitivity=True):
    ms = (lambda v: v) if latency else (lambda v: None)
    reference = candidate("float", "reference", 84_000, ms(0.5), 0.9850, note="the input model")
    int8 = candidate("int8", "reference", 23_000, ms(0.3), 0.9840)
    best = candidate("round 2", "search", 9_100, ms(0.2), 0.9820,
                     plan={"conv": ("shrink", 0.25), "dense": ("prune", 0.75)},
                     feasible=True, predicted={"bytes": 9_000, "latency_ms": 0.21, "macs": 27_300, "drop": 0.002},
                     note="bytes | best")
    candidates = [
        reference, int8,
        candidate("round 1", "search", 12_000, ms(0.25), 0.9845, plan={"conv": ("prune", 0.5)},
                  predicted={"bytes": 11_800, "drop": 0.001}, note="over budget"),
        best,
        candidate("uniform structured 50%", "uniform-structured", 8_000, ms(0.15), 0.9700, note="too lossy"),
        candidate("uniform sparsity 80%", "uniform-sparsity", 9_500, ms(0.3), 0.9790, feasible=True),
    ]
    return AutoResult(
        model=tiny_model(), tflite=b"TFL3" + bytes(100), best=best, met=True,
        reason="round 2 fits 10,000 bytes with a drop of 0.30 points.",
        budget={"max_bytes": 10_000, "size_by": "raw", "max_latency_ms": 0.4 if latency else None, "threads": 1,
                "max_macs": None, "max_drop": 0.005, "metric": None},
        reference=reference, candidates=candidates, sensitivity=sensitivity() if with_sensitivity else None,
        cost_models={"bytes": {"resource": "bytes", "features": ["params", "units"], "coefficients": [4000.0, 1.0, 27.0],
                               "points": 12, "max_relative_error": 0.0123},
                     "latency_ms": {"resource": "latency_ms", "features": ["macs", "activations"],
                                    "coefficients": [0.004, 2e-9, 0.0], "points": 8, "max_relative_error": 0.1},
                     "search": {"method": "exhaustive", "combinations": 512, "exhaustive_predicted_drop": 0.4,
                                "greedy_predicted_drop": 0.5}},
        seconds={"sensitivity": 12.34, "cost_model": 3.0, "search": 100.0, "baselines": 40.0, "total": 155.34},
    )


def test_markdown_has_the_figures():
    result = make_result()
    text = to_markdown(result, plot="pareto.png")
    best = result.best
    assert "Budget met" in text and result.reason in text
    assert "max bytes: 10,000" in text and "max p50 latency: 0.4 ms at 1 thread" in text
    assert "0.50 points of accuracy" in text and "at least 98.00%" in text
    # Ratios to the float file, computed here.
    assert f"| 9,100 | {9_100 / 84_000:.3g}× |" in text
    assert f"| 0.200 | {0.2 / 0.5:.3g}× |" in text
    assert f"| 23,000 | {23_000 / 84_000:.3g}× |" in text  # the int8 reference
    assert f"{best.gzip_bytes:,}" in text and f"{best.macs:,}" in text and f"{best.params:,}" in text
    assert "98.20%" in text and f"{100 * (0.985 - 0.982):+.2f} pts" in text
    # The plan, every candidate with its number, the note's pipe escaped.
    assert "| conv | shrink | 0.25 | remove 25% of the units |" in text
    assert "| dense | prune | 0.75 | prune to 75% sparsity |" in text
    for i, c in enumerate(result.candidates, 1):
        assert f"| {i} | " in text and c.name in text
    assert "bytes \\| best" in text
    assert "| 5 | uniform structured 50% | uniform-structured | 8,000 | 0.150 (0.135–0.180) |" in text
    assert "yes" in text and "too lossy" in text
    # Cost models, predictions, timings, sensitivity.
    assert "| bytes | 12 converted files | 4000 + 1 x params + 27 x units | 1.23% |" in text
    assert "| latency_ms | 8 converted files | 0.004 + 2e-09 x macs | 10.00% |" in text  # a zero slope is left out
    assert "exhaustive over 512 combinations" in text and "+40.00 pts (exhaustive) against +50.00 pts (greedy)" in text
    assert "9,000 / 9,100" in text
    assert "| search | 100.0 |" in text and "| total | 155.3 |" in text
    assert result.sensitivity.table().split("\n\nSpearman")[0] in text and "+nan" not in text
    assert "| fisher | +0.912 |" in text and "| taylor | - |" in text
    assert "![Pareto plot](pareto.png)" in text
    assert "pareto.png" not in to_markdown(result)


def test_markdown_without_latency_or_sensitivity_and_not_met():
    result = make_result(latency=False, with_sensitivity=False)
    result.met, result.reason = False, "nothing fits 10,000 bytes; the closest is 12,000."
    text = to_markdown(result)
    assert "Budget not met" in text and "closest is 12,000" in text
    assert "No sensitivity analysis." in text and "max p50 latency" not in text


def test_json_round_trips():
    result = make_result()
    loaded = json.loads(result.to_json())
    assert loaded["best"]["bytes"] == 9_100
    assert loaded["best"]["plan"] == {"conv": ["shrink", 0.25], "dense": ["prune", 0.75]}
    assert loaded["met"] is True and loaded["budget"]["max_drop"] == 0.005
    assert [c["name"] for c in loaded["candidates"]] == [c.name for c in result.candidates]
    assert [c["metric"] for c in loaded["candidates"]] == [c.metric for c in result.candidates]
    assert loaded["candidates"][0]["latency_spread_ms"] == pytest.approx([0.45, 0.6])
    assert loaded["cost_models"]["bytes"]["max_relative_error"] == 0.0123
    assert loaded["seconds"]["total"] == 155.34
    assert loaded["sensitivity"]["baseline"] == 0.985 and len(loaded["sensitivity"]["rows"]) == 5


def test_summary():
    result = make_result()
    text = result.summary()
    assert str(result) == text
    assert "budget met" in text and "round 2" in text
    assert f"{9_100 / 84_000:.3g}× the reference's 84,000" in text
    assert f"{0.2 / 0.5:.3g}× the reference's 0.500 ms" in text
    assert "98.20% (drop +0.30 points)" in text and "155.3 s" in text
    no_latency = make_result(latency=False).summary()
    assert "latency" not in no_latency and "NOT met" not in no_latency


def test_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    for latency in (True, False):
        path = tmp_path / f"pareto_{latency}.png"
        assert plot_pareto(make_result(latency=latency), str(path)) == str(path)
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_save_report_writes_the_folder(tmp_path):
    result = make_result()
    out = tmp_path / "a" / "report"
    paths = result.save(str(out))
    assert set(paths) >= {"model", "tflite", "json", "markdown"}
    assert all(os.path.isfile(p) and os.path.dirname(p) == str(out) for p in paths.values())
    assert (out / "model.tflite").read_bytes() == result.tflite
    assert json.loads((out / "report.json").read_text())["best"]["name"] == "round 2"
    loaded = keras.models.load_model(out / "model.keras")
    x = np.ones((2, 4), "float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), result.model.predict(x, verbose=0), rtol=1e-6)
    markdown = (out / "report.md").read_text()
    if "plot" in paths:
        assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG" and "(pareto.png)" in markdown
    else:
        assert "pareto.png" not in markdown


def test_save_report_without_matplotlib(tmp_path, monkeypatch, caplog):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with pytest.raises(ImportError, match=r'pip install "keras-compress\[plot\]"'):
        plot_pareto(make_result(), str(tmp_path / "p.png"))
    with caplog.at_level("WARNING", logger="keras_compress"):
        paths = save_report(make_result(), str(tmp_path / "out"))
    assert "plot" not in paths and not (tmp_path / "out" / "pareto.png").exists()
    assert "pareto.png" in caplog.text and "keras-compress[plot]" in caplog.text


# The command.


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.keras"
    tiny_model().save(path)
    return str(path)


def test_cli_auto_needs_a_budget(model_file, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["auto", model_file, "--data", "mnist"])
    assert exit_.value.code == 2
    assert "--max-bytes, --max-latency-ms, --max-macs" in capsys.readouterr().err


def test_cli_auto_names_a_missing_model_file(tmp_path, capsys):
    missing = str(tmp_path / "nowhere.keras")
    assert cli.main(["auto", missing, "--data", "mnist", "--max-bytes", "1000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("keras-compress auto: ") and "nowhere.keras" in err and "not found" in err


def test_cli_auto_names_the_missing_arrays(tmp_path, model_file, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, inputs=np.zeros((4, 4)), labels=np.zeros(4))
    assert cli.main(["auto", model_file, "--data", str(bad), "--max-bytes", "1000"]) == 2
    err = capsys.readouterr().err
    assert "keras-compress auto: --data" in err and "bad.npz" in err
    assert "x and y" in err and "x_train and y_train" in err and "inputs, labels" in err
    half = tmp_path / "half.npz"
    np.savez(half, x=np.zeros((4, 4)))
    assert cli.main(["auto", model_file, "--data", str(half), "--max-bytes", "1000"]) == 2
    assert "has array x without y" in capsys.readouterr().err
    (tmp_path / "junk.npz").write_text("not a zip")
    assert cli.main(["auto", model_file, "--data", str(tmp_path / "junk.npz"), "--max-bytes", "1000"]) == 2
    assert "not a readable .npz file" in capsys.readouterr().err
    assert cli.main(["auto", model_file, "--data", str(tmp_path / "none.npz"), "--max-bytes", "1000"]) == 2
    assert "none.npz" in capsys.readouterr().err


def fake_search(calls):
    def auto_compress(model, data, validation_data=None, **options):
        calls.append({"model": model, "data": data, "validation_data": validation_data, **options})
        result = make_result()
        if options.get("out") is not None:
            result.save(options["out"])
        return result

    return auto_compress


def test_cli_auto_runs_the_search_on_mnist(tmp_path, model_file, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(keras_compress.auto, "auto_compress", fake_search(calls), raising=False)
    out = tmp_path / "report"
    assert cli.main(["auto", model_file, "--data", "mnist", "--max-bytes", "10000", "--max-drop", "0.01",
                     "--out", str(out), "--no-baselines", "--epochs", "2"]) == 0
    (call,) = calls
    assert isinstance(call["model"], keras.Model) and call["model"].name == "tiny"
    (x, y), (x_val, y_val) = call["data"], call["validation_data"]
    assert x.shape == (8000, 28, 28, 1) and len(y) == 8000
    assert x_val.shape == (2000, 28, 28, 1) and len(y_val) == 2000
    assert call["max_bytes"] == 10_000 and call["max_drop"] == 0.01 and call["max_latency_ms"] is None
    assert call["size_by"] == "raw" and call["baselines"] is False and call["epochs"] == 2
    assert call["out"] == str(out) and call["seed"] == 0 and call["threads"] == 1
    assert call["quantization"] == "int8" and call["strip_names"] is True
    printed = capsys.readouterr().out
    assert make_result().summary() in printed and str(out) in printed
    assert (out / "report.md").is_file()


def test_cli_auto_reads_npz_and_validation(tmp_path, model_file, monkeypatch):
    calls = []
    monkeypatch.setattr(keras_compress.auto, "auto_compress", fake_search(calls), raising=False)
    np.savez(tmp_path / "d.npz", x_train=np.zeros((10, 4)), y_train=np.zeros(10),
             x_val=np.ones((3, 4)), y_val=np.ones(3))
    np.savez(tmp_path / "v.npz", x_test=np.ones((5, 4)), y_test=np.ones(5))
    base = ["auto", model_file, "--max-latency-ms", "0.5", "--out", str(tmp_path / "o")]
    assert cli.main(base + ["--data", str(tmp_path / "d.npz")]) == 0
    assert calls[-1]["data"][0].shape == (10, 4) and calls[-1]["validation_data"][0].shape == (3, 4)
    assert calls[-1]["max_latency_ms"] == 0.5 and calls[-1]["max_bytes"] is None and calls[-1]["max_drop"] == 0.005
    assert cli.main(base + ["--data", str(tmp_path / "d.npz"), "--quantization", "int8,float", "--keep-names"]) == 0
    assert calls[-1]["quantization"] == ("int8", "float") and calls[-1]["strip_names"] is False
    assert cli.main(base + ["--data", str(tmp_path / "d.npz"), "--validation-data", str(tmp_path / "v.npz")]) == 0
    assert calls[-1]["validation_data"][0].shape == (5, 4)
    np.savez(tmp_path / "plain.npz", x=np.zeros((6, 4)), y=np.zeros(6))
    assert cli.main(base + ["--data", str(tmp_path / "plain.npz")]) == 0
    assert calls[-1]["data"][0].shape == (6, 4) and calls[-1]["validation_data"] is None
