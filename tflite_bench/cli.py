"""`tflite-bench`: measure and compare .tflite files from the command line."""

import argparse
import os
import subprocess
import sys

from tflite_bench.runtime import RUNTIMES  # numpy only: LiteRT loads when a model is opened


def load_labelled_data(path):
    """`(x, y)` from an .npz with `x_test`/`y_test` or `x`/`y` arrays, or the
    held-out split of an MNIST IDX folder or Keras `mnist.npz`."""
    import numpy as np

    if path.endswith(".npz"):
        with np.load(path) as data:
            for x_key, y_key in (("x_test", "y_test"), ("x", "y")):
                if x_key in data and y_key in data and not (x_key == "x_test" and "x_train" in data and _is_raw_mnist(data)):
                    return data[x_key], data[y_key]
    from tflite_bench.mnist import read_mnist

    return read_mnist(path)[1]


def _is_raw_mnist(data):
    # Keras's mnist.npz holds uint8 images without a channel axis: read_mnist
    # splits and scales it as the rest of the package does.
    return data["x_train"].dtype.name == "uint8" and data["x_train"].ndim == 3


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tflite-bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="measure one or more .tflite files")
    run.add_argument("models", nargs="+", help=".tflite files")
    run.add_argument("--threads", default="1", help="comma-separated thread counts, e.g. 1,2")
    run.add_argument("--warmup", type=int, default=20)
    run.add_argument("--runs", type=int, default=200)
    run.add_argument("--no-xnnpack", action="store_true", help="builtin kernels only")
    run.add_argument("--runtime", choices=RUNTIMES, default="interpreter",
                     help="LiteRT's classic Interpreter or its newer CompiledModel API")
    run.add_argument("--data", help="labelled data for accuracy: .npz (x_test/y_test or x/y), "
                     "an MNIST IDX folder or mnist.npz")
    run.add_argument("--out", help="folder for report.md, results.csv, results.json and plots")
    run.add_argument("--profile-ops", action="store_true",
                     help="also estimate the time of each op (slower; see `tflite-bench profile`) and add "
                     "the per-op tables and bar charts to --out's report")
    run.add_argument("--adb", action="store_true",
                     help="run TensorFlow's benchmark_model on an attached Android device instead")
    run.add_argument("--adb-serial", help="device serial (adb -s)")
    run.add_argument("--adb-binary", default="/data/local/tmp/benchmark_model",
                     help="path of benchmark_model on the device")
    micro = commands.add_parser("c-source", help="write a .tflite as a C array and header for microcontrollers, "
                                "and print its tensor-arena estimate")
    micro.add_argument("model", help="the .tflite file")
    micro.add_argument("source", help="the C file to write (model_data.c or .cc); the .h goes next to it")
    micro.add_argument("--name", default="model", help="the array's C name (NAME_len is its length)")
    micro.add_argument("--alignment", type=int, default=16, help="array and tensor alignment in bytes")
    profile = commands.add_parser(
        "profile", help="estimate the time of each op of a .tflite file (LiteRT's Python wheel has no per-op "
        "profiler): each op timed as a single-op model, checked against the whole invoke")
    profile.add_argument("model", help="the .tflite file")
    profile.add_argument("--threads", type=int, default=1, help="interpreter threads (>= 1)")
    profile.add_argument("--rounds", type=int, default=5, help="interleaved rounds (>= 1)")
    profile.add_argument("--runs", type=int, default=100, help="timed invokes per model per round (>= 1)")
    profile.add_argument("--warmup", type=int, default=10, help="untimed invokes per model per round (>= 0)")
    profile.add_argument("--no-xnnpack", action="store_true", help="builtin kernels only")
    profile.add_argument("--out", help="folder for op_profile.md, op_profiles.json and the bar chart")
    args = parser.parse_args(argv)
    if args.command == "c-source":
        return _c_source(args)
    if args.command == "profile":
        return _profile(args)
    from tflite_bench.progress import Progress
    from tflite_bench.record import benchmark_model
    from tflite_bench.report import text_table, write_report

    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads must be comma-separated integers, got {args.threads!r}")
    for path in args.models:
        if not os.path.isfile(path):
            print(f"tflite-bench: no such file: {path}", file=sys.stderr)
            return 2
    if args.adb:
        if args.profile_ops:
            parser.error("--profile-ops needs a local run: it times single-op models in this process's LiteRT")
        if args.data:
            parser.error("--data needs a local run: benchmark_model on a device measures no accuracy")
        from tflite_bench.android import run_on_device

        def measure(path, n):
            return run_on_device(path, threads=n, runs=args.runs, warmup=args.warmup,
                                 serial=args.adb_serial, binary=args.adb_binary)
    else:
        try:
            data = load_labelled_data(args.data) if args.data else None
        except (OSError, ValueError, KeyError) as error:
            print(f"tflite-bench: cannot read --data {args.data}: {error}", file=sys.stderr)
            return 2

        def measure(path, n):
            return benchmark_model(path, threads=n, warmup=args.warmup, runs=args.runs,
                                   use_xnnpack=not args.no_xnnpack, data=data, runtime=args.runtime)

    jobs = [(path, n) for path in args.models for n in threads]
    progress = Progress(len(jobs), "measurement")
    records = []
    for i, (path, n) in enumerate(jobs):
        try:
            records.append(measure(path, n))
        except (ValueError, OSError, subprocess.CalledProcessError) as error:
            print(f"\ntflite-bench: {path}: {error}", file=sys.stderr)
            return 2
        progress.update(i + 1, f"{os.path.basename(path)}, {n} thread{'s' if n > 1 else ''}")
    print(text_table(records))
    profiles = []
    if args.profile_ops:
        from tflite_bench.op_profile import profile_ops

        progress = Progress(len(jobs), "per-op profile")
        for i, (path, n) in enumerate(jobs):
            try:
                profiles.append(profile_ops(path, threads=n, use_xnnpack=not args.no_xnnpack))
            except ValueError as error:
                print(f"\ntflite-bench: {path}: {error}", file=sys.stderr)
                return 2
            progress.update(i + 1, f"{os.path.basename(path)}, {n} thread{'s' if n > 1 else ''}")
        for profile in profiles:
            print(f"\n{profile}")
    if args.out:
        for written in write_report(records, args.out, plots=_has_matplotlib(), profiles=profiles):
            print(f"wrote {written}")
    return 0


