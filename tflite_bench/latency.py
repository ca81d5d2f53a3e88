"""Latency of one .tflite model in the LiteRT interpreter."""

import statistics
import time

import numpy as np

from keras_compress.export import load_interpreter


def _sample_input(detail, rng):
    """A random input of the tensor's shape and dtype, within its range."""
    dtype, shape = detail["dtype"], detail["shape"]
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return rng.random(shape).astype(dtype)


def measure_latency(tflite, threads=1, warmup=20, runs=100, use_xnnpack=True, seed=0):
    """Times `invoke` of a TFLite model, as LiteRT's benchmark tool does.

    The interpreter is loaded and allocated once and its inputs set once; after
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

    Returns:
        A dict: `p50_ms`, `p90_ms`, `p99_ms`, `mean_ms`, `min_ms`, `std_ms`,
        `runs`, `threads`, `xnnpack` (whether XNNPACK ran).
    """
    check_counts("measure_latency", threads=threads, warmup=warmup, runs=runs)
    interpreter = load_interpreter(tflite, num_threads=threads, use_xnnpack=use_xnnpack)
    set_random_inputs(interpreter, seed)
    return {**time_invokes(interpreter, warmup, runs), "threads": threads, "xnnpack": interpreter.uses_xnnpack}


def check_counts(api, threads, warmup, runs):
    """Raises unless threads >= 1, warmup >= 0 and runs >= 1 are ints."""
    for name, value, minimum in (("threads", threads, 1), ("warmup", warmup, 0), ("runs", runs, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{api}: {name} must be an int >= {minimum}, got {value!r}.")


def set_random_inputs(interpreter, seed=0):
    """Sets every input of an allocated interpreter to random values, once."""
    rng = np.random.default_rng(seed)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], _sample_input(detail, rng))


def time_invokes(interpreter, warmup, runs):
    """Latency statistics of `runs` timed invokes after `warmup` untimed ones."""
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        interpreter.invoke()
        times.append((time.perf_counter_ns() - start) / 1e6)
    ordered = sorted(times)
    return {
        "p50_ms": statistics.median(times),
        "p90_ms": _percentile(ordered, 90),
        "p99_ms": _percentile(ordered, 99),
        "mean_ms": statistics.fmean(times),
        "min_ms": ordered[0],
        "std_ms": statistics.pstdev(times),
        "runs": runs,
    }


def _percentile(ordered, q):
    """Linear-interpolated percentile of sorted values (numpy's default rule)."""
    return float(np.percentile(ordered, q))
