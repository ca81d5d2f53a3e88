"""Per-layer pruning sensitivity of the demo CNN, measured and predicted.

Trains the demo CNN on the bundled MNIST split, then runs
`keras_compress.auto.sensitivity_analysis` on the 2,000 held-out images:
the accuracy drop when each layer alone is pruned to each sparsity or loses
each fraction of its units (structured), and the
Spearman rank correlation of the magnitude, Fisher and Taylor proxies with
those drops, per seed.

    python benchmarks/sensitivity.py [--seeds 3] [--epochs 3]
"""

import statistics
import time

from _common import parser, pin_threads, write_results


def parse_args():
    p = parser(__doc__, out="sensitivity.json")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3, help="training epochs of the CNN")
    p.add_argument("--sparsities", default="0.5,0.7,0.8,0.9,0.95", help="unstructured sparsity levels")
    p.add_argument("--fractions", default="0.25,0.5,0.75", help="structured removal fractions")
    return p.parse_args()


ARGS = parse_args()
pin_threads(ARGS.threads)

import keras  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress.auto import PROXIES, sensitivity_analysis  # noqa: E402
from keras_compress.examples import build_cnn, compile_classifier  # noqa: E402


def main():
    (x_train, y_train), (x_test, y_test) = kc.datasets.load_mnist(ARGS.data)
    sparsities = [float(s) for s in ARGS.sparsities.split(",") if s]
    fractions = [float(f) for f in ARGS.fractions.split(",") if f]
    reports, seconds = [], []
    for seed in range(ARGS.seeds):
        keras.utils.set_random_seed(seed)
        model = compile_classifier(build_cnn())
        model.fit(x_train, y_train, epochs=ARGS.epochs, batch_size=32, verbose=0)
        started = time.perf_counter()
        report = sensitivity_analysis(model, (x_test, y_test), sparsities=sparsities, fractions=fractions,
                                      verbose=False)
        seconds.append(time.perf_counter() - started)
        reports.append(report)
        print(f"\n== seed {seed} ({seconds[-1]:.1f} s)\n{report.table()}")
    print(f"\nDemo CNN, {ARGS.seeds} seed(s): Spearman rank correlation of each proxy with the measured "
          "accuracy drops (all layers x sparsities), mean (min-max)")
    for proxy in PROXIES:
        values = [r.correlations[proxy] for r in reports]
        print(f"  {proxy:<10} {statistics.mean(values):+.3f} ({min(values):+.3f} to {max(values):+.3f})")
    print(f"analysis time: median {statistics.median(seconds):.1f} s")
    write_results(ARGS.out, {"reports": [r.__dict__ | {"rows": [row.__dict__ for row in r.rows]} for r in reports],
                             "seconds": seconds}, ARGS)


if __name__ == "__main__":
    main()
