"""Low-rank factorization against structured pruning at the same parameter count.

Per seed: the demo CNN (examples.build_cnn, 56.7k parameters) trains on the
first 7,000 bundled MNIST images (--epochs, Adam 1e-3, batch 32). From it:
(a) the original, and a control trained --finetune-epochs more;
(b) `kc.factorization.factorize(--rank or --energy)`, fine-tuned
    --finetune-epochs; layers the rank would not shrink stay as they are;
(c) `kc.pruning.shrink` (L1) to the parameter count of (b), within
    --tolerance: one fraction for both convolutions, the Dense units removed
    searched to match; fine-tuned the same epochs.
The factorized and pruned models are also measured before fine-tuning.
Each model is converted to float and int8 TFLite (int8 calibrated on 200
training images). Printed: parameters, file bytes (and the int8 file's
constant tensors: weights, biases, shapes), test accuracy from the
.tflite on the 2,000 held-out images (mean +- std over seeds, per seed), and
for the first seed the p50 latency ratio original / compressed at --threads
threads (XNNPACK on), files timed in --rounds interleaved rounds.

    python benchmarks/low_rank.py [--seeds 3] [--rank 16 | --energy 0.9]
"""

import statistics
import warnings

from _common import parser, pin_threads, write_results


def parse_args():
    p = parser(__doc__, out="low_rank.json")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3, help="training epochs of the original")
    p.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs of every compressed model")
    p.add_argument("--rank", type=int, default=None, help="rank of every factorized layer (default 16)")
    p.add_argument("--energy", type=float, default=None, help="instead of --rank: energy kept per layer")
    p.add_argument("--tolerance", type=float, default=0.02, help="parameter-count match of the pruned model")
    p.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds (first seed)")
    p.add_argument("--runs", type=int, default=300, help="timed invokes per file and round")
    args = p.parse_args()
    if args.rank is not None and args.energy is not None:
        p.error("give --rank or --energy, not both")
    if args.rank is None and args.energy is None:
        args.rank = 16
    return args


ARGS = parse_args()
pin_threads(ARGS.threads)

import keras  # noqa: E402

import keras_compress as kc  # noqa: E402
from _timing import describe, mean_std, status, summarize_ratios  # noqa: E402
from keras_compress import examples  # noqa: E402
from tflite_bench.latency import measure_latency  # noqa: E402

METHODS = ("original", "control", "low-rank", "structured", "low-rank, no fine-tuning", "structured, no fine-tuning")
FORMATS = ("float", "int8")


def fit(model, x, y, epochs):
    examples.compile_classifier(model).fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    return model


