"""Quantization benchmark: post-training int8 and quantization-aware int8 training.

On the bundled MNIST split (8,000 train / 2,000 held out), with the demo's
small CNN (2 conv + 2 dense, 56.7k parameters), it measures:

  (a) QAT training time per step divided by a plain Keras fit of the same
      model: plain and QAT epochs interleaved in one process, the first epoch
      of each excluded, median of the per-pair ratios with quartiles;
  (b) held-out accuracy (mean +- std over seeds) of the float Keras model, the
      float .tflite, PTQ int8 .tflite (calibrated on training images) and the
      QAT int8 .tflite, with the QAT Keras model beside it and the argmax
      agreement of the QAT Keras model with its .tflite file;
  (c) bytes of each int8 .tflite over the float .tflite, and the float
      compute ops left in each int8 file (should be none).

With --with-tfmot, benchmarks/tfmot_qat_peer.py runs tfmot's QAT on tf_keras
with the same architecture, data and epochs in its own process, for each seed,
and its rows and timing ratio are printed beside ours.

Usage:

    python benchmarks/quantization_benchmark.py [--seeds 3] [--pairs 10] [--with-tfmot]
"""

from _common import parser, pin_threads, write_results


def parse_args():
    p = parser(__doc__, out="quantization.json")
    p.add_argument("--seeds", type=int, default=3, help="seeds (default 3)")
    p.add_argument("--epochs", type=int, default=4, help="float training epochs")
    p.add_argument("--qat-epochs", type=int, default=2, help="QAT fine-tuning epochs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--calibration", type=int, default=200, help="PTQ calibration samples")
    p.add_argument("--pairs", type=int, default=10, help="interleaved timing pairs")
    p.add_argument("--with-tfmot", action="store_true", help="run the tfmot peer (extra [tfmot])")
    return p.parse_args()


ARGS = parse_args()
pin_threads(ARGS.threads)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_compress as kc  # noqa: E402
from _keras_timing import interleaved_ms_per_step  # noqa: E402
from _peer import run_peer  # noqa: E402
from _timing import describe, mean_std, status, timing_summary  # noqa: E402
from keras_compress.examples import build_cnn, compile_classifier as compiled  # noqa: E402
from keras_compress.quantization import quantize_model  # noqa: E402


def fit(model, data, epochs):
    (x, y), _ = data
    model.fit(x, y, batch_size=ARGS.batch_size, epochs=epochs, verbose=2)
    return model


def keras_accuracy(model, data):
    _, (x, y) = data
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def tflite_row(flatbuffer, data):
    _, (x, y) = data
    info = kc.inspect_tflite(flatbuffer)
    return {
        "bytes": len(flatbuffer),
        "accuracy": kc.evaluate_tflite(flatbuffer, x, y)["accuracy"],
        "float_compute_ops": [op.type for op in info.float_compute_ops()],
    }


def one_seed(seed, data):
    (x_train, _), (x_test, _) = data
    keras.utils.set_random_seed(seed)
    status(f"seed {seed}: float baseline, {ARGS.epochs} epochs")
    baseline = fit(compiled(build_cnn()), data, ARGS.epochs)
    status(f"seed {seed}: QAT, {ARGS.qat_epochs} epochs")
    qat = fit(compiled(quantize_model(baseline)), data, ARGS.qat_epochs)
    status(f"seed {seed}: converting and evaluating in LiteRT")
    qat_flatbuffer = kc.to_tflite(qat, quantization="int8")
    agreement = np.mean(
        np.argmax(kc.predict_tflite(qat_flatbuffer, x_test), -1)
        == np.argmax(qat.predict(x_test, verbose=0), -1)
    )
    rows = {
        "float keras": {"accuracy": keras_accuracy(baseline, data)},
        "float tflite": tflite_row(kc.to_tflite(baseline), data),
        "PTQ int8 tflite": tflite_row(
            kc.to_tflite(
                baseline,
                quantization="int8",
                representative_data=x_train,
                calibration_steps=ARGS.calibration,
            ),
            data,
        ),
        "QAT keras": {"accuracy": keras_accuracy(qat, data)},
        "QAT int8 tflite": {**tflite_row(qat_flatbuffer, data), "agreement": float(agreement)},
    }
    return rows, baseline


