"""The report of an `AutoResult`: Markdown, the Pareto plot, and the folder
`AutoResult.save` writes (model, `.tflite`, JSON, plot, Markdown).

Candidates are numbered in the order of `AutoResult.candidates`, from 1; the
same numbers label the points of the plot and the rows of the tables.
"""

import logging
import math
import os

logger = logging.getLogger("keras_compress")

# Plot markers and colours per candidate kind.
KIND_STYLES = {
    "reference": ("s", "black"),
    "search": ("o", "tab:blue"),
    "uniform-structured": ("^", "tab:orange"),
    "uniform-sparsity": ("v", "tab:green"),
}
_OTHER_STYLE = ("D", "tab:gray")
PLOT_FILE = "pareto.png"


def _is_accuracy(result):
    metric = (result.budget or {}).get("metric")
    return metric is None or _metric_name(metric) == "accuracy"


def _metric_name(metric):
    if metric is None:
        return "accuracy"
    return metric if isinstance(metric, str) else getattr(metric, "__name__", type(metric).__name__)


def _fmt_metric(result, value):
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if _is_accuracy(result) else f"{value:.4f}"


def _fmt_drop(result, value):
    if value is None:
        return "-"
    return f"{100 * value:+.2f} pts" if _is_accuracy(result) else f"{value:+.4f}"


def _ratio(value, reference):
    if value is None or not reference:
        return "-"
    return f"{value / reference:.3g}×"


def _int(value):
    return "-" if value is None else f"{int(value):,}"


def _ms(value):
    return "-" if value is None else f"{value:.3f}"


def _number(result, candidate):
    """The candidate's number (1-based position in `result.candidates`), or None."""
    for i, c in enumerate(result.candidates, 1):
        if c is candidate:
            return i
    for i, c in enumerate(result.candidates, 1):
        if c == candidate:
            return i
    return None


def _size(result, candidate):
    """The size the budget reads: gzip bytes with `size_by="gzip"`, else bytes."""
    return candidate.gzip_bytes if (result.budget or {}).get("size_by") == "gzip" else candidate.bytes


def budget_lines(result):
    """The budget as Markdown list items (only the limits that were set)."""
    budget = result.budget or {}
    lines = []
    if budget.get("max_bytes") is not None:
        by = budget.get("size_by") or "raw"
        lines.append(f"- max bytes: {_int(budget['max_bytes'])} ({'gzip-compressed' if by == 'gzip' else 'raw'} file)")
    if budget.get("max_latency_ms") is not None:
        threads = budget.get("threads")
        lines.append(f"- max p50 latency: {budget['max_latency_ms']:g} ms"
                     + (f" at {threads} thread{'s' if threads != 1 else ''}" if threads is not None else ""))
    if budget.get("max_macs") is not None:
        lines.append(f"- max MACs: {_int(budget['max_macs'])}")
    if budget.get("max_drop") is not None:
        drop = budget["max_drop"]
        shown = f"{100 * drop:.2f} points of accuracy" if _is_accuracy(result) else f"{drop:g}"
        lines.append(f"- max {_metric_name(budget.get('metric'))} drop: {shown} "
                     f"(at least {_fmt_metric(result, result.reference.metric - drop)})")
    return lines


def _plan_text(action, amount):
    if action == "shrink":
        return f"remove {amount:.0%} of the units"
    if action == "prune":
        return f"prune to {amount:.0%} sparsity"
    return f"{action} {amount}"


