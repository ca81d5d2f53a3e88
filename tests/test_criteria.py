import numpy as np
import pytest

from keras_compress.pruning import criteria


def as_np(x):
    return np.asarray(x)


def test_magnitude_prunes_the_smallest_by_absolute_value():
    w = np.array([[0.1, -3.0], [0.2, 2.0], [-0.05, 1.0]], np.float32)
    mask = as_np(criteria.magnitude(w, 0.5))
    np.testing.assert_array_equal(mask, [[0, 1], [0, 1], [0, 1]])
    assert mask.dtype == np.float32 and mask.shape == w.shape


@pytest.mark.parametrize("sparsity, zeros", [(0.0, 0), (0.25, 2), (0.8, 6), (0.99, 8)])
def test_magnitude_prunes_round_sparsity_times_size(sparsity, zeros):
    w = np.arange(1, 9, dtype=np.float32).reshape(2, 4)  # |w| = 1..8, no ties
    mask = as_np(criteria.magnitude(w, sparsity))
    assert int((mask == 0).sum()) == zeros
    # The pruned ones are exactly the `zeros` smallest.
    np.testing.assert_array_equal(mask.ravel(), (np.arange(8) >= zeros).astype(np.float32))


def test_magnitude_reaches_the_count_despite_ties():
    w = np.zeros((10,), np.float32)  # all tied: a threshold rule would keep all
    assert int((as_np(criteria.magnitude(w, 0.3)) == 0).sum()) == 3


def test_magnitude_keeps_already_pruned_zeros_pruned():
    w = np.array([0.0, 0.0, 5.0, 0.1, 3.0, 0.2], np.float32)
    mask = as_np(criteria.magnitude(w, 0.5))
    np.testing.assert_array_equal(mask, [0, 0, 1, 0, 1, 1])


def test_global_magnitude_differs_from_per_layer():
    small = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    large = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    per_layer = [as_np(criteria.magnitude(w, 0.5)) for w in (small, large)]
    glob = [as_np(m) for m in criteria.global_magnitude([small, large], 0.5)]
    np.testing.assert_array_equal(per_layer[0], [0, 0, 1, 1])
    np.testing.assert_array_equal(per_layer[1], [0, 0, 1, 1])
    # One threshold for both: the 4 smallest overall are all in `small`.
    np.testing.assert_array_equal(glob[0], [0, 0, 0, 0])
    np.testing.assert_array_equal(glob[1], [1, 1, 1, 1])


def test_global_magnitude_keeps_shapes_and_total_count():
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=s).astype(np.float32) for s in [(3, 3, 2, 4), (10, 5), (7,)]]
    masks = [as_np(m) for m in criteria.global_magnitude(ws, 0.6)]
    assert [m.shape for m in masks] == [w.shape for w in ws]
    total = sum(w.size for w in ws)
    assert sum(int((m == 0).sum()) for m in masks) == round(0.6 * total)
    # Everything pruned is smaller than everything kept.
    flat_w = np.concatenate([np.abs(w).ravel() for w in ws])
    flat_m = np.concatenate([m.ravel() for m in masks])
    assert flat_w[flat_m == 0].max() <= flat_w[flat_m == 1].min()


def test_threshold_prunes_below_epsilon():
    w = np.array([-0.3, 0.01, -0.009, 0.5, 0.0099], np.float32)
    np.testing.assert_array_equal(as_np(criteria.threshold(w, 0.01)), [1, 1, 0, 1, 0])


def test_relative_threshold_uses_alpha_times_max_abs():
    w = np.array([-4.0, 0.39, 0.4, -0.41, 2.0], np.float32)  # alpha * max|w| = 0.4
    np.testing.assert_array_equal(as_np(criteria.relative_threshold(w, 0.1)), [1, 0, 1, 1, 1])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: criteria.magnitude(np.ones(3), 1.5), "sparsity must be in"),
        (lambda: criteria.threshold(np.ones(3), -1), "epsilon must be a number >= 0"),
        (lambda: criteria.relative_threshold(np.ones(3), 2), "alpha must be in"),
        (lambda: criteria.global_magnitude([], 0.5), "at least one"),
    ],
)
def test_invalid_amounts(call, match):
    with pytest.raises(ValueError, match=match):
        call()
