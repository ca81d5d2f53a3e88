"""Comparing benchmark records: terminal and Markdown tables, CSV, JSON, plots.

Sizes are binary everywhere: bytes, KiB (1,024 bytes) and MiB (2**20 bytes).
"""

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
    ("rss_growth_mb", "RSS +MiB", "{:.1f}"),
    ("accuracy", "accuracy", "{:.2%}"),
    ("xnnpack", "xnnpack", "{}"),
)

# What each column means, in the order of COLUMNS (the legend under report.md's table).
LEGEND = {
    "model": "the file's name (or the name given).",
    "threads": "threads the runtime ran with.",
    "runtime": "`interpreter` (LiteRT's Interpreter), `compiled` (LiteRT's CompiledModel) "
               "or `android` (TensorFlow's benchmark_model on a device).",
    "bytes": "the file's size in bytes.",
    "gzip bytes": "its size after gzip at level 9, the size of a compressed download.",
    "int8 ops": "share of the compute ops (QUANTIZE and DEQUANTIZE left out) whose output is int8.",
    "p50 ms": "median latency of one invoke over the timed runs, after the warm-up.",
    "p90 ms": "90th percentile of the same latencies.",
    "min ms": "fastest invoke.",
    "init ms": "building the runtime and allocating its tensors.",
    "first ms": "the first invoke after allocation (cold caches).",
    "RSS +MiB": "resident memory growth over loading and allocation, in MiB (2**20 bytes).",
    "accuracy": "top-1 accuracy on the labelled data given (argmax of the output against the "
                "labels), computed in the same runtime; `-` without data.",
    "xnnpack": "whether the XNNPACK delegate ran; False: LiteRT's builtin kernels (asked for, or "
               "after XNNPACK could not prepare the model).",
}
# The run settings report.md lists: (title, how to read them from a record's dict).
SETTINGS = (
    ("runs", lambda r: r.get("runs")),
    ("warm-up runs", lambda r: r.get("warmup")),
    ("threads", lambda r: r.get("threads")),
    ("runtime", lambda r: r.get("runtime")),
    ("XNNPACK", lambda r: r.get("xnnpack")),
    ("date (UTC)", lambda r: (r.get("environment") or {}).get("date")),
    ("CPU", lambda r: _cpu_text(r.get("environment") or {})),
    ("LiteRT (ai-edge-litert)", lambda r: (r.get("environment") or {}).get("litert")),
    ("Python", lambda r: (r.get("environment") or {}).get("python")),
    ("OS", lambda r: (r.get("environment") or {}).get("os")),
)


def _cpu_text(environment):
    if "device" in environment:
        return environment["device"]
    cpu, count = environment.get("cpu"), environment.get("cpu_count")
    return None if cpu is None else (f"{cpu} ({count} logical cores)" if count else cpu)


def _row(record):
    return record.as_dict() if hasattr(record, "as_dict") else dict(record)


def run_settings(records):
    """`{setting: value}` of the runs behind `records`: runs, warm-up, threads,
    runtime, XNNPACK, date, CPU, LiteRT, Python and OS. A setting that differs
    between records lists each value once, in order (the dates: first to
    last); one no record knows is `None`.
    """
    settings = {}
    for title, read in SETTINGS:
        values = []
        for record in records:
            value = read(_row(record))
            if value is not None and value not in values:
                values.append(value)
        if title == "date (UTC)" and len(values) > 1:  # records measured one after another: the span
            values = [f"{min(values)} to {max(values)}"]
        settings[title] = None if not values else values[0] if len(values) == 1 else values
    return settings


def settings_markdown(records):
    """The run settings (`run_settings`) as a Markdown list."""
    def text(value):
        if value is None:
            return "-"
        return ", ".join(map(str, value)) if isinstance(value, list) else str(value)

    return "\n".join(f"- {title}: {text(value)}" for title, value in run_settings(records).items())


def legend_markdown():
    """What each column of the tables means, as a Markdown list."""
    return "\n".join(f"- **{title}**: {LEGEND[title]}" for _, title, _ in COLUMNS)


def markdown_sections(records):
    """Two Markdown sections: the run settings, then the table and its legend."""
    return (f"## Settings\n\n{settings_markdown(records)}\n\n## Measurements\n\n"
            f"{markdown_table(records)}\n\n{legend_markdown()}\n")


def markdown_report(records, title="tflite-bench report"):
    """report.md's text: a title, the run settings, the table and its legend."""
    return f"# {title}\n\n{markdown_sections(records)}"


def _cells(record):
    row = _row(record)
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


