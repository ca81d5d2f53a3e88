import keras
import numpy as np
import pytest
from keras import layers as L

from conftest import compile_for_test, value
from keras_compress._backend import counter_dtype
from keras_compress.pruning import PolynomialDecay, PruneWrapper, strip_pruning
from keras_compress.pruning.criteria import magnitude

# (layer factory, input shape, integer input?, names of the pruned weights)
CASES = {
    "Dense": (lambda: L.Dense(5), (6,), False, ["kernel"]),
    "EinsumDense": (lambda: L.EinsumDense("ab,bc->ac", output_shape=5, bias_axes="c"), (6,), False, ["kernel"]),
    "Conv1D": (lambda: L.Conv1D(4, 3), (8, 3), False, ["kernel"]),
    "Conv2D": (lambda: L.Conv2D(4, 3), (6, 6, 2), False, ["kernel"]),
    "Conv3D": (lambda: L.Conv3D(3, 2), (4, 4, 4, 2), False, ["kernel"]),
    "DepthwiseConv2D": (lambda: L.DepthwiseConv2D(3, depth_multiplier=2), (6, 6, 3), False, ["kernel"]),
    "SeparableConv2D": (lambda: L.SeparableConv2D(4, 3), (6, 6, 3), False, ["depthwise_kernel", "pointwise_kernel"]),
    "Conv2DTranspose": (lambda: L.Conv2DTranspose(3, 3, strides=2), (4, 4, 2), False, ["kernel"]),
    "Embedding": (lambda: L.Embedding(20, 6), (5,), True, ["embeddings"]),
}


def make_input(shape, integer, n=8, seed=0):
    rng = np.random.default_rng(seed)
    if integer:
        return rng.integers(0, 20, (n, *shape))
    return rng.normal(size=(n, *shape)).astype("float32")


def wrapped_model(name, schedule=None):
    factory, shape, integer, _ = CASES[name]
    inputs = keras.Input(shape, dtype="int32" if integer else "float32")
    wrapper = PruneWrapper(factory(), pruning_schedule=schedule)
    outputs = L.Flatten()(wrapper(inputs))
    return keras.Model(inputs, L.Dense(2)(outputs)), wrapper


