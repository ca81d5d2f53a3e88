"""keras_compress.auto.sensitivity_analysis: measured per-layer drops against
an independent re-computation, proxies against their formulas, and a model
left untouched."""

import keras
import numpy as np
import pytest

from conftest import assert_unchanged, snapshot, trained_small_cnn, value
from keras_compress.auto import PROXIES, sensitivity_analysis, spearman


@pytest.fixture(scope="module")
def trained():
    model, x, y = trained_small_cnn(3, 256, epochs=4)
    return model, x, y


def accuracy_with(model, layer, sparsity, x, y):
    """Independently: prune `layer`'s kernel by hand (sorting |w|), evaluate, restore."""
    layer = model.get_layer(layer)
    kernel = value(layer.kernel)
    count = round(sparsity * kernel.size)
    order = np.argsort(np.abs(kernel).reshape(-1), kind="stable")
    pruned = kernel.reshape(-1).copy()
    pruned[order[:count]] = 0
    layer.kernel.assign(pruned.reshape(kernel.shape))
    try:
        return float(np.mean(value(model(x)).argmax(-1) == y))
    finally:
        layer.kernel.assign(kernel)


def test_measured_drops_match_pruning_each_layer_by_hand(trained):
    model, x, y = trained
    before = snapshot(model)
    report = sensitivity_analysis(model, (x, y), sparsities=(0.5, 0.9), fractions=(), verbose=False)
    assert_unchanged(model, before)
    assert {r.action for r in report.rows} == {"prune"}
    assert report.layers() == ["conv_a", "conv_b", "dense_a", "logits"]
    baseline = float(np.mean(value(model(x)).argmax(-1) == y))
    assert report.baseline == pytest.approx(baseline)
    for layer in report.layers():
        for sparsity in (0.5, 0.9):
            row = report.row(layer, sparsity)
            assert row.metric == pytest.approx(accuracy_with(model, layer, sparsity, x, y), abs=1e-9)
            assert row.drop == pytest.approx(baseline - row.metric)
            assert row.weights_removed == round(sparsity * value(model.get_layer(layer).kernel).size)
    assert "| conv_a |" in report.table() and "Spearman" in report.table()


def test_proxies_follow_their_formulas(trained):
    """magnitude = sum of the pruned w^2; fisher = 1/2 sum F w^2 and taylor =
    |sum g w| over the pruned weights, with g and F from the same batches."""
    import tensorflow as tf

    model, x, y = trained
    report = sensitivity_analysis(model, (x, y), sparsities=(0.5,), layers=["dense_a"], batch_size=64,
                                  proxy_batches=2, verbose=False)
    kernel = value(model.get_layer("dense_a").kernel).astype(np.float64)
    pruned = np.zeros(kernel.size, bool)
    pruned[np.argsort(np.abs(kernel).reshape(-1), kind="stable")[: kernel.size // 2]] = True
    pruned = pruned.reshape(kernel.shape)
    grads = []
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for start in (0, 64):
        with tf.GradientTape() as tape:
            out = loss(y[start : start + 64], model(x[start : start + 64]))
        grads.append(np.asarray(tape.gradient(out, model.get_layer("dense_a").kernel.value), np.float64))
    g, f = np.mean(grads, 0), np.mean([a * a for a in grads], 0)
    proxies = report.row("dense_a", 0.5).proxies
    assert proxies["magnitude"] == pytest.approx((kernel[pruned] ** 2).sum())
    assert proxies["fisher"] == pytest.approx(0.5 * (f[pruned] * kernel[pruned] ** 2).sum(), rel=1e-4)
    assert proxies["taylor"] == pytest.approx(abs((g[pruned] * kernel[pruned]).sum()), rel=1e-4)


def test_correlations_are_spearman_of_each_proxy_with_the_drops(trained):
    model, x, y = trained
    report = sensitivity_analysis(model, (x, y), sparsities=(0.3, 0.6, 0.9), fractions=(0.5,), verbose=False)
    pruned = [r for r in report.rows if r.action == "prune"]
    assert len(pruned) == 12 and len(report.rows) == 15  # and three shrinkable groups, left out of the correlations
    drops = [r.drop for r in pruned]
    for proxy in PROXIES:
        assert report.correlations[proxy] == pytest.approx(spearman([r.proxies[proxy] for r in pruned], drops))
    # Within one layer, pruning more never predicts less damage by magnitude.
    for layer in report.layers():
        damage = [report.row(layer, s).proxies["magnitude"] for s in (0.3, 0.6, 0.9)]
        assert damage == sorted(damage)


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take their average rank: ranks (0.5, 0.5, 2) and (0, 1, 2) -> 0.866
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254, abs=1e-6)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="spearman needs two 1-D sequences"):
        spearman([1, 2], [1, 2, 3])