def timing(baseline, data):
    (x, y), _ = data
    runs = {"plain": (compiled(keras.models.clone_model(baseline)), []),
            "qat": (compiled(quantize_model(baseline)), [])}
    runs["plain"][0].set_weights(baseline.get_weights())
    ms = interleaved_ms_per_step(runs, x, y, ARGS.batch_size, ARGS.pairs)
    return timing_summary(ms, "qat")


def run_tfmot(seed, data, skip_timing):
    status(f"seed {seed}: tfmot QAT peer (tf_keras, separate process)")
    return run_peer("tfmot_qat_peer.py", data, [
        "--seed", seed, "--epochs", ARGS.epochs, "--qat-epochs", ARGS.qat_epochs,
        "--batch-size", ARGS.batch_size, "--pairs", ARGS.pairs,
    ] + (["--skip-timing"] if skip_timing else []))


def main():
    data = kc.datasets.load_mnist(ARGS.data)
    per_seed, baseline = [], None
    for seed in range(ARGS.seeds):
        rows, model = one_seed(seed, data)
        per_seed.append(rows)
        baseline = baseline or model
    status(f"timing: {ARGS.pairs} interleaved pairs of one epoch, plain fit vs QAT fit")
    timed = timing(baseline, data)
    peers = [run_tfmot(seed, data, skip_timing=seed > 0) for seed in range(ARGS.seeds)] if ARGS.with_tfmot else []

    float_bytes = per_seed[0]["float tflite"]["bytes"]
    print(f"\nQuantization benchmark, {ARGS.seeds} seeds, MNIST 8000/2000, "
          f"{ARGS.epochs} float + {ARGS.qat_epochs} QAT epochs, {ARGS.threads} thread(s)")
    print(f"{'model':<18}{'accuracy % (mean +- std)':>26}{'bytes':>9}{'/ float':>9}  float ops")
    for name in per_seed[0]:
        mean, std = mean_std(100 * rows[name]["accuracy"] for rows in per_seed)
        row = per_seed[0][name]
        size = f"{row['bytes']:>9}{row['bytes'] / float_bytes:>9.3f}" if "bytes" in row else " " * 18
        ops = ",".join(row.get("float_compute_ops", [])) or ("none" if "bytes" in row else "")
        ops = "(float model)" if name == "float tflite" else ops
        print(f"{name:<18}{mean:>17.2f} +- {std:.2f}{size}  {ops}")
    for name, key, size in (
        ("tfmot float tflite", "float_tflite_accuracy", "bytes_float"),
        ("tfmot QAT keras", "qat_keras_accuracy", None),
        ("tfmot QAT int8", "qat_tflite_accuracy", "bytes_qat_int8"),
    ) if peers else ():
        mean, std = mean_std(100 * peer[key] for peer in peers)
        size = f"{peers[0][size]:>9}{peers[0][size] / peers[0]['bytes_float']:>9.3f}" if size else ""
        print(f"{name:<18}{mean:>17.2f} +- {std:.2f}{size}")
    agreement = [rows["QAT int8 tflite"]["agreement"] for rows in per_seed]
    print(f"QAT Keras vs QAT .tflite argmax agreement: min {100 * min(agreement):.2f}% over seeds")
    print(f"QAT time per step / plain fit: wall {describe(timed)}")
    print(f"                               CPU  {describe(timed['cpu'])}")
    if peers:
        print(f"tfmot QAT agreement: min {100 * min(p['qat_agreement'] for p in peers):.2f}%")
        print(f"tfmot QAT time per step / plain fit: wall {describe(peers[0]['timing'])}")
        print(f"                                     CPU  {describe(peers[0]['timing']['cpu'])}")

    write_results(ARGS.out, {"seeds": per_seed, "timing": timed, "tfmot": peers}, ARGS)


if __name__ == "__main__":
    main()
