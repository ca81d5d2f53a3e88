"""Per-op profiles: do the estimated op times add up to the whole invoke?

LiteRT's Python wheel has no per-op profiler, so `tflite_bench.profile_ops`
times each op as a single-op model (see its docstring). This script checks
that estimate on the demo CNN (float and int8) and on MobileNetV2
(alpha 0.35, 96x96x3, weights=None, 10 classes: 1x1 and depthwise
convolutions, residual ADDs, MEAN, SOFTMAX), float and int8. Timing does
not depend on the weights' values, so the models are not trained; the int8
files are calibrated on 256 bundled MNIST images (the CNN) or 32 random
images (MobileNetV2).

For each file and thread count it prints the per-op table of the first
repeat, then a summary: whole-invoke p50, sum of op times, and the ratio
sum / whole as the median over `--repeats` independent `profile_ops` runs
with its min-max (each run itself the median of `--rounds` interleaved
rounds). The issue's bar: the ratio within 0.8-1.2.

    python benchmarks/op_profile.py [--repeats 5] [--rounds 7] [--runs 100] [--litert-threads 1,2]
        [--no-xnnpack] [--no-mobilenet]
"""

import statistics

from _common import parser, pin_threads, write_results


def parse_args():
    p = parser(__doc__, out="op_profile.json")
    p.add_argument("--repeats", type=int, default=5, help="independent profile_ops runs per file")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds per run")
    p.add_argument("--runs", type=int, default=100, help="timed invokes per model per round")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--litert-threads", default="1", help="comma-separated LiteRT thread counts")
    p.add_argument("--no-xnnpack", action="store_true", help="LiteRT's builtin kernels only")
    p.add_argument("--no-mobilenet", action="store_true", help="the demo CNN only")
    return p.parse_args()


ARGS = parse_args()
pin_threads(ARGS.threads)

import os  # noqa: E402
import tempfile  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_compress as kc  # noqa: E402
import tflite_bench  # noqa: E402
from keras_compress import examples  # noqa: E402
from keras_compress.datasets import load_mnist  # noqa: E402


def files(folder):
    """`{name: path}` of the .tflite files to profile."""
    keras.utils.set_random_seed(0)
    (x_train, _), _ = load_mnist(ARGS.data)
    paths = {}
    cnn = examples.build_cnn()
    kc.to_tflite(cnn, os.path.join(folder, "cnn_float.tflite"))
    paths["demo CNN float"] = os.path.join(folder, "cnn_float.tflite")
    kc.to_tflite(cnn, os.path.join(folder, "cnn_int8.tflite"), quantization="int8", representative_data=x_train[:256])
    paths["demo CNN int8"] = os.path.join(folder, "cnn_int8.tflite")
    if not ARGS.no_mobilenet:
        net = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10)
        images = np.random.default_rng(0).random((32, 96, 96, 3)).astype("float32")
        kc.to_tflite(net, os.path.join(folder, "mnv2_float.tflite"))
        kc.to_tflite(net, os.path.join(folder, "mnv2_int8.tflite"), quantization="int8", representative_data=images)
        paths["MobileNetV2 0.35 float"] = os.path.join(folder, "mnv2_float.tflite")
        paths["MobileNetV2 0.35 int8"] = os.path.join(folder, "mnv2_int8.tflite")
    return paths


def by_type(profile):
    """The three op types with the largest share, as text."""
    shares = {}
    for op in profile.ops:
        shares[op.type] = shares.get(op.type, 0.0) + op.share
    top = sorted(shares.items(), key=lambda item: -item[1])[:3]
    return ", ".join(f"{name} {share:.0%}" for name, share in top)


def main():
    threads = [int(t) for t in ARGS.litert_threads.split(",")]
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for name, path in files(folder).items():
            for n in threads:
                profiles = [tflite_bench.profile_ops(path, threads=n, rounds=ARGS.rounds, runs=ARGS.runs,
                                                     warmup=ARGS.warmup, use_xnnpack=not ARGS.no_xnnpack, name=name)
                            for _ in range(ARGS.repeats)]
                print(f"\n{profiles[0]}")
                ratios = [p.ratio for p in profiles]
                unit, scale = profiles[0].unit()
                rows.append((name, n, len(profiles[0].ops), unit,
                             statistics.median(p.whole_ms for p in profiles) * scale,
                             statistics.median(p.op_sum_ms for p in profiles) * scale,
                             statistics.median(ratios), min(ratios), max(ratios),
                             min(r for p in profiles for r in p.round_ratios),
                             max(r for p in profiles for r in p.round_ratios),
                             by_type(profiles[0])))
                results[f"{name}, {n} threads"] = {"profiles": [p.as_dict() for p in profiles],
                                                   "ratio_median": statistics.median(ratios)}
    print(f"\nsum of op times / whole invoke, median of {ARGS.repeats} profile_ops runs "
          f"({ARGS.rounds} interleaved rounds of {ARGS.runs} runs each), XNNPACK {'off' if ARGS.no_xnnpack else 'on'}; "
          "bar 0.80-1.20")
    header = ("model", "thr", "ops", "whole", "op sum", "ratio", "runs min-max", "rounds min-max", "bar",
              "largest shares")
    lines = [header] + [
        (name, str(n), str(ops), f"{whole:.2f} {unit}", f"{total:.2f} {unit}", f"{ratio:.3f}",
         f"{low:.3f}-{high:.3f}", f"{round_low:.3f}-{round_high:.3f}", "met" if abs(ratio - 1) <= 0.2 else "MISSED",
         top)
        for name, n, ops, unit, whole, total, ratio, low, high, round_low, round_high, top in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        cells = [c.ljust(w) if i in (0, 9) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        print("  ".join(cells).rstrip())
    write_results(ARGS.out, results, ARGS)


if __name__ == "__main__":
    main()
