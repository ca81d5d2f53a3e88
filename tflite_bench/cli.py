"""`tflite-bench`: measure and compare .tflite files from the command line."""

import argparse
import os
import sys

import numpy as np

from tflite_bench.record import benchmark_model
from tflite_bench.report import text_table, write_report


def load_labelled_data(path):
    """`(x, y)` from an .npz with `x_test`/`y_test` or `x`/`y` arrays, or the
    held-out split of an MNIST IDX folder or Keras `mnist.npz`."""
    if path.endswith(".npz"):
        with np.load(path) as data:
            for x_key, y_key in (("x_test", "y_test"), ("x", "y")):
                if x_key in data and y_key in data and not (x_key == "x_test" and "x_train" in data and _is_raw_mnist(data)):
                    return data[x_key], data[y_key]
    from keras_compress.datasets import load_mnist

    return load_mnist(path)[1]


def _is_raw_mnist(data):
    # Keras's mnist.npz holds uint8 images without a channel axis: load_mnist
    # splits and scales it as the rest of the package does.
    return data["x_train"].dtype == np.uint8 and data["x_train"].ndim == 3


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tflite-bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="measure one or more .tflite files")
    run.add_argument("models", nargs="+", help=".tflite files")
    run.add_argument("--threads", default="1", help="comma-separated thread counts, e.g. 1,2")
    run.add_argument("--warmup", type=int, default=20)
    run.add_argument("--runs", type=int, default=200)
    run.add_argument("--no-xnnpack", action="store_true", help="builtin kernels only")
    run.add_argument("--data", help="labelled data for accuracy: .npz (x_test/y_test or x/y), "
                     "an MNIST IDX folder or mnist.npz")
    run.add_argument("--out", help="folder for report.md, results.csv, results.json and plots")
    run.add_argument("--adb", action="store_true",
                     help="run TensorFlow's benchmark_model on an attached Android device instead")
    run.add_argument("--adb-serial", help="device serial (adb -s)")
    run.add_argument("--adb-binary", default="/data/local/tmp/benchmark_model",
                     help="path of benchmark_model on the device")
    args = parser.parse_args(argv)
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads must be comma-separated integers, got {args.threads!r}")
    for path in args.models:
        if not os.path.isfile(path):
            print(f"tflite-bench: no such file: {path}", file=sys.stderr)
            return 2
    if args.adb:
        return _run_on_android(args, threads)
    try:
        data = load_labelled_data(args.data) if args.data else None
    except (OSError, ValueError, KeyError) as error:
        print(f"tflite-bench: cannot read --data {args.data}: {error}", file=sys.stderr)
        return 2

    import keras  # only for its progress bar

    jobs = [(path, n) for path in args.models for n in threads]
    progress = keras.utils.Progbar(len(jobs), unit_name="measurement")
    records = []
    for i, (path, n) in enumerate(jobs):
        try:
            records.append(benchmark_model(path, threads=n, warmup=args.warmup, runs=args.runs,
                                           use_xnnpack=not args.no_xnnpack, data=data))
        except ValueError as error:
            print(f"\ntflite-bench: {path}: {error}", file=sys.stderr)
            return 2
        progress.update(i + 1)
    print(text_table(records))
    if args.out:
        for written in write_report(records, args.out, plots=_has_matplotlib()):
            print(f"wrote {written}")
    return 0


def _run_on_android(args, threads):
    from tflite_bench.android import run_on_device

    print(f"{'model':<32} {'threads':>7} {'mean ms':>9} {'p50 ms':>9} {'min ms':>9} {'init ms':>9}")
    for path in args.models:
        for n in threads:
            try:
                r = run_on_device(path, threads=n, runs=args.runs, warmup=args.warmup,
                                  serial=args.adb_serial, binary=args.adb_binary)
            except (ValueError, OSError) as error:
                print(f"tflite-bench: {path}: {error}", file=sys.stderr)
                return 2
            p50 = f"{r['p50_ms']:>9.3f}" if "p50_ms" in r else f"{'-':>9}"
            print(f"{os.path.basename(path):<32} {n:>7} {r['mean_ms']:>9.3f} {p50} {r['min_ms']:>9.3f} "
                  f"{r['init_ms']:>9.1f}")
    return 0


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
