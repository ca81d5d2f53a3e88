"""The tfmot peer of `keras-compress demo --with-tfmot` (a script, run in its own process).

TensorFlow Model Optimization only works with the legacy `tf_keras`, selected
by `TF_USE_LEGACY_KERAS=1` before TensorFlow loads, for the whole process. So
this file is run as a script, never imported by `keras_compress`, and imports
nothing from it. It needs the `[tfmot]` extra (tensorflow-model-optimization,
tf-keras).

On the demo's data, architecture and epochs it trains the float baseline with
tf_keras, then makes tfmot's versions of two demo variants:

- `tfmot_pruned_sparse_float` / `tfmot_pruned_sparse_int8`: tfmot's
  `prune_low_magnitude` with the demo's PolynomialDecay schedule (50% to 80%),
  stripped and converted with `EXPERIMENTAL_SPARSITY` (float, and full int8
  calibrated on 200 training images, as the demo's own int8 variants);
- `tfmot_qat_int8`: tfmot's `quantize_model`, fine-tuned, converted to int8.

It writes the `.tflite` files into `--out` and prints one `RESULT {json}`
line (file names, Keras accuracies, kernel sparsity); progress goes to stderr.
The benchmark peers in `benchmarks/` reuse its model and conversion helpers.

Usage:

    python keras_compress/peer-scripts/tfmot_peer.py --data split.npz --out DIR [--epochs 3] [--seed 0]
"""

import os

# tfmot wraps tf_keras layers only; this must be set before TensorFlow loads.
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402

FINAL_SPARSITY = 0.8
CALIBRATION_IMAGES = 200


def log(stage):
    print(f"[tfmot peer] {stage}", file=sys.stderr, flush=True)


def build_model():
    """The demo CNN (`keras_compress.examples.build_cnn`) in tf_keras."""
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def compile_model(model):
    """The demo's training setup; a fresh optimizer every time."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def clone_with_weights(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def convert(model, optimizations, representative=None):
    """Converts to a TFLite flatbuffer; returns (bytes, conversion path used).

    With `representative` images, the conversion is full int8 (int8 ops,
    float input and output) calibrated on them.
    """

    def configure(converter):
        converter.optimizations = optimizations
        if representative is not None:
            converter.representative_dataset = lambda: ([x[None]] for x in representative)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        return converter

    try:
        return configure(tf.lite.TFLiteConverter.from_keras_model(model)).convert(), "from_keras_model"
    except Exception as error:  # the converter raises many unrelated types
        log(f"from_keras_model failed ({type(error).__name__}: {error}); using SavedModel")
    with tempfile.TemporaryDirectory() as saved_dir:
        tf.saved_model.save(model, saved_dir)
        return configure(tf.lite.TFLiteConverter.from_saved_model(saved_dir)).convert(), "from_saved_model"


def demo_schedule(steps):
    """The demo's schedule (`keras_compress.examples.magnitude_schedule`) in tfmot."""
    frequency = max(1, min(100, steps // 10))
    end_step = max(frequency, (int(0.6 * steps) // frequency) * frequency)
    return tfmot.sparsity.keras.PolynomialDecay(0.5, FINAL_SPARSITY, 0, end_step, frequency=frequency)


def kernel_sparsity(model):
    kernels = [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]
    return sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)


def keras_accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))


def run(args):
    with np.load(args.data) as data:
        x_train, y_train, x_test, y_test = (data[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    os.makedirs(args.out, exist_ok=True)
    steps = math.ceil(len(x_train) / 32) * args.epochs
    fit = dict(x=x_train, y=y_train, batch_size=32, epochs=args.epochs, verbose=0)
    keras.utils.set_random_seed(args.seed)

    log(f"training the baseline with tf_keras ({args.epochs} epochs)")
    baseline = compile_model(build_model())
    baseline.fit(**fit)

    log(f"tfmot prune_low_magnitude to {FINAL_SPARSITY:.0%} ({args.epochs} epochs)")
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        clone_with_weights(baseline), pruning_schedule=demo_schedule(steps)
    )
    compile_model(pruned).fit(**fit, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    pruned = tfmot.sparsity.keras.strip_pruning(pruned)

    qat_epochs = max(1, args.epochs // 2)
    log(f"tfmot quantize_model, quantization-aware training ({qat_epochs} epoch(s))")
    qat = compile_model(tfmot.quantization.keras.quantize_model(clone_with_weights(baseline)))
    qat.fit(**{**fit, "epochs": qat_epochs})

    log("converting")
    calibration = x_train[:CALIBRATION_IMAGES]
    sparsity = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    files = {}
    for name, model, optimizations, representative in (
        ("tfmot_pruned_sparse_float", pruned, sparsity, None),
        ("tfmot_pruned_sparse_int8", pruned, [tf.lite.Optimize.DEFAULT, *sparsity], calibration),
        ("tfmot_qat_int8", qat, [tf.lite.Optimize.DEFAULT], None),
    ):
        flatbuffer, _ = convert(model, optimizations, representative)
        files[name] = f"{name}.tflite"
        with open(os.path.join(args.out, files[name]), "wb") as f:
            f.write(flatbuffer)
    return {
        "tfmot": tfmot.__version__,
        "tf_keras": keras.__version__,
        "files": files,
        "sparsity": {"tfmot_pruned_sparse_float": kernel_sparsity(pruned),
                     "tfmot_pruned_sparse_int8": kernel_sparsity(pruned)},
        "keras_accuracy": {"baseline": keras_accuracy(baseline, x_test, y_test),
                           "pruned": keras_accuracy(pruned, x_test, y_test),
                           "qat": keras_accuracy(qat, x_test, y_test)},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="npz with x_train, y_train, x_test, y_test")
    parser.add_argument("--out", required=True, help="folder for the .tflite files")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    print("RESULT " + json.dumps(run(parser.parse_args(argv))), flush=True)


if __name__ == "__main__":
    main()
