"""Structured pruning benchmark: smaller *and faster* TFLite models.

(a) The bundled MNIST CNN (examples.build_cnn: 2 conv + 2 dense, 56.7k
    parameters), trained on the 8,000-image split, then `shrink` removes 50% of
    the filters and units of every group (L1 criterion) and the smaller model
    is fine-tuned; a control trains the baseline for the same extra epochs.
    Held-out accuracy (last 2,000 images) from the .tflite in LiteRT, over
    --seeds seeds. For the first seed, the baseline and the shrunk model are
    converted to float .tflite and timed with tflite_bench.benchmark_model:
    p50 latency in interleaved rounds (baseline, shrunk, baseline, ...), the
    ratio per round with median and min-max; parameters, file bytes and
    multiply-accumulates beside it.
(b) MobileNetV2 at 96x96 (alpha 1.0, weights=None, 10 classes) with 50% of
    the channels of every group removed: the latency ratio alone.

With --cross-check, LiteRT's own tool (benchmark_litert_model) times the same
files once more and its ratio is printed beside ours.

Usage:

    python benchmarks/structured_benchmark.py [--quick] [--rounds 5] [--threads 1]

Threads are pinned (TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS) before
TensorFlow loads; the interpreter runs with --threads threads and LiteRT's
default XNNPACK delegate.
"""

import argparse
import os
import statistics
import tempfile

from _common import parser, pin_threads, write_results


def parse_args():
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true",
                   help="a fast run: 1 seed, 1 epoch each on 2,000 images, 3 rounds of 50 runs, "
                        "MobileNetV2 at 32x32 with alpha 0.35")
    p.add_argument("--epochs", type=int, default=4, help="baseline training epochs")
    p.add_argument("--finetune-epochs", type=int, default=4, help="fine-tuning epochs after shrink")
    p.add_argument("--amount", type=float, default=0.5, help="fraction of units removed per group")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    p.add_argument("--runs", type=int, default=300, help="timed invokes per model and round")
    p.add_argument("--mobilenet-size", type=int, default=96, help="MobileNetV2 input height and width")
    p.add_argument("--mobilenet-alpha", type=float, default=1.0, help="MobileNetV2 width multiplier")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the MNIST CNN accuracy (latency: the first)")
    p.add_argument("--cross-check", action="store_true", help="also time with benchmark_litert_model")
    args = p.parse_args()
    if args.quick:
        args.epochs = args.finetune_epochs = args.seeds = 1
        args.rounds, args.runs, args.mobilenet_size, args.mobilenet_alpha = 3, 50, 32, 0.35
    return args


ARGS = parse_args()
pin_threads(ARGS.threads)

import keras  # noqa: E402
from keras import layers as L  # noqa: E402

import keras_compress as kc  # noqa: E402
from _timing import describe, mean_std, status, summarize_ratios  # noqa: E402
from keras_compress.examples import build_cnn, compile_classifier  # noqa: E402
from tflite_bench import benchmark_model  # noqa: E402


