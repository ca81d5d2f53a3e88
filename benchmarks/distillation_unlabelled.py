"""Distillation with few labels: 1,000 labelled + 7,000 unlabelled MNIST images.

On the bundled MNIST split (8,000 train / 2,000 held out), the teacher is the
demo CNN (`keras_compress.examples.build_cnn`, 56.7k parameters) trained on all
8,000 labelled images; it stands for a model trained elsewhere. The student
is a CNN about 1/10 of its size (`examples.build_small_cnn`, 5.7k parameters),
trained from the same initial weights per seed:

  (a) on the first 1,000 labels alone (plain `fit`, sparse cross-entropy);
  (b) with keras-compress's `Distiller` on the same 1,000 labels plus the
      other 7,000 images without labels (`mixed_dataset`: label -1), teacher
      cached, alpha 0.5, T 4.

Both get the same number of optimizer steps: (a) runs 8x the epochs of (b)
over 1/8 of the data. Reported: held-out accuracy on the 2,000 test images,
mean and range (min-max) over seeds, and the difference (b) - (a) per seed.

Usage:

    python benchmarks/distillation_unlabelled.py [--seeds 3] [--epochs 10] [--quick]
"""

from _common import parser, pin_threads, write_results


def parse_args():
    p = parser(__doc__, out="distillation_unlabelled.json")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--labels", type=int, default=1000, help="labelled training images (the rest: unlabelled)")
    p.add_argument("--epochs", type=int, default=10, help="distillation epochs over the 8,000 images")
    p.add_argument("--teacher-epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--quick", action="store_true", help="1 seed, 1 epoch, 1 teacher epoch: checks that it runs")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.teacher_epochs = 1, 1, 1
    return args


ARGS = parse_args()
pin_threads(ARGS.threads)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_compress as kc  # noqa: E402
from _timing import status  # noqa: E402
from keras_compress.examples import build_cnn, build_small_cnn, compile_classifier  # noqa: E402
from keras_compress.distillation import Distiller, mixed_dataset  # noqa: E402


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0, batch_size=500), -1) == y))


def spread(values):
    """'mean (min-max)' in percent."""
    values = [100 * v for v in values]
    return f"{np.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def run_seed(teacher, train, test, seed):
    (x, y), (x_test, y_test) = train, test
    n = ARGS.labels
    steps_b = ARGS.epochs * -(-len(x) // ARGS.batch_size)
    epochs_a = max(1, round(steps_b / -(-n // ARGS.batch_size)))

    keras.utils.set_random_seed(seed)
    student = compile_classifier(build_small_cnn())
    initial = student.get_weights()
    student.fit(x[:n], y[:n], epochs=epochs_a, batch_size=ARGS.batch_size, verbose=0)
    labels_only = accuracy(student, x_test, y_test)

    keras.utils.set_random_seed(seed)
    student = build_small_cnn()
    student.set_weights(initial)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"],
        alpha=ARGS.alpha, temperature=ARGS.temperature,
    )
    x_mixed, y_mixed = mixed_dataset(x[:n], y[:n], x[n:])
    history = distiller.fit(
        *distiller.cache_teacher(x_mixed, y_mixed), epochs=ARGS.epochs, batch_size=ARGS.batch_size, verbose=0
    )
    distilled = accuracy(distiller.student, x_test, y_test)
    last = {k: round(v[-1], 4) for k, v in history.history.items()}
    print(f"  seed {seed}: labels only {100 * labels_only:.2f}% ({epochs_a} epochs), "
          f"distilled {100 * distilled:.2f}% ({ARGS.epochs} epochs; last epoch {last})", flush=True)
    return {"labels_only": labels_only, "distilled": distilled, "epochs_labels_only": epochs_a}


def main():
    train, test = kc.datasets.load_mnist(ARGS.data)
    (x, y), (x_test, y_test) = train, test
    status(f"teacher: demo CNN on all {len(x):,} labelled images, {ARGS.teacher_epochs} epochs")
    keras.utils.set_random_seed(1234)
    teacher = compile_classifier(build_cnn())
    teacher.fit(x, y, epochs=ARGS.teacher_epochs, batch_size=ARGS.batch_size, verbose=0)
    teacher_accuracy = accuracy(teacher, x_test, y_test)
    rows = []
    for seed in range(ARGS.seeds):
        status(f"seed {seed}")
        rows.append(run_seed(teacher, train, test, seed))

    a = [r["labels_only"] for r in rows]
    b = [r["distilled"] for r in rows]
    diff = [bi - ai for ai, bi in zip(a, b)]
    spread_a, spread_b = 100 * (max(a) - min(a)), 100 * (max(b) - min(b))
    margin = 100 * min(diff)
    print(f"\nDistillation with {ARGS.labels:,} labels + {len(x) - ARGS.labels:,} unlabelled images, "
          f"{ARGS.seeds} seed(s), held-out accuracy on {len(x_test):,} images, % mean (min-max)")
    print(f"teacher {build_cnn().count_params():,} params: {100 * teacher_accuracy:.2f}; "
          f"student {build_small_cnn().count_params():,} params")
    print("| student | accuracy % |")
    print("|---|---:|")
    print(f"| (a) {ARGS.labels:,} labels alone | {spread(a)} |")
    print(f"| (b) distilled, {ARGS.labels:,} labels + {len(x) - ARGS.labels:,} unlabelled | {spread(b)} |")
    print(f"| (b) - (a), per seed | {spread(diff)} |")
    beats = 100 * (np.mean(b) - np.mean(a)) > max(spread_a, spread_b) and margin > 0
    print(f"(b) beats (a) by more than the seed spread (max {max(spread_a, spread_b):.2f} points): "
          f"{'yes' if beats else 'no'}")
    write_results(ARGS.out, {"teacher": teacher_accuracy, "seeds": rows, "beats_spread": bool(beats)}, ARGS)


if __name__ == "__main__":
    main()
