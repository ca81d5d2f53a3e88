"""The `keras-compress` command.

A top-level module, outside the `keras_compress` package: importing the
package loads Keras and TensorFlow (about 10 s), so the console script parses
its arguments here first and imports the package only to run a command.
`keras_compress.cli.main` is this same function.
"""

import argparse
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="keras-compress",
        description="Compress Keras 3 models and measure the converted TFLite files.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train, compress, convert and measure an MNIST CNN on the bundled data"
    )
    demo.add_argument("--out", default="keras_compress_demo", help="report folder")
    demo.add_argument("--epochs", type=int, default=3, help="training epochs per stage")
    demo.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    demo.add_argument("--data", default=None, help="MNIST IDX folder or Keras mnist.npz")
    demo.add_argument("--with-tfmot", action="store_true",
                      help="add tfmot's pruning and QAT rows, run with tf_keras in a subprocess "
                      "(extra [tfmot])")
    auto = commands.add_parser(
        "auto", help="search per-layer compression of a .keras model to a size, latency or MACs budget",
        description="Search per-layer compression of MODEL to a budget (at least one "
        "of --max-bytes, --max-latency-ms, --max-macs), within --max-drop of its metric; writes the "
        "compressed model, its .tflite file and a report into --out.",
    )
    auto.add_argument("model", metavar="MODEL.keras", help="the Keras model to compress")
    auto.add_argument("--data", required=True, metavar="DATA",
                      help="training data: 'mnist' (the bundled set; its test split validates) or a .npz "
                      "file with arrays x and y (or x_train and y_train, optionally x_val and y_val or "
                      "x_test and y_test for validation)")
    auto.add_argument("--validation-data", default=None, metavar="DATA",
                      help="held-out data for the measurements, as --data; default the validation "
                      "arrays of --data, else its last 20%%")
    auto.add_argument("--max-bytes", type=int, default=None, metavar="N", help="file size budget in bytes")
    auto.add_argument("--size-by", choices=("raw", "gzip"), default="raw",
                      help="what --max-bytes limits: the raw file or its gzip-compressed size")
    auto.add_argument("--max-latency-ms", type=float, default=None, metavar="X",
                      help="p50 latency budget in ms in the LiteRT interpreter")
    auto.add_argument("--threads", type=int, default=1, metavar="N", help="threads latency is measured with")
    auto.add_argument("--max-macs", type=int, default=None, metavar="N",
                      help="multiply-accumulates budget of one inference")
    auto.add_argument("--max-drop", type=float, default=0.005, metavar="X",
                      help="largest metric drop allowed, in the metric's units (0.005: half a point "
                      "of accuracy; default %(default)s)")
    auto.add_argument("--quantization", default="int8", metavar="MODES",
                      help="the files' mode, or modes to choose from per plan, comma-separated: int8, "
                      "int16x8, float16, dynamic, float (default %(default)s)")
    auto.add_argument("--keep-names", action="store_true",
                      help="keep the files' internal tensor names (debug information; stripped by default)")
    auto.add_argument("--epochs", type=int, default=4, metavar="N", help="recovery fine-tuning epochs")
    auto.add_argument("--no-baselines", action="store_true", help="skip the uniform baselines")
    auto.add_argument("--out", default="keras_compress_auto", metavar="DIR", help="report folder")
    auto.add_argument("--seed", type=int, default=0, metavar="N", help="random seed")
    args = parser.parse_args(argv)
    if args.command == "auto":
        if args.max_bytes is None and args.max_latency_ms is None and args.max_macs is None:
            auto.error("give a budget: at least one of --max-bytes, --max-latency-ms, --max-macs")
        return _auto(args)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_compress.demo import run_demo

    try:
        run_demo(out=args.out, epochs=args.epochs, quick=args.quick, data=args.data,
                 with_tfmot=args.with_tfmot)
    except (ValueError, RuntimeError) as error:
        print(f"keras-compress demo: {error}", file=sys.stderr)
        return 2
    return 0


def _auto(args):
    """Runs `keras-compress auto`: reads the data and the model, searches, reports."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        if not os.path.isfile(args.model):
            raise FileNotFoundError(f"model file {args.model!r} not found.")
        data, validation = _read_data("--data", args.data)
        if args.validation_data is not None:
            validation, _ = _read_data("--validation-data", args.validation_data)
        import keras

        import keras_compress  # noqa: F401  (registers the custom objects load_model needs)
        from keras_compress.auto import auto_compress

        try:
            model = keras.models.load_model(args.model)
        except (ValueError, TypeError, OSError) as error:
            raise ValueError(f"cannot load model file {args.model!r}: {error}") from error
        modes = tuple(m.strip() for m in args.quantization.split(",") if m.strip())
        result = auto_compress(
            model, data, validation, max_bytes=args.max_bytes, size_by=args.size_by,
            max_latency_ms=args.max_latency_ms, threads=args.threads, max_macs=args.max_macs,
            max_drop=args.max_drop, epochs=args.epochs, baselines=not args.no_baselines,
            out=args.out, seed=args.seed, strip_names=not args.keep_names,
            quantization=modes[0] if len(modes) == 1 else modes,
        )
    except (ValueError, TypeError, RuntimeError, FileNotFoundError) as error:
        print(f"keras-compress auto: {error}", file=sys.stderr)
        return 2
    print(result.summary())
    print(f"Report written to {os.path.abspath(args.out)} (report.md, report.json, model.keras, model.tflite).")
    return 0


def _read_data(option, spec):
    """`(data, validation)` from a DATA argument, as `(x, y)` pairs; for
    `--data`, `validation` is None when the source has none. For
    `--validation-data`, `data` is the held-out pair: mnist's test split, or
    the file's x and y (else x_val and y_val, else x_test and y_test)."""
    validating = option == "--validation-data"
    if spec == "mnist":
        from keras_compress.datasets import load_mnist

        train, test = load_mnist()
        return (test, None) if validating else (train, test)
    import zipfile

    import numpy as np

    if not os.path.isfile(spec):
        raise FileNotFoundError(f"{option} must be 'mnist' or a .npz file; {spec!r} not found.")
    try:
        arrays = np.load(spec, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{option} {spec!r} is not a readable .npz file: {error}") from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise ValueError(f"{option} {spec!r} must be a .npz file of arrays x and y, not a single .npy array.")
    with arrays:
        names = set(arrays.files)

        def pair(x, y):
            if (x in names) != (y in names):
                have, missing = (x, y) if x in names else (y, x)
                raise ValueError(f"{option} {spec!r} has array {have} without {missing}.")
            if x not in names:
                return None
            xs, ys = arrays[x], arrays[y]
            if len(xs) != len(ys):
                raise ValueError(f"{option} {spec!r}: {x} has {len(xs)} samples but {y} has {len(ys)}.")
            return xs, ys

        if validating:
            wanted = ("x", "y"), ("x_val", "y_val"), ("x_test", "y_test")
            data, validation = next(filter(None, (pair(*p) for p in wanted)), None), None
        else:
            wanted = ("x", "y"), ("x_train", "y_train")
            data = pair("x", "y") or pair("x_train", "y_train")
            validation = pair("x_val", "y_val") or pair("x_test", "y_test")
        if data is None:
            raise ValueError(f"{option} {spec!r} has no arrays "
                             + " nor ".join(f"{x} and {y}" for x, y in wanted)
                             + f"; it has: {', '.join(sorted(names)) or 'none'}.")
    return data, validation

if __name__ == "__main__":
    sys.exit(main())
