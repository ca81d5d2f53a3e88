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
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_compress.demo import run_demo

    try:
        run_demo(out=args.out, epochs=args.epochs, quick=args.quick, data=args.data,
                 with_tfmot=args.with_tfmot)
    except (ValueError, RuntimeError) as error:
        print(f"keras-compress demo: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
