"""`benchmark_model`: everything an edge engineer asks of one .tflite file."""

import dataclasses
import datetime
import functools
import gzip
import importlib.metadata
import os
import platform
import time

import numpy as np

from tflite_bench.inspect import inspect_tflite
from tflite_bench.interpreter import read_flatbuffer
from tflite_bench.interpreter import class_labels
from tflite_bench.latency import check_counts, time_invokes
from tflite_bench.runtime import check_runtime, open_runner


@dataclasses.dataclass
class BenchmarkRecord:
    """The measurements of one model at one thread count.

    The static fields come from the file; the others from the run, locally
    (`benchmark_model`) or on an Android device (`run_on_device`). A figure
    the run cannot give is `None`.

    Attributes:
        name: the model's name (its file name, or the name given).
        bytes: file size; `gzip_bytes`: gzip-compressed size (level 9).
        op_counts: `{"TYPE/dtype": count}` of the ops of every subgraph (control-flow
            bodies included, as `inspect_tflite` lists them).
        int8_compute_fraction: share of compute ops (QUANTIZE / DEQUANTIZE
            excluded) whose output is int8.
        constant_bytes: bytes of the constant tensors (weights, biases).
        sparse_tensors: how many tensors the file stores in sparse format.
        threads: threads it ran with.
        runtime: `"interpreter"`, `"compiled"` (LiteRT's CompiledModel) or
            `"android"` (TensorFlow's benchmark_model on a device).
        xnnpack: whether XNNPACK ran (it may fall back to builtin kernels).
        init_ms: runtime construction and tensor allocation.
        first_inference_ms: the first invoke after allocation.
        p50_ms, p90_ms, p99_ms, mean_ms, min_ms, max_ms, std_ms, runs:
            latency of the timed invokes, after the warm-up.
        rss_growth_mb: resident memory growth over load and allocate, in
            MiB (2**20 bytes), as every size in `tflite_bench`'s reports is
            binary (KiB, MiB).
        accuracy: on the labelled data given, else `None`.
        warmup: untimed invokes before the timed runs.
        environment: where and when it ran (`run_environment()`): `date`
            (UTC), `cpu`, `cpu_count`, `litert` (the ai-edge-litert version),
            `python`, `os`; for a device run, `device` instead of the CPU.
    """

    name: str
    bytes: int
    gzip_bytes: int
    op_counts: dict
    int8_compute_fraction: float
    constant_bytes: int
    sparse_tensors: int
    threads: int
    runtime: str = "interpreter"
    xnnpack: bool = None
    init_ms: float = None
    first_inference_ms: float = None
    p50_ms: float = None
    p90_ms: float = None
    p99_ms: float = None
    mean_ms: float = None
    min_ms: float = None
    max_ms: float = None
    std_ms: float = None
    runs: int = None
    rss_growth_mb: float = None
    accuracy: float = None
    warmup: int = None
    environment: dict = None

    def as_dict(self):
        return dataclasses.asdict(self)


def static_fields(content, name):
    """The fields of a `BenchmarkRecord` that the file alone gives."""
    info = inspect_tflite(content)
    counts = {f"{op_type}/{dtype}": n for (op_type, dtype), n in info.op_counts().items()}
    compute = [op for op in info.ops if op.type not in ("QUANTIZE", "DEQUANTIZE")]
    return dict(
        name=name,
        bytes=len(content),
        gzip_bytes=len(gzip.compress(content, compresslevel=9)),
        op_counts=counts,
        int8_compute_fraction=sum(op.dtype == "int8" for op in compute) / len(compute) if compute else 0.0,
        constant_bytes=sum(info.constant_bytes.values()),
        sparse_tensors=len(info.sparse_tensors),
    )


def run_environment():
    """Where and when a measurement runs: `{"date", "cpu", "cpu_count",
    "litert", "python", "os"}`, the date in UTC (ISO 8601, seconds)."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **_host()}


@functools.cache
def _host():
    try:
        litert = importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:
        litert = None
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "litert": litert,
            "python": platform.python_version(), "os": platform.platform(terse=True)}


def _cpu_model():
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Hardware", "Processor")) and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def default_name(tflite):
    return os.path.basename(tflite) if isinstance(tflite, (str, os.PathLike)) else "model"


def benchmark_model(tflite, threads=1, warmup=20, runs=200, use_xnnpack=True, data=None, name=None,
                    runtime="interpreter"):
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
        runtime: `"interpreter"` (the classic `Interpreter`) or `"compiled"`
            (LiteRT's `CompiledModel`); accuracy is computed in the same runtime.

    Returns:
        A `BenchmarkRecord`.
    """
    check_counts("benchmark_model", threads=threads, warmup=warmup, runs=runs)
    check_runtime("benchmark_model", runtime)
    content = read_flatbuffer(tflite)
    static = static_fields(content, default_name(tflite) if name is None else name)
    labels = None if data is None else class_labels("benchmark_model", *data)

    rss_before = _rss_mb()
    start = time.perf_counter_ns()
    runner = open_runner(content, runtime, threads, use_xnnpack)
    init_ms = (time.perf_counter_ns() - start) / 1e6
    rss_growth = max(0.0, _rss_mb() - rss_before)
    runner.set_random_inputs()
    start = time.perf_counter_ns()
    runner.invoke()
    first_ms = (time.perf_counter_ns() - start) / 1e6
    latency = time_invokes(runner, warmup, runs)
    accuracy = None
    if labels is not None:
        accuracy = float(np.mean(runner.predict(data[0]).argmax(-1) == labels))
    return BenchmarkRecord(
        **static,
        threads=threads,
        runtime=runtime,
        xnnpack=runner.xnnpack,
        init_ms=init_ms,
        first_inference_ms=first_ms,
        rss_growth_mb=rss_growth,
        accuracy=accuracy,
        warmup=warmup,
        environment=run_environment(),
        **latency,
    )


def _rss_mb():
    """Resident set size of this process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0
