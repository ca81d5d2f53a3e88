"""Ratio statistics shared by the benchmark scripts (no Keras import, so the
tf_keras peer process can use it too)."""

import statistics


def summarize_ratios(plain, treated):
    """Per-pair ratios `treated / plain` with median, quartiles, min and max."""
    ratios = [t / p for t, p in zip(treated, plain)]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "ratios": ratios,
        "ratio_median": statistics.median(ratios),
        "ratio_q1": quartiles[0],
        "ratio_q3": quartiles[2],
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def timing_summary(ms, treated):
    """The JSON record of an interleaved timing: per-step milliseconds of
    "plain" and `treated`, their wall-time ratios and their CPU-time ratios.

    Args:
        ms: `{name: [ms], name + "_cpu": [ms]}` for "plain" and `treated`.
    """
    return {
        "plain_ms_per_step": ms["plain"],
        f"{treated}_ms_per_step": ms[treated],
        **summarize_ratios(ms["plain"], ms[treated]),
        "cpu": summarize_ratios(ms["plain_cpu"], ms[treated + "_cpu"]),
    }


def mean_std(values):
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def status(message):
    """A stage line in a benchmark's output."""
    print(f"\n== {message}", flush=True)


def describe(summary):
    """One line: median (IQR q1-q3, min-max, n pairs)."""
    s = summary
    return (
        f"median {s['ratio_median']:.3f} (IQR {s['ratio_q1']:.3f}-{s['ratio_q3']:.3f}, "
        f"min {s['ratio_min']:.3f}, max {s['ratio_max']:.3f}, {len(s['ratios'])} pairs)"
    )
