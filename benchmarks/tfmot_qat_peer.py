"""tfmot peer for the quantization benchmark: quantization-aware training with
tfmot on tf_keras, the same architecture, data and epochs as keras-compress.

Runs in its own process (tfmot needs ``TF_USE_LEGACY_KERAS``, set by
``tfmot_peer`` before TensorFlow loads) and never imports ``keras_compress``.
Prints its JSON as the last stdout line, prefixed by ``RESULT ``.

Usage::

    python benchmarks/tfmot_qat_peer.py --data split.npz [--pairs 10]
"""

import argparse
import json
import math

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tflite_bench.interpreter import predict_tflite
from tfmot_peer import (
    build_model,
    clone_with_weights,
    compile_model,
    convert,
    interleaved_ms_per_step,
    keras,
    keras_accuracy,
    load_data,
    log,
    tflite_accuracy,
)

from _timing import timing_summary


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="npz with x_train, y_train, x_test, y_test")
    parser.add_argument("--epochs", type=int, default=4, help="float training epochs")
    parser.add_argument("--qat-epochs", type=int, default=2, help="QAT fine-tuning epochs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=10, help="plain/QAT timing rounds")
    parser.add_argument("--skip-timing", action="store_true")
    return parser.parse_args(argv)


def predictions(flatbuffer, x):
    """Class labels of `x` from the TFLite model, through tflite_bench."""
    return np.argmax(predict_tflite(flatbuffer, x), -1)


def measure_overhead(baseline, x, y, args, steps_per_epoch):
    plain = compile_model(clone_with_weights(baseline))
    qat = compile_model(tfmot.quantization.keras.quantize_model(clone_with_weights(baseline)))
    runs = [("plain", plain, []), ("qat", qat, [])]
    ms = interleaved_ms_per_step(runs, x, y, args.batch_size, args.pairs, steps_per_epoch)
    return timing_summary(ms, "qat")


def run(args):
    (x_train, y_train), (x_test, y_test) = load_data(args.data)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    log(f"baseline: training {args.epochs} epochs")
    keras.utils.set_random_seed(args.seed)
    baseline = compile_model(build_model())
    baseline.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
    log(f"QAT: fine-tuning {args.qat_epochs} epochs")
    qat = compile_model(tfmot.quantization.keras.quantize_model(clone_with_weights(baseline)))
    qat.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.qat_epochs, verbose=0)
    log("converting and evaluating")
    float_file, _ = convert(baseline, [])
    qat_file, _ = convert(qat, [tf.lite.Optimize.DEFAULT])
    keras_labels = np.argmax(qat.predict(x_test, batch_size=256, verbose=0), -1)
    result = {
        "tool": "tfmot",
        "tfmot": tfmot.__version__,
        "seed": args.seed,
        "float_keras_accuracy": keras_accuracy(baseline, x_test, y_test),
        "float_tflite_accuracy": tflite_accuracy(float_file, x_test, y_test)[0],
        "qat_keras_accuracy": float(np.mean(keras_labels == y_test)),
        "qat_tflite_accuracy": tflite_accuracy(qat_file, x_test, y_test)[0],
        "qat_agreement": float(np.mean(predictions(qat_file, x_test) == keras_labels)),
        "bytes_float": len(float_file),
        "bytes_qat_int8": len(qat_file),
    }
    result["timing"] = None if args.skip_timing else measure_overhead(
        baseline, x_train, y_train, args, steps_per_epoch
    )
    return result


def main(argv=None):
    result = run(parse_args(argv))
    log("done")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
