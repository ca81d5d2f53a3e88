"""`keras-compress demo`: the whole pipeline on the bundled MNIST data.

Trains a small CNN, compresses it several ways, converts every variant to
TFLite and measures each converted file: bytes, accuracy on the held-out split
in the LiteRT interpreter, and latency. Writes the `.tflite` files,
`results.json` and `report.md` into one folder.
"""

import json
import math
import os
import time

import keras

from keras_compress import datasets, pruning
from keras_compress.export import evaluate_tflite, to_tflite

FINAL_SPARSITY = 0.8


def build_cnn():
    """The demo and benchmark model: 2 conv + 2 dense, 56.7k parameters."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1), name="image"),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="mnist_cnn",
    )


def compile_classifier(model):
    """Adam(1e-3), sparse cross-entropy on logits, accuracy: the demo's training setup."""
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _status(message):
    print(f"\n[keras-compress demo] {message}", flush=True)


def _magnitude_schedule(steps):
    """80% by PolynomialDecay, reached after ~60% of the fine-tuning steps,
    with at least 10 mask updates however short the run."""
    frequency = max(1, min(100, steps // 10))
    end_step = max(frequency, (int(0.6 * steps) // frequency) * frequency)
    return pruning.PolynomialDecay(0.5, FINAL_SPARSITY, 0, end_step, frequency=frequency)


def run_demo(out="keras_compress_demo", epochs=3, quick=False, data=None, seed=0):
    """Runs the demo pipeline and returns its results (also written to `out`).

    Args:
        out: the report folder (created if needed).
        epochs: training epochs of each stage.
        quick: a short run (1 epoch per stage on 4,000 training images).
        data: `None` for the bundled MNIST, or a path accepted by
            `keras_compress.datasets.load_mnist`.
        seed: random seed.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}.")
    import tflite_bench  # the CLI is where the library and the bench meet

    started = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist(data)
    if quick:
        epochs, x_train, y_train = 1, x_train[:4000], y_train[:4000]
    steps = math.ceil(len(x_train) / 32) * epochs
    fit = dict(x=x_train, y=y_train, batch_size=32, epochs=epochs, verbose=2)
    keras.utils.set_random_seed(seed)

    _status(f"1/5 training the baseline CNN ({epochs} epochs on {len(x_train)} images)")
    baseline = compile_classifier(build_cnn())
    baseline.fit(**fit)

    _status(f"2/5 magnitude pruning to {FINAL_SPARSITY:.0%} with PolynomialDecay ({epochs} epochs)")
    pruned = compile_classifier(pruning.prune_low_magnitude(baseline, _magnitude_schedule(steps)))
    pruned.fit(**fit, callbacks=[pruning.UpdatePruningStep()])
    pruned = pruning.strip_pruning(pruned)

    _status(f"3/5 L1-regularized pruning: {epochs} epochs of L1, then threshold at "
            f"0.2 x max|w| and {epochs} epochs of fine-tuning with the masks held")
    l1 = compile_classifier(pruning.prune_low_magnitude(baseline, None))
    l1.fit(**fit, callbacks=[pruning.L1Regularization(3e-4)])
    l1.fit(**fit, callbacks=[pruning.ThresholdPruning(relative_threshold=0.2)])
    l1 = pruning.strip_pruning(l1)

    variants = {
        "baseline_float": (baseline, {}),
        "pruned_sparse_float": (pruned, {}),
        "pruned_sparse_int8": (pruned, {"quantization": "int8", "representative_data": x_train}),
        "l1_threshold_sparse_float": (l1, {}),
    }
    _status("4/5 converting each variant to TFLite and measuring it in LiteRT")
    results = []
    for i, (name, (model, options)) in enumerate(variants.items(), 1):
        path = os.path.join(out, f"{name}.tflite")
        flatbuffer = to_tflite(model, path, **options)
        latency = tflite_bench.measure_latency(path, threads=1, runs=100)
        results.append({
            "variant": name,
            "file": os.path.basename(path),
            "bytes": len(flatbuffer),
            "accuracy": evaluate_tflite(flatbuffer, x_test, y_test)["accuracy"],
            "sparsity": pruning.sparsity_report(model).total.sparsity,
            "latency_p50_ms": latency["p50_ms"],
            "xnnpack": latency["xnnpack"],
        })
        print(f"  [{i}/{len(variants)}] {name}: {len(flatbuffer):,} bytes", flush=True)

    _status("5/5 writing the report")
    dense = results[0]["bytes"]
    for r in results:
        r["size_ratio"] = r["bytes"] / dense
    summary = {
        "keras": keras.__version__,
        "epochs": epochs,
        "train_images": len(x_train),
        "test_images": len(x_test),
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    table = format_table(results)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(
            "# keras-compress demo\n\n"
            f"MNIST CNN, {epochs} epoch(s) per stage on {len(x_train)} images; accuracy on "
            f"the {len(x_test)} held-out images, computed from each .tflite in LiteRT; "
            "latency p50 over 100 invokes at 1 thread.\n\n" + table + "\n"
        )
    print("\n" + table)
    print(f"\nReport written to {os.path.abspath(out)} in {summary['seconds']} s.")
    return summary


def format_table(results):
    """A Markdown table of the demo results."""
    lines = [
        "| variant | bytes | size vs float | accuracy | sparsity | p50 latency (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['bytes']:,} | {r['size_ratio']:.3f} | {r['accuracy']:.2%} "
            f"| {r['sparsity']:.1%} | {r['latency_p50_ms']:.3f} |"
        )
    return "\n".join(lines)
