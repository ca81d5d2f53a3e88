"""TensorFlow Model Optimization (tfmot) peer for the pruning benchmark.

This script is the *peer* in a side-by-side comparison: it runs tfmot's
magnitude pruning on the legacy ``tf_keras`` with the same architecture, data,
epochs and polynomial-decay schedule as the keras-compress benchmark, and
reports the same figures (accuracy, sparsity, TFLite flatbuffer sizes and the
training-step overhead of pruning) as JSON.

It must run in its own process: tfmot only works with ``tf_keras``, which is
selected through ``TF_USE_LEGACY_KERAS`` before TensorFlow is imported, and
keras-compress imports Keras 3. For the same reason this script never imports
``keras_compress``; it uses ``tflite_bench``'s Keras-free LiteRT code.

Usage::

    TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 \\
        python benchmarks/tfmot_peer.py --data split.npz --out tfmot.json

``split.npz`` holds ``x_train``, ``y_train``, ``x_test`` and ``y_test``
(float32 images of shape (n, 28, 28, 1) in [0, 1], integer labels). Thread
pinning is left to the caller through the environment variables above. The
JSON is written to ``--out`` if given and always printed to stdout as the last
line, prefixed by ``RESULT ``; progress goes to stderr.
"""

import os

# tfmot wraps tf_keras layers only; this must be set before TensorFlow loads.
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import argparse
import importlib.metadata
import importlib.util
import json
import math
import sys
import time

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tflite_bench.interpreter import evaluate_tflite, load_interpreter

from _timing import timing_summary


