"""Weight clustering (16 clusters) on the demo CNN against tfmot's, then int8.

Per seed: the demo CNN trains on 7,000 bundled MNIST images (2 epochs); its
weights go to both sides. Each side clusters every kernel into 16 clusters
(k-means++ centroids, or `--init`), fine-tunes 2 epochs (Adam 1e-3, batch 32), strips the
wrappers, and makes two int8 files:

- PTQ: post-training full int8, calibrated on 200 training images (the
  converter's per-channel weight scales; keras-compress also with
  `per_channel=False`, one scale per kernel, which keeps 16 int8 values);
- CQAT: cluster-preserving quantization-aware training, 1 epoch
  (`quantize_model(..., preserve_clusters=True)`; tfmot's
  `Default8BitClusterPreserveQuantizeScheme`), converted to int8.

tfmot runs in its own process (benchmarks/tfmot_clustering_peer.py, tf_keras).
Every file is measured here alike: test accuracy of the .tflite on the 2,000
held-out images, bytes, gzip -9 bytes, distinct int8 values per kernel.
Mean +- std over seeds, and the paired difference keras-compress - tfmot.

    python benchmarks/clustering.py [--seeds 3] [--epochs 2] [--cluster-epochs 2] [--qat-epochs 1]
        [--init linear] [--per-channel]

`--per-channel` clusters each Conv2D filter on its own (`cluster_per_channel=True`, both sides; the
Dense kernels keep one set per tensor, as in tfmot); the distinct-values column then counts the
largest number of int8 values in one output channel.
"""

from _common import copy_model, mean_std, parser, pin_threads, write_results


def parse_args():
    p = parser(__doc__, out="clustering.json")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2, help="float training epochs")
    p.add_argument("--cluster-epochs", type=int, default=2)
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--clusters", type=int, default=16)
    p.add_argument("--init", default="kmeans++", choices=("kmeans++", "linear", "density-based", "random"),
                   help="centroid initialization, both sides")
    p.add_argument("--per-channel", action="store_true",
                   help="cluster_per_channel=True, both sides: each Conv2D filter its own centroids")
    p.add_argument("--train", type=int, default=7000, help="training images (from the first 8,000)")
    p.add_argument("--save-files", default=None, help="also write every .tflite into this folder")
    return p.parse_args()


ARGS = parse_args()
pin_threads(ARGS.threads)

import gzip  # noqa: E402
import warnings  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _peer import run_peer  # noqa: E402
from ai_edge_litert.tools import flatbuffer_utils  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress import examples  # noqa: E402

LABELS = ("float int8 (no clustering)", "kc PTQ", "kc PTQ per-tensor", "tfmot PTQ", "kc CQAT", "tfmot CQAT")


