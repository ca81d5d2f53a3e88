"""Distillation benchmark: a 25k-parameter student taught by a 0.84M-parameter CNN.

On the bundled MNIST split (8,000 train / 2,000 held out): the teacher is
2 conv + dense, the student Flatten-Dense(32)-Dense(10). Each student trains
10 epochs from the same initial weights per seed. It measures, mean +- std over
seeds, the student's held-out accuracy:

  - on labels alone;
  - with a hand-written keras.io-style KD loss (alpha 0.1, T 4);
  - with Keras 3's `keras.distillation.Distiller` + `LogitsDistillation(temperature=4)`
    at student_loss_weight 0.1 and 0.5, and with the KL loss passed as a
    `keras.losses.KLDivergence()` object (the workaround);
  - with keras-compress's `Distiller` (alpha 0.1, T 4; alpha 0.5, T 2; hard
    labels; feature hint on the teacher's dense layer);

and the speedup of teacher caching: epoch time with the teacher run every
step over epoch time with cached teacher logits, interleaved epochs.

Usage:

    python benchmarks/distillation_benchmark.py [--seeds 3] [--epochs 10] [--pairs 5]
"""

import time

from _common import parser, pin_threads, write_results


def parse_args():
    p = parser(__doc__, out="distillation.json")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10, help="student epochs")
    p.add_argument("--teacher-epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--pairs", type=int, default=5, help="interleaved epochs for the caching speedup")
    return p.parse_args()


ARGS = parse_args()
pin_threads(ARGS.threads)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import keras_compress as kc  # noqa: E402
from _timing import describe, mean_std, status, summarize_ratios  # noqa: E402
from keras_compress.distillation import Distiller  # noqa: E402

L = keras.layers
LOGITS_LOSS = keras.losses.SparseCategoricalCrossentropy


def build_teacher():
    return keras.Sequential(
        [
            keras.Input((28, 28, 1), name="image"),
            L.Conv2D(32, 3, activation="relu"),
            L.MaxPooling2D(),
            L.Conv2D(64, 3, activation="relu"),
            L.MaxPooling2D(),
            L.Flatten(),
            L.Dense(512, activation="relu", name="teacher_dense"),
            L.Dense(10),
        ],
        name="teacher",
    )


def build_student():
    return keras.Sequential(
        [keras.Input((28, 28, 1), name="image"), L.Flatten(), L.Dense(32, activation="relu", name="hidden"), L.Dense(10)],
        name="student",
    )