def _package_peer():
    """keras_compress/peer-scripts/tfmot_peer.py, the demo's tfmot peer, loaded from its
    file: importing the keras_compress package would load Keras 3 here."""
    folder = importlib.util.find_spec("keras_compress").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location("kc_tfmot_peer", os.path.join(folder, "peer-scripts", "tfmot_peer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The same model, training setup, conversion and measures as the demo's peer.
_peer = _package_peer()
build_model, compile_model, clone_with_weights = _peer.build_model, _peer.compile_model, _peer.clone_with_weights
convert, keras_accuracy, kernel_sparsity = _peer.convert, _peer.keras_accuracy, _peer.kernel_sparsity

THREAD_ENV_VARS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def log(stage):
    print(f"[tfmot_peer] {stage}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="npz with x_train, y_train, x_test, y_test")
    parser.add_argument("--epochs", type=int, default=3, help="baseline training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=3, help="pruning fine-tune epochs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--initial-sparsity", type=float, default=0.5)
    parser.add_argument("--final-sparsity", type=float, default=0.8)
    parser.add_argument("--frequency", type=int, default=100, help="pruning frequency in steps")
    parser.add_argument(
        "--end-step", type=int, default=None,
        help="schedule end_step (default: the last multiple of frequency in the fine-tuning)",
    )
    parser.add_argument("--pairs", type=int, default=20, help="plain/pruned timing rounds")
    parser.add_argument("--out", help="also write the JSON result to this path")
    parser.add_argument("--skip-timing", action="store_true")
    return parser.parse_args(argv)


def load_data(path):
    with np.load(path) as data:
        return (data["x_train"], data["y_train"]), (data["x_test"], data["y_test"])


def pruning_end_step(steps_per_epoch, finetune_epochs, frequency):
    """Last pruning step: a multiple of `frequency` inside the fine-tuning.

    tfmot only updates masks on steps where (step - begin_step) % frequency
    == 0, so an end_step that is not such a step, or that lies beyond the last
    training step, would leave the final sparsity unreached.
    """
    last_step = steps_per_epoch * finetune_epochs - 1
    end_step = (last_step // frequency) * frequency
    if end_step <= 0:
        raise SystemExit(
            f"frequency {frequency} leaves no pruning step after step 0 "
            f"within {steps_per_epoch * finetune_epochs} fine-tuning steps"
        )
    return end_step


def make_schedule(args, end_step):
    return tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=args.initial_sparsity,
        final_sparsity=args.final_sparsity,
        begin_step=0,
        end_step=end_step,
        frequency=args.frequency,
    )


def prune(model, args, end_step):
    return tfmot.sparsity.keras.prune_low_magnitude(
        model, pruning_schedule=make_schedule(args, end_step)
    )


def tflite_accuracy(flatbuffer, x, y):
    """Accuracy through LiteRT (tflite_bench's Keras-free evaluation, as the
    keras-compress side uses); return (accuracy, op resolver used).

    LiteRT's default resolver applies XNNPACK, which fails to prepare the
    sparse dynamic-range int8 convolutions the converter emits; such models
    then run on the builtin kernels alone (`load_interpreter` falls back).
    """
    resolver = "AUTO" if load_interpreter(flatbuffer).uses_xnnpack else "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
    return evaluate_tflite(flatbuffer, x, y)["accuracy"], resolver


class EpochTimer(keras.callbacks.Callback):
    """Wall and process CPU time of each epoch's training loop, excluding
    fit()'s setup."""

    def __init__(self):
        super().__init__()
        self.seconds = []
        self.cpu_seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start[0])
        self.cpu_seconds.append(time.process_time() - self._start[1])


def timed_epoch(model, x, y, batch_size, callbacks):
    # The timer goes last so the pruned epoch includes UpdatePruningStep's
    # end-of-epoch re-masking, which is part of tfmot's training cost.
    timer = EpochTimer()
    model.fit(
        x, y, batch_size=batch_size, epochs=1, shuffle=True, verbose=0,
        callbacks=[*callbacks, timer],
    )
    return timer.seconds[0], timer.cpu_seconds[0]


def interleaved_ms_per_step(runs, x, y, batch_size, pairs, steps_per_epoch):
    """One epoch of each `(name, model, callbacks)` run in turn, `pairs` times
    after an untimed warm-up round; returns `{name: [ms], name + "_cpu": [ms]}`."""
    log("timing: warm-up (tracing, excluded)")
    for _, model, callbacks in runs:
        timed_epoch(model, x, y, batch_size, callbacks)
    ms = {key: [] for name, _, _ in runs for key in (name, name + "_cpu")}
    for round_index in range(pairs):
        log(f"timing: round {round_index + 1}/{pairs}")
        for name, model, callbacks in runs:
            wall, cpu = timed_epoch(model, x, y, batch_size, callbacks)
            ms[name].append(1e3 * wall / steps_per_epoch)
            ms[name + "_cpu"].append(1e3 * cpu / steps_per_epoch)
    return ms


def measure_overhead(baseline, x, y, args, end_step, steps_per_epoch):
    plain = compile_model(clone_with_weights(baseline))
    pruned = compile_model(prune(clone_with_weights(baseline), args, end_step))
    update_step = tfmot.sparsity.keras.UpdatePruningStep()
    runs = [("plain", plain, []), ("pruned", pruned, [update_step])]
    ms = interleaved_ms_per_step(runs, x, y, args.batch_size, args.pairs, steps_per_epoch)
    return timing_summary(ms, "pruned")


def run(args):
    (x_train, y_train), (x_test, y_test) = load_data(args.data)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    end_step = args.end_step or pruning_end_step(steps_per_epoch, args.finetune_epochs, args.frequency)

    log(f"baseline: training {args.epochs} epochs")
    keras.utils.set_random_seed(args.seed)
    baseline = compile_model(build_model())
    baseline.fit(
        x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
        shuffle=True, verbose=0,
    )

    log(f"pruning: fine-tuning {args.finetune_epochs} epochs (end_step={end_step})")
    pruned = compile_model(prune(clone_with_weights(baseline), args, end_step))
    pruned.fit(
        x_train, y_train, batch_size=args.batch_size, epochs=args.finetune_epochs,
        shuffle=True, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)

    log("converting to TFLite")
    flatbuffers, paths = {}, {}
    for name, model, optimizations in (
        ("dense_float", baseline, []),
        ("sparse_float", stripped, [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]),
        ("sparse_int8", stripped,
         [tf.lite.Optimize.DEFAULT, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]),
    ):
        flatbuffers[name], paths[name] = convert(model, optimizations)
    distinct_paths = set(paths.values())

    log("evaluating")
    tflite = {
        name: tflite_accuracy(flatbuffer, x_test, y_test)
        for name, flatbuffer in flatbuffers.items()
    }
    result = {
        "tool": "tfmot",
        "versions": {
            "tensorflow": tf.__version__,
            "tf_keras": keras.__version__,
            "tfmot": tfmot.__version__,
            "ai_edge_litert": importlib.metadata.version("ai-edge-litert"),
        },
        "seed": args.seed,
        "epochs": args.epochs,
        "finetune_epochs": args.finetune_epochs,
        "batch_size": args.batch_size,
        "n_train": len(x_train),
        "n_test": len(x_test),
        "steps_per_epoch": steps_per_epoch,
        "schedule": {
            "type": "PolynomialDecay",
            "initial_sparsity": args.initial_sparsity,
            "final_sparsity": args.final_sparsity,
            "begin_step": 0,
            "end_step": end_step,
            "frequency": args.frequency,
        },
        "threads": {name: os.environ.get(name) for name in THREAD_ENV_VARS},
        "baseline_keras_accuracy": keras_accuracy(baseline, x_test, y_test),
        "baseline_tflite_accuracy": tflite["dense_float"][0],
        "pruned_keras_accuracy": keras_accuracy(stripped, x_test, y_test),
        "pruned_tflite_accuracy": tflite["sparse_float"][0],
        "pruned_int8_tflite_accuracy": tflite["sparse_int8"][0],
        "pruned_sparsity": kernel_sparsity(stripped),
        "bytes_dense_float": len(flatbuffers["dense_float"]),
        "bytes_sparse_float": len(flatbuffers["sparse_float"]),
        "bytes_sparse_int8": len(flatbuffers["sparse_int8"]),
        "conversion_path": distinct_paths.pop() if len(distinct_paths) == 1 else "mixed",
        "conversion_paths": paths,
        "tflite_op_resolvers": {name: resolver for name, (_, resolver) in tflite.items()},
    }
    result["size_ratio_sparse_float"] = result["bytes_sparse_float"] / result["bytes_dense_float"]
    result["size_ratio_sparse_int8"] = result["bytes_sparse_int8"] / result["bytes_dense_float"]

    if args.skip_timing:
        result["timing"] = None
    else:
        result["timing"] = measure_overhead(
            baseline, x_train, y_train, args, end_step, steps_per_epoch
        )
    return result


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    log("done")
    print("RESULT " + text, flush=True)


if __name__ == "__main__":
    main()
