"""The architecture matrix: each model family through prune -> strip -> QAT ->
int8 `.tflite`, with PTQ int8 of the same weights beside it.

For every family in tests/architectures.py (transformer block, LSTM, GRU,
Embedding text classifier, Conv1D keyword spotter, U-Net, two inputs / two
outputs, frozen MobileNetV2 backbone, raw keras.ops with GELU / swish):
train briefly on synthetic data with a learnable rule, prune 50%
(`ConstantSparsity`, one epoch), strip, quantization-aware training (one
epoch), convert to int8 without representative data; PTQ int8 of the
stripped model with 256 calibration samples. Agreement is the share of
equal argmaxes between each Keras model and its `.tflite` on 1,000 held-out
samples (for the single-unit regression output: within 5% of its spread).

Usage:

    python benchmarks/architecture_matrix.py [--seeds 3] [--families lstm,unet] [--out matrix.json]
"""

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))  # the model builders


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--families", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--out", default=None, help="optional JSON file for the rows")
    return p.parse_args()


def spread(values):
    values = [100 * v for v in values]
    mean = statistics.mean(values)
    return f"{mean:.1f} ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else f"{mean:.1f}"


def main():
    args = parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from architectures import FAMILIES, compress_pipeline, synthetic_data, train_briefly

    families = args.families.split(",") if args.families else sorted(FAMILIES)
    rows = {}
    for family in families:
        runs = []
        for seed in range(args.seeds):
            keras.utils.set_random_seed(seed)
            model = FAMILIES[family]()
            x, y = synthetic_data(model, n=256, seed=seed)
            train_briefly(model, x, y)
            x_test, _ = synthetic_data(model, n=1000, seed=100 + seed)
            runs.append(compress_pipeline(model, x, y, x_test))
            print(f"{family} seed {seed}: {runs[-1]['qat_agreement']} / {runs[-1]['ptq_agreement']}", flush=True)
        rows[family] = runs

    print()
    print("| model | QAT int8: float ops left | QAT agreement % | PTQ int8: float ops left | "
          "PTQ agreement % | zeros kept through QAT | outputs in order, named |")
    print("|---|---|---:|---|---:|---|---|")
    for family, runs in rows.items():
        outputs = len(runs[0]["qat_agreement"])
        qat = "; ".join(spread([r["qat_agreement"][i] for r in runs]) for i in range(outputs))
        ptq = "; ".join(spread([r["ptq_agreement"][i] for r in runs]) for i in range(outputs))
        left = sorted({op for r in runs for op in r["qat_float_ops"]}) or ["none"]
        ptq_left = sorted({op for r in runs for op in r["ptq_float_ops"]}) or ["none"]
        kept = all(r["zeros_kept"] for r in runs)
        named = all(
            r["output_names"] == r["expected_output_names"]
            and r["output_shapes"] == r["expected_output_shapes"]
            for r in runs
        )
        print(f"| {family} | {', '.join(left)} | {qat} | {', '.join(ptq_left)} | {ptq} | "
              f"{'yes' if kept else 'NO'} | {'yes' if named else 'NO'} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1, default=str)


if __name__ == "__main__":
    main()
