"""The package's example models and training setup.

The demo, the tutorials, the benchmarks and the tests train the same small
models the same way; they are defined once, here:

- `build_cnn()`: the MNIST CNN (2 conv + 2 dense, 56.7k parameters);
- `build_student()`: the distillation student (Flatten, Dense(32), Dense(10));
- `build_small_cnn()`: a CNN student about 1/10 of `build_cnn` (5.7k parameters);
- `compile_classifier(model)`: Adam(1e-3), sparse cross-entropy on logits, accuracy;
- `magnitude_schedule(steps)`: the demo's gradual pruning schedule to
  `FINAL_SPARSITY`.

The tf_keras peer (`keras_compress/peer-scripts/tfmot_peer.py`) builds the
same CNN and schedule in tf_keras for side-by-side runs.
"""

import keras

from keras_compress import pruning
from tflite_bench.checks import check_int

FINAL_SPARSITY = 0.8
STRUCTURED_AMOUNT = 0.5


def _mnist_cnn(filters, units, name):
    """Conv(f1)-pool-Conv(f2)-pool-Dense(units)-Dense(10), ReLUs, on 28x28x1 images."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1), name="image"),
            keras.layers.Conv2D(filters[0], 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(filters[1], 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(10),
        ],
        name=name,
    )


def build_cnn():
    """The demo and benchmark model: 2 conv + 2 dense, 56.7k parameters."""
    return _mnist_cnn((16, 32), 64, "mnist_cnn")


def build_student():
    """The distillation student: Flatten-Dense(32)-Dense(10), 25.4k parameters."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1), name="image"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="mnist_student",
    )


def build_small_cnn():
    """A CNN student about 1/10 of `build_cnn`: 2 conv (8 filters) + Dense(24), 5.7k parameters."""
    return _mnist_cnn((8, 8), 24, "mnist_small_cnn")


def compile_classifier(model):
    """Adam(1e-3), sparse cross-entropy on logits, accuracy: the examples' training setup.

    Returns `model`, compiled."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"compile_classifier: model must be a keras.Model, got {type(model).__name__}.")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def magnitude_schedule(steps, final_sparsity=FINAL_SPARSITY):
    """`PolynomialDecay` from 50% to `final_sparsity`, reached after about 60%
    of `steps` fine-tuning steps, with at least 10 mask updates however short
    the run."""
    check_int("magnitude_schedule", "steps", steps, minimum=1)
    frequency = max(1, min(100, steps // 10))
    end_step = max(frequency, (int(0.6 * steps) // frequency) * frequency)
    return pruning.PolynomialDecay(0.5, final_sparsity, 0, end_step, frequency=frequency)
