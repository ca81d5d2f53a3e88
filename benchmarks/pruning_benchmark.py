"""Pruning benchmark: keras-compress on Keras 3, with tfmot on tf_keras beside it.

On the bundled MNIST split (8,000 train / 2,000 held out), with a small CNN
(2 conv + 2 dense, 56.7k parameters), it measures:

  (a) training time per step with pruning wrappers and callbacks divided by a
      plain Keras fit of the same model: plain and pruned epochs interleaved
      in one process, first epoch of each excluded, median of the per-pair
      ratios with min-max;
  (b) held-out accuracy of the converted .tflite files (LiteRT interpreter):
      baseline, 80% magnitude-pruned (PolynomialDecay), mean +- std over seeds;
  (c) bytes of the pruned model's sparse-encoded .tflite over the dense float
      .tflite of the baseline (no gzip), plus pruned + int8 (dynamic range and
      full int8) + sparse;
  (d) the L1-regularized recipe (L1, then relative threshold, then fine-tuning
      with masks held): the sparsity it reaches and its accuracy.

With --with-tfmot, benchmarks/tfmot_peer.py runs the same architecture, data,
epochs and schedule with tfmot in its own process (tfmot sets
TF_USE_LEGACY_KERAS for its whole process), for each seed.

Usage:

    python benchmarks/pruning_benchmark.py [--seeds 3] [--with-tfmot] [--threads 1]

Threads are pinned (TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS) before
TensorFlow loads, the same for every model and for the peer.
"""

import statistics

from _common import parser, pin_threads, write_results


def parse_args():
    p = parser(__doc__, out="pruning.json")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    p.add_argument("--epochs", type=int, default=4, help="baseline training epochs")
    p.add_argument("--finetune-epochs", type=int, default=4, help="pruning fine-tune epochs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--final-sparsity", type=float, default=0.8)
    p.add_argument("--initial-sparsity", type=float, default=0.5)
    p.add_argument("--end-step", type=int, default=600, help="PolynomialDecay end_step")
    p.add_argument("--frequency", type=int, default=100)
    p.add_argument("--l1", type=float, default=3e-4, help="L1 strength of the L1 recipe")
    p.add_argument("--l1-epochs", type=int, default=2, help="epochs of L1 before thresholding")
    p.add_argument("--relative-threshold", type=float, default=0.2)
    p.add_argument("--pairs", type=int, default=20, help="interleaved timing pairs")
    p.add_argument("--with-tfmot", action="store_true", help="run the tfmot peer (extra [tfmot])")
    args = p.parse_args()
    if not 0 < args.l1_epochs < args.finetune_epochs:
        p.error("--l1-epochs must be at least 1 and below --finetune-epochs, so that "
                "thresholding happens and fine-tuning follows")
    return args


ARGS = parse_args()
pin_threads(ARGS.threads)

import keras  # noqa: E402

import keras_compress as kc  # noqa: E402
from _keras_timing import interleaved_ms_per_step  # noqa: E402
from _peer import run_peer  # noqa: E402
from _timing import describe, mean_std, status, timing_summary  # noqa: E402
from keras_compress import pruning  # noqa: E402
from keras_compress.examples import build_cnn, compile_classifier as compiled  # noqa: E402