def macs(model):
    """Multiply-accumulates of one inference, per Conv / Dense layer."""
    counts = {}
    for layer in model.layers:
        out = layer.output.shape
        if isinstance(layer, L.DepthwiseConv2D):
            kh, kw, cin, dm = layer.kernel.shape
            counts[layer.name] = out[1] * out[2] * kh * kw * cin * dm
        elif isinstance(layer, L.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            counts[layer.name] = out[1] * out[2] * kh * kw * cin * cout
        elif isinstance(layer, L.Dense):
            counts[layer.name] = layer.kernel.shape[0] * layer.kernel.shape[1]
    return counts


def latency_ratios(paths):
    """p50 of each model per interleaved round, and the baseline/shrunk ratios."""
    p50 = {name: [] for name in paths}
    for r in range(ARGS.rounds):
        for name, path in paths.items():
            record = benchmark_model(path, threads=ARGS.threads, runs=ARGS.runs, name=name)
            p50[name].append(record.p50_ms)
        print(f"  round {r + 1}: " + ", ".join(f"{n} p50 {v[-1]:.4f} ms" for n, v in p50.items()),
              f"(xnnpack: {record.xnnpack})", flush=True)
    names = list(paths)
    return p50, summarize_ratios(p50[names[1]], p50[names[0]])


def cross_check(paths):
    from latency_anchor import litert_tool_median

    tool_args = argparse.Namespace(threads=ARGS.threads, runs=ARGS.runs, warmup=20)
    medians = {name: litert_tool_median(path, tool_args) for name, path in paths.items()}
    base, small = medians.values()
    print("  benchmark_litert_model medians: " + ", ".join(f"{n} {v:.4f} ms" for n, v in medians.items())
          + f"; ratio {base / small:.3f}")
    return medians


def train_cnn(seed, data, tmp):
    """Baseline, control (baseline trained on for the fine-tuning epochs) and
    shrunk + fine-tuned CNN of one seed: their .tflite paths, accuracies, models."""
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    fit = dict(batch_size=ARGS.batch_size, verbose=2)
    status(f"seed {seed}: MNIST CNN baseline, {ARGS.epochs} epochs on {len(x_train)} images")
    baseline = compile_classifier(build_cnn())
    baseline.fit(x_train, y_train, epochs=ARGS.epochs, **fit)

    status(f"seed {seed}: control, the baseline trained {ARGS.finetune_epochs} more epochs")
    control = keras.models.clone_model(baseline)
    control.set_weights(baseline.get_weights())
    compile_classifier(control).fit(x_train, y_train, epochs=ARGS.finetune_epochs, **fit)

    status(f"seed {seed}: shrink {ARGS.amount:.0%} of every group (L1), fine-tune {ARGS.finetune_epochs} epochs")
    small = compile_classifier(kc.pruning.shrink(baseline, ARGS.amount))
    small.fit(x_train, y_train, epochs=ARGS.finetune_epochs, **fit)

    models = {"baseline": baseline, "control": control, "shrunk": small}
    paths, accuracy = {}, {}
    for name, model in models.items():
        paths[name] = os.path.join(tmp, f"cnn_{name}_{seed}.tflite")
        kc.to_tflite(model, paths[name])
        accuracy[name] = benchmark_model(paths[name], threads=ARGS.threads, runs=1, data=(x_test, y_test)).accuracy
    return paths, accuracy, models


def mnist_cnn(tmp):
    data = kc.datasets.load_mnist(ARGS.data)
    if ARGS.quick:
        (x_train, y_train), test = data
        data = (x_train[:2000], y_train[:2000]), test
    runs = [train_cnn(ARGS.seed + i, data, tmp) for i in range(ARGS.seeds)]
    paths, _, models = runs[0]
    paths = {name: paths[name] for name in ("baseline", "shrunk")}
    baseline, small = models["baseline"], models["shrunk"]
    status(f"MNIST CNN (seed {ARGS.seed}): TFLite latency, {ARGS.rounds} interleaved rounds of "
           f"{ARGS.runs} runs, {ARGS.threads} thread(s)")
    p50, ratio = latency_ratios(paths)
    tool = cross_check(paths) if ARGS.cross_check else None
    return {
        "params": (baseline.count_params(), small.count_params()),
        "bytes": tuple(os.path.getsize(p) for p in paths.values()),
        "macs": (macs(baseline), macs(small)),
        "accuracy": [accuracy for _, accuracy, _ in runs],
        "p50_ms": p50,
        "latency": ratio,
        "litert_tool_median_ms": tool,
        "widths": {l.name: l.kernel.shape[-1] for l in small.layers if hasattr(l, "kernel")},
    }


def mobilenet(tmp):
    size = ARGS.mobilenet_size
    status(f"MobileNetV2 {size}x{size}, alpha {ARGS.mobilenet_alpha}, weights=None: "
           f"shrink {ARGS.amount:.0%} of every group")
    model = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), alpha=ARGS.mobilenet_alpha, weights=None, classes=10
    )
    small = kc.pruning.shrink(model, ARGS.amount)
    paths = {"baseline": os.path.join(tmp, "mnv2.tflite"), "shrunk": os.path.join(tmp, "mnv2_shrunk.tflite")}
    kc.to_tflite(model, paths["baseline"])
    kc.to_tflite(small, paths["shrunk"])
    status(f"MobileNetV2: TFLite latency, {ARGS.rounds} interleaved rounds of {ARGS.runs} runs")
    p50, ratio = latency_ratios(paths)
    tool = cross_check(paths) if ARGS.cross_check else None
    return {
        "params": (model.count_params(), small.count_params()),
        "bytes": tuple(os.path.getsize(p) for p in paths.values()),
        "macs": (sum(macs(model).values()), sum(macs(small).values())),
        "p50_ms": p50,
        "latency": ratio,
        "litert_tool_median_ms": tool,
    }


