"""2:4 sparsity against 50% unstructured magnitude pruning on the demo CNN.

Per seed: the demo CNN trains on 7,000 bundled MNIST images (2 epochs), then
two copies are pruned from it with `ConstantSparsity(0.5, begin_step=0)` and
fine-tuned the same way (2 epochs, Adam 1e-3, batch 32): one unstructured
(magnitude), one with `sparsity_m_by_n=(2, 4)`. Printed: test accuracy on
the 2,000 held-out images, sparsity, whether every 4-block holds at most 2
non-zeros, and the int8 file (with the sparse encoding where it is smaller):
bytes, gzip bytes and p50 latency at 1 thread (both files timed in
interleaved rounds). Mean +- std over seeds.

    python benchmarks/m_by_n.py [--seeds 3] [--epochs 2]
"""

import statistics

from _common import copy_model, mean_std, parser, pin_threads, write_results


def parse_args():
    p = parser(__doc__, out="m_by_n.json")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    return p.parse_args()


ARGS = parse_args()
pin_threads(ARGS.threads)

import gzip  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress import examples  # noqa: E402
from tflite_bench.latency import measure_latency  # noqa: E402


def fine_tune(model, x, y, m_by_n):
    pruned = kc.pruning.prune_low_magnitude(model, kc.pruning.ConstantSparsity(0.5, begin_step=0),
                                            sparsity_m_by_n=m_by_n)
    examples.compile_classifier(pruned)
    pruned.fit(x, y, batch_size=32, epochs=ARGS.epochs, verbose=0, callbacks=[kc.pruning.UpdatePruningStep()])
    return kc.pruning.strip_pruning(pruned)


def two_of_four(model):
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        moved = np.moveaxis(keras.ops.convert_to_numpy(kernel), -2, -1)
        for i in range(0, moved.shape[-1], 4):
            if np.count_nonzero(moved[..., i:i + 4], axis=-1).max() > 2:
                return False
    return True


def main():
    (xt, yt), (xs, ys) = kc.datasets.load_mnist(ARGS.data)
    x, y = xt[:7000], yt[:7000]
    rows = []
    for seed in range(ARGS.seeds):
        keras.utils.set_random_seed(seed)
        base = examples.compile_classifier(examples.build_cnn())
        base.fit(x, y, batch_size=32, epochs=ARGS.epochs, verbose=0)
        row = {"seed": seed}
        files = {}
        for label, pattern in (("unstructured 50%", None), ("2:4", (2, 4))):
            keras.utils.set_random_seed(seed)
            model = fine_tune(copy_model(base), x, y, pattern)
            flatbuffer = kc.to_tflite(model, quantization="int8", representative_data=x[:200])
            files[label] = flatbuffer
            zeros = sum(int(np.sum(keras.ops.convert_to_numpy(l.kernel) == 0)) for l in model.layers
                        if getattr(l, "kernel", None) is not None)
            total = sum(int(np.prod(l.kernel.shape)) for l in model.layers if getattr(l, "kernel", None) is not None)
            row[label] = {
                "accuracy": kc.export.evaluate_tflite(flatbuffer, xs, ys)["accuracy"],
                "sparsity": zeros / total,
                "two_of_four": two_of_four(model),
                "bytes": len(flatbuffer),
                "gzip_bytes": len(gzip.compress(flatbuffer, 9)),
            }
        p50 = {label: [] for label in files}
        for _ in range(ARGS.rounds):
            for label, flatbuffer in files.items():
                p50[label].append(measure_latency(flatbuffer, threads=1, warmup=20, runs=300)["p50_ms"])
        for label in files:
            row[label]["p50_ms"] = statistics.median(p50[label])
        rows.append(row)
        print(f"seed {seed}: " + "; ".join(
            f"{label}: test accuracy {100 * r['accuracy']:.2f}%, sparsity {r['sparsity']:.3f}, 2:4 {r['two_of_four']}, "
            f"{r['bytes']:,} B ({r['gzip_bytes']:,} gzip), p50 {1000 * r['p50_ms']:.2f} us"
            for label, r in ((k, row[k]) for k in files)))
    print(f"\nsummary over {ARGS.seeds} seed(s): mean +- std")
    summary = {}
    for label in ("unstructured 50%", "2:4"):
        summary[label] = {}
        for key, scale, unit in (("accuracy", 100, "%"), ("bytes", 1, " B"), ("gzip_bytes", 1, " B"),
                                 ("p50_ms", 1000, " us")):
            mean, std = mean_std([r[label][key] * scale for r in rows])
            summary[label][key] = {"mean": mean, "std": std}
            print(f"  {label:<18} {key:<11} {mean:10.2f} +- {std:.2f}{unit}")
    mean, std = mean_std([100 * (r["2:4"]["accuracy"] - r["unstructured 50%"]["accuracy"]) for r in rows])
    print(f"  2:4 minus unstructured, test accuracy: {mean:+.2f} +- {std:.2f} points (paired by seed)")
    write_results(ARGS.out, {"rows": rows, "summary": summary}, ARGS)


if __name__ == "__main__":
    main()