def to_markdown(result, plot=None):
    """The report of `result` as Markdown.

    Args:
        result: an `AutoResult`.
        plot: the Pareto plot's path relative to the report (`"pareto.png"`),
            linked when given; None: no image.
    """
    ref, best = result.reference, result.best
    accuracy = _is_accuracy(result)
    lines = ["# keras-compress auto", ""]
    lines += ["## Budget", ""] + budget_lines(result) + [""]
    lines += [f"**{'Budget met' if result.met else 'Budget not met'}.** {result.reason}", ""]

    # Reference(s) and best.
    lines += ["## Reference and best", "",
              "| # | model | kind | quantization | bytes | × float | gzip bytes | p50 ms | × float "
              "| MACs | params | " + _metric_name((result.budget or {}).get("metric")) + " | drop |",
              "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    shown = [ref] + [c for c in result.candidates if c.kind == "reference" and c is not ref and c != ref]
    if best is not ref and best != ref:
        shown.append(best)
    for c in shown:
        name = f"**{c.name}** (best)" if c is best or c == best else c.name
        number = _number(result, c)
        lines.append(
            f"| {number or '-'} | {name} | {c.kind} | {c.quantization} "
            f"| {_int(c.bytes)} | {_ratio(c.bytes, ref.bytes)} | {_int(c.gzip_bytes)} | {_ms(c.latency_ms)} | {_ratio(c.latency_ms, ref.latency_ms)} "
            f"| {_int(c.macs)} | {_int(c.params)} | {_fmt_metric(result, c.metric)} | {_fmt_drop(result, c.drop)} |")
    lines += ["", "× float: the ratio to the reference float file (bytes, p50 latency)"
              + ("; drop in points of accuracy (positive: worse)." if accuracy else "; drop: positive is worse."),
              ""]

    # The best plan.
    lines += ["## Best plan", "", f"{best.name} ({best.kind}), quantization `{best.quantization}`."]
    if best.plan:
        lines += ["", "| group / layer | action | amount | change |", "|---|---|---:|---|"]
        for layer, (action, amount) in best.plan.items():
            lines.append(f"| {layer} | {action} | {amount:.4g} | {_plan_text(action, amount)} |")
    else:
        lines += ["", "No layer changed."]
    lines.append("")

    # Every candidate.
    lines += ["## Candidates", "",
              "| # | name | kind | bytes | p50 ms (min–p90) | MACs | metric | drop | feasible | note |",
              "|---:|---|---|---:|---:|---:|---:|---:|:---:|---|"]
    for i, c in enumerate(result.candidates, 1):
        latency = _ms(c.latency_ms)
        if c.latency_ms is not None and c.latency_spread_ms:
            latency += " (" + "–".join(f"{v:.3f}" for v in c.latency_spread_ms) + ")"
        name = f"**{c.name}**" if c is best or c == best else c.name
        note = (c.note or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {i} | {name} | {c.kind} | {_int(c.bytes)} | {latency} | {_int(c.macs)} "
                     f"| {_fmt_metric(result, c.metric)} | {_fmt_drop(result, c.drop)} "
                     f"| {'yes' if c.feasible else 'no'} | {note} |")
    lines.append("")
    if plot:
        lines += [f"![Pareto plot]({plot})", ""]

    # Cost models.
    lines += ["## Cost models", ""]
    models = {k: v for k, v in (result.cost_models or {}).items() if isinstance(v, dict) and "features" in v}
    if models:
        lines += ["| resource | fitted on | formula | leave-one-out error (largest) |", "|---|---:|---|---:|"]
        for resource, fit in models.items():
            coefficients = fit.get("coefficients") or []
            terms = [f"{coefficients[0]:.4g}"] if coefficients else []
            terms += [f"{c:.4g} x {f}" for c, f in zip(coefficients[1:], fit.get("features", [])) if c]
            lines.append(f"| {resource} | {fit.get('points', '-')} converted files | {' + '.join(terms)} "
                         f"| {_cost_cell('error', fit.get('max_relative_error'))} |")
        lines.append("")
        lines.append("MACs and parameters are counted exactly from the layers' shapes; no fit.")
    else:
        lines.append("No cost model was validated.")
    search = (result.cost_models or {}).get("search")
    if isinstance(search, dict) and search:
        text = f"Allocation: {search.get('method', '?')} over {search.get('combinations', '?')} combinations"
        if "exhaustive_predicted_drop" in search:
            text += (f"; predicted drop of the best plan {_fmt_drop(result, search['exhaustive_predicted_drop'])} "
                     f"(exhaustive) against {_fmt_drop(result, search['greedy_predicted_drop'])} (greedy)")
        lines += ["", text + "."]
    predicted = [(i, c) for i, c in enumerate(result.candidates, 1) if c.predicted]
    if predicted:
        fields = [f for f in ("bytes", "latency_ms", "macs", "drop") if any(f in c.predicted for _, c in predicted)]
        titles = {"bytes": "bytes", "latency_ms": "p50 ms", "macs": "MACs", "drop": "drop"}
        lines += ["", "Predicted before recovery / measured after:", "",
                  "| # | name | " + " | ".join(titles[f] for f in fields) + " |",
                  "|---:|---|" + "---:|" * len(fields)]
        for i, c in predicted:
            cells = []
            for f in fields:
                guess, got = c.predicted.get(f), getattr(c, f)
                show = {"bytes": _int, "macs": _int, "latency_ms": _ms}.get(f, lambda v: _fmt_drop(result, v))
                cells.append(f"{show(guess) if guess is not None else '-'} / {show(got) if got is not None else '-'}")
            lines.append(f"| {i} | {c.name} | " + " | ".join(cells) + " |")
    lines.append("")

    # Stage timings.
    lines += ["## Time", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in (result.seconds or {}).items()]
    lines.append("")

    # Sensitivity.
    lines += ["## Sensitivity", ""]
    if result.sensitivity is None:
        lines.append("No sensitivity analysis.")
    else:
        correlations = getattr(result.sensitivity, "correlations", None) or {}
        table = result.sensitivity.table()
        if correlations:  # shown as a table below, instead of table()'s closing sentence
            table = "\n".join(line for line in table.splitlines() if not line.startswith("Spearman")).rstrip()
        lines.append(table)
        if correlations:
            lines += ["", "| proxy | Spearman rank correlation with the measured drops |", "|---|---:|"]
            lines += [f"| {proxy} | {_corr(value)} |" for proxy, value in correlations.items()]
    lines.append("")
    return "\n".join(lines)


def _cost_cell(key, value):
    if value is None:
        return "-"
    if "error" in key and isinstance(value, (int, float)):
        return f"{100 * value:.2f}%"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _corr(value):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.3f}"


