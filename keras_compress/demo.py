"""`keras-compress demo`: the whole pipeline on the bundled MNIST data.

Trains a small CNN, compresses it every way the package knows (post-training
quantization, magnitude and L1 pruning, structured pruning that removes half
the filters and units, quantization-aware training,
distillation into a smaller student), converts every variant to TFLite and
measures each converted file with `tflite_bench`: bytes, op dtypes, latency,
start-up, memory and accuracy on the held-out split in the LiteRT interpreter.
Writes the `.tflite` files, `results.json`, `results.csv`, `report.md` and the
plots (with matplotlib, extra `[plot]`) into one folder.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np

from keras_compress import datasets, pruning
from keras_compress.distillation import Distiller
from keras_compress.export import to_tflite
from keras_compress.quantization import quantize_model

FINAL_SPARSITY = 0.8
STRUCTURED_AMOUNT = 0.5


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


def build_student():
    """The distillation student: Flatten-Dense(32)-Dense(10), 25.4k parameters."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1), name="image"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="mnist_student",
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


def check_tfmot_installed():
    """Raises unless the `[tfmot]` extra (tfmot and tf-keras) is installed."""
    missing = [name for name in ("tensorflow_model_optimization", "tf_keras")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"with_tfmot needs {' and '.join(missing)}: install the [tfmot] extra, "
                         "pip install 'keras-compress[tfmot]'.")