def test_a_custom_metric_and_named_layers(trained):
    model, x, y = trained

    def negative_error_count(y_true, y_pred):
        return -float(np.sum(np.asarray(y_pred).argmax(-1) != y_true))

    report = sensitivity_analysis(model, (x, y), sparsities=(0.9,), layers=["logits"], metric=negative_error_count,
                                  verbose=False)
    assert report.metric_name == "negative_error_count" and report.layers() == ["logits"]
    # metric = -errors, so drop = errors with the layer pruned - errors without
    errors_pruned = 256 * (1 - accuracy_with(model, "logits", 0.9, x, y))
    assert report.row("logits", 0.9).drop == pytest.approx(errors_pruned + report.baseline)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(sparsities=(0.0, 0.5)), ValueError, r"sparsities must be numbers in \(0, 1\), got 0.0"),
        (dict(sparsities=(), fractions=()), ValueError, "sparsities and fractions are both empty"),
        (dict(fractions=(1.0,)), ValueError, r"fractions must be numbers in \(0, 1\), got 1.0"),
        (dict(sparsities="0.5"), TypeError, "sparsities must be a list of numbers"),
        (dict(layers=["nope"]), ValueError, r"layers \['nope'\] are not prunable layers of model 'cnn'"),
        (dict(layers=["pool"]), ValueError, "are not prunable layers"),
        (dict(metric="accuracy"), TypeError, "metric must be None"),
        (dict(batch_size=0), ValueError, "sensitivity_analysis: batch_size must be an int >= 1, got 0."),
        (dict(loss="no_such_loss"), ValueError, "loss must be a Keras loss"),
    ],
)
def test_bad_arguments_are_refused_and_the_model_is_left_alone(trained, kwargs, error, match):
    model, x, y = trained
    before = snapshot(model)
    with pytest.raises(error, match=match):
        sensitivity_analysis(model, (x, y), verbose=False, **kwargs)
    assert_unchanged(model, before)


def test_bad_data_is_refused_and_a_failing_metric_leaves_the_model_alone(trained):
    model, x, y = trained
    before = snapshot(model)
    with pytest.raises(ValueError, match="data needs labels"):
        sensitivity_analysis(model, x, verbose=False)
    with pytest.raises(ValueError, match="sensitivity_analysis: data"):
        sensitivity_analysis(model, (x[..., 0], y), verbose=False)
    calls = []

    def breaks_on_the_third_call(y_true, y_pred):
        calls.append(1)
        if len(calls) == 3:  # the baseline, one candidate, then mid-analysis
            raise RuntimeError("metric failed")
        return 1.0

    with pytest.raises(RuntimeError, match="metric failed"):
        sensitivity_analysis(model, (x, y), metric=breaks_on_the_third_call, verbose=False)
    assert_unchanged(model, before)