class HandWrittenKD(keras.Model):
    """The keras.io example's loss, written out: alpha * CE + (1 - alpha) * KL(T) * T^2."""

    def __init__(self, student, teacher, alpha, temperature):
        super().__init__()
        teacher.trainable = False  # as in the keras.io example
        self.student, self.teacher = student, teacher
        self.alpha, self.temperature = alpha, temperature

    def call(self, x, training=None):
        return self.student(x, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        T = self.temperature
        teacher = self.teacher(x, training=False)
        hard = keras.losses.sparse_categorical_crossentropy(y, y_pred, from_logits=True)
        soft = keras.losses.KLDivergence()(ops.softmax(teacher / T), ops.softmax(y_pred / T)) * T**2
        return self.alpha * ops.mean(hard) + (1 - self.alpha) * soft


def accuracy(model, data):
    _, (x, y) = data
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def student_variants(teacher, data, seed):
    (x, y), _ = data
    fit = dict(epochs=ARGS.epochs, batch_size=ARGS.batch_size, verbose=0)

    def fresh():
        keras.utils.set_random_seed(seed + 100)
        return build_student()

    def labels_only():
        student = fresh()
        student.compile(optimizer="adam", loss=LOGITS_LOSS(from_logits=True))
        student.fit(x, y, **fit)
        return student

    def hand_written():
        student = fresh()
        model = HandWrittenKD(student, teacher, 0.1, 4.0)
        model.compile(optimizer="adam")
        model.fit(x, y, **fit)
        return student

    def keras_builtin(weight, loss="kl_divergence"):
        def run():
            student = fresh()
            distiller = keras.distillation.Distiller(
                teacher=teacher,
                student=student,
                distillation_losses=keras.distillation.LogitsDistillation(temperature=4.0, loss=loss),
                student_loss_weight=weight,
            )
            distiller.compile(optimizer="adam", loss=LOGITS_LOSS(from_logits=True))
            distiller.fit(x, y, **fit)
            return student

        return run

    def ours(alpha, temperature, **options):
        def run():
            student = fresh()
            hints = options.pop("hints", None)
            distiller = Distiller(student=student, teacher=teacher, hints=hints)
            distiller.compile(optimizer="adam", alpha=alpha, temperature=temperature, **options)
            history = distiller.fit(*distiller.cache_teacher(x, y), **fit)
            print(f"  last epoch: {({k: round(v[-1], 4) for k, v in history.history.items()})}")
            return student

        return run

    variants = {
        "labels only": labels_only,
        "hand-written KD (alpha 0.1, T 4)": hand_written,
        "keras Distiller, weight 0.1": keras_builtin(0.1),
        "keras Distiller, weight 0.5": keras_builtin(0.5),
        "keras Distiller, weight 0.1, KLDivergence()": keras_builtin(0.1, keras.losses.KLDivergence()),
        "ours (alpha 0.1, T 4)": ours(0.1, 4.0),
        "ours (alpha 0.5, T 2)": ours(0.5, 2.0),
        "ours, hard labels (alpha 0.5)": ours(0.5, 1.0, mode="hard"),
        "ours + hint (alpha 0.1, T 4)": ours(0.1, 4.0, hints=[("teacher_dense", "hidden")]),
    }
    results = {}
    for name, run in variants.items():
        status(f"seed {seed}: {name}")
        results[name] = accuracy(run(), data)
        print(f"  accuracy {100 * results[name]:.2f}%", flush=True)
    return results


def caching_speedup(teacher, data):
    """Epoch time with the teacher run every step over epoch time on cached logits."""
    (x, y), _ = data
    live = Distiller(student=build_student(), teacher=teacher)
    cached = Distiller(student=build_student(), teacher=teacher)
    for distiller in (live, cached):
        distiller.compile(optimizer="adam", alpha=0.1, temperature=4.0)
    start = time.perf_counter()
    cached_data = cached.cache_teacher(x, y)
    cache_seconds = time.perf_counter() - start
    times = {"live": [], "cached": []}
    for round_ in range(ARGS.pairs + 1):
        for name, distiller, args in (("live", live, (x, y)), ("cached", cached, cached_data)):
            start = time.perf_counter()
            distiller.fit(*args, epochs=1, batch_size=ARGS.batch_size, verbose=0)
            if round_:  # round 0 traces: excluded
                times[name].append(time.perf_counter() - start)
    return {"cache_seconds": cache_seconds, **times, **summarize_ratios(times["cached"], times["live"])}


def main():
    data = kc.datasets.load_mnist(ARGS.data)
    (x, y), _ = data
    per_seed, teachers = [], []
    for seed in range(ARGS.seeds):
        keras.utils.set_random_seed(seed)
        status(f"seed {seed}: teacher, {ARGS.teacher_epochs} epochs")
        teacher = build_teacher()
        teacher.compile(optimizer="adam", loss=LOGITS_LOSS(from_logits=True))
        teacher.fit(x, y, epochs=ARGS.teacher_epochs, batch_size=ARGS.batch_size, verbose=2)
        teachers.append(accuracy(teacher, data))
        per_seed.append(student_variants(teacher, data, seed))
    status(f"teacher caching: {ARGS.pairs} interleaved epoch pairs")
    speed = caching_speedup(teacher, data)

    print(f"\nDistillation benchmark, {ARGS.seeds} seeds, MNIST 8000/2000, student {ARGS.epochs} epochs, "
          f"{ARGS.threads} thread(s)")
    mean, std = mean_std(100 * a for a in teachers)
    print(f"teacher ({build_teacher().count_params():,} params): {mean:.2f} +- {std:.2f}%; "
          f"student {build_student().count_params():,} params")
    for name in per_seed[0]:
        mean, std = mean_std(100 * rows[name] for rows in per_seed)
        print(f"  {name:<45}{mean:>7.2f} +- {std:.2f}")
    print(f"teacher caching: one pass {speed['cache_seconds']:.1f} s; epoch time live / cached: {describe(speed)}")
    write_results(ARGS.out, {"teachers": teachers, "seeds": per_seed, "caching": speed}, ARGS)


if __name__ == "__main__":
    main()