def kernel_distinct_values(flatbuffer):
    """Distinct values of each constant weight tensor of CONV_2D and
    FULLY_CONNECTED ops (input 1), in op order."""
    model = flatbuffer_utils.read_model_from_bytearray(flatbuffer)
    graph = model.subgraphs[0]
    codes = [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    from ai_edge_litert import schema_py_generated as schema

    wanted = {schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.FULLY_CONNECTED}
    counts = []
    for op in graph.operators:
        if codes[op.opcodeIndex] in wanted:
            tensor = graph.tensors[op.inputs[1]]
            raw = model.buffers[tensor.buffer].data
            dtype = np.int8 if tensor.type == schema.TensorType.INT8 else np.float32
            values = np.frombuffer(bytes(raw), dtype).reshape(tuple(tensor.shape))
            if ARGS.per_channel:  # the most values one output channel (axis 0 in TFLite) holds
                counts.append(max(len(np.unique(channel)) for channel in values))
            else:
                counts.append(len(np.unique(values)))
    return counts


def entropy_bits(kernel):
    """Entropy of a kernel's values, bits per weight (what an entropy coder
    such as gzip's Huffman stage can reach at best for independent weights)."""
    _, counts = np.unique(keras.ops.convert_to_numpy(kernel), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def measure(flatbuffer, xs, ys):
    return {
        "accuracy": kc.evaluate_tflite(flatbuffer, xs, ys)["accuracy"],
        "bytes": len(flatbuffer),
        "gzip_bytes": len(gzip.compress(flatbuffer, 9)),
        "distinct": kernel_distinct_values(flatbuffer),
    }


def ours(base, x, y, seed):
    keras.utils.set_random_seed(seed)
    with warnings.catch_warnings():  # --per-channel: the Dense layers keep one set per tensor (as tfmot's)
        warnings.simplefilter("ignore")
        clustered = kc.clustering.cluster_weights(copy_model(base), ARGS.clusters, ARGS.init, seed=seed,
                                                  cluster_per_channel=ARGS.per_channel)
    examples.compile_classifier(clustered)
    clustered.fit(x, y, batch_size=32, epochs=ARGS.cluster_epochs, verbose=0)
    stripped = kc.clustering.strip_clustering(clustered)
    print(f"  kc clustered kernels: entropy bits per weight "
          f"{[round(entropy_bits(l.kernel), 2) for l in stripped.layers if getattr(l, 'kernel', None) is not None]}")
    ptq = kc.to_tflite(stripped, quantization="int8", representative_data=x[:200])
    per_tensor = kc.to_tflite(stripped, quantization="int8", representative_data=x[:200], per_channel=False)
    qat = kc.quantization.quantize_model(stripped, preserve_clusters=True)
    examples.compile_classifier(qat)
    qat.fit(x, y, batch_size=32, epochs=ARGS.qat_epochs, verbose=0)
    return ptq, per_tensor, kc.to_tflite(qat, quantization="int8")


def main():
    (xt, yt), (xs, ys) = kc.datasets.load_mnist(ARGS.data)
    x, y = xt[:ARGS.train], yt[:ARGS.train]
    rows = []
    for seed in range(ARGS.seeds):
        keras.utils.set_random_seed(seed)
        base = examples.compile_classifier(examples.build_cnn())
        base.fit(x, y, batch_size=32, epochs=ARGS.epochs, verbose=0)
        files = {LABELS[0]: kc.to_tflite(base, quantization="int8", representative_data=x[:200])}
        files["kc PTQ"], files["kc PTQ per-tensor"], files["kc CQAT"] = ours(base, x, y, seed)
        with tempfile.TemporaryDirectory() as tmp:
            weights = os.path.join(tmp, "base.npz")
            np.savez(weights, **{f"w{i}": w for i, w in enumerate(base.get_weights())})
            peer = run_peer("tfmot_clustering_peer.py", ((x, y), (xs, ys)), [
                "--weights", weights, "--out", tmp, "--clusters", ARGS.clusters, "--init", ARGS.init, "--epochs", ARGS.cluster_epochs,
                "--qat-epochs", ARGS.qat_epochs, "--seed", seed, *(["--per-channel"] if ARGS.per_channel else [])])
            print(f"  tfmot clustered kernels: entropy bits per weight {[round(b, 2) for b in peer['entropy_bits']]}")
            for key, label in (("ptq", "tfmot PTQ"), ("cqat", "tfmot CQAT")):
                with open(os.path.join(tmp, peer["files"][key]), "rb") as f:
                    files[label] = f.read()
        if ARGS.save_files:
            os.makedirs(ARGS.save_files, exist_ok=True)
            for label, flatbuffer in files.items():
                name = label.split(" (")[0].replace(" ", "_").lower()
                with open(os.path.join(ARGS.save_files, f"seed{seed}_{name}.tflite"), "wb") as f:
                    f.write(flatbuffer)
        row = {"seed": seed, **{label: measure(files[label], xs, ys) for label in LABELS}}
        rows.append(row)
        print(f"seed {seed}:")
        for label in LABELS:
            r = row[label]
            print(f"  {label:<27} test accuracy {100 * r['accuracy']:6.2f}%  {r['bytes']:>7,} B  "
                  f"gzip {r['gzip_bytes']:>7,} B  distinct int8 values per kernel {r['distinct']}")
    print(f"\nsummary over {ARGS.seeds} seed(s), {ARGS.clusters} clusters: mean +- std")
    summary = {}
    for label in LABELS:
        summary[label] = {}
        cells = []
        for key, scale in (("accuracy", 100), ("bytes", 1), ("gzip_bytes", 1)):
            mean, std = mean_std([r[label][key] * scale for r in rows])
            summary[label][key] = {"mean": mean, "std": std}
            cells.append(f"{key} {mean:,.2f} +- {std:,.2f}")
        print(f"  {label:<27} " + "; ".join(cells))
    print("\npaired by seed, keras-compress minus tfmot:")
    for ours_label, peer_label in (("kc PTQ", "tfmot PTQ"), ("kc PTQ per-tensor", "tfmot PTQ"),
                                   ("kc CQAT", "tfmot CQAT")):
        acc = [100 * (r[ours_label]["accuracy"] - r[peer_label]["accuracy"]) for r in rows]
        gz = [r[ours_label]["gzip_bytes"] - r[peer_label]["gzip_bytes"] for r in rows]
        (acc_mean, acc_std), (gz_mean, gz_std) = mean_std(acc), mean_std(gz)
        print(f"  {ours_label:<18} vs {peer_label:<10} test accuracy {acc_mean:+.2f} +- {acc_std:.2f} "
              f"points (per seed {', '.join(f'{a:+.2f}' for a in acc)}); gzip bytes {gz_mean:+,.0f} "
              f"+- {gz_std:,.0f} (per seed {', '.join(f'{g:+,}' for g in gz)})")
    write_results(ARGS.out, {"rows": rows, "summary": summary}, ARGS)


if __name__ == "__main__":
    main()