def main():
    with tempfile.TemporaryDirectory() as tmp:
        cnn = mnist_cnn(tmp)
        mnv2 = mobilenet(tmp)

    status("results")
    print(f"keras {keras.__version__}; TFLite float32, {ARGS.threads} thread(s), XNNPACK on; "
          f"amount {ARGS.amount} of every group; latency: p50 per round, {ARGS.rounds} interleaved rounds")
    base_macs, small_macs = cnn["macs"]
    print("\nMNIST CNN per-layer multiply-accumulates (baseline -> shrunk):")
    for name in base_macs:
        print(f"  {name:<10} {base_macs[name]:>9,} -> {small_macs[name]:>9,}")
    print(f"  widths after shrink: {cnn['widths']}")
    header = f"{'model':<22} {'params':>9} {'params ratio':>12} {'bytes':>9} {'MACs':>11} {'p50 ms (median)':>16}"
    print("\n" + header)
    print("-" * len(header))
    for name, result, i in (
        ("CNN baseline", cnn, 0),
        ("CNN shrunk", cnn, 1),
        ("MobileNetV2 baseline", mnv2, 0),
        ("MobileNetV2 shrunk", mnv2, 1),
    ):
        total_macs = result["macs"][i]
        total_macs = total_macs if isinstance(total_macs, int) else sum(total_macs.values())
        p50 = statistics.median(result["p50_ms"][("baseline", "shrunk")[i]])
        print(f"{name:<22} {result['params'][i]:>9,} {result['params'][i] / result['params'][0]:>12.3f} "
              f"{result['bytes'][i]:>9,} {total_macs:>11,} {p50:>16.4f}")
    print(f"\nMNIST CNN accuracy on the 2,000 held-out images, from the .tflite in LiteRT "
          f"({ARGS.seeds} seed(s), mean +- std):")
    seeds = cnn["accuracy"]
    for name, label in (("baseline", f"baseline ({ARGS.epochs} epochs)"),
                        ("control", f"control (+{ARGS.finetune_epochs} epochs, unpruned)"),
                        ("shrunk", f"shrunk + fine-tuned ({ARGS.finetune_epochs} epochs)")):
        mean, std = mean_std(100 * a[name] for a in seeds)
        print(f"  {label:<36} {mean:6.2f} +- {std:.2f}   per seed: "
              + ", ".join(f"{100 * a[name]:.2f}" for a in seeds))
    drop = mean_std(100 * (a["shrunk"] - a["baseline"]) for a in seeds)
    print(f"  shrunk - baseline: {drop[0]:+.2f} +- {drop[1]:.2f} points")
    print("\nlatency ratio, baseline p50 / shrunk p50 (higher is faster):")
    print(f"  MNIST CNN    {describe(cnn['latency'])}")
    print(f"  MobileNetV2  {describe(mnv2['latency'])}")
    print(f"\nMNIST CNN: params ratio {cnn['params'][1] / cnn['params'][0]:.3f}; "
          f"MACs ratio {sum(small_macs.values()) / sum(base_macs.values()):.3f}")
    write_results(ARGS.out, {"mnist_cnn": cnn, "mobilenet_v2": mnv2}, ARGS)


if __name__ == "__main__":
    main()
