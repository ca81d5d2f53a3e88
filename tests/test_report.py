"""tflite_bench.report: run settings, the legend, binary units, readable plot labels."""

import itertools

import pytest

from tflite_bench import report
from tflite_bench.record import BenchmarkRecord


def record(name, kib, accuracy, p50_ms=0.1, threads=1, **fields):
    return BenchmarkRecord(name=name, bytes=round(kib * 1024), gzip_bytes=0, op_counts={},
                           int8_compute_fraction=0.0, constant_bytes=0, sparse_tensors=0,
                           threads=threads, p50_ms=p50_ms, accuracy=accuracy, **fields)


def test_run_settings_list_each_value_once():
    env = {"date": "2026-01-02T03:04:05+00:00", "cpu": "Some CPU", "cpu_count": 8, "litert": "2.3.0",
           "python": "3.11.7", "os": "Linux-6"}
    records = [record("a", 10, 0.9, threads=1, runs=50, warmup=5, xnnpack=True, environment=env),
               record("a", 10, 0.9, threads=2, runs=50, warmup=5, xnnpack=True, environment=env)]
    settings = report.run_settings(records)
    assert settings == {"runs": 50, "warm-up runs": 5, "threads": [1, 2], "runtime": "interpreter",
                        "XNNPACK": True, "date (UTC)": env["date"], "CPU": "Some CPU (8 logical cores)",
                        "LiteRT (ai-edge-litert)": "2.3.0", "Python": "3.11.7", "OS": "Linux-6"}
    text = report.markdown_report(records)
    assert "- threads: 1, 2\n" in text and "- warm-up runs: 5\n" in text
    assert "- CPU: Some CPU (8 logical cores)\n" in text
    later = record("b", 10, 0.9, environment={**env, "date": "2026-01-02T03:09:00+00:00"})
    assert report.run_settings([later, *records])["date (UTC)"] == (
        "2026-01-02T03:04:05+00:00 to 2026-01-02T03:09:00+00:00")
    # A legend line for every column, in the table's order.
    legend = [line for line in text.splitlines() if line.startswith("- **")]
    assert [line.split("**")[1] for line in legend] == [title for _, title, _ in report.COLUMNS]


def test_sizes_are_binary_units_everywhere():
    records = [record("a", 60, 0.9, rss_growth_mb=1.5)]
    for text in (report.text_table(records), report.markdown_report(records)):
        assert "RSS +MiB" in text and "KB" not in text and " MB" not in text and "+MB" not in text
    figure = report.tradeoff_figure(records, "bytes")
    assert figure.axes[0].get_xlabel().startswith("file size (KiB)")
    assert figure.axes[0].collections[0].get_offsets()[0][0] == pytest.approx(60.0)  # bytes / 1024


def _overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_clustered_points_get_numbers_that_do_not_overlap_and_a_key():
    from matplotlib.text import Text

    # Six variants within 0.5 KiB and 0.04 points of accuracy, two of them identical.
    cluster = [record(f"variant_{i}", 60 + 0.1 * i, 0.98 + 0.0002 * (i % 3)) for i in range(5)]
    cluster.append(record("variant_5", 60.2, 0.9804))
    records = [record("baseline_float", 226, 0.981, 0.3), *cluster, record("ptq_float16", 115, 0.981, 0.31)]
    for key in ("bytes", "p50_ms"):
        figure = report.tradeoff_figure(records, key)
        axes = figure.axes[0]
        renderer = figure.canvas.get_renderer()
        numbers = [t for t in axes.texts if t.get_text().isdigit()]
        assert sorted(int(t.get_text()) for t in numbers) == list(range(1, len(records) + 1))
        boxes = []
        for text in numbers:
            text.update_positions(renderer)
            boxes.append(Text.get_window_extent(text, renderer))
        assert not any(_overlap(a, b) for a, b in itertools.combinations(boxes, 2))
        # Each number beside its own point, on none of the others.
        dots = axes.transData.transform(axes.collections[0].get_offsets())
        for text, box in zip(numbers, boxes):
            own = axes.transData.transform(text.xy)
            for x, y in dots:
                if (x, y) != tuple(own):
                    assert not (box.x0 - 3 < x < box.x1 + 3 and box.y0 - 3 < y < box.y1 + 3)
        key = [t.get_text() for t in axes.get_legend().get_texts()]
        assert key[0] == "Pareto front"
        assert sorted(line.split("  ")[1] for line in key[1:]) == sorted(f"{r.name} (1t)" for r in records)
        assert axes.get_xscale() == "log"  # 226 / 60 > LOG_AXIS_RATIO
