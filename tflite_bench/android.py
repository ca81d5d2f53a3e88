"""Android: run TensorFlow's `benchmark_model` binary over adb and parse its output.

The binary is TensorFlow Lite's official C++ benchmark
(`tensorflow/lite/tools/benchmark:benchmark_model`, or the prebuilt
`android_aarch64_benchmark_model`), pushed once to the device.
"""

import os
import re
import shutil
import subprocess

from tflite_bench.interpreter import read_flatbuffer
from tflite_bench.record import BenchmarkRecord, default_name, run_environment, static_fields

_NUMBER = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_TIMED_RUN = re.compile(r"count=(\d+) first=" + _NUMBER + r" curr=" + _NUMBER + r" min=" + _NUMBER
                        + r" max=" + _NUMBER + r" avg=" + _NUMBER + r" std=" + _NUMBER
                        + r"(?: p5=" + _NUMBER + r" median=" + _NUMBER + r" p95=" + _NUMBER + r")?")
_SUMMARY = re.compile(r"Inference timings in us: Init: " + _NUMBER + r", First inference: " + _NUMBER
                      + r", Warmup \(avg\): " + _NUMBER + r", Inference \(avg\): " + _NUMBER)
_MEMORY = re.compile(r"(?:Peak memory footprint|Memory footprint delta from the start of the tool) "
                     r"\(MB\): init=" + _NUMBER + r" overall=" + _NUMBER)
# benchmark_model's "MB" is its kilobytes / 1024: MiB, as tflite_bench reports memory.
_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: " + _NUMBER)
_THREADS = re.compile(r"Num threads: \[(\d+)\]")
_SIZE = re.compile(r"The input model file size \(MB\): " + _NUMBER)


def parse_benchmark_model_output(text):
    """Reads the figures out of `benchmark_model`'s console output.

    Handles the older format (no percentiles, `Peak memory footprint`) and the
    newer one (`INFO:` prefixes, `p5= median= p95=`, `Memory footprint delta`,
    numbers in exponent notation). The timed run is the last `count=... first=`
    line (the one before it is the warm-up).

    Returns:
        A dict in milliseconds: `init_ms`, `first_inference_ms`, `warmup_mean_ms`,
        `mean_ms`, `min_ms`, `max_ms`, `std_ms`, `runs`, and, when printed,
        `p5_ms`, `p50_ms`, `p95_ms`, `threads`, `model_mb`, `memory_init_mb`,
        `memory_overall_mb`, `peak_memory_mb`.

    Raises:
        ValueError: the text holds no benchmark result (for example an error).
    """
    summary = _SUMMARY.search(text)
    runs = [m for m in _TIMED_RUN.finditer(text)]
    if summary is None or not runs:
        tail = text.strip().splitlines()[-3:] if text.strip() else ["(no output)"]
        raise ValueError("benchmark_model printed no result; its last lines: " + " | ".join(tail))
    timed = runs[-1]
    count, _first, _curr, minimum, maximum, avg, std, p5, median, p95 = timed.groups()
    init, first, warmup, inference = (float(v) for v in summary.groups())
    result = {
        "init_ms": init / 1e3,
        "first_inference_ms": first / 1e3,
        "warmup_mean_ms": warmup / 1e3,
        "mean_ms": inference / 1e3,
        "min_ms": float(minimum) / 1e3,
        "max_ms": float(maximum) / 1e3,
        "std_ms": float(std) / 1e3,
        "runs": int(count),
    }
    if median is not None:
        result.update(p5_ms=float(p5) / 1e3, p50_ms=float(median) / 1e3, p95_ms=float(p95) / 1e3)
    for pattern, keys in (
        (_THREADS, ("threads",)),
        (_SIZE, ("model_mb",)),
        (_MEMORY, ("memory_init_mb", "memory_overall_mb")),
        (_PEAK, ("peak_memory_mb",)),
    ):
        match = pattern.search(text)
        if match:
            for key, value in zip(keys, match.groups()):
                result[key] = int(value) if key == "threads" else float(value)
    return result


def run_on_device(model, threads=1, runs=50, warmup=10, adb="adb", serial=None,
                  binary="/data/local/tmp/benchmark_model", remote_dir="/data/local/tmp"):
    """Pushes `model` to an Android device, runs `benchmark_model` there, parses it.

    Args:
        model: path of the .tflite file.
        threads, runs, warmup: passed as `--num_threads`, `--num_runs`, `--warmup_runs`.
        adb: the adb executable; serial: the device (`adb -s`), or `None`.
        binary: where `benchmark_model` lies on the device (pushed beforehand).
        remote_dir: where the model is pushed.

    Returns:
        A `BenchmarkRecord` (`runtime="android"`): the static fields from the
        file, the timings from the device (see `device_record`).
    """
    if shutil.which(adb) is None:
        raise ValueError(f"run_on_device: adb executable {adb!r} not found; install the Android "
                         "platform tools or pass adb=PATH.")
    if not os.path.isfile(model):
        raise ValueError(f"run_on_device: no TFLite file at {model!r}.")
    base = [adb] + (["-s", serial] if serial else [])
    remote = f"{remote_dir}/{os.path.basename(model)}"
    subprocess.run(base + ["push", model, remote], check=True, capture_output=True, text=True)
    done = subprocess.run(
        base + ["shell", binary, f"--graph={remote}", f"--num_threads={threads}",
                f"--num_runs={runs}", f"--warmup_runs={warmup}"],
        capture_output=True, text=True,
    )
    return device_record(model, parse_benchmark_model_output(done.stdout + done.stderr), threads,
                         warmup=warmup, device=serial or "the attached device")


def device_record(model, parsed, threads, name=None, warmup=None, device=None):
    """A `BenchmarkRecord` from a .tflite file and the parsed device output.

    `benchmark_model` prints no p90 / p99 and measures no accuracy: those
    fields are `None`. `rss_growth_mb` is its memory footprint growth over
    the whole run; `xnnpack` is `None`, as the tool does not say.
    `environment` holds the date and `device` (its serial, if given) in
    place of this machine's CPU, Python and LiteRT.
    """
    content = read_flatbuffer(model)
    return BenchmarkRecord(
        **static_fields(content, default_name(model) if name is None else name),
        threads=parsed.get("threads", threads),
        runtime="android",
        init_ms=parsed["init_ms"],
        first_inference_ms=parsed["first_inference_ms"],
        p50_ms=parsed.get("p50_ms"),
        mean_ms=parsed["mean_ms"],
        min_ms=parsed["min_ms"],
        max_ms=parsed["max_ms"],
        std_ms=parsed["std_ms"],
        runs=parsed["runs"],
        rss_growth_mb=parsed.get("memory_overall_mb"),
        warmup=warmup,
        environment={"date": run_environment()["date"],
                     "device": f"Android ({device})" if device else "Android"},
    )