# The two trade-off plots: (record field, axis label, scale to the axis unit, file name).
PLOTS = (
    ("bytes", "file size (KiB)", 1 / 1024, "accuracy_vs_size.png"),
    ("p50_ms", "p50 latency (ms)", 1, "accuracy_vs_latency.png"),
)
# A size or latency axis turns logarithmic when its largest value is this many times its smallest.
LOG_AXIS_RATIO = 3
# Where a point's number may go: offsets in points, nearest first.
_LABEL_OFFSETS = [(r * dx, r * dy) for r in (7, 12, 18, 26, 36, 48)
                  for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))]


def plot_tradeoffs(records, folder):
    """PNG plots of accuracy against size (KiB) and against p50 latency, with
    the Pareto front marked. Needs matplotlib (extra `[plot]`) and accuracies.

    Each point carries a number, placed where it overlaps no other number or
    point, and a key beside the plot names the model of each number, so every
    label stays readable where variants cluster.

    Returns:
        The paths written.
    """
    import matplotlib.pyplot as plt

    paths = []
    for key, _, _, filename in PLOTS:
        figure = tradeoff_figure(records, key)
        path = os.path.join(folder, filename)
        figure.savefig(path, dpi=figure.dpi, bbox_inches="tight")
        plt.close(figure)
        paths.append(path)
    return paths


def tradeoff_figure(records, key="bytes"):
    """The matplotlib figure of one trade-off plot: accuracy (%) against
    `key` (`"bytes"`, shown in KiB, or `"p50_ms"`), numbered points, the
    Pareto front, and a key from number to model beside the axes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    records = [r for r in records if r.accuracy is not None]
    if not records:
        raise ValueError("plot_tradeoffs: no record has an accuracy; pass labelled data.")
    (label, scale), = [(label, scale) for k, label, scale, _ in PLOTS if k == key]
    points = [(getattr(r, key) * scale, 100 * r.accuracy) for r in records]
    # Numbers follow the x axis, so the key reads from small to large.
    order = sorted(range(len(records)), key=lambda i: (points[i][0], -points[i][1]))
    number = {i: n for n, i in enumerate(order, 1)}

    # A fixed axes box: the number placement below measures in display
    # units, which a later tight_layout would change.
    figure = plt.figure(figsize=(9.5, 4.5), dpi=100)
    axes = figure.add_axes((0.08, 0.12, 0.56, 0.8))
    axes.scatter(*zip(*points), color="tab:blue", zorder=2)
    frontier = sorted(points[i] for i in pareto_front(points))
    axes.plot(*zip(*frontier), color="tab:red", linestyle="--", zorder=1)
    xs = [x for x, _ in points]
    if min(xs) > 0 and max(xs) / min(xs) >= LOG_AXIS_RATIO:
        axes.set_xscale("log")
        axes.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0, 7.0)))
        axes.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.margins(0.08, 0.12)
    axes.autoscale_view()
    axes.set_xlabel(label + (", log scale" if axes.get_xscale() == "log" else ""))
    axes.set_ylabel("accuracy (%)")
    axes.grid(alpha=0.3)
    _place_numbers(figure, axes, points, number)

    entries = [Line2D([], [], color="tab:red", linestyle="--")] + [Line2D([], [], linestyle="none")] * len(order)
    names = ["Pareto front"] + [f"{number[i]}  {records[i].name} ({records[i].threads}t)" for i in order]
    axes.legend(entries, names, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8,
                handlelength=1.5, borderaxespad=0, frameon=False)
    return figure


def _place_numbers(figure, axes, points, number):
    """Annotates each point with its number at the first offset where the
    number overlaps no number placed before it and no point."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    renderer = figure.canvas.get_renderer()
    to_display = axes.transData.transform
    radius = 4  # a marker's half-width in pixels, about
    dots = [Bbox([[x - radius, y - radius], [x + radius, y + radius]])
            for x, y in to_display(points)]
    inside = axes.get_window_extent(renderer)
    taken = list(dots)
    for i in sorted(number, key=number.get):
        for dx, dy in _LABEL_OFFSETS:
            text = axes.annotate(
                str(number[i]), points[i], xytext=(dx, dy), textcoords="offset points", fontsize=8,
                ha="center", va="center",
                arrowprops=None if abs(dx) + abs(dy) <= 14 else dict(arrowstyle="-", color="0.5", lw=0.5),
            )
            text.update_positions(renderer)
            box = Text.get_window_extent(text, renderer)  # the number, without its leader line
            free = not any(box.overlaps(other) for other in taken)
            if free and inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1):
                break
            if (dx, dy) != _LABEL_OFFSETS[-1]:
                text.remove()
        taken.append(box)


