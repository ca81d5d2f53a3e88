import logging

import keras
import numpy as np
import pytest
from keras import layers as L

from conftest import assert_unchanged, small_cnn, snapshot, toy_data, value
from keras_compress.pruning import (
    ConstantSparsity,
    PruneWrapper,
    prune_low_magnitude,
    sparsity_report,
    strip_pruning,
)
from keras_compress.pruning.criteria import magnitude


def functional_residual():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", name="stem")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    y = L.Conv2D(4, 3, padding="same", activation="relu", name="branch")(x)
    x = L.Add(name="add")([x, y])
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(3, name="head")(x), name="residual")


def nested():
    backbone = keras.Sequential(
        [keras.Input((10,)), L.Dense(8, name="inner_a"), L.Dense(8, name="inner_b")], name="backbone"
    )
    inputs = keras.Input((10,))
    outputs = L.Dense(2, name="outer")(backbone(inputs))
    return keras.Model(inputs, outputs, name="nested")


def with_raw_ops():
    """Keras ops straight on tensors (`x + 3.0`, as hard-swish in MobileNetV3)."""
    inputs = keras.Input((6,))
    x = L.Dense(4, name="first")(inputs)
    x = x * keras.ops.relu6(x + 3.0) / 6.0
    return keras.Model(inputs, L.Dense(2, name="second")(x), name="raw_ops")


def wrapped_names(model):
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out += wrapped_names(layer)
        elif isinstance(layer, PruneWrapper):
            out.append(layer.layer.name)
    return out


@pytest.mark.parametrize(
    "make, x, expected",
    [
        (small_cnn, toy_data()[0], ["conv_a", "conv_b", "dense_a", "logits"]),
        (functional_residual, np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32"), ["stem", "branch", "head"]),
        (nested, np.random.default_rng(0).normal(size=(4, 10)).astype("float32"), ["inner_a", "inner_b", "outer"]),
        (with_raw_ops, np.random.default_rng(0).normal(size=(4, 6)).astype("float32"), ["first", "second"]),
    ],
)
def test_clone_wraps_prunable_layers_with_identical_outputs(make, x, expected):
    keras.backend.clear_session()
    model = make()
    before = snapshot(model)
    pruned = prune_low_magnitude(model, ConstantSparsity(0.5, 0))
    assert sorted(wrapped_names(pruned)) == sorted(expected)
    np.testing.assert_array_equal(value(pruned(x)), value(model(x)))
    assert_unchanged(model, before)
    # The clone owns new variables: changing it leaves the original alone.
    for w in pruned.weights:
        if w.trainable:
            w.assign(w * 0)
    assert_unchanged(model, before)


def test_unprunable_layers_with_weights_are_listed_in_the_log(caplog):
    with caplog.at_level(logging.INFO, logger="keras_compress"):
        prune_low_magnitude(functional_residual())
    assert "'bn' (BatchNormalization)" in caplog.text
    assert "wrapped 3 layers: stem, branch, head" in caplog.text


def test_select_by_name_type_and_predicate():
    keras.backend.clear_session()
    model = small_cnn()
    assert wrapped_names(prune_low_magnitude(model, layers="dense_a")) == ["dense_a"]
    assert wrapped_names(prune_low_magnitude(model, layers=[L.Conv2D])) == ["conv_a", "conv_b"]
    assert wrapped_names(prune_low_magnitude(model, layers=["logits", L.Conv2D])) == ["conv_a", "conv_b", "logits"]
    assert wrapped_names(
        prune_low_magnitude(model, layers=lambda l: l.name.endswith("_b"))
    ) == ["conv_b"]


def test_options_reach_every_wrapper():
    schedule = ConstantSparsity(0.3, 0, frequency=5)
    pruned = prune_low_magnitude(small_cnn(), schedule, global_pruning=True, prune_bias=True)
    wrappers = [l for l in pruned.layers if isinstance(l, PruneWrapper)]
    assert all(w.pruning_schedule == schedule and w.global_pruning and w.prune_bias for w in wrappers)


def test_layer_and_list_input_wrap_in_place():
    dense = L.Dense(3)
    wrapper = prune_low_magnitude(dense)
    assert isinstance(wrapper, PruneWrapper) and wrapper.layer is dense
    assert wrapper.pruning_schedule == ConstantSparsity(0.5, 0)
    wrappers = prune_low_magnitude([L.Dense(2), L.Conv2D(2, 2)], None)
    assert [w.pruning_schedule for w in wrappers] == [None, None]


def test_tfmot_form_wrapped_layer_inside_a_sequential_list_trains():
    """tfmot's guide: Sequential([prune_low_magnitude(Dense(20, input_shape=(784,))), ...]).
    The wrapped layer's input shape becomes the model's, so it is built and prunes."""
    from keras_compress.pruning import UpdatePruningStep

    model = keras.Sequential([
        prune_low_magnitude(L.Dense(20, input_shape=(16,)), ConstantSparsity(0.5, 0, frequency=1)),
        L.Dense(3),
    ])
    assert model.built and model.inputs[0].shape == (None, 16)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(32, 16)).astype("float32")
    model.fit(x, np.arange(32) % 3, batch_size=8, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    kernel = value(model.layers[0].layer.kernel)
    assert np.count_nonzero(kernel == 0) == kernel.size // 2


def test_unbuilt_model_is_refused_at_fit_with_the_fix():
    from keras_compress.pruning import UpdatePruningStep

    model = keras.Sequential([prune_low_magnitude(L.Dense(20)), L.Dense(3)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.zeros((8, 16), "float32")
    with pytest.raises(ValueError, match=r"UpdatePruningStep: model '.*' is not built, so its pruning wrappers \(prune_low_magnitude_dense.*\) have no masks yet. Give the model its input shape"):
        model.fit(x, np.zeros(8), epochs=1, verbose=0, callbacks=[UpdatePruningStep()])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(layers="nope"), ValueError, "layers names 'nope', which is not a layer of model 'cnn'. Its layers are: conv_a, conv_b, dense_a"),
        (dict(layers="flatten"), ValueError, "cannot prune layer 'flatten' \\(Flatten\\): it has no pruning rule"),
        (dict(layers=[L.BatchNormalization]), ValueError, "found nothing to prune"),
        (dict(layers=[L.MaxPooling2D]), ValueError, "cannot prune layer 'pool'"),
        (dict(layers=[3]), TypeError, "got item 3"),
        (dict(pruning_schedule="0.5"), TypeError, "pruning_schedule must be a PruningSchedule"),
        (dict(global_pruning=1), TypeError, "global_pruning must be True or False"),
    ],
)
def test_invalid_selection_leaves_model_unchanged(kwargs, error, match):
    keras.backend.clear_session()
    model = small_cnn()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        prune_low_magnitude(model, **kwargs)
    assert_unchanged(model, before)


