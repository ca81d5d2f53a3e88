"""Property tests (hypothesis) for the pruning schedules and criteria.

Schedules: sparsity stays in [0, 1], moves monotonically from the initial to
the final sparsity, and masks update exactly on the begin + k * frequency
steps. Criteria: the requested fraction is reached to within one element,
and what is pruned is never larger than what is kept; the thresholds match
their numpy definitions.

Float32 subnormals are left out of the generated values: TensorFlow's CPU
kernels flush them to zero, so numpy and the kernels disagree on them by
design (hypothesis found `relative_threshold(w, 1.4e-45)` keeping a 0). For
the same reason the relative threshold's alpha is 0 or at least 1e-6, so
that `alpha * max|w|` stays a normal float.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keras_compress.pruning import ConstantSparsity, PolynomialDecay, PruneWrapper, criteria

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
sparsities = st.floats(0.0, 0.999, allow_nan=False)
# Weights: 0, or magnitudes from 1e-20 to 1e3, far from the subnormal range.
TINY = float(np.float32(1e-20))
finite = st.one_of(st.just(0.0), st.floats(TINY, 1e3, width=32), st.floats(-1e3, -TINY, width=32))
weights = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12), elements=finite)


@st.composite
def polynomial_decays(draw):
    begin = draw(st.integers(0, 1000))
    end = draw(st.integers(begin + 1, begin + 5000))
    return PolynomialDecay(draw(sparsities), draw(sparsities), begin, end,
                           power=draw(st.sampled_from([1, 2, 3, 0.5, 4.5])),
                           frequency=draw(st.integers(1, 200)))


@SETTINGS
@given(polynomial_decays(), st.lists(st.integers(0, 10_000), min_size=2, max_size=20))
def test_polynomial_decay_is_bounded_and_monotone_in_the_step(schedule, steps):
    steps = sorted(steps)
    values = [schedule.sparsity(s) for s in steps]
    low = min(schedule.initial_sparsity, schedule.final_sparsity)
    high = max(schedule.initial_sparsity, schedule.final_sparsity)
    assert all(0.0 <= v <= 1.0 and low - 1e-12 <= v <= high + 1e-12 for v in values)
    direction = 1 if schedule.final_sparsity >= schedule.initial_sparsity else -1
    assert all(direction * (b - a) >= -1e-12 for a, b in zip(values, values[1:]))
    assert schedule.sparsity(schedule.begin_step) == pytest.approx(schedule.initial_sparsity)
    assert schedule.sparsity(schedule.end_step + steps[0]) == pytest.approx(schedule.final_sparsity)


@SETTINGS
@given(polynomial_decays(), st.integers(0, 10_000))
def test_masks_update_exactly_on_the_schedule_steps(schedule, step):
    expected = (schedule.begin_step <= step <= schedule.end_step
                and (step - schedule.begin_step) % schedule.frequency == 0)
    assert schedule.should_prune(step) == expected
    assert (step in schedule.pruning_steps(0, 10_000)) == expected


@SETTINGS
@given(sparsities, st.integers(0, 500), st.integers(1, 100), st.integers(0, 3000))
def test_constant_sparsity_is_constant(target, begin, frequency, step):
    schedule = ConstantSparsity(target, begin, frequency=frequency)
    assert schedule.sparsity(step) == target
    assert schedule.should_prune(step) == (step >= begin and (step - begin) % frequency == 0)


@SETTINGS
@given(weights, st.floats(0.0, 1.0))
def test_magnitude_reaches_the_fraction_and_prunes_the_smallest(w, sparsity):
    mask = np.asarray(criteria.magnitude(w, sparsity))
    assert mask.shape == w.shape and set(np.unique(mask)) <= {0.0, 1.0}
    zeros = int((mask == 0).sum())
    assert abs(zeros - sparsity * w.size) <= 1  # within one element of the request
    if 0 < zeros < w.size:
        assert np.abs(w[mask == 0]).max() <= np.abs(w[mask == 1]).min()


@SETTINGS
@given(st.lists(weights, min_size=1, max_size=4), st.floats(0.0, 1.0))
def test_global_magnitude_reaches_the_fraction_across_tensors(tensors, sparsity):
    masks = [np.asarray(m) for m in criteria.global_magnitude(tensors, sparsity)]
    total = sum(w.size for w in tensors)
    zeros = sum(int((m == 0).sum()) for m in masks)
    assert abs(zeros - sparsity * total) <= 1
    pruned = np.concatenate([np.abs(w[m == 0]) for w, m in zip(tensors, masks)])
    kept = np.concatenate([np.abs(w[m == 1]) for w, m in zip(tensors, masks)])
    if pruned.size and kept.size:
        assert pruned.max() <= kept.min()


@SETTINGS
@given(weights, st.floats(0.0, 1e3, allow_subnormal=False, width=32))
def test_threshold_matches_its_definition(w, epsilon):
    np.testing.assert_array_equal(np.asarray(criteria.threshold(w, epsilon)), (np.abs(w) >= epsilon).astype("float32"))


@SETTINGS
@given(weights, st.just(0.0) | st.floats(1e-6, 1.0))
def test_relative_threshold_matches_its_definition(w, alpha):
    expected = (np.abs(w) >= np.float32(alpha) * np.abs(w).max()).astype("float32")
    np.testing.assert_array_equal(np.asarray(criteria.relative_threshold(w, alpha)), expected)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 40), st.integers(1, 12), sparsities)
def test_a_fit_reaches_the_requested_sparsity_within_one_weight(inputs, units, target):
    """End to end: a fit step with UpdatePruningStep, through the wrapper's masks."""
    import keras

    from keras_compress.pruning import UpdatePruningStep

    wrapper = PruneWrapper(keras.layers.Dense(units), pruning_schedule=ConstantSparsity(target, 0, frequency=1))
    model = keras.Sequential([keras.Input((inputs,)), wrapper])
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).normal(size=(4, inputs)).astype("float32")
    model.fit(x, np.zeros((4, units), "float32"), batch_size=4, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    kernel = keras.ops.convert_to_numpy(wrapper.layer.kernel)
    assert abs(int((kernel == 0).sum()) - target * kernel.size) <= 1