def op_profile_figure(profile):
    """The matplotlib figure of an `OpProfile`: one horizontal bar per op
    (its estimated ms, in execution order from the top), labelled with the
    op's index and type and its share, and the whole invoke time and the
    sum of the op times in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = profile.ops
    unit, scale = profile.unit()
    unit = "µs" if unit == "us" else unit
    figure = plt.figure(figsize=(8, 1.2 + 0.25 * len(ops)), dpi=100)
    axes = figure.add_subplot()
    positions = range(len(ops))
    axes.barh(positions, [op.ms * scale for op in ops], color="tab:blue")
    axes.set_yticks(list(positions), [f"{op.index}  {op.type}" for op in ops], fontsize=8)
    axes.invert_yaxis()
    for position, op in zip(positions, ops):
        axes.annotate(f" {op.share:.0%}", (op.ms * scale, position), va="center", fontsize=7)
    axes.margins(x=0.12)
    axes.set_xlabel(f"estimated time per invoke ({unit})")
    axes.set_title(f"{profile.name}, {profile.threads} thread{'s' if profile.threads > 1 else ''}: ops sum to "
                   f"{profile.op_sum_ms * scale:.4g} {unit}, whole invoke {profile.whole_ms * scale:.4g} {unit} "
                   f"(ratio {profile.ratio:.2f})",
                   fontsize=9)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def plot_op_profile(profile, path):
    """Writes `op_profile_figure(profile)` as a PNG at `path`. Needs
    matplotlib (extra `[plot]`). Returns the path."""
    import matplotlib.pyplot as plt

    figure = op_profile_figure(profile)
    figure.savefig(path, dpi=figure.dpi, bbox_inches="tight")
    plt.close(figure)
    return path


def op_profile_markdown(profiles, plot_names=None):
    """A Markdown section with each `OpProfile`'s table and validation line,
    and its bar chart where `plot_names` (one file name per profile, or
    `None`) gives one."""
    lines = ["## Per-op profiles", "",
             "Estimated time per op: each op timed alone as a single-op model (fed the values it sees in "
             "the whole model), the fixed invoke cost of a trivial model taken off; checked by the sum of "
             "the op times against the whole model's invoke time, measured in the same interleaved rounds. "
             "XNNPACK delegates each single-op model on its own, so work it fuses or shares across ops "
             "shows as a sum below or above 1.", ""]
    for number, profile in enumerate(profiles):
        lines += [f"### {profile.name}, {profile.threads} thread{'s' if profile.threads > 1 else ''}, "
                  f"XNNPACK {'on' if profile.xnnpack else 'off'}", "", profile.markdown(), ""]
        if plot_names and plot_names[number]:
            lines += [f"![{plot_names[number]}]({plot_names[number]})", ""]
    return "\n".join(lines)


def write_op_profile(profile, folder, plot=True):
    """Writes one `OpProfile` into `folder`: op_profile.md (its table and
    validation line), op_profiles.json and, with `plot`, op_profile.png.
    Returns the paths written."""
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, n) for n in ("op_profile.md", "op_profiles.json")]
    if plot:
        paths.append(plot_op_profile(profile, os.path.join(folder, "op_profile.png")))
    with open(paths[0], "w") as f:
        plots = ["op_profile.png"] if plot else None
        f.write("# tflite-bench per-op profile\n\n" + op_profile_markdown([profile], plots) + "\n")
    with open(paths[1], "w") as f:
        json.dump([profile.as_dict()], f, indent=1)
    return paths


def write_report(records, folder, plots=True, profiles=()):
    """Writes report.md (run settings, table, legend), results.csv,
    results.json (the records, each with its `warmup` and `environment`)
    and the plots into `folder`.

    `profiles` (`OpProfile`s from `profile_ops`, optional) add a per-op
    section to report.md, `op_profiles.json`, and a bar chart per profile
    (`op_profile_<n>.png`) when `plots` is on.
    """
    os.makedirs(folder, exist_ok=True)
    tradeoff_paths = []
    if plots and any(r.accuracy is not None for r in records):
        tradeoff_paths = plot_tradeoffs(records, folder)
    profiles = list(profiles)
    profile_plots = [f"op_profile_{n}.png" for n in range(1, len(profiles) + 1)] if plots else None
    profile_paths = [plot_op_profile(p, os.path.join(folder, n)) for p, n in zip(profiles, profile_plots or [])]
    with open(os.path.join(folder, "report.md"), "w") as f:
        f.write(markdown_report(records))
        for path in tradeoff_paths:
            f.write(f"\n![{os.path.basename(path)}]({os.path.basename(path)})\n")
        if profiles:
            f.write("\n" + op_profile_markdown(profiles, profile_plots))
    with open(os.path.join(folder, "results.csv"), "w") as f:
        f.write(to_csv(records))
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump([r.as_dict() for r in records], f, indent=1)
    written = [os.path.join(folder, n) for n in ("report.md", "results.csv", "results.json")]
    if profiles:
        with open(os.path.join(folder, "op_profiles.json"), "w") as f:
            json.dump([p.as_dict() for p in profiles], f, indent=1)
        written.append(os.path.join(folder, "op_profiles.json"))
    return written + tradeoff_paths + profile_paths