def test_subclassed_and_unbuilt_models_get_clear_errors():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    sub = Sub()
    sub(np.ones((1, 3)))
    with pytest.raises(ValueError, match="subclassed Sub.*PruneWrapper"):
        prune_low_magnitude(sub)
    with pytest.raises(ValueError, match="not built"):
        prune_low_magnitude(keras.Sequential([L.Dense(2)]))
    with pytest.raises(TypeError, match="expects a keras.Model"):
        strip_pruning("model")


def test_strip_gives_plain_model_with_equal_outputs():
    keras.backend.clear_session()
    model = functional_residual()
    pruned = prune_low_magnitude(model)
    for w in pruned.layers:
        if isinstance(w, PruneWrapper):
            w.masks[0].assign(magnitude(w.layer.kernel, 0.6))  # mask only: strip must bake it
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype("float32")
    before = snapshot(pruned)
    stripped = strip_pruning(pruned)
    assert_unchanged(pruned, before)
    assert not any(isinstance(l, PruneWrapper) for l in stripped.layers)
    assert [l.name for l in stripped.layers] == [l.name for l in model.layers]
    np.testing.assert_allclose(value(stripped(x)), value(pruned(x)), rtol=1e-6, atol=1e-6)
    assert not np.allclose(value(stripped(x)), value(model(x)))
    report = sparsity_report(stripped)
    assert [r.zeros for r in report] == [round(0.6 * r.parameters) for r in report]


def test_strip_nested():
    keras.backend.clear_session()
    pruned = prune_low_magnitude(nested())
    stripped = strip_pruning(pruned)
    assert wrapped_names(stripped) == []
    assert isinstance(stripped.layers[1], keras.Sequential)
    x = np.ones((2, 10), "float32")
    np.testing.assert_allclose(value(stripped(x)), value(pruned(x)), rtol=1e-6)


def test_sparsity_report_counts_zeros_of_prunable_weights():
    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((4,)), L.Dense(5, name="a"), L.BatchNormalization(), L.Dense(2, name="b")])
    kernel = value(model.layers[0].kernel)
    kernel[:2] = 0  # 10 of 20
    model.layers[0].kernel.assign(kernel)
    report = sparsity_report(model)
    assert [(r.name, r.type, r.parameters, r.zeros) for r in report] == [
        ("a", "Dense", 20, 10),
        ("b", "Dense", 10, 0),
    ]
    assert report[0].sparsity == 0.5
    assert report.total.parameters == 30 and report.total.zeros == 10
    text = str(report)
    assert "a" in text and "50.00%" in text and "total" in text
    assert report.as_dicts()[0]["sparsity"] == 0.5
    wrapped = prune_low_magnitude(model, prune_bias=True, layers="b")
    assert [r.parameters for r in sparsity_report(wrapped)] == [20, 12]
