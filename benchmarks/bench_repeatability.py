"""How repeatable is tflite_bench's p50? Runs the bench several times over the
same .tflite files (round-robin, so drift hits every file alike) and prints,
per file and thread count, the p50 of each repeat, their median and their
spread ((max - min) / median).

Usage:

    python benchmarks/bench_repeatability.py keras_compress_demo/*.tflite \
        [--repeats 3] [--threads 1,2] [--runs 200] [--runtime interpreter]
"""

import argparse
import os
import statistics
import warnings


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", default="1")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--runtime", default="interpreter")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tflite_bench import benchmark_model

    threads = [int(t) for t in args.threads.split(",")]
    p50 = {(path, n): [] for path in args.models for n in threads}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the XNNPACK fallback warning, once per file and repeat
        for repeat in range(args.repeats):
            for path, n in p50:
                record = benchmark_model(path, threads=n, warmup=args.warmup, runs=args.runs, runtime=args.runtime)
                p50[path, n].append(record.p50_ms)
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
    width = max(len(os.path.basename(path)) for path in args.models)
    print(f"\n{'model':<{width}}  threads  " + "  ".join(f"p50 #{i + 1}" for i in range(args.repeats))
          + "  median ms  spread")
    spreads = []
    for (path, n), values in p50.items():
        median = statistics.median(values)
        spreads.append((max(values) - min(values)) / median)
        print(f"{os.path.basename(path):<{width}}  {n:>7}  " + "  ".join(f"{v:>7.4f}" for v in values)
              + f"  {median:>9.4f}  {spreads[-1]:>6.1%}")
    print(f"\nspread of p50 over {args.repeats} repeats ({args.runtime}, {args.runs} runs each): median "
          f"{statistics.median(spreads):.1%}, max {max(spreads):.1%} over {len(spreads)} file/thread pairs")


if __name__ == "__main__":
    main()
