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

import json
import math
import os
import time

import keras

from keras_compress import datasets, pruning
from keras_compress.distillation import Distiller
from keras_compress.examples import (
    FINAL_SPARSITY,
    STRUCTURED_AMOUNT,
    build_cnn,
    build_student,
    compile_classifier,
    magnitude_schedule,
)
from keras_compress.export import to_tflite
from keras_compress.peers import check_tfmot_installed, run_tfmot_peer
from keras_compress.quantization import quantize_model
from tflite_bench.checks import check_bool, check_int


def _status(message):
    print(f"\n[keras-compress demo] {message}", flush=True)


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
    check_int("run_demo", "epochs", epochs, minimum=1)
    check_bool("run_demo", "quick", quick)
    check_bool("run_demo", "with_tfmot", with_tfmot)
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
    pruned = compile_classifier(pruning.prune_low_magnitude(baseline, magnitude_schedule(steps)))
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
