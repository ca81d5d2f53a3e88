"""Comparing benchmark records: terminal and Markdown tables, CSV, JSON, plots."""

import csv
import io
import json
import os

COLUMNS = (
    ("name", "model", "{}"),
    ("threads", "threads", "{}"),
    ("runtime", "runtime", "{}"),
    ("bytes", "bytes", "{:,}"),
    ("gzip_bytes", "gzip bytes", "{:,}"),
    ("int8_compute_fraction", "int8 ops", "{:.0%}"),
    ("p50_ms", "p50 ms", "{:.3f}"),
    ("p90_ms", "p90 ms", "{:.3f}"),
    ("min_ms", "min ms", "{:.3f}"),
    ("init_ms", "init ms", "{:.1f}"),
    ("first_inference_ms", "first ms", "{:.2f}"),
    ("rss_growth_mb", "RSS +MB", "{:.1f}"),
    ("accuracy", "accuracy", "{:.2%}"),
    ("xnnpack", "xnnpack", "{}"),
)


def _cells(record):
    row = record.as_dict() if hasattr(record, "as_dict") else dict(record)
    return [("-" if row.get(key) is None else fmt.format(row[key])) for key, _, fmt in COLUMNS]


def text_table(records):
    """A fixed-width table for the terminal."""
    rows = [[title for _, title, _ in COLUMNS]] + [_cells(r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    )


def markdown_table(records):
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|")
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in records]
    return "\n".join(lines)


def to_csv(records):
    """CSV with one row per record and every field (op counts as JSON)."""
    out = io.StringIO()
    rows = [r.as_dict() for r in records]
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in row.items()})
    return out.getvalue()


def pareto_front(points):
    """Indices of the points no other point beats on both axes.

    Args:
        points: `(cost, accuracy)` pairs: lower cost and higher accuracy win.
    """
    front = []
    for i, (cost, accuracy) in enumerate(points):
        dominated = any(
            c <= cost and a >= accuracy and (c < cost or a > accuracy)
            for j, (c, a) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def plot_tradeoffs(records, folder):
    """PNG plots of accuracy against size and against p50 latency, with the
    Pareto front marked. Needs matplotlib (extra `[plot]`) and accuracies.

    Returns:
        The paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in records if r.accuracy is not None]
    if not records:
        raise ValueError("plot_tradeoffs: no record has an accuracy; pass labelled data.")
    paths = []
    for key, label, filename in (
        ("bytes", "file size (KB)", "accuracy_vs_size.png"),
        ("p50_ms", "p50 latency (ms)", "accuracy_vs_latency.png"),
    ):
        scale = 1 / 1024 if key == "bytes" else 1
        points = [(getattr(r, key) * scale, 100 * r.accuracy) for r in records]
        front = pareto_front(points)
        figure, axes = plt.subplots(figsize=(6, 4))
        axes.scatter(*zip(*points), color="tab:blue")
        for i, ((x, y), r) in enumerate(zip(points, records)):
            # Alternate label offsets so that neighbouring points stay readable.
            axes.annotate(f"{r.name} ({r.threads}t)", (x, y), fontsize=7,
                          xytext=(4, 4 if i % 2 == 0 else -11), textcoords="offset points")
        frontier = sorted(points[i] for i in front)
        axes.plot(*zip(*frontier), color="tab:red", linestyle="--", marker="o", label="Pareto front")
        axes.set_xlabel(label)
        axes.set_ylabel("accuracy (%)")
        axes.legend()
        axes.grid(alpha=0.3)
        figure.tight_layout()
        path = os.path.join(folder, filename)
        figure.savefig(path, dpi=100)
        plt.close(figure)
        paths.append(path)
    return paths


def write_report(records, folder, plots=True):
    """Writes report.md, results.csv, results.json (and the plots) into `folder`."""
    os.makedirs(folder, exist_ok=True)
    written = []
    plot_paths = []
    if plots and any(r.accuracy is not None for r in records):
        plot_paths = plot_tradeoffs(records, folder)
    with open(os.path.join(folder, "report.md"), "w") as f:
        f.write("# tflite-bench report\n\n" + markdown_table(records) + "\n")
        for path in plot_paths:
            f.write(f"\n![{os.path.basename(path)}]({os.path.basename(path)})\n")
    with open(os.path.join(folder, "results.csv"), "w") as f:
        f.write(to_csv(records))
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump([r.as_dict() for r in records], f, indent=1)
    written += [os.path.join(folder, n) for n in ("report.md", "results.csv", "results.json")]
    return written + plot_paths
