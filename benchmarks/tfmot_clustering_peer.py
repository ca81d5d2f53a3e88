"""tfmot peer for the clustering benchmark: tfmot's weight clustering and
cluster-preserving QAT on tf_keras, from the same trained weights, data,
epochs and conversions as keras-compress's side.

Runs in its own process (tfmot needs ``TF_USE_LEGACY_KERAS``, set by
``tfmot_peer`` before TensorFlow loads) and never imports ``keras_compress``.
Writes ``tfmot_ptq_int8.tflite`` and ``tfmot_cqat_int8.tflite`` into
``--out`` and prints its JSON as the last stdout line, prefixed by ``RESULT ``.

Usage::

    python benchmarks/tfmot_clustering_peer.py --data split.npz --weights base.npz --out DIR
"""

import argparse
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tfmot_peer import build_model, compile_model, convert, keras, keras_accuracy, load_data, log


INITS = {"kmeans++": "KMEANS_PLUS_PLUS", "linear": "LINEAR", "density-based": "DENSITY_BASED", "random": "RANDOM"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="npz with x_train, y_train, x_test, y_test")
    parser.add_argument("--weights", required=True, help="npz of the trained demo CNN's weights (w0, w1, ...)")
    parser.add_argument("--out", required=True, help="folder for the .tflite files")
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--init", default="kmeans++", choices=sorted(INITS))
    parser.add_argument("--epochs", type=int, default=2, help="clustering fine-tuning epochs")
    parser.add_argument("--qat-epochs", type=int, default=1, help="cluster-preserving QAT epochs")
    parser.add_argument("--calibration", type=int, default=200, help="PTQ calibration images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-channel", action="store_true", help="cluster_per_channel=True")
    return parser.parse_args(argv)


def entropy_bits(kernel):
    """Entropy of a kernel's values, bits per weight."""
    _, counts = np.unique(kernel, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def run(args):
    (x, y), (x_test, y_test) = load_data(args.data)
    with np.load(args.weights) as saved:
        weights = [saved[f"w{i}"] for i in range(len(saved.files))]
    keras.utils.set_random_seed(args.seed)
    base = build_model()
    base.set_weights(weights)
    cluster = tfmot.clustering.keras
    log(f"clustering: {args.clusters} clusters, {args.init} centroids, {args.epochs} epochs")
    clustered = compile_model(cluster.cluster_weights(
        base, number_of_clusters=args.clusters, cluster_per_channel=args.per_channel,
        cluster_centroids_init=getattr(cluster.CentroidInitialization, INITS[args.init])))
    clustered.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0)
    stripped = cluster.strip_clustering(clustered)
    ptq, _ = convert(stripped, [tf.lite.Optimize.DEFAULT], representative=x[:args.calibration])
    log(f"cluster-preserving QAT: {args.qat_epochs} epoch(s)")
    annotated = tfmot.quantization.keras.quantize_annotate_model(stripped)
    cqat = compile_model(tfmot.quantization.keras.quantize_apply(
        annotated, tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme()))
    cqat.fit(x, y, batch_size=32, epochs=args.qat_epochs, verbose=0)
    cqat_file, _ = convert(cqat, [tf.lite.Optimize.DEFAULT])
    os.makedirs(args.out, exist_ok=True)
    files = {"ptq": "tfmot_ptq_int8.tflite", "cqat": "tfmot_cqat_int8.tflite"}
    for key, flatbuffer in (("ptq", ptq), ("cqat", cqat_file)):
        with open(os.path.join(args.out, files[key]), "wb") as f:
            f.write(flatbuffer)
    return {
        "tool": "tfmot",
        "tfmot": tfmot.__version__,
        "files": files,
        "clustered_keras_accuracy": keras_accuracy(stripped, x_test, y_test),
        "cqat_keras_accuracy": keras_accuracy(cqat, x_test, y_test),
        "distinct_values": [len(np.unique(layer.kernel.numpy())) for layer in stripped.layers
                            if hasattr(layer, "kernel")],
        "entropy_bits": [entropy_bits(layer.kernel.numpy()) for layer in stripped.layers if hasattr(layer, "kernel")],
    }


def main(argv=None):
    print("RESULT " + json.dumps(run(parse_args(argv))), flush=True)


if __name__ == "__main__":
    main()
