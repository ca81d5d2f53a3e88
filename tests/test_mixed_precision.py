"""Mixed precision: pruning and distillation train under `mixed_float16` and
`mixed_bfloat16` with float32 masks and exact zeros; quantization-aware
training refuses a mixed policy by name.

Every model here is built after the policy is set, so its layers compute in
16 bits (checked, so that the tests test what they claim); the `policy`
fixture puts the global policy back to "float32" whatever happens.
"""

import keras
import numpy as np
import pytest
from conftest import compile_for_test, small_cnn, toy_data, value

from keras_compress.distillation import Distiller
from keras_compress.pruning import (
    L1Regularization,
    PolynomialDecay,
    PruneWrapper,
    ThresholdPruning,
    UpdatePruningStep,
    prune_low_magnitude,
    strip_pruning,
)
from keras_compress.quantization import (
    ActivationQuantizer,
    QuantizeWrapper,
    quantize_model,
)

POLICIES = ["mixed_float16", "mixed_bfloat16"]


@pytest.fixture(params=POLICIES)
def policy(request):
    request.addfinalizer(lambda: keras.mixed_precision.set_global_policy("float32"))
    keras.mixed_precision.set_global_policy(request.param)
    return keras.mixed_precision.global_policy()


def wrappers(model):
    return [l for l in model.layers if isinstance(l, PruneWrapper)]


def assert_masks_float32_and_zeros_exact(model, policy):
    for wrapper in wrappers(model):
        assert wrapper.layer.compute_dtype == policy.compute_dtype  # really mixed
        for weight, mask in zip(wrapper.pruned_weights, wrapper.masks):
            assert mask.dtype == "float32" and weight.dtype == "float32"
            m, w = value(mask), value(weight)
            assert set(np.unique(m)) <= {0.0, 1.0}
            assert np.all(w[m == 0] == 0.0), wrapper.name


def assert_strip_keeps_zeros(pruned, policy, x):
    stripped = strip_pruning(pruned)
    for wrapper in wrappers(pruned):
        layer = stripped.get_layer(wrapper.layer.name)
        assert layer.compute_dtype == policy.compute_dtype
        mask = value(wrapper.masks[0])
        kernel = value(layer.kernel)
        assert kernel.dtype == np.float32
        np.testing.assert_array_equal(kernel == 0, mask == 0)
    np.testing.assert_allclose(
        value(stripped(x, training=False)).astype("float32"),
        value(pruned(x, training=False)).astype("float32"),
        rtol=0,
        atol=0,
    )


def test_magnitude_pruning_under_mixed_precision(policy):
    x, y = toy_data(64)
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=4, frequency=2)
    pruned = compile_for_test(prune_low_magnitude(small_cnn(), schedule))
    history = pruned.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                         callbacks=[UpdatePruningStep()])
    assert np.all(np.isfinite(history.history["loss"]))
    assert value(pruned(x[:4], training=False)).dtype == policy.compute_dtype
    assert_masks_float32_and_zeros_exact(pruned, policy)
    for wrapper in wrappers(pruned):
        assert int(value(wrapper.pruning_step)) == 8
        mask = value(wrapper.masks[0])
        assert np.sum(mask == 0) == round(0.8 * mask.size)
    assert_strip_keeps_zeros(pruned, policy, x[:8])


def test_l1_and_threshold_pruning_under_mixed_precision(policy):
    x, y = toy_data(64)
    pruned = compile_for_test(prune_low_magnitude(small_cnn(), None))
    history = pruned.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, callbacks=[
        L1Regularization(1e-3, end_epoch=2),
        ThresholdPruning(relative_threshold=0.3, epochs=2),
    ])
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["l1_strength"] == [pytest.approx(1e-3)] * 2 + [0.0]
    assert_masks_float32_and_zeros_exact(pruned, policy)
    assert all(np.mean(value(w.masks[0]) == 0) > 0.05 for w in wrappers(pruned))
    assert_strip_keeps_zeros(pruned, policy, x[:8])


def test_distilling_into_a_pruned_student_under_mixed_precision(policy):
    x, y = toy_data(64)
    teacher = small_cnn("teacher")
    teacher_before = [value(w).copy() for w in teacher.weights]
    schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=4, frequency=2)
    student = prune_low_magnitude(small_cnn("student"), schedule)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="adam", alpha=0.3, temperature=2.0,
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    history = distiller.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                            callbacks=[UpdatePruningStep()])
    for key in ("loss", "student_loss", "distillation_loss"):
        assert np.all(np.isfinite(history.history[key])), key
    # The losses are computed in float32 from 16-bit logits.
    assert value(student(x[:4], training=False)).dtype == policy.compute_dtype
    assert_masks_float32_and_zeros_exact(student, policy)
    for wrapper in wrappers(student):
        mask = value(wrapper.masks[0])
        assert np.sum(mask == 0) == round(0.5 * mask.size)
    for w, before in zip(teacher.weights, teacher_before):
        np.testing.assert_array_equal(value(w), before)
    assert_strip_keeps_zeros(student, policy, x[:8])


def test_quantization_aware_training_refuses_mixed_precision(policy):
    model = small_cnn()
    accepted = "needs the 'float32' dtype policy"
    with pytest.raises(ValueError, match=f"{accepted}.*global dtype policy is '{policy.name}'"):
        quantize_model(model)
    with pytest.raises(ValueError, match=f"{accepted}.*layer 'quant_dense'.*'{policy.name}'"):
        QuantizeWrapper(keras.layers.Dense(2, name="dense"))
    with pytest.raises(ValueError, match=f"{accepted}.*layer 'aq'.*'{policy.name}'"):
        ActivationQuantizer(name="aq")
    # A model built in mixed precision keeps its layers' policies after the
    # global policy is reset: still refused, naming the first such layer.
    keras.mixed_precision.set_global_policy("float32")
    with pytest.raises(ValueError, match=f"{accepted}.*layer 'conv_a' of model 'cnn' is '{policy.name}'"):
        quantize_model(model)
    float_model = small_cnn()
    float_model.set_weights(model.get_weights())  # the way out the message gives
    assert any(isinstance(l, QuantizeWrapper) for l in quantize_model(float_model).layers)