@pytest.mark.parametrize("name", sorted(CASES))
def test_masks_cover_the_expected_weights(name):
    _, wrapper = wrapped_model(name)
    _, _, _, expected = CASES[name]
    assert [w.name for w in wrapper.pruned_weights] == expected
    assert [m.shape for m in wrapper.masks] == [w.shape for w in wrapper.pruned_weights]
    assert all(not m.trainable and m.dtype == "float32" for m in wrapper.masks)
    assert wrapper.pruning_step.dtype == counter_dtype() and not wrapper.pruning_step.trainable


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_uses_masked_weights(name):
    model, wrapper = wrapped_model(name)
    _, shape, integer, _ = CASES[name]
    x = make_input(shape, integer)
    raw = [value(w) for w in wrapper.pruned_weights]
    masks = [np.array(magnitude(w, 0.6)) for w in raw]
    for v, m in zip(wrapper.masks, masks):
        v.assign(m)  # masks only, weights untouched: the forward pass must still mask
    # Reference: the inner layer with masked weights set explicitly.
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    inner = next(l for l in reference.layers if isinstance(l, PruneWrapper)).layer
    for w, raw_value, m in zip(
        [getattr(inner, n) for n in CASES[name][3]], raw, masks
    ):
        w.assign(raw_value * m)
    np.testing.assert_allclose(model(x), reference(x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(model(x), model.layers[-1](model.layers[-2](wrapper.layer(x))))


@pytest.mark.tf_only  # JAX's stateless optimizer step cannot read masks: raw zeros there come at mask updates and epoch ends
@pytest.mark.parametrize("name", sorted(CASES))
def test_pruned_weights_are_exactly_zero_after_every_optimizer_step(name):
    model, wrapper = wrapped_model(name)
    _, shape, integer, _ = CASES[name]
    x = make_input(shape, integer, n=32)
    y = np.random.default_rng(1).integers(0, 2, 32)
    compile_for_test(model, keras.optimizers.Adam(0.05))
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)  # non-zero Adam moments
    wrapper.set_masks([magnitude(w, 0.7) for w in wrapper.pruned_weights])

    class Check(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for w, m in zip(wrapper.pruned_weights, wrapper.masks):
                assert np.all(value(w)[value(m) == 0] == 0)

    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[Check()])
    for w, m in zip(wrapper.pruned_weights, wrapper.masks):
        weight, mask = value(w), value(m)
        assert np.all(weight[mask == 0] == 0)
        assert np.count_nonzero(weight[mask == 1]) == mask.sum()  # the rest still train


def test_bias_is_not_pruned_unless_asked():
    layer = PruneWrapper(L.Dense(3))
    layer.build((None, 4))
    assert [w.name for w in layer.pruned_weights] == ["kernel"]
    with_bias = PruneWrapper(L.Dense(3), prune_bias=True)
    with_bias.build((None, 4))
    assert [w.name for w in with_bias.pruned_weights] == ["kernel", "bias"]


def test_user_constraint_still_applies():
    layer = PruneWrapper(L.Dense(3, kernel_constraint=keras.constraints.MaxNorm(0.01)))
    layer.build((None, 4))
    layer.set_masks([np.array([[1, 0, 1]] * 4, "float32")])
    constrained = np.array(layer.layer.kernel.constraint(layer.layer.kernel))
    assert np.all(constrained[:, 1] == 0)
    assert np.all(np.linalg.norm(constrained, axis=0) <= 0.01 + 1e-6)


def test_l1_loss_is_strength_times_sum_abs_of_masked_weights():
    wrapper = PruneWrapper(L.Dense(3), prune_bias=True)
    model = keras.Sequential([keras.Input((4,)), wrapper])
    kernel = np.arange(-6, 6, dtype="float32").reshape(4, 3) / 10
    mask = np.ones((4, 3), "float32")
    mask[0] = 0
    wrapper.layer.kernel.assign(kernel)
    wrapper.layer.bias.assign([0.5, -0.25, 0.0])
    wrapper.masks[0].assign(mask)
    wrapper.l1_strength.assign(0.01)
    model(np.ones((2, 4), "float32"), training=True)
    assert model.losses == []  # not traced until L1Regularization turns it on
    wrapper.l1_active = True
    model(np.ones((2, 4), "float32"), training=True)
    expected = 0.01 * (np.abs(kernel * mask).sum() + 0.75)
    assert len(model.losses) == 1
    np.testing.assert_allclose(float(model.losses[0]), expected, rtol=1e-6)
    model(np.ones((2, 4), "float32"), training=False)
    assert float(sum(model.losses, 0.0)) == 0.0  # no penalty at inference


def test_step_counts_training_calls_only():
    wrapper = PruneWrapper(L.Dense(2))
    model = keras.Sequential([keras.Input((3,)), wrapper])
    x = np.ones((4, 3), "float32")
    compile_for_test(model)
    model.fit(x, np.zeros(4), batch_size=2, epochs=3, verbose=0)
    model.predict(x, verbose=0)
    model.evaluate(x, np.zeros(4), verbose=0)
    assert int(wrapper.pruning_step.numpy()) == 6


def test_inner_activity_regularizer_loss_is_kept():
    inner = L.Dense(2, activity_regularizer=keras.regularizers.L1(1.0))
    model = keras.Sequential([keras.Input((3,)), PruneWrapper(inner)])
    plain = keras.Sequential([keras.Input((3,)), L.Dense(2, activity_regularizer=keras.regularizers.L1(1.0))])
    plain.layers[0].set_weights(inner.get_weights())
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    model(x)
    plain(x)
    assert len(model.losses) == 1
    np.testing.assert_allclose(float(model.losses[0]), float(plain.losses[0]), rtol=1e-6)


def test_embedding_mask_propagates():
    wrapper = PruneWrapper(L.Embedding(10, 4, mask_zero=True))
    x = np.array([[1, 2, 0, 0]])
    wrapper(x)
    np.testing.assert_array_equal(np.array(wrapper.compute_mask(x)), [[True, True, False, False]])


def test_config_round_trip():
    schedule = PolynomialDecay(0.1, 0.7, 0, 100, frequency=10)
    wrapper = PruneWrapper(L.Conv2D(3, 2, name="c"), schedule, global_pruning=True, prune_bias=True)
    config = wrapper.get_config()
    restored = PruneWrapper.from_config(config)
    assert restored.pruning_schedule == schedule
    assert restored.global_pruning and restored.prune_bias
    assert restored.layer.get_config() == wrapper.layer.get_config()
    assert restored.name == "prune_low_magnitude_c"
    generic = keras.layers.deserialize(keras.layers.serialize(wrapper))
    assert isinstance(generic, PruneWrapper) and generic.pruning_schedule == schedule


@pytest.mark.tf_only  # JAX's stateless optimizer step cannot read masks: raw zeros there come at mask updates and epoch ends
@pytest.mark.parametrize("name", ["Dense", "SeparableConv2D", "Embedding", "EinsumDense"])
def test_keras_file_round_trip_keeps_masks_and_step(tmp_path, name):
    model, wrapper = wrapped_model(name, PolynomialDecay(0.0, 0.5, 0, 10, frequency=1))
    _, shape, integer, _ = CASES[name]
    x = make_input(shape, integer)
    compile_for_test(model)
    model.fit(x, np.zeros(len(x)), batch_size=4, epochs=1, verbose=0)
    wrapper.set_masks([magnitude(w, 0.5) for w in wrapper.pruned_weights])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")  # no custom_objects
    w2 = next(l for l in loaded.layers if isinstance(l, PruneWrapper))
    assert int(w2.pruning_step.numpy()) == int(wrapper.pruning_step.numpy()) == 2
    for a, b in zip(w2.masks, wrapper.masks):
        np.testing.assert_array_equal(value(a), value(b))
    assert w2.pruning_schedule == wrapper.pruning_schedule
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    # The mask constraint is re-installed on load: zeros survive training.
    loaded.fit(x, np.zeros(len(x)), batch_size=4, epochs=1, verbose=0)
    for w, m in zip(w2.pruned_weights, w2.masks):
        assert np.all(value(w)[value(m) == 0] == 0)


def test_strip_single_wrapper_gives_the_masked_inner_layer():
    wrapper = PruneWrapper(L.Dense(3, name="d"))
    x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
    wrapper(x)
    wrapper.masks[0].assign(magnitude(wrapper.layer.kernel, 0.5))
    layer = strip_pruning(wrapper)
    assert type(layer) is L.Dense and layer.name == "d"
    np.testing.assert_allclose(layer(x), wrapper(x), rtol=1e-6)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: PruneWrapper(L.BatchNormalization(name="bn")), ValueError, "cannot wrap layer 'bn' \\(BatchNormalization\\): it has no pruning rule. Prunable types: Dense"),
        (lambda: PruneWrapper("dense"), TypeError, "expects a keras layer"),
        (lambda: PruneWrapper(PruneWrapper(L.Dense(2, name="d"))), ValueError, "already a PruneWrapper"),
        (lambda: PruneWrapper(L.Dense(2, name="d"), pruning_schedule=0.5), TypeError, "layer 'd': pruning_schedule must be a PruningSchedule"),
        (lambda: PruneWrapper(L.Dense(2, name="d"), prune_bias="yes"), TypeError, "layer 'd': prune_bias must be True or False"),
    ],
)
def test_invalid_wrapping(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_custom_layer_with_get_prunable_weights():
    @keras.saving.register_keras_serializable(package="test")
    class Scale(L.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")

        def call(self, x):
            return x * self.w

        def get_prunable_weights(self):
            return [self.w]

    wrapper = PruneWrapper(Scale())
    x = np.ones((1, 4), "float32")
    wrapper(x)
    wrapper.set_masks([np.array([1, 0, 1, 0], "float32")])
    np.testing.assert_array_equal(np.array(wrapper(x)), [[1, 0, 1, 0]])


# The base every wrapper shares (keras_compress/_wrappers.py) and the hook
# through which other techniques take a pruning wrapper off.


def _wrappers():
    from keras_compress.quantization import (
        QuantizeLayerNormalization,
        QuantizeWrapper,
        SparsityPreservingWrapper,
    )

    return {
        "prune": (lambda: PruneWrapper(L.Dense(4), PolynomialDecay(0.1, 0.5, 0, 10)), "prune_low_magnitude_"),
        "quantize": (lambda: QuantizeWrapper(L.Dense(4), batch_norm=L.BatchNormalization()), "quant_"),
        "layer_norm": (lambda: QuantizeLayerNormalization(L.LayerNormalization()), "quant_"),
        "sparse": (lambda: SparsityPreservingWrapper(L.Dense(4)), "sparse_"),
    }


@pytest.mark.parametrize("kind", ["prune", "quantize", "layer_norm", "sparse"])
def test_every_wrapper_shares_naming_config_and_shape_forwarding(kind):
    make, prefix = _wrappers()[kind]
    wrapper = make()
    assert wrapper.name == prefix + wrapper.layer.name
    x = keras.Input((6,))
    y = wrapper(x)
    assert tuple(y.shape) == tuple(wrapper.layer.compute_output_shape((None, 6)))
    assert wrapper.compute_output_shape((None, 6)) == wrapper.layer.compute_output_shape((None, 6))
    config = wrapper.get_config()
    frozen = repr(config)
    again = type(wrapper).from_config(config)
    assert repr(config) == frozen  # from_config leaves the config as it was
    assert type(again.layer) is type(wrapper.layer)
    for key in type(wrapper).nested_config:
        assert type(getattr(again, key)) is type(getattr(wrapper, key))
        assert getattr(again, key).get_config() == getattr(wrapper, key).get_config()


@pytest.mark.parametrize("kind", ["prune", "quantize", "layer_norm", "sparse"])
def test_every_wrapper_refuses_a_non_layer_with_a_type_error(kind):
    cls = type(_wrappers()[kind][0]())
    with pytest.raises(TypeError, match=f"{cls.__name__} expects a keras layer.*, got str"):
        cls("dense")


def test_quantize_wrapper_forwards_the_embedding_mask():
    from keras_compress.quantization import QuantizeWrapper

    wrapper = QuantizeWrapper(L.Embedding(10, 3, mask_zero=True))
    ids = np.array([[1, 0, 2, 0]])
    mask = wrapper.compute_mask(ids)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(mask), [[True, False, True, False]])
    spec = wrapper.compute_output_spec(keras.KerasTensor((None, 4), "int32"))
    assert tuple(spec.shape) == (None, 4, 3)


def test_a_multi_argument_inner_layer_is_built_from_every_argument():
    from keras_compress.quantization import SparsityPreservingWrapper

    wrapper = SparsityPreservingWrapper(L.MultiHeadAttention(num_heads=2, key_dim=4))
    query = np.random.default_rng(0).normal(size=(2, 3, 8)).astype("float32")
    value = np.random.default_rng(1).normal(size=(2, 5, 6)).astype("float32")
    out = wrapper(query, value)
    assert wrapper.layer.built
    assert tuple(out.shape) == (2, 3, 8)
    np.testing.assert_allclose(value_of(out), value_of(wrapper.layer(query, value)), rtol=1e-6)


def value_of(tensor):
    return keras.ops.convert_to_numpy(tensor)


def test_the_unwrap_hook_takes_a_pruning_wrapper_off_with_its_zeros():
    from keras_compress import _models

    dense = L.Dense(3)
    wrapper = PruneWrapper(dense)
    wrapper.build((None, 4))
    mask = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]], "float32")
    wrapper.set_masks([mask])
    assert _models.is_removable_wrapper(wrapper)
    assert not _models.is_removable_wrapper(dense)
    assert _models.unwrap_layer(dense) is dense
    plain = _models.unwrap_layer(wrapper)
    assert type(plain) is L.Dense and plain is not dense
    np.testing.assert_array_equal(value_of(plain.kernel) == 0, mask == 0)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(value_of(plain(x)), value_of(wrapper(x)), rtol=1e-6)
