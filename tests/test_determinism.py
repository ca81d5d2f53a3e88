"""Determinism: the same seed gives the same masks, and the same conversion
gives the same bytes.

Training shuffles (`shuffle=True`, Keras's default), so the seed has to fix
the initial weights and the batch order alike; a different seed must give
different masks, or the comparison would prove nothing.

The TFLite converter writes no timestamp or random name into the flatbuffer:
converting one model twice gives byte-identical files, float and int8. The
file does record names, the input's and the layers' (in tensor names), so two
separately built models are byte-identical only when those names agree;
Keras numbers unnamed layers and inputs per process ("dense_3",
"keras_tensor_7"), which is why the second build below names everything.
"""

import keras
import numpy as np
from conftest import compile_for_test, small_cnn, toy_data, value

import keras_compress as kc
from keras_compress.pruning import (
    L1Regularization,
    PolynomialDecay,
    PruneWrapper,
    ThresholdPruning,
    UpdatePruningStep,
    prune_low_magnitude,
    strip_pruning,
)


def masks_and_weights(model):
    wrappers = [l for l in model.layers if isinstance(l, PruneWrapper)]
    return [value(m) for w in wrappers for m in w.masks], [value(v) for v in model.weights]


def magnitude_run(seed):
    keras.utils.set_random_seed(seed)
    x, y = toy_data(64)
    schedule = PolynomialDecay(0.0, 0.7, begin_step=0, end_step=6, frequency=2)
    model = compile_for_test(prune_low_magnitude(small_cnn(), schedule))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])
    return masks_and_weights(model)


def l1_threshold_run(seed):
    keras.utils.set_random_seed(seed)
    x, y = toy_data(64)
    model = compile_for_test(prune_low_magnitude(small_cnn(), None))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[
        L1Regularization(1e-3, end_epoch=1),
        ThresholdPruning(relative_threshold=0.3, epochs=1),
    ])
    return masks_and_weights(model)


def assert_same(run_a, run_b):
    (masks_a, weights_a), (masks_b, weights_b) = run_a, run_b
    assert len(masks_a) == len(masks_b) > 0
    for a, b in zip(masks_a, masks_b):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_array_equal(a, b)


def differ(run_a, run_b):
    return any(not np.array_equal(a, b) for a, b in zip(run_a[0], run_b[0]))


def test_same_seed_gives_the_same_magnitude_masks():
    first = magnitude_run(11)
    assert_same(magnitude_run(11), first)
    assert differ(magnitude_run(12), first)


def test_same_seed_gives_the_same_l1_threshold_masks():
    first = l1_threshold_run(11)
    assert_same(l1_threshold_run(11), first)
    assert differ(l1_threshold_run(12), first)


def trained_pruned_model(build):
    keras.utils.set_random_seed(5)
    x, y = toy_data(64)
    pruned = compile_for_test(prune_low_magnitude(build(), PolynomialDecay(0.0, 0.6, 0, 4, frequency=2)))
    pruned.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])
    return strip_pruning(pruned)


def test_converting_one_model_twice_gives_the_same_bytes():
    model = trained_pruned_model(small_cnn)
    calibration, _ = toy_data(32, seed=3)
    float_a, float_b = kc.to_tflite(model), kc.to_tflite(model)
    assert float_a == float_b
    int8_a = kc.to_tflite(model, quantization="int8", representative_data=calibration)
    int8_b = kc.to_tflite(model, quantization="int8", representative_data=calibration)
    assert int8_a == int8_b
    assert int8_a != float_a  # two different conversions, each reproduced


def named_cnn():
    return keras.Sequential(
        [
            keras.Input((12, 12, 1), name="image"),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(3, name="logits"),
        ],
        name="named_cnn",
    )


def test_two_builds_with_the_same_seed_and_names_convert_to_the_same_bytes():
    calibration, _ = toy_data(32, seed=3)
    files = [
        kc.to_tflite(trained_pruned_model(named_cnn), quantization="int8", representative_data=calibration)
        for _ in range(2)
    ]
    assert files[0] == files[1]