def _on_file(path, work):
    """`work(path)`'s result, or `None` after printing why not: no such file,
    or the error (ValueError, TypeError) it raised."""
    if not os.path.isfile(path):
        print(f"tflite-bench: no such file: {path}", file=sys.stderr)
        return None
    try:
        return work(path)
    except (ValueError, TypeError) as error:
        print(f"tflite-bench: {error}", file=sys.stderr)
        return None


def _profile(args):
    from tflite_bench.op_profile import profile_ops

    profile = _on_file(args.model, lambda path: profile_ops(
        path, threads=args.threads, rounds=args.rounds, runs=args.runs, warmup=args.warmup,
        use_xnnpack=not args.no_xnnpack, progress=True))
    if profile is None:
        return 2
    print(profile)
    if args.out:
        from tflite_bench.report import write_op_profile

        for written in write_op_profile(profile, args.out, plot=_has_matplotlib()):
            print(f"wrote {written}")
    return 0


def _c_source(args):
    from tflite_bench.micro import arena_estimate, to_c_source

    done = _on_file(args.model, lambda path: (
        to_c_source(path, args.source, name=args.name, alignment=args.alignment),
        arena_estimate(path, alignment=args.alignment)))
    if done is None:
        return 2
    written, plan = done
    print("wrote " + " and ".join(written))
    print(plan.summary())
    return 0


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
