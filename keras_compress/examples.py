"""The package's example models and training setup.

The demo, the tutorials, the benchmarks and the tests train the same small
models the same way; they are defined once, here:

- `build_cnn()`: the MNIST CNN (2 conv + 2 dense, 56.7k parameters);
- `build_student()`: the distillation student (Flatten, Dense(32), Dense(10));
- `build_small_cnn()`: a CNN student about 1/10 of `build_cnn` (5.7k parameters);
- `build_residual_cnn()`: a small MobileNetV2-style Functional network
  (inverted residual blocks, two residual `Add`s, 16.4k parameters), for
  structured pruning across residual ties;
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
# `build_residual_cnn`'s BatchNormalization momentum: with Keras's 0.99 the moving statistics
# still lag the weights after the few hundred steps of a 7,000-image epoch (test accuracy
# 82-95% over three seeds after 5 epochs, 96-98% with 0.9).
BN_MOMENTUM = 0.9
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


def _inverted_residual(x, filters, strides, expansion, name):
    """MobileNetV2's inverted residual block: 1x1 expand, 3x3 depthwise,
    1x1 linear projection, each with BatchNormalization (ReLU6 after the
    first two); the block's input is added back when the shapes match."""
    channels = x.shape[-1]
    y = keras.layers.Conv2D(channels * expansion, 1, use_bias=False, name=f"{name}_expand")(x)
    y = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_expand_bn")(y)
    y = keras.layers.ReLU(6.0, name=f"{name}_expand_relu")(y)
    y = keras.layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name=f"{name}_depthwise")(y)
    y = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_depthwise_bn")(y)
    y = keras.layers.ReLU(6.0, name=f"{name}_depthwise_relu")(y)
    y = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(y)
    y = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_project_bn")(y)
    if strides == 1 and channels == filters:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


def build_residual_cnn():
    """A small MobileNetV2-style network for 28x28x1 images, 16.4k parameters.

    Stem Conv2D(16, 3, stride 2) + BN + ReLU6 (14x14x16); two inverted
    residual blocks at 16 channels (expansion 6), each ending in an `Add`
    with its input, so the stem and both projections form one dependency
    group; a third block with stride 2 to 32 channels (7x7, no residual);
    GlobalAveragePooling2D and Dense(10) logits. Every layer is named."""
    image = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(image)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    x = _inverted_residual(x, 16, 1, 6, "block1")
    x = _inverted_residual(x, 16, 1, 6, "block2")
    x = _inverted_residual(x, 32, 2, 6, "block3")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(image, logits, name="mnist_residual_cnn")


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