def test_structured_rows_match_shrinking_each_group_by_hand(trained):
    """Each shrink row is kc.pruning.shrink of that group alone (L1), evaluated:
    the same drop and the parameters it removes."""
    import keras_compress as kc

    model, x, y = trained
    before = snapshot(model)
    report = sensitivity_analysis(model, (x, y), sparsities=(), fractions=(0.5,), verbose=False)
    assert_unchanged(model, before)
    assert report.layers("shrink") == ["conv_a", "conv_b", "dense_a"]  # the output units stay
    assert report.correlations == {}
    for group in report.layers("shrink"):
        small = kc.pruning.shrink(model, {group: 0.5}, criterion="l1")
        accuracy = float(np.mean(value(small(x)).argmax(-1) == y))
        row = report.row(group, 0.5, "shrink")
        assert row.metric == pytest.approx(accuracy)
        assert row.weights_removed == model.count_params() - small.count_params() > 0
    assert "Drop when one group alone loses a fraction of its units (L1 norm):" in report.table()


def test_measured_bytes_are_the_candidates_own_files_and_add_up(trained):
    """bytes: each candidate converted as to_tflite would (int8, sparse
    encoding when smaller); predict_bytes adds the measured changes, checked
    against converting two candidates applied together."""
    import keras_compress as kc

    model, x, y = trained
    report = sensitivity_analysis(model, (x, y), sparsities=(0.9,), fractions=(0.5,), layers=["conv_b", "dense_a"],
                                  measure_bytes=True, verbose=False)
    convert = dict(quantization="int8", representative_data=x[:200], calibration_steps=200)
    assert report.base_bytes == len(kc.to_tflite(model, **convert))
    small = kc.pruning.shrink(model, {"dense_a": 0.5}, criterion="l1")
    assert report.row("dense_a", 0.5, "shrink").bytes == len(kc.to_tflite(small, **convert))
    # Two prunings together, by hand.
    both = keras.models.clone_model(model)
    both.set_weights(model.get_weights())
    for name in ("conv_b", "dense_a"):
        kernel = value(both.get_layer(name).kernel)
        cut = np.sort(np.abs(kernel).reshape(-1))[round(0.9 * kernel.size) - 1]
        both.get_layer(name).kernel.assign(np.where(np.abs(kernel) <= cut, 0, kernel))
    measured = len(kc.to_tflite(both, **convert))
    predicted = report.predict_bytes({"conv_b": ("prune", 0.9), "dense_a": ("prune", 0.9)})
    assert abs(predicted - measured) <= 0.01 * measured, (predicted, measured)
    assert report.predict_bytes({}) == report.base_bytes  # nothing pruned: the dense file, as to_tflite keeps
    assert report.predict_bytes({"dense_a": ("shrink", 0.5)}) == report.row("dense_a", 0.5, "shrink").bytes
    with pytest.raises(ValueError, match="predict_bytes needs a report made with measure_bytes=True"):
        sensitivity_analysis(model, (x, y), sparsities=(0.5,), fractions=(), layers=["logits"],
                             verbose=False).predict_bytes({})


def test_a_named_layer_without_structured_candidates_is_named_in_a_warning(trained):
    model, x, y = trained
    with pytest.warns(UserWarning, match=r"sensitivity_analysis: no structured candidates for logits \("):
        report = sensitivity_analysis(model, (x, y), sparsities=(0.5,), fractions=(0.5,), layers=["logits"],
                                      verbose=False)
    assert report.layers("shrink") == [] and report.layers() == ["logits"]


def test_eager_batches_predict_like_model_predict_for_several_inputs_and_outputs():
    """Shrunk copies are evaluated by eager calls on batches: the same
    outputs as model.predict, for two inputs and two outputs, with a last
    partial batch."""
    from keras_compress.auto.sensitivity import _predict_eagerly

    a, b = keras.Input((5,), name="a"), keras.Input((3,), name="b")
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], [keras.layers.Dense(4)(hidden), keras.layers.Dense(2)(hidden)])
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(37, 5)).astype("float32"), rng.normal(size=(37, 3)).astype("float32")]
    expected = model.predict(x, batch_size=37, verbose=0)
    got = _predict_eagerly(model, x, batch_size=16)
    assert len(got) == 2 and got[0].shape == (37, 4) and got[1].shape == (37, 2)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    single = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    np.testing.assert_allclose(_predict_eagerly(single, x[0], 10), single.predict(x[0], verbose=0), rtol=1e-5,
                               atol=1e-6)
