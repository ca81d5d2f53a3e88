"""Latency of one .tflite model in a LiteRT runtime."""

import statistics
import time

import numpy as np

from tflite_bench.interpreter import read_flatbuffer
from tflite_bench.runtime import check_runtime, open_runner


def measure_latency(tflite, threads=1, warmup=20, runs=100, use_xnnpack=True, seed=0, runtime="interpreter"):
    """Times `invoke` of a TFLite model, as LiteRT's benchmark tool does.

    The model is loaded and allocated once and its inputs set once; after
    `warmup` untimed invokes, each of `runs` invokes is timed with a monotonic
    clock (`time.perf_counter_ns`).

    Args:
        tflite: flatbuffer `bytes` or a `.tflite` path.
        threads: interpreter threads (>= 1).
        warmup: untimed invokes first (>= 0).
        runs: timed invokes (>= 1).
        use_xnnpack: apply LiteRT's default XNNPACK delegate (falls back to
            the builtin kernels, with a warning, where it cannot).
        seed: seed of the random input.
        runtime: `"interpreter"` (the classic `Interpreter`) or `"compiled"`
            (LiteRT's `CompiledModel`).

    Returns:
        A dict: `p50_ms`, `p90_ms`, `p99_ms`, `mean_ms`, `min_ms`, `max_ms`,
        `std_ms`, `runs`, `threads`, `runtime`, `xnnpack` (whether XNNPACK ran).
    """
    check_counts("measure_latency", threads=threads, warmup=warmup, runs=runs)
    check_runtime("measure_latency", runtime)
    runner = open_runner(read_flatbuffer(tflite), runtime, threads, use_xnnpack)
    runner.set_random_inputs(seed)
    return {**time_invokes(runner, warmup, runs), "threads": threads, "runtime": runtime, "xnnpack": runner.xnnpack}


def check_counts(api, threads, warmup, runs):
    """Raises unless threads >= 1, warmup >= 0 and runs >= 1 are ints."""
    for name, value, minimum in (("threads", threads, 1), ("warmup", warmup, 0), ("runs", runs, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{api}: {name} must be an int >= {minimum}, got {value!r}.")


def time_invokes(runner, warmup, runs):
    """Latency statistics of `runs` timed invokes after `warmup` untimed ones."""
    for _ in range(warmup):
        runner.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        runner.invoke()
        times.append((time.perf_counter_ns() - start) / 1e6)
    ordered = sorted(times)
    return {
        "p50_ms": statistics.median(times),
        "p90_ms": _percentile(ordered, 90),
        "p99_ms": _percentile(ordered, 99),
        "mean_ms": statistics.fmean(times),
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
        "std_ms": statistics.pstdev(times),
        "runs": runs,
    }


def _percentile(ordered, q):
    """Linear-interpolated percentile of sorted values (numpy's default rule)."""
    return float(np.percentile(ordered, q))