def copy(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def factorized(model):
    with warnings.catch_warnings():
        # The first conv (9 x 16) and the logits (64 x 10) are smaller than rank 16: skipped, by design.
        warnings.simplefilter("ignore", UserWarning)
        return kc.factorization.factorize(model, rank=ARGS.rank, energy=ARGS.energy)


def matched_shrink(model, target):
    """`shrink` with one fraction for the convolutions and the Dense units
    removed searched so that the parameter count is nearest `target`;
    among counts within the tolerance, the most uniform fractions win."""
    convs = [l.name for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    dense, units = [(l.name, l.units) for l in model.layers if isinstance(l, keras.layers.Dense)][0]
    found = []
    for conv_fraction in [i / 10 for i in range(9)]:
        low, high = 0, units - 1  # Dense units removed; the count falls as more are removed.
        while low <= high:
            removed = (low + high) // 2
            amount = {**{name: conv_fraction for name in convs}, dense: (removed + 0.5) / units}
            small = kc.pruning.shrink(model, amount)
            params = small.count_params()
            found.append((abs(params - target) / target, abs(conv_fraction - removed / units), amount, small))
            if params > target:
                low = removed + 1
            else:
                high = removed - 1
    close = [f for f in found if f[0] <= ARGS.tolerance]
    best = min(close, key=lambda f: f[1]) if close else min(found, key=lambda f: f[0])
    return best[3], best[2]


def evaluate(model, x_cal, test):
    files, accuracy = {}, {}
    for fmt in FORMATS:
        files[fmt] = kc.to_tflite(model, quantization=None if fmt == "float" else "int8",
                                  representative_data=x_cal if fmt == "int8" else None)
        accuracy[fmt] = kc.export.evaluate_tflite(files[fmt], *test)["accuracy"]
    return files, accuracy


def run_seed(seed, x, y, test):
    keras.utils.set_random_seed(seed)
    status(f"seed {seed}: original, {ARGS.epochs} epochs on {len(x)} images")
    original = fit(examples.build_cnn(), x, y, ARGS.epochs)
    keras.utils.set_random_seed(seed)
    control = fit(copy(original), x, y, ARGS.finetune_epochs)
    keras.utils.set_random_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = kc.factorization.factorization_report(original, rank=ARGS.rank, energy=ARGS.energy)
    print(report)
    low_rank_start = factorized(original)
    low_rank = fit(copy(low_rank_start), x, y, ARGS.finetune_epochs)
    structured_start, amount = matched_shrink(original, low_rank.count_params())
    print(f"structured: shrink amounts {', '.join(f'{k} {v:.3f}' for k, v in amount.items())}")
    keras.utils.set_random_seed(seed)
    structured = fit(copy(structured_start), x, y, ARGS.finetune_epochs)
    models = {"original": original, "control": control, "low-rank": low_rank, "structured": structured,
              "low-rank, no fine-tuning": low_rank_start, "structured, no fine-tuning": structured_start}
    row, files = {"seed": seed, "report": report.as_dicts(), "shrink_amount": amount}, {}
    for name, model in models.items():
        files[name], accuracy = evaluate(model, x[:200], test)
        row[name] = {"params": model.count_params(), "accuracy": accuracy,
                     "bytes": {fmt: len(files[name][fmt]) for fmt in FORMATS},
                     "int8_constant_bytes": sum(kc.inspect_tflite(files[name]["int8"]).constant_bytes.values())}
    print(f"seed {seed}, int8 test accuracy: " + "; ".join(
        f"{name} {100 * row[name]['accuracy']['int8']:.2f}%" for name in models), flush=True)
    return row, files


def latency(files):
    """p50 per interleaved round of each method's file; ratios original / method."""
    result = {}
    for fmt in FORMATS:
        names = ("original", "low-rank", "structured")
        p50 = {name: [] for name in names}
        for _ in range(ARGS.rounds):
            for name in names:
                p50[name].append(measure_latency(files[name][fmt], threads=ARGS.threads, warmup=20,
                                                 runs=ARGS.runs)["p50_ms"])
        result[fmt] = {"p50_ms": p50, **{name: summarize_ratios(p50[name], p50["original"])
                                        for name in names[1:]}}
    return result


def main():
    (x_train, y_train), test = kc.datasets.load_mnist(ARGS.data)
    x, y = x_train[:7000], y_train[:7000]
    rows, first_files = [], None
    for seed in range(ARGS.seeds):
        row, files = run_seed(seed, x, y, test)
        rows.append(row)
        first_files = first_files or files
    status(f"latency (seed 0): {ARGS.rounds} interleaved rounds of {ARGS.runs} invokes, {ARGS.threads} thread(s)")
    timing = latency(first_files)

    setting = f"rank {ARGS.rank}" if ARGS.rank is not None else f"energy {ARGS.energy}"
    status("results")
    print(f"keras {keras.__version__}; demo CNN, {ARGS.epochs} epochs, then {ARGS.finetune_epochs} fine-tuning "
          f"epochs; low-rank: {setting}; {ARGS.seeds} seed(s); test accuracy on the 2,000 held-out images "
          "from the .tflite (mean +- std)")
    header = (f"{'model':<26} {'params':>8} {'float B':>8} {'int8 B':>8} {'int8 const B':>12} "
              f"{'float acc %':>14} {'int8 acc %':>14} "
              f"{'int8 p50 x':>10} {'float p50 x':>11}")
    print("\n" + header + "\n" + "-" * len(header))
    for name in METHODS:
        params = statistics.median(r[name]["params"] for r in rows)
        size = {fmt: statistics.median(r[name]["bytes"][fmt] for r in rows) for fmt in FORMATS}
        constants = statistics.median(r[name]["int8_constant_bytes"] for r in rows)
        acc = {fmt: mean_std(100 * r[name]["accuracy"][fmt] for r in rows) for fmt in FORMATS}
        speed = {fmt: (f"{timing[fmt][name]['ratio_median']:.2f}" if name in timing[fmt] else
                       ("1.00" if name == "original" else "-")) for fmt in FORMATS}
        print(f"{name:<26} {params:>8,.0f} {size['float']:>8,.0f} {size['int8']:>8,.0f} {constants:>12,.0f} "
              f"{acc['float'][0]:>7.2f} +- {acc['float'][1]:.2f} {acc['int8'][0]:>7.2f} +- {acc['int8'][1]:.2f} "
              f"{speed['int8']:>10} {speed['float']:>11}")
    print("\nper seed, int8 test accuracy %: " + "; ".join(
        f"{name} " + ", ".join(f"{100 * r[name]['accuracy']['int8']:.2f}" for r in rows) for name in METHODS))
    diff = [100 * (r["low-rank"]["accuracy"]["int8"] - r["structured"]["accuracy"]["int8"]) for r in rows]
    mean, std = mean_std(diff)
    print(f"low-rank minus structured, int8 test accuracy: {mean:+.2f} +- {std:.2f} points (paired by seed)")
    print("p50 latency ratio original / compressed (higher is faster):")
    for fmt in FORMATS:
        for name in ("low-rank", "structured"):
            print(f"  {fmt:<5} {name:<10} {describe(timing[fmt][name])}")
    write_results(ARGS.out, {"rows": rows, "latency": timing}, ARGS)


if __name__ == "__main__":
    main()