def copy_of(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return compiled(clone)


def schedule():
    return pruning.PolynomialDecay(
        ARGS.initial_sparsity, ARGS.final_sparsity, 0, ARGS.end_step, frequency=ARGS.frequency
    )


def fit(model, data, epochs, callbacks=()):
    (x, y), _ = data
    model.fit(x, y, batch_size=ARGS.batch_size, epochs=epochs, verbose=2, callbacks=list(callbacks))
    return model


def tflite_row(name, model, data, **convert):
    _, (x_test, y_test) = data
    flatbuffer = kc.to_tflite(model, **convert)
    accuracy = kc.evaluate_tflite(flatbuffer, x_test, y_test)["accuracy"]
    return name, {"bytes": len(flatbuffer), "accuracy": accuracy}


def one_seed(seed, data):
    """Every accuracy and size figure for one seed."""
    (x_train, _), _ = data
    keras.utils.set_random_seed(seed)
    status(f"seed {seed}: baseline, {ARGS.epochs} epochs")
    baseline = fit(compiled(build_cnn()), data, ARGS.epochs)

    status(f"seed {seed}: baseline trained {ARGS.finetune_epochs} more epochs (control)")
    control = fit(copy_of(baseline), data, ARGS.finetune_epochs)

    status(f"seed {seed}: magnitude pruning to {ARGS.final_sparsity}, {ARGS.finetune_epochs} epochs")
    pruned = compiled(pruning.prune_low_magnitude(baseline, schedule()))
    fit(pruned, data, ARGS.finetune_epochs, [pruning.UpdatePruningStep()])
    stripped = pruning.strip_pruning(pruned)

    status(f"seed {seed}: L1 {ARGS.l1} for {ARGS.l1_epochs} epochs, threshold {ARGS.relative_threshold}, fine-tune")
    l1 = compiled(pruning.prune_low_magnitude(baseline, None))
    fit(l1, data, ARGS.finetune_epochs, [
        pruning.L1Regularization(ARGS.l1, end_epoch=ARGS.l1_epochs),
        pruning.ThresholdPruning(relative_threshold=ARGS.relative_threshold, epochs=ARGS.l1_epochs),
    ])
    l1_stripped = pruning.strip_pruning(l1)

    status(f"seed {seed}: converting and evaluating in LiteRT")
    rows = dict(
        [
            tflite_row("baseline float", baseline, data, sparse=False),
            tflite_row("control float", control, data, sparse=False),
            tflite_row("pruned sparse float", stripped, data),
            tflite_row("pruned sparse dynamic-int8", stripped, data, quantization="dynamic"),
            tflite_row("pruned sparse int8", stripped, data, quantization="int8", representative_data=x_train),
            tflite_row("L1+threshold sparse float", l1_stripped, data),
        ]
    )
    rows["pruned sparse float"]["sparsity"] = pruning.sparsity_report(stripped).total.sparsity
    rows["L1+threshold sparse float"]["sparsity"] = pruning.sparsity_report(l1_stripped).total.sparsity
    return rows, baseline


def timing(baseline, data):
    """Per-step time of pruning fits over plain fits, interleaved."""
    (x, y), _ = data
    runs = {
        "plain": (copy_of(baseline), []),
        "pruned": (compiled(pruning.prune_low_magnitude(baseline, schedule())), [pruning.UpdatePruningStep()]),
    }
    ms = interleaved_ms_per_step(runs, x, y, ARGS.batch_size, ARGS.pairs)
    return timing_summary(ms, "pruned")


def run_tfmot(seed, data, skip_timing):
    status(f"seed {seed}: tfmot peer (tf_keras, separate process)")
    return run_peer("tfmot_peer.py", data, [
        "--seed", seed, "--epochs", ARGS.epochs, "--finetune-epochs", ARGS.finetune_epochs,
        "--batch-size", ARGS.batch_size, "--initial-sparsity", ARGS.initial_sparsity,
        "--final-sparsity", ARGS.final_sparsity, "--frequency", ARGS.frequency,
        "--end-step", ARGS.end_step, "--pairs", ARGS.pairs,
    ] + (["--skip-timing"] if skip_timing else []))


def main():
    data = kc.datasets.load_mnist(ARGS.data)
    per_seed, peers = [], []
    timing_result = peer_timing = None
    for seed in range(ARGS.seeds):
        rows, baseline = one_seed(seed, data)
        per_seed.append(rows)
        if seed == 0:
            status(f"training overhead: {ARGS.pairs} interleaved plain/pruned epoch pairs")
            timing_result = timing(baseline, data)
        if ARGS.with_tfmot:
            peers.append(run_tfmot(seed, data, skip_timing=seed != 0))
            if seed == 0:
                peer_timing = peers[0]["timing"]

    dense_bytes = [r["baseline float"]["bytes"] for r in per_seed]
    status("results")
    print(f"keras {keras.__version__}, threads: intra-op {ARGS.threads}, inter-op 1; "
          f"{ARGS.seeds} seeds; accuracy on the 2,000 held-out images, from the .tflite in LiteRT")
    header = f"{'variant':<30} {'accuracy % (mean +- std)':>26} {'bytes':>9} {'size ratio':>10} {'sparsity':>9}"
    print(header)
    print("-" * len(header))
    table = {}
    for name in per_seed[0]:
        acc = mean_std(100 * r[name]["accuracy"] for r in per_seed)
        size = statistics.median(r[name]["bytes"] for r in per_seed)
        ratio = statistics.median(r[name]["bytes"] / d for r, d in zip(per_seed, dense_bytes))
        sparsity = [r[name].get("sparsity") for r in per_seed]
        sparsity = statistics.fmean(sparsity) if sparsity[0] is not None else None
        table[name] = {"accuracy_mean": acc[0], "accuracy_std": acc[1], "bytes_median": size,
                       "size_ratio": ratio, "sparsity": sparsity}
        print(f"{name:<30} {acc[0]:>17.2f} +- {acc[1]:.2f} {size:>9,.0f} {ratio:>10.4f} "
              f"{'' if sparsity is None else f'{sparsity:9.4f}'}")
    if peers:
        for key, name in (("baseline_tflite_accuracy", "tfmot baseline float"),
                          ("pruned_tflite_accuracy", "tfmot pruned sparse float"),
                          ("pruned_int8_tflite_accuracy", "tfmot pruned sparse dyn-int8")):
            acc = mean_std(100 * p[key] for p in peers)
            size_key = {"baseline_tflite_accuracy": "bytes_dense_float",
                        "pruned_tflite_accuracy": "bytes_sparse_float",
                        "pruned_int8_tflite_accuracy": "bytes_sparse_int8"}[key]
            size = statistics.median(p[size_key] for p in peers)
            ratio = statistics.median(p[size_key] / p["bytes_dense_float"] for p in peers)
            sparsity = statistics.fmean(p["pruned_sparsity"] for p in peers) if "pruned" in key else None
            table[name] = {"accuracy_mean": acc[0], "accuracy_std": acc[1], "bytes_median": size,
                           "size_ratio": ratio, "sparsity": sparsity}
            print(f"{name:<30} {acc[0]:>17.2f} +- {acc[1]:.2f} {size:>9,.0f} {ratio:>10.4f} "
                  f"{'' if sparsity is None else f'{sparsity:9.4f}'}")

    print("\ntraining time per step, pruned / plain (same model, data, batch, optimizer; "
          "epochs interleaved, first excluded):")
    for tool, t in (("keras-compress", timing_result), ("tfmot", peer_timing)):
        if t:
            print(f"  {tool:<15} wall {describe(t)}; plain {statistics.median(t['plain_ms_per_step']):.2f} ms/step")
            print(f"  {'':<15} CPU  {describe(t['cpu'])}")

    write_results(ARGS.out, {"table": table, "per_seed": per_seed, "timing": timing_result, "tfmot": peers}, ARGS)


if __name__ == "__main__":
    main()
