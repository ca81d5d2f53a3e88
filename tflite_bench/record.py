"""`benchmark_model`: everything an edge engineer asks of one .tflite file."""

import dataclasses
import gzip
import os
import time

from keras_compress.export import evaluate_tflite, inspect_tflite, load_interpreter, read_flatbuffer
from tflite_bench.latency import check_counts, set_random_inputs, time_invokes


@dataclasses.dataclass
class BenchmarkRecord:
    """The measurements of one model at one thread count.

    Attributes:
        name: the model's name (its file name, or the name given).
        bytes: file size; `gzip_bytes`: gzip-compressed size (level 9).
        op_counts: `{"TYPE/dtype": count}` of the main subgraph's ops.
        int8_compute_fraction: share of compute ops (QUANTIZE / DEQUANTIZE
            excluded) whose output is int8.
        threads, xnnpack: how it ran (XNNPACK may fall back to builtin kernels).
        init_ms: interpreter construction and tensor allocation.
        first_inference_ms: the first invoke after allocation.
        p50_ms, p90_ms, p99_ms, mean_ms, min_ms, std_ms, runs: latency of the
            timed invokes, after the warm-up.
        rss_growth_mb: resident memory growth over load and allocate.
        accuracy: on the labelled data given, else `None`.
    """

    name: str
    bytes: int
    gzip_bytes: int
    op_counts: dict
    int8_compute_fraction: float
    threads: int
    xnnpack: bool
    init_ms: float
    first_inference_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    std_ms: float
    runs: int
    rss_growth_mb: float
    accuracy: float = None

    def as_dict(self):
        return dataclasses.asdict(self)


def benchmark_model(tflite, threads=1, warmup=20, runs=200, use_xnnpack=True, data=None, name=None):
    """Measures one TFLite model: size, ops, start-up, latency, memory, accuracy.

    Args:
        tflite: flatbuffer `bytes` or a `.tflite` path.
        threads: interpreter threads (>= 1).
        warmup: untimed invokes before timing (>= 0).
        runs: timed invokes (>= 1).
        use_xnnpack: apply LiteRT's default XNNPACK delegate.
        data: optional `(x, y)` labelled samples for accuracy; int8 / uint8
            inputs and outputs are scaled with their zero points.
        name: the name in reports (default: the file name, or "model").

    Returns:
        A `BenchmarkRecord`.
    """
    check_counts("benchmark_model", threads=threads, warmup=warmup, runs=runs)
    content = read_flatbuffer(tflite)
    if name is None:
        name = os.path.basename(tflite) if isinstance(tflite, (str, os.PathLike)) else "model"
    info = inspect_tflite(content)
    counts = {f"{op_type}/{dtype}": n for (op_type, dtype), n in info.op_counts().items()}
    compute = [op for op in info.ops if op.type not in ("QUANTIZE", "DEQUANTIZE")]
    int8 = sum(op.dtype == "int8" for op in compute) / len(compute) if compute else 0.0

    rss_before = _rss_mb()
    start = time.perf_counter_ns()
    interpreter = load_interpreter(content, num_threads=threads, use_xnnpack=use_xnnpack)
    init_ms = (time.perf_counter_ns() - start) / 1e6
    rss_growth = max(0.0, _rss_mb() - rss_before)
    set_random_inputs(interpreter)
    start = time.perf_counter_ns()
    interpreter.invoke()
    first_ms = (time.perf_counter_ns() - start) / 1e6
    latency = time_invokes(interpreter, warmup, runs)
    accuracy = None
    if data is not None:
        x, y = data
        accuracy = evaluate_tflite(content, x, y, num_threads=threads)["accuracy"]
    return BenchmarkRecord(
        name=name,
        bytes=len(content),
        gzip_bytes=len(gzip.compress(content, compresslevel=9)),
        op_counts=counts,
        int8_compute_fraction=int8,
        threads=threads,
        xnnpack=interpreter.uses_xnnpack,
        init_ms=init_ms,
        first_inference_ms=first_ms,
        rss_growth_mb=rss_growth,
        accuracy=accuracy,
        **latency,
    )


def _rss_mb():
    """Resident set size of this process in MB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0