def plot_pareto(result, path):
    """Writes the trade-off plot of `result` to `path` (PNG): the metric
    against the file size (log scale) and, when latencies were measured,
    against the p50 latency; a marker per candidate kind, the best ringed in
    red, the budget limits and the lowest metric `max_drop` allows dashed.
    Points carry their candidate numbers, named in a key beside the plot.

    Needs matplotlib (extra `[plot]`).

    Returns:
        `path`.
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError('plot_pareto needs matplotlib: pip install "keras-compress[plot]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from tflite_bench.report import LOG_AXIS_RATIO, _place_numbers

    if not result.candidates:
        raise ValueError("plot_pareto: result has no candidates to plot.")
    budget = result.budget or {}
    accuracy = _is_accuracy(result)
    scale = 100 if accuracy else 1
    gzip = budget.get("size_by") == "gzip"
    panels = [("bytes", "file size, gzip bytes" if gzip else "file size (bytes)",
               lambda c: _size(result, c), budget.get("max_bytes"))]
    if any(c.latency_ms is not None for c in result.candidates):
        threads = budget.get("threads")
        panels.append(("latency", "p50 latency (ms)" + (f", {threads} thread(s)" if threads else ""),
                       lambda c: c.latency_ms, budget.get("max_latency_ms")))

    width = 0.34 if len(panels) == 2 else 0.56
    figure = plt.figure(figsize=(14, 5) if len(panels) == 2 else (9.5, 4.5), dpi=100)
    floor = None if budget.get("max_drop") is None else scale * (result.reference.metric - budget["max_drop"])
    kinds = []
    for p, (key, label, read, limit) in enumerate(panels):
        axes = figure.add_axes((0.07 + p * (width + 0.08), 0.12, width, 0.8))
        shown = [(i, c) for i, c in enumerate(result.candidates) if read(c) is not None and read(c) > 0]
        for i, c in shown:
            marker, color = KIND_STYLES.get(c.kind, _OTHER_STYLE)
            axes.scatter(read(c), scale * c.metric, marker=marker, color=color, zorder=3, s=36)
            if c.kind not in kinds:
                kinds.append(c.kind)
            if c is result.best or c == result.best:
                axes.scatter(read(c), scale * c.metric, marker="o", s=220, facecolors="none",
                             edgecolors="tab:red", linewidths=2, zorder=4)
        if limit is not None:
            axes.axvline(limit, color="tab:red", linestyle="--", linewidth=1, zorder=1)
        if floor is not None:
            axes.axhline(floor, color="tab:purple", linestyle="--", linewidth=1, zorder=1)
        xs = [read(c) for _, c in shown] + ([limit] if limit is not None else [])
        if key == "bytes" or (xs and min(xs) > 0 and max(xs) / min(xs) >= LOG_AXIS_RATIO):
            axes.set_xscale("log")
            axes.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0, 7.0)))
            axes.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_tick_text))
            axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes.margins(0.08, 0.12)
        axes.autoscale_view()
        axes.set_xlabel(label + (", log scale" if axes.get_xscale() == "log" else ""))
        axes.set_ylabel(f"{_metric_name(budget.get('metric'))}" + (" (%)" if accuracy else ""))
        axes.grid(alpha=0.3)
        points = [(read(c), scale * c.metric) for _, c in shown]
        _place_numbers(figure, axes, points, {j: i + 1 for j, (i, _) in enumerate(shown)})

    entries = [Line2D([], [], linestyle="none", marker=KIND_STYLES.get(k, _OTHER_STYLE)[0],
                      color=KIND_STYLES.get(k, _OTHER_STYLE)[1]) for k in kinds]
    names = list(kinds)
    entries.append(Line2D([], [], linestyle="none", marker="o", markersize=11, markerfacecolor="none",
                          markeredgecolor="tab:red", markeredgewidth=2))
    names.append(f"best ({'budget met' if result.met else 'budget not met'})")
    if any(limit is not None for *_, limit in panels):
        entries.append(Line2D([], [], color="tab:red", linestyle="--"))
        names.append("budget")
    if floor is not None:
        entries.append(Line2D([], [], color="tab:purple", linestyle="--"))
        names.append("reference - max drop")
    entries += [Line2D([], [], linestyle="none")] * len(result.candidates)
    names += [f"{i}  {c.name}" for i, c in enumerate(result.candidates, 1)]
    figure.axes[-1].legend(entries, names, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8,
                           handlelength=1.5, borderaxespad=0, frameon=False)
    figure.savefig(path, dpi=figure.dpi, bbox_inches="tight")
    plt.close(figure)
    return path


def _tick_text(value, _):
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def save_report(result, out):
    """Writes `result` into the folder `out` (created if needed): `model.keras`,
    `model.tflite`, `report.json`, `pareto.png` (skipped, with a warning,
    without matplotlib) and `report.md`.

    Returns:
        `{"model": path, "tflite": path, "json": path, "plot": path, "markdown": path}`
        of the files written (no `"plot"` when it was skipped).
    """
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"save_report: out must be a folder path (str or os.PathLike), got {type(out).__name__}.")
    os.makedirs(out, exist_ok=True)
    paths = {"model": os.path.join(out, "model.keras"), "tflite": os.path.join(out, "model.tflite"),
             "json": os.path.join(out, "report.json")}
    result.model.save(paths["model"])
    with open(paths["tflite"], "wb") as f:
        f.write(bytes(result.tflite))
    with open(paths["json"], "w") as f:
        f.write(result.to_json())
    plot = os.path.join(out, PLOT_FILE)
    try:
        paths["plot"] = plot_pareto(result, plot)
    except ImportError as error:
        logger.warning("save_report: no %s (%s).", PLOT_FILE, error)
    paths["markdown"] = os.path.join(out, "report.md")
    with open(paths["markdown"], "w") as f:
        f.write(to_markdown(result, plot=PLOT_FILE if "plot" in paths else None))
    return paths
