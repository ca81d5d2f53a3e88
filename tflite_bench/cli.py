"""`tflite-bench`: latency and size of .tflite files from the command line."""

import argparse
import os
import sys

from tflite_bench.latency import measure_latency


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tflite-bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="measure one or more .tflite files")
    run.add_argument("models", nargs="+", help=".tflite files")
    run.add_argument("--threads", default="1", help="comma-separated thread counts, e.g. 1,2")
    run.add_argument("--warmup", type=int, default=20)
    run.add_argument("--runs", type=int, default=100)
    run.add_argument("--no-xnnpack", action="store_true", help="builtin kernels only")
    args = parser.parse_args(argv)
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads must be comma-separated integers, got {args.threads!r}")
    print(f"{'model':<40} {'bytes':>10} {'threads':>7} {'p50 ms':>9} {'p90 ms':>9} {'min ms':>9} {'xnnpack':>8}")
    for path in args.models:
        if not os.path.isfile(path):
            print(f"tflite-bench: no such file: {path}", file=sys.stderr)
            return 2
        for n in threads:
            try:
                r = measure_latency(path, threads=n, warmup=args.warmup, runs=args.runs,
                                    use_xnnpack=not args.no_xnnpack)
            except ValueError as error:
                print(f"tflite-bench: {error}", file=sys.stderr)
                return 2
            print(f"{os.path.basename(path):<40} {os.path.getsize(path):>10,} {n:>7} "
                  f"{r['p50_ms']:>9.3f} {r['p90_ms']:>9.3f} {r['min_ms']:>9.3f} {str(r['xnnpack']):>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