def run_peer_script(script, data, arguments, show_progress=False):
    """Runs a peer script (tfmot, in its own process: it needs
    TF_USE_LEGACY_KERAS for the whole process) on `data`, `((x, y), (x, y))`
    arrays handed over as an .npz (`--data`), with extra command-line
    `arguments`; returns the JSON of its last `RESULT ` line.

    With `show_progress`, the script's stderr (its progress lines) passes
    through; otherwise it is kept for the error message.
    """
    (x_train, y_train), (x_test, y_test) = data
    with tempfile.TemporaryDirectory() as tmp:
        split = os.path.join(tmp, "split.npz")
        np.savez(split, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        done = subprocess.run(
            [sys.executable, script, "--data", split, *map(str, arguments)],
            stdout=subprocess.PIPE, stderr=None if show_progress else subprocess.PIPE, text=True,
            env={**os.environ, "TF_USE_LEGACY_KERAS": "1"},
        )
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not results:
        messages = "its messages are above." if show_progress else f"its last messages:\n{done.stderr[-3000:]}"
        raise RuntimeError(f"{os.path.basename(script)} failed (exit code {done.returncode}); {messages}")
    return json.loads(results[-1][len("RESULT "):])


def run_tfmot_peer(out, data, epochs, seed):
    """Runs `keras_compress/tfmot_peer.py`, showing its progress; returns its RESULT."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tfmot_peer.py")
    arguments = ["--out", out, "--epochs", epochs, "--seed", seed]
    return run_peer_script(script, data, arguments, show_progress=True)


def run_demo(out="keras_compress_demo", epochs=3, quick=False, data=None, seed=0, with_tfmot=False):
    """Runs the demo pipeline and returns its results (also written to `out`).

    Args:
        out: the report folder (created if needed).
        epochs: training epochs of each stage.
        quick: a short run (1 epoch per stage on 4,000 training images).
        data: `None` for the bundled MNIST, or a path accepted by
            `keras_compress.datasets.load_mnist`.
        seed: random seed.
        with_tfmot: also run tfmot's pruning and QAT on the same architecture
            and data (tf_keras, in a subprocess; extra `[tfmot]`) and put its
            variants in the same table.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}.")
    if with_tfmot:
        check_tfmot_installed()
    import tflite_bench.progress
    import tflite_bench.report  # the demo is where the library and the bench meet

    started = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist(data)
    if quick:
        epochs, x_train, y_train = 1, x_train[:4000], y_train[:4000]
    steps = math.ceil(len(x_train) / 32) * epochs
    fit = dict(x=x_train, y=y_train, batch_size=32, epochs=epochs, verbose=2)
    keras.utils.set_random_seed(seed)

    stages = 9 if with_tfmot else 8
    _status(f"1/{stages} training the baseline CNN ({epochs} epochs on {len(x_train)} images)")
    baseline = compile_classifier(build_cnn())
    baseline.fit(**fit)

    _status(f"2/{stages} magnitude pruning to {FINAL_SPARSITY:.0%} with PolynomialDecay ({epochs} epochs)")
    pruned = compile_classifier(pruning.prune_low_magnitude(baseline, _magnitude_schedule(steps)))
    pruned.fit(**fit, callbacks=[pruning.UpdatePruningStep()])
    pruned = pruning.strip_pruning(pruned)

    _status(f"3/{stages} L1-regularized pruning: {epochs} epochs of L1, then threshold at "
            f"0.2 x max|w| and {epochs} epochs of fine-tuning with the masks held")
    l1 = compile_classifier(pruning.prune_low_magnitude(baseline, None))
    l1.fit(**fit, callbacks=[pruning.L1Regularization(3e-4)])
    l1.fit(**fit, callbacks=[pruning.ThresholdPruning(relative_threshold=0.2)])
    l1 = pruning.strip_pruning(l1)

    qat_epochs = max(1, epochs // 2)
    _status(f"4/{stages} quantization-aware training of the baseline ({qat_epochs} epoch(s))")
    qat = compile_classifier(quantize_model(baseline))
    qat.fit(**{**fit, "epochs": qat_epochs})

    _status(f"5/{stages} structured pruning: removing {STRUCTURED_AMOUNT:.0%} of the filters and units "
            f"(smallest L1 norm), then {epochs} epochs of fine-tuning")
    shrunk = compile_classifier(pruning.shrink(baseline, STRUCTURED_AMOUNT, criterion="l1"))
    shrunk.fit(**fit)

    # Last of the stages that train the baseline's copies: the Distiller freezes
    # its teacher (baseline.trainable becomes False).
    _status(f"6/{stages} distilling the baseline into a 25k-parameter student "
            f"({2 * epochs} epochs, teacher outputs cached)")
    distiller = Distiller(student=build_student(), teacher=baseline)
    distiller.compile(optimizer="adam", metrics=["accuracy"], alpha=0.5, mode="hard")
    distiller.fit(*distiller.cache_teacher(x_train, y_train), batch_size=32, epochs=2 * epochs, verbose=2)

    calibration = {"representative_data": x_train, "calibration_steps": 200}
    variants = {
        "baseline_float": (baseline, {}),
        "ptq_dynamic": (baseline, {"quantization": "dynamic"}),
        "ptq_float16": (baseline, {"quantization": "float16"}),
        "ptq_int8": (baseline, {"quantization": "int8", **calibration}),
        "pruned_sparse_float": (pruned, {}),
        "pruned_sparse_int8": (pruned, {"quantization": "int8", **calibration}),
        "l1_threshold_sparse_float": (l1, {}),
        "qat_int8": (qat, {"quantization": "int8"}),
        "distilled_student_int8": (distiller.student, {"quantization": "int8", **calibration}),
        "structured_50_float": (shrunk, {}),
        "structured_50_int8": (shrunk, {"quantization": "int8", **calibration}),
    }
    sparsities = {}
    if with_tfmot:
        _status(f"7/{stages} tfmot peer: the same baseline, pruning and QAT with tf_keras + tfmot "
                "(a subprocess)")
        peer = run_tfmot_peer(out, ((x_train, y_train), (x_test, y_test)), epochs, seed)
        for name in peer["files"]:
            variants[name] = (None, {})
        sparsities.update(peer["sparsity"])

    stage = stages - 1
    _status(f"{stage}/{stages} converting {len(variants)} variants to TFLite and measuring them in LiteRT")
    results, records = [], []
    progress = tflite_bench.progress.Progress(len(variants), "variant")  # no \r into pipes
    for i, (name, (model, options)) in enumerate(variants.items(), 1):
        path = os.path.join(out, f"{name}.tflite")
        if model is not None:  # the tfmot peer wrote its own files
            to_tflite(model, path, **options)
            # QuantizeWrapper holds its kernel inside: the report counts plain layers.
            sparsities[name] = None if name == "qat_int8" else pruning.sparsity_report(model).total.sparsity
        record = tflite_bench.benchmark_model(path, threads=1, runs=100, data=(x_test, y_test), name=name)
        records.append(record)
        results.append({
            "variant": name,
            "file": os.path.basename(path),
            "bytes": record.bytes,
            "accuracy": record.accuracy,
            "sparsity": sparsities.get(name),
            "int8_compute_fraction": record.int8_compute_fraction,
            "latency_p50_ms": record.p50_ms,
            "xnnpack": record.xnnpack,
        })
        progress.update(i, name)

    _status(f"{stages}/{stages} writing the report")
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
        "tfmot": peer if with_tfmot else None,
    }
    plots = _plots(records, out)
    with open(os.path.join(out, "results.csv"), "w") as f:
        f.write(tflite_bench.report.to_csv(records))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({**summary, "measurements": [r.as_dict() for r in records]}, f, indent=1)
    table = format_table(results)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(
            "# keras-compress demo\n\n"
            f"MNIST CNN, {epochs} epoch(s) per stage on {len(x_train)} images; accuracy on "
            f"the {len(x_test)} held-out images, computed from each .tflite in LiteRT; "
            "latency p50 over 100 invokes at 1 thread.\n\n" + table + "\n\n"
            + tflite_bench.report.markdown_sections(records)  # settings, table, legend
            + "".join(f"\n![{os.path.basename(p)}]({os.path.basename(p)})\n" for p in plots)
        )
    print("\n" + table)
    print(f"\nReport written to {os.path.abspath(out)} (report.md, results.json, results.csv, "
          f"{len(plots)} plot(s) and the .tflite files) in {summary['seconds']} s.")
    return summary


def _plots(records, out):
    import tflite_bench.report

    try:
        return tflite_bench.report.plot_tradeoffs(records, out)
    except ImportError:
        print("  (no plots: install the [plot] extra for matplotlib)")
        return []


def format_table(results):
    """A Markdown table of the demo results."""
    lines = [
        "| variant | bytes | size vs float | accuracy | sparsity | int8 ops | p50 latency (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['bytes']:,} | {r['size_ratio']:.3f} | {r['accuracy']:.2%} "
            f"| {'-' if r['sparsity'] is None else format(r['sparsity'], '.1%')} "
            f"| {r['int8_compute_fraction']:.0%} | {r['latency_p50_ms']:.3f} |"
        )
    return "\n".join(lines)
