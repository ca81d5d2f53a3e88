"""Each technique on the TensorFlow and the JAX backend, side by side, from
the same initial weights and data: the parity table of issue 16.

The driver (TensorFlow backend) builds the demo CNN and the distillation
student once and saves them as `.keras` files, so both backends start from
the same weights (Keras's random initializers differ between backends).
Then one worker process per backend (`KERAS_BACKEND=...`) runs, on the
first bundled MNIST images, without shuffling:

- magnitude pruning: `prune_low_magnitude` with `PolynomialDecay` (0 -> 75%,
  masks updated every `--frequency` steps) and `UpdatePruningStep`, Adam;
  masks, exact zeros in the raw variables, the stripped int8 file;
- L1 + threshold: `L1Regularization` then `ThresholdPruning`
  (relative threshold) at the last epoch;
- structured: `shrink` of half the filters of conv2d_1 and units of dense;
- QAT: `quantize_model`, trained, converted with `to_tflite`: op dtypes,
  bytes, and the agreement of the file's top-1 with the Keras QAT model's;
- distillation: `Distiller` (student from the `.keras` file), per-epoch loss.

Printed: per technique and backend, the figure and its difference from
TensorFlow (mask agreement, zero fraction, file bytes and op dtypes, top-1
agreement of the two backends' files, loss difference), and the training
time of a plain fit, a pruned fit and a QAT fit per backend (step overhead),
first in the process and again (warm).

    python benchmarks/backend_parity.py [--backends tensorflow,jax] [--samples 2048] [--epochs 2]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from _common import parser, write_results

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    p = parser(__doc__, out="backend_parity.json")
    p.add_argument("--backends", default="tensorflow,jax")
    p.add_argument("--samples", type=int, default=2048, help="training images")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--frequency", type=int, default=16, help="mask update frequency, steps")
    p.add_argument("--worker", nargs=2, metavar=("BACKEND", "JOB"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------
# Worker: one backend.


def worker(backend, job, args):
    import keras
    import numpy as np

    import keras_compress as kc
    from keras_compress.distillation import Distiller
    from keras_compress.pruning.wrapper import PruneWrapper

    assert keras.backend.backend() == backend, (keras.backend.backend(), backend)
    data = np.load(os.path.join(job, "data.npz"))
    x, y, xs, ys = data["x"], data["y"], data["xs"], data["ys"]
    steps = int(np.ceil(len(x) / 32)) * args.epochs
    out, times = {}, {}
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def load(name):
        return keras.saving.load_model(os.path.join(job, name), compile=False)

    def fit(model, callbacks=(), label=None):
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
        started = time.perf_counter()
        history = model.fit(x, y, batch_size=32, epochs=args.epochs, shuffle=False, verbose=0,
                            callbacks=list(callbacks))
        if label:
            times[label] = time.perf_counter() - started
        return history.history

    def file_figures(prefix, flatbuffer, keras_model=None):
        info = kc.export.inspect_tflite(flatbuffer)
        out[f"{prefix}_bytes"] = len(flatbuffer)
        out[f"{prefix}_ops"] = [f"{op.type}:{','.join(str(d) for d in op.input_dtypes)}->"
                                f"{','.join(str(d) for d in op.output_dtypes)}" for op in info.ops]
        out[f"{prefix}_float_compute_ops"] = len(info.float_compute_ops())
        predictions = kc.export.predict_tflite(flatbuffer, xs)
        out[f"{prefix}_top1"] = predictions.argmax(-1).tolist()
        out[f"{prefix}_accuracy"] = float(np.mean(predictions.argmax(-1) == ys))
        if keras_model is not None:
            mine = keras.ops.convert_to_numpy(keras_model(xs, training=False)).argmax(-1)
            out[f"{prefix}_agrees_with_keras"] = float(np.mean(mine == predictions.argmax(-1)))

    # Plain fit: the reference for the step overhead.
    fit(load("cnn.keras"), label="plain")

    # Magnitude pruning.
    schedule = kc.pruning.PolynomialDecay(0.0, 0.75, begin_step=0,
                                           end_step=(steps - 1) // args.frequency * args.frequency, frequency=args.frequency)
    pruned = kc.pruning.prune_low_magnitude(load("cnn.keras"), pruning_schedule=schedule)
    out["pruning_history"] = fit(pruned, [kc.pruning.UpdatePruningStep()], label="pruning")["loss"]
    wrappers = [layer for layer in pruned.layers if isinstance(layer, PruneWrapper)]
    masks = [keras.ops.convert_to_numpy(m) for w in wrappers for m in w.masks]
    raw = [keras.ops.convert_to_numpy(v) for w in wrappers for v in w.pruned_weights]
    out["pruning_masks"] = [m.astype("int8").ravel().tolist() for m in masks]
    out["pruning_zeros_exact"] = bool(all(np.all(r[m == 0] == 0) for r, m in zip(raw, masks)))
    out["pruning_sparsity"] = float(sum((m == 0).sum() for m in masks) / sum(m.size for m in masks))
    stripped = kc.pruning.strip_pruning(pruned)
    file_figures("pruning", kc.export.to_tflite(stripped, quantization="int8", representative_data=x[:200]),
                 stripped)

    # L1 then threshold pruning at the last epoch.
    l1 = kc.pruning.prune_low_magnitude(load("cnn.keras"), pruning_schedule=None)
    out["l1_history"] = fit(l1, [kc.pruning.L1Regularization(1e-4),
                                 kc.pruning.ThresholdPruning(relative_threshold=0.1, epochs=[args.epochs - 1])])["loss"]
    l1_masks = [keras.ops.convert_to_numpy(m) for layer in l1.layers if isinstance(layer, PruneWrapper)
                for m in layer.masks]
    out["l1_masks"] = [m.astype("int8").ravel().tolist() for m in l1_masks]
    out["l1_sparsity"] = float(sum((m == 0).sum() for m in l1_masks) / sum(m.size for m in l1_masks))

    # Structured.
    small = kc.pruning.shrink(load("cnn.keras"), {"conv2d_1": 0.5, "dense": 0.5}, criterion="l1")
    out["structured_params"] = int(small.count_params())
    out["structured_weights"] = [w.ravel().tolist() for w in small.get_weights()]

    # QAT.
    qat = kc.quantization.quantize_model(load("cnn.keras"))
    out["qat_history"] = fit(qat, label="qat")["loss"]
    file_figures("qat", kc.export.to_tflite(qat), qat)

    # Distillation.
    teacher = load("cnn.keras")
    distiller = Distiller(student=load("student.keras"), teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3), alpha=0.1, temperature=4)
    history = distiller.fit(x, y, batch_size=32, epochs=args.epochs, shuffle=False, verbose=0)
    out["distillation_history"] = [float(v) for v in history.history["distillation_loss"]]

    # The same three fits again: the first ones include compiling (JAX
    # compiles each eager op of the mask updates once per shape).
    fit(load("cnn.keras"), label="plain, warm")
    again = kc.pruning.prune_low_magnitude(load("cnn.keras"), pruning_schedule=schedule)
    fit(again, [kc.pruning.UpdatePruningStep()], label="pruning, warm")
    fit(kc.quantization.quantize_model(load("cnn.keras")), label="qat, warm")
    out["times"] = times
    with open(os.path.join(job, f"{backend}.json"), "w") as f:
        json.dump(out, f)


# --------------------------------------------------------------------------
# Driver.


def run_backends(args):
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras
    import numpy as np

    import keras_compress as kc
    from keras_compress import examples

    (xt, yt), (xs, ys) = kc.datasets.load_mnist(args.data)
    keras.utils.set_random_seed(0)
    results = {}
    with tempfile.TemporaryDirectory() as job:
        cnn = examples.compile_classifier(examples.build_cnn())
        cnn.fit(xt[:2000], yt[:2000], batch_size=32, epochs=1, verbose=0)  # a trained start, as a user's would be
        cnn.save(os.path.join(job, "cnn.keras"))
        examples.build_student().save(os.path.join(job, "student.keras"))
        np.savez(os.path.join(job, "data.npz"), x=xt[2000:2000 + args.samples], y=yt[2000:2000 + args.samples],
                 xs=xs[:500], ys=ys[:500])
        for backend in args.backends.split(","):
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
            command = [sys.executable, os.path.abspath(__file__), "--worker", backend, job,
                       "--samples", str(args.samples), "--epochs", str(args.epochs),
                       "--frequency", str(args.frequency), "--out", ""]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                print(f"{backend}: worker failed\n{done.stderr[-3000:]}")
                results[backend] = {"error": done.stderr[-3000:]}
                continue
            with open(os.path.join(job, f"{backend}.json")) as f:
                results[backend] = json.load(f)
            print(f"{backend}: worker {time.perf_counter() - started:.0f} s")
    return results


def compare(results):
    """Per technique, each backend's figures against TensorFlow's."""
    import numpy as np

    ref = results.get("tensorflow")
    rows = {}
    for backend, r in results.items():
        if "error" in r:
            rows[backend] = {"error": r["error"].strip().splitlines()[-1]}
            continue
        row = {}
        row["pruning"] = {"sparsity": r["pruning_sparsity"], "zeros_exact": r["pruning_zeros_exact"],
                          "bytes": r["pruning_bytes"], "accuracy": r["pruning_accuracy"]}
        row["l1_threshold"] = {"sparsity": r["l1_sparsity"]}
        row["qat"] = {"bytes": r["qat_bytes"], "agrees_with_keras": r["qat_agrees_with_keras"],
                      "accuracy": r["qat_accuracy"],
                      "float_ops": r["qat_float_compute_ops"]}
        row["distillation"] = {"loss": r["distillation_history"]}
        row["times"] = r["times"]
        if ref is not None and "error" not in ref:
            row["pruning"].update(mask_agreement=_agreement(r["pruning_masks"], ref["pruning_masks"]), bytes_diff=r["pruning_bytes"] - ref["pruning_bytes"],
                                  same_ops=r["pruning_ops"] == ref["pruning_ops"],
                                  top1_agreement=float(np.mean(np.array(r["pruning_top1"]) == ref["pruning_top1"])))
            row["l1_threshold"]["mask_agreement"] = _agreement(r["l1_masks"], ref["l1_masks"])
            row["structured"] = {
                "params": r["structured_params"],
                "max_weight_diff": float(max(np.abs(np.array(a) - np.array(b)).max()
                                             for a, b in zip(r["structured_weights"], ref["structured_weights"])))}
            row["qat"].update(bytes_diff=r["qat_bytes"] - ref["qat_bytes"], same_ops=r["qat_ops"] == ref["qat_ops"],
                              top1_agreement=float(np.mean(np.array(r["qat_top1"]) == ref["qat_top1"])))
            row["distillation"]["max_loss_diff"] = float(np.max(np.abs(
                np.array(r["distillation_history"]) - np.array(ref["distillation_history"]))))
        rows[backend] = row
    return rows


def _agreement(masks, reference):
    """The fraction of mask entries equal in two lists of masks."""
    import numpy as np

    pairs = [(np.array(a), np.array(b)) for a, b in zip(masks, reference, strict=True)]
    return float(sum((a == b).sum() for a, b in pairs) / sum(b.size for _, b in pairs))


def print_table(rows):
    for backend, row in rows.items():
        print(f"\n== {backend}")
        if "error" in row:
            print(f"   failed: {row['error']}")
            continue
        p = row["pruning"]
        print(f"   pruning: sparsity {p['sparsity']:.4f}, raw zeros exact {p['zeros_exact']}, int8 file {p['bytes']:,} B, "
              f"test accuracy {100 * p['accuracy']:.1f}%"
              + (f"; vs TF: masks agree {100 * p['mask_agreement']:.3f}%, bytes {p['bytes_diff']:+d}, same op dtypes "
                 f"{p['same_ops']}, top-1 agreement {100 * p['top1_agreement']:.1f}%" if "mask_agreement" in p else ""))
        t = row["l1_threshold"]
        print(f"   L1 + threshold: sparsity {t['sparsity']:.4f}"
              + (f"; masks agree with TF {100 * t['mask_agreement']:.3f}%" if "mask_agreement" in t else ""))
        if "structured" in row:
            s = row["structured"]
            print(f"   structured: {s['params']:,} params; max |weight difference| vs TF {s['max_weight_diff']:.2e}")
        q = row["qat"]
        print(f"   QAT: file {q['bytes']:,} B, float compute ops {q['float_ops']}, file top-1 = Keras top-1 on "
              f"{100 * q['agrees_with_keras']:.1f}%"
              + (f"; vs TF: bytes {q['bytes_diff']:+d}, same op dtypes {q['same_ops']}, top-1 agreement "
                 f"{100 * q['top1_agreement']:.1f}%" if "bytes_diff" in q else ""))
        d = row["distillation"]
        print(f"   distillation: loss per epoch {', '.join(f'{v:.4f}' for v in d['loss'])}"
              + (f"; max difference vs TF {d['max_loss_diff']:.2e}" if "max_loss_diff" in d else ""))
        times = row["times"]
        for when in ("", ", warm"):
            plain, pruning, qat = (times[k + when] for k in ("plain", "pruning", "qat"))
            print(f"   fit time{when or ', first'}: plain {plain:.2f} s, pruning {pruning:.2f} s "
                  f"({pruning / plain:.2f}x), QAT {qat:.2f} s ({qat / plain:.2f}x)")


def main():
    args = parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args)
        return
    results = run_backends(args)
    rows = compare(results)
    print_table(rows)
    write_results(args.out, {"rows": rows}, args)


if __name__ == "__main__":
    main()
