"""Anchor check: tflite_bench's p50 latency against LiteRT's own benchmark tool.

Runs `python -m ai_edge_litert.tools.benchmark_litert_model` (LiteRT's Python
mirror of its C++ benchmark) and `tflite_bench.benchmark_model` on the same
float .tflite file at the same thread count, alternating, several rounds, and
prints the ratio of our p50 to its median per round, for each of our runtimes
(the tool itself runs LiteRT's CompiledModel). The model is MobileNetV2 at
96x96 (weights=None), large enough that the tool's 0.01 ms rounding does not
matter. The last lines give the median ratio per runtime; the bar is 0.85-1.15.

Usage:

    python benchmarks/latency_anchor.py [--rounds 5] [--threads 1] [--runs 200]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--size", type=int, default=96, help="input height and width")
    p.add_argument("--runtimes", default="interpreter,compiled", help="our runtimes to compare")
    return p.parse_args()


def litert_tool_median(path, args):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        subprocess.run(
            [sys.executable, "-m", "ai_edge_litert.tools.benchmark_litert_model", f"--model={path}",
             f"--num_threads={args.threads}", f"--num_runs={args.runs}", f"--warmup_runs={args.warmup}",
             f"--result_json={out}"],
            check=True, capture_output=True, text=True,
        )
        with open(out) as f:
            return json.load(f)["latency"]["median_ms"]


def main():
    args = parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    import keras_compress as kc
    from tflite_bench import benchmark_model

    model = keras.applications.MobileNetV2(weights=None, input_shape=(args.size, args.size, 3), classes=10)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mobilenet_v2.tflite")
        kc.to_tflite(model, path)
        runtimes = args.runtimes.split(",")
        ratios = {runtime: [] for runtime in runtimes}
        for round_ in range(1, args.rounds + 1):
            theirs = litert_tool_median(path, args)
            line = f"round {round_}: benchmark_litert_model median {theirs:.3f} ms"
            for runtime in runtimes:
                ours = benchmark_model(path, threads=args.threads, warmup=args.warmup, runs=args.runs,
                                       runtime=runtime).p50_ms
                ratios[runtime].append(ours / theirs)
                line += f"; {runtime} p50 {ours:.3f} ms, ratio {ours / theirs:.3f}"
            print(line, flush=True)
    print()
    for runtime, values in ratios.items():
        print(f"MobileNetV2 {args.size}x{args.size} float, {args.threads} thread(s), {runtime}: ratio ours / "
              f"LiteRT tool median {statistics.median(values):.3f} (min {min(values):.3f}, "
              f"max {max(values):.3f}, {len(values)} rounds)")


if __name__ == "__main__":
    main()
