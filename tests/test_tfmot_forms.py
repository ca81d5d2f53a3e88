"""tfmot's API forms on Keras 3: `pruning_params` dicts with block sparsity,
`PrunableLayer`, `PruningPolicy` / `PruneForLatencyOnXNNPack`, the per-layer
forms (`clone_model(clone_function=...)`, wrapping while building) and
`prune_scope`. Expectations are worked by hand; tfmot itself (in a tf_keras
subprocess) is the reference in the `tfmot`-marked tests."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
from keras import layers as L

from keras_compress import pruning
from keras_compress.pruning import (
    ConstantSparsity,
    PrunableLayer,
    PruneForLatencyOnXNNPack,
    PruneWrapper,
    PruningPolicy,
    UpdatePruningStep,
    criteria,
    prune_low_magnitude,
    prune_scope,
    strip_pruning,
)

HALF_AT_ONCE = ConstantSparsity(0.5, begin_step=0, frequency=1)


def weights_of(model):
    return [w.copy() for w in model.get_weights()]


def assert_same_weights(before, model):
    after = model.get_weights()
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def fit_once(model, x, y, epochs=1, callbacks=None):
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=epochs, verbose=0,
              callbacks=[UpdatePruningStep()] if callbacks is None else callbacks)


def wrappers(model):
    return {l.layer.name: l for l in model.layers if isinstance(l, PruneWrapper)}


# -- block sparsity: the criterion ------------------------------------------------------------------------------

# A 4x4 kernel cut into four 2x2 blocks:   top-left  |w| = 1, 1, 1, 1   mean 1.00  max 1
#                                           top-right |w| = 0, 4, 0, 0   mean 1.00  max 4  (ties top-left on AVG)
#                                           bottom-left    0.5 each      mean 0.50  max 0.5
#                                           bottom-right   3, 0, 0, 0    mean 0.75  max 3
KERNEL_4X4 = np.array([
    [1.0, -1.0, 0.0, 4.0],
    [1.0, 1.0, 0.0, 0.0],
    [0.5, -0.5, 3.0, 0.0],
    [0.5, 0.5, 0.0, 0.0],
])


def blocks(top_left, top_right, bottom_left, bottom_right):
    return np.kron(np.array([[top_left, top_right], [bottom_left, bottom_right]], dtype="float32"), np.ones((2, 2)))


def test_block_mask_avg_keeps_the_two_blocks_of_largest_mean_by_hand():
    # AVG: means 1.0, 1.0, 0.5, 0.75 -> the two 1.0 blocks stay.
    np.testing.assert_array_equal(criteria.block_magnitude(KERNEL_4X4, 0.5, (2, 2), "AVG"), blocks(1, 1, 0, 0))


def test_block_mask_max_differs_from_avg_by_hand():
    # MAX: 1, 4, 0.5, 3 -> top-right and bottom-right stay; AVG kept top-left over bottom-right.
    np.testing.assert_array_equal(criteria.block_magnitude(KERNEL_4X4, 0.5, (2, 2), "MAX"), blocks(0, 1, 0, 1))
    # At 75% one block stays: the largest max (top-right, 4).
    np.testing.assert_array_equal(criteria.block_magnitude(KERNEL_4X4, 0.75, (2, 2), "MAX"), blocks(0, 1, 0, 0))


def test_block_mask_ties_and_partial_blocks_by_hand():
    # Equal means (top-left and top-right, 1.0): as in `criteria.magnitude`, the one that comes first in row-major
    # order is pruned first, so the top-right block is the one kept.
    np.testing.assert_array_equal(criteria.block_magnitude(KERNEL_4X4, 0.75, (2, 2), "AVG"), blocks(0, 1, 0, 0))
    # A 3x5 matrix in (2, 2) blocks: a 2x3 grid whose last row and column are partial, each scored on its own
    # weights: top row means 3, 5, 6.5 (|w| 4, 9 only); bottom row 10.5, 12.5, 14. Half the 6 blocks go:
    # the whole top row.
    w = np.arange(15.0).reshape(3, 5)
    expected = np.zeros((3, 5))
    expected[2] = 1
    np.testing.assert_array_equal(criteria.block_magnitude(w, 0.5, (2, 2), "AVG"), expected)
    # (1, 1) blocks are plain magnitude pruning.
    r = np.random.default_rng(1).normal(size=(6, 7))
    np.testing.assert_array_equal(criteria.block_magnitude(r, 0.4, (1, 1)), criteria.magnitude(r, 0.4))
    # Row blocks (1, 4): each row of a 2x4 matrix is one block.
    np.testing.assert_array_equal(criteria.block_magnitude([[1, 1, 1, 1], [0, 0, 0, 5]], 0.5, (1, 4), "AVG"),
                                  [[0, 0, 0, 0], [1, 1, 1, 1]])


@pytest.mark.parametrize("block_size", [(0, 1), (2,), (2, 2, 2), "2x2", (1.0, 2), (True, 2), None, 2])
def test_criterion_refuses_bad_block_sizes(block_size):
    with pytest.raises(ValueError, match="block_size must be a pair"):
        criteria.block_magnitude(KERNEL_4X4, 0.5, block_size)


def test_criterion_refuses_bad_pooling_and_rank():
    with pytest.raises(ValueError, match="block_pooling_type must be 'AVG' or 'MAX'.*'mean'"):
        criteria.block_magnitude(KERNEL_4X4, 0.5, (2, 2), "mean")
    with pytest.raises(ValueError, match="rank 2"):
        criteria.block_magnitude(np.ones((2, 2, 2)), 0.5, (2, 2))


# -- block sparsity: pruning_params dicts, the wrapper, the mask update ------------------------------------------

def dense_model():
    model = keras.Sequential([keras.Input((4,)), L.Dense(4, name="d", use_bias=False), L.Dense(2, name="out")])
    model.get_layer("d").set_weights([KERNEL_4X4])
    return model


@pytest.mark.parametrize("pooling, expected", [("AVG", blocks(1, 1, 0, 0)), ("MAX", blocks(0, 1, 0, 1))])
def test_tfmot_pruning_params_dict_prunes_whole_blocks(pooling, expected):
    pruning_params = {"pruning_schedule": HALF_AT_ONCE, "block_size": (2, 2), "block_pooling_type": pooling}
    pruned = prune_low_magnitude(dense_model(), layers=["d"], **pruning_params)
    fit_once(pruned, np.zeros((2, 4)), np.zeros((2, 2)))  # learning rate 0: only the mask moves the weights
    kernel = strip_pruning(pruned).get_layer("d").kernel.numpy()
    np.testing.assert_array_equal(kernel, KERNEL_4X4 * expected)


def test_tfmot_default_pruning_params_are_weight_by_weight():
    pruning_params = {"pruning_schedule": HALF_AT_ONCE, "block_size": (1, 1), "block_pooling_type": "AVG"}
    pruned = prune_low_magnitude(dense_model(), **pruning_params)
    fit_once(pruned, np.zeros((2, 4)), np.zeros((2, 2)))
    kernel = strip_pruning(pruned).get_layer("d").kernel.numpy()
    np.testing.assert_array_equal(kernel, KERNEL_4X4 * criteria.magnitude(KERNEL_4X4, 0.5))


def cnn():
    return keras.Sequential([
        keras.Input((6, 6, 1)), L.Conv2D(2, 3, name="conv"), L.Flatten(name="flat"), L.Dense(8, name="dense"),
    ])


def test_block_size_leaves_conv_layers_unpruned_naming_them():
    model = cnn()
    with pytest.warns(UserWarning, match=r"leaves 'conv' \(Conv2D\) unpruned: block_size applies to 2-D"):
        pruned = prune_low_magnitude(model, HALF_AT_ONCE, block_size=(1, 4))
    assert set(wrappers(pruned)) == {"dense"}
    assert wrappers(pruned)["dense"].block_size == (1, 4)


def test_naming_a_conv_layer_with_block_size_raises_and_leaves_the_model_untouched():
    model = cnn()
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"block_size=\(2, 2\) to layer 'conv' \(Conv2D\).*shape \(3, 3, 1, 2\)"):
        prune_low_magnitude(model, block_size=(2, 2), layers=["conv", "dense"])
    with pytest.raises(ValueError, match="2-D weight matrices"):
        prune_low_magnitude(L.Conv2D(2, 3), block_size=(2, 2))(np.zeros((1, 6, 6, 1)))
    assert_same_weights(before, model)
    assert not any(isinstance(l, PruneWrapper) for l in model.layers)


@pytest.mark.parametrize("kwargs, message", [
    (dict(block_size=(0, 2)), "block_size must be a pair"),
    (dict(block_size=[2]), "block_size must be a pair"),
    (dict(block_pooling_type="avg"), "block_pooling_type must be 'AVG' or 'MAX'"),
    (dict(block_size=(2, 2), global_pruning=True), "cannot be combined"),
    (dict(block_size=(2, 2), prune_bias=True), "cannot be combined"),
    (dict(block_size=(2, 2), sparsity_m_by_n=(2, 4)), "cannot be combined"),
    (dict(pruning_policy="xnnpack"), "pruning_policy must be None or"),
])
def test_bad_block_and_policy_arguments_are_refused_and_change_nothing(kwargs, message):
    model = dense_model()
    before = weights_of(model)
    with pytest.raises((ValueError, TypeError), match=message):
        prune_low_magnitude(model, **kwargs)
    with pytest.raises((ValueError, TypeError), match=message.split(" ")[0]):
        prune_low_magnitude(L.Dense(3), **kwargs)
    assert_same_weights(before, model)


def test_block_wrapper_config_and_keras_file_round_trip(tmp_path):
    pruned = prune_low_magnitude(dense_model(), HALF_AT_ONCE, block_size=(2, 2), block_pooling_type="MAX")
    fit_once(pruned, np.zeros((2, 4)), np.zeros((2, 2)))
    wrapper = wrappers(pruned)["d"]
    config = wrapper.get_config()
    assert config["block_size"] == [2, 2] and config["block_pooling_type"] == "MAX"
    json.dumps(config)  # plain Python
    clone = PruneWrapper.from_config(config)
    assert clone.block_size == (2, 2) and clone.block_pooling_type == "MAX"
    assert PruneWrapper.from_config(config).get_config() == config
    path = str(tmp_path / "blocks.keras")
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    restored = wrappers(loaded)["d"]
    assert restored.block_size == (2, 2) and restored.block_pooling_type == "MAX"
    np.testing.assert_array_equal(restored.masks[0].numpy(), blocks(0, 1, 0, 1))
    # Masks recomputed after loading follow the same blocks.
    fit_once(loaded, np.zeros((2, 4)), np.zeros((2, 2)))
    np.testing.assert_array_equal(wrappers(loaded)["d"].masks[0].numpy(), blocks(0, 1, 0, 1))


def test_a_config_without_block_keys_loads_weight_by_weight():
    """`.keras` files written before block sparsity existed carry no block keys."""
    config = PruneWrapper(L.Dense(3), HALF_AT_ONCE).get_config()
    del config["block_size"], config["block_pooling_type"]
    wrapper = PruneWrapper.from_config(config)
    assert wrapper.block_size == (1, 1) and wrapper.block_pooling_type == "AVG"


def test_blocks_hold_through_training_and_the_schedule():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), L.Dense(12, name="d"), L.Dense(3, name="out")])
    schedule = pruning.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=4, frequency=2)
    pruned = prune_low_magnitude(model, schedule, layers=["d"], block_size=(4, 3), block_pooling_type="AVG")
    x = np.random.default_rng(0).normal(size=(64, 16))
    y = np.random.default_rng(1).normal(size=(64, 3))
    pruned.compile(optimizer="adam", loss="mse")
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    kernel = strip_pruning(pruned).get_layer("d").kernel.numpy()
    grid = (kernel.reshape(4, 4, 4, 3) != 0)
    # Every (4, 3) block is all zero or all non-zero, and 12 of the 16 blocks are zero.
    per_block = grid.any(axis=(1, 3))
    assert (grid.all(axis=(1, 3)) == per_block).all()
    assert int((~per_block).sum()) == 12


# -- PrunableLayer ---------------------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="test_tfmot_forms")
class TwoKernels(L.Layer, PrunableLayer):
    """Prunes `kernel`, never `other`."""

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], 4), initializer="glorot_uniform")
        self.other = self.add_weight(name="other", shape=(input_shape[-1], 4), initializer="glorot_uniform")

    def call(self, x):
        return x @ self.kernel + x @ self.other

    def get_prunable_weights(self):
        return [self.kernel]


@keras.saving.register_keras_serializable(package="test_tfmot_forms")
class NothingToPrune(TwoKernels):
    def get_prunable_weights(self):
        return []


def test_prunable_layer_is_an_abstract_base():
    with pytest.raises(TypeError):
        PrunableLayer()

    class Incomplete(L.Layer, PrunableLayer):
        pass

    with pytest.raises(TypeError, match="get_prunable_weights"):
        Incomplete()
    assert isinstance(TwoKernels(), PrunableLayer)


def test_prunable_layer_is_pruned_on_exactly_the_weights_it_returns(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), TwoKernels(name="custom"), NothingToPrune(name="empty")])
    other_before = model.get_layer("custom").other.numpy().copy()
    pruned = prune_low_magnitude(model, HALF_AT_ONCE)
    assert set(wrappers(pruned)) == {"custom"}  # the layer returning [] is not wrapped
    fit_once(pruned, np.zeros((4, 8)), np.zeros((4, 4)))
    custom = wrappers(pruned)["custom"]
    assert [w.path for w in custom.pruned_weights] == [custom.layer.kernel.path]
    assert np.count_nonzero(custom.layer.kernel.numpy() == 0) == 16  # half of 8x4
    np.testing.assert_array_equal(custom.layer.other.numpy(), other_before)
    path = str(tmp_path / "custom.keras")
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(wrappers(loaded)["custom"].masks[0].numpy(), custom.masks[0].numpy())


def test_duck_typed_get_prunable_weights_still_works():
    class Duck(L.Layer):  # no PrunableLayer base
        def build(self, input_shape):
            self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], 2))

        def call(self, x):
            return x @ self.kernel

        def get_prunable_weights(self):
            return [self.kernel]

    assert not isinstance(Duck(), PrunableLayer)
    wrapper = prune_low_magnitude(Duck())
    wrapper(np.zeros((1, 3)))
    assert len(wrapper.masks) == 1


def test_naming_a_layer_with_no_prunable_weights_raises():
    model = keras.Sequential([keras.Input((8,)), NothingToPrune(name="empty"), L.Dense(2, name="d")])
    with pytest.raises(ValueError, match=r"'empty' \(NothingToPrune\).*get_prunable_weights\(\) returns no weights"):
        prune_low_magnitude(model, layers=["empty"])


# -- PruningPolicy and PruneForLatencyOnXNNPack ----------------------------------------------------------------

# A small MobileNet built the way XNNPACK's sparse inference needs it, as source text: the same lines build it
# here in Keras 3 and in tfmot's tf_keras subprocess (`keras` and `L` name each one's module and layers).
MOBILENET_LIKE = textwrap.dedent("""
    inputs = keras.Input((32, 32, 3))
    x = L.ZeroPadding2D(1, name="stem_pad")(inputs)
    x = L.Conv2D(8, 3, strides=2, padding="valid", use_bias=False, name="stem")(x)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw1")(x)
    x = L.Conv2D(16, 1, name="pw1")(x)
    x = L.Activation("relu6", name="pw1_relu")(x)
    x = L.ZeroPadding2D(1, name="dw2_pad")(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="valid", name="dw2")(x)
    y = L.Conv2D(16, 1, name="pw2")(x)
    z = L.DepthwiseConv2D(5, padding="same", name="dw3")(y)
    z = L.Conv2D(16, 1, name="pw3")(z)
    x = L.Add(name="residual")([y, z])
    x = x * 0.5  # an op in the graph: a Keras 3 op, a TFOpLambda in tf_keras
    x = L.GlobalAveragePooling2D(keepdims=True, name="gap")(x)
    x = L.Dropout(0.1, name="dropout")(x)
    if head == "conv":
        x = L.Reshape((10,), name="logits")(L.Conv2D(10, 1, name="head")(x))
    else:
        x = L.Dense(10, name="head")(L.Flatten(name="flat")(x))
    model = keras.Model(inputs, x)
""")


def mobilenet_like(head="conv"):
    scope = {"keras": keras, "L": L, "head": head}
    exec(MOBILENET_LIKE, scope)
    return scope["model"]


def test_xnnpack_policy_prunes_the_1x1_convs_derived_by_hand():
    # The 1x1 Conv2Ds in the sparse subgraph: pw1, pw2, pw3. Not the classifier head after the pooling (a 1x1
    # Conv2D that tfmot's allow_pruning takes, but XNNPACK's sparse path does not run), not stem (3x3), not the
    # depthwise ones.
    policy = PruneForLatencyOnXNNPack()
    assert policy.allow_pruning(L.Conv2D(4, 1))  # before a model is checked: any 1x1 Conv2D, as tfmot
    pruned = prune_low_magnitude(mobilenet_like(), HALF_AT_ONCE, pruning_policy=policy)
    assert set(wrappers(pruned)) == {"pw1", "pw2", "pw3"}
    # A Dense head is not a Conv2D: left dense.
    pruned = prune_low_magnitude(mobilenet_like("dense"), pruning_policy=PruneForLatencyOnXNNPack())
    assert set(wrappers(pruned)) == {"pw1", "pw2", "pw3"}
    # layers= narrows the policy's choice; naming a layer the policy refuses raises.
    pruned = prune_low_magnitude(mobilenet_like(), layers=lambda l: l.name != "head",
                                 pruning_policy=PruneForLatencyOnXNNPack())
    assert set(wrappers(pruned)) == {"pw1", "pw2", "pw3"}
    with pytest.raises(ValueError, match=r"'dw1' \(DepthwiseConv2D\) is selected by layers but pruning_policy"):
        prune_low_magnitude(mobilenet_like(), layers=["pw1", "dw1"], pruning_policy=PruneForLatencyOnXNNPack())


def test_xnnpack_policy_pruned_model_trains_and_strips():
    keras.utils.set_random_seed(0)
    pruned = prune_low_magnitude(mobilenet_like(), HALF_AT_ONCE, pruning_policy=PruneForLatencyOnXNNPack())
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    fit_once(pruned, x, np.zeros((4, 10)))
    final = strip_pruning(pruned)
    for name in ("pw1", "pw2", "pw3"):
        kernel = final.get_layer(name).kernel.numpy()
        assert np.count_nonzero(kernel == 0) == kernel.size // 2, name
    assert np.count_nonzero(final.get_layer("head").kernel.numpy() == 0) == 0
    assert np.count_nonzero(final.get_layer("stem").kernel.numpy() == 0) == 0
    np.testing.assert_allclose(final.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5)


def test_keras_applications_mobilenet_is_refused_with_the_reason():
    """Keras's MobileNet pads its strided convolutions with padding='same', which XNNPACK's sparse path does not
    take (tfmot refuses tf_keras's MobileNet the same way)."""
    model = keras.applications.MobileNet(weights=None, input_shape=(32, 32, 3), alpha=0.25, classes=10)
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"no XNNPACK sparse-inference entry.*'conv1' \(Conv2D\), has "
                                         r"padding='same', it does not follow a ZeroPadding2D"):
        prune_low_magnitude(model, pruning_policy=PruneForLatencyOnXNNPack())
    assert_same_weights(before, model)


def unsupported_between(layer):
    inputs = keras.Input((16, 16, 3))
    x = L.ZeroPadding2D(1)(inputs)
    x = L.Conv2D(8, 3, strides=2, name="stem")(x)
    x = layer(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(2)(x))


@pytest.mark.parametrize("layer, reason", [
    (L.Conv2D(8, 3, padding="same", name="bad"), r"'bad' \(Conv2D\).*not a 1x1 Conv2D with strides 1"),
    (L.Conv2D(8, 1, strides=2, name="bad"), r"'bad' \(Conv2D\).*not a 1x1 Conv2D with strides 1"),
    (L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="bad"), r"'bad' \(DepthwiseConv2D\)"),
    (L.DepthwiseConv2D(3, strides=2, padding="same", name="bad"), r"'bad' \(DepthwiseConv2D\)"),
    (L.UpSampling2D(name="bad"), r"'bad' \(UpSampling2D\).*not bilinear"),
    (L.Activation("tanh", name="bad"), r"'bad' \(Activation\).*'tanh'"),
    (L.MaxPooling2D(name="bad"), r"'bad' \(MaxPooling2D\).*no sparse-inference kernel"),
])
def test_xnnpack_policy_refuses_unsupported_layers_in_the_subgraph(layer, reason):
    model = unsupported_between(layer)
    with pytest.raises(ValueError, match=f"PruneForLatencyOnXNNPack: model .* cannot use XNNPACK's sparse "
                                         f"inference: its layer {reason}"):
        prune_low_magnitude(model, pruning_policy=PruneForLatencyOnXNNPack())


def test_xnnpack_policy_refuses_models_without_entry_or_pooling():
    inputs = keras.Input((16, 16, 3))
    no_pad = keras.Model(inputs, L.GlobalAveragePooling2D()(L.Conv2D(4, 3, strides=2)(inputs)))
    with pytest.raises(ValueError, match="has no XNNPACK sparse-inference entry.*does not follow a ZeroPadding2D"):
        prune_low_magnitude(no_pad, pruning_policy=PruneForLatencyOnXNNPack())
    vector = keras.Sequential([keras.Input((8,)), L.Dense(4)])
    with pytest.raises(ValueError, match="has no XNNPACK sparse-inference entry.*it has no Conv2D"):
        prune_low_magnitude(vector, pruning_policy=PruneForLatencyOnXNNPack())
    x = L.Conv2D(4, 3, strides=2, name="stem")(L.ZeroPadding2D(1)(inputs))
    no_pooling = keras.Model(inputs, L.Flatten()(L.Conv2D(4, 1)(x)))
    with pytest.raises(ValueError, match="needs a GlobalAveragePooling2D on every output branch"):
        prune_low_magnitude(no_pooling, pruning_policy=PruneForLatencyOnXNNPack())
    with pytest.raises(ValueError, match="pruning_policy chooses layers within a model"):
        prune_low_magnitude(L.Conv2D(4, 1), pruning_policy=PruneForLatencyOnXNNPack())


def test_a_sequential_model_and_already_wrapped_layers_pass_the_check():
    model = keras.Sequential([
        keras.Input((16, 16, 3)), L.ZeroPadding2D(1), L.Conv2D(8, 3, strides=2, name="stem"),
        PruneWrapper(L.Conv2D(8, 1, name="pw")), L.GlobalAveragePooling2D(keepdims=True),
    ])
    PruneForLatencyOnXNNPack().ensure_model_supports_pruning(model)


def test_a_custom_policy_chooses_the_layers():
    class DenseOnly(PruningPolicy):
        def allow_pruning(self, layer):
            return isinstance(layer, L.Dense)

        def ensure_model_supports_pruning(self, model):
            if len(model.layers) > 5:
                raise ValueError("too deep")

    assert set(wrappers(prune_low_magnitude(cnn(), pruning_policy=DenseOnly()))) == {"dense"}
    with pytest.raises(ValueError, match="too deep"):
        prune_low_magnitude(mobilenet_like(), pruning_policy=DenseOnly())
    with pytest.raises(TypeError):
        PruningPolicy()


# -- per-layer forms and prune_scope ---------------------------------------------------------------------------

def test_clone_function_form_prunes_the_chosen_layers():
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.Input((8,)), L.Dense(16, name="d1"), L.ReLU(), L.Dense(4, name="d2")])

    def apply_pruning_to_dense(layer):
        if isinstance(layer, L.Dense):
            return prune_low_magnitude(layer, HALF_AT_ONCE)
        return layer

    model = keras.models.clone_model(base, clone_function=apply_pruning_to_dense)
    assert set(wrappers(model)) == {"d1", "d2"}
    x = np.random.default_rng(0).normal(size=(32, 8))
    fit_once(model, x, np.zeros((32, 4)))
    for wrapper in wrappers(model).values():
        kernel = wrapper.layer.kernel.numpy()
        assert np.count_nonzero(kernel == 0) == kernel.size // 2
    np.testing.assert_allclose(strip_pruning(model).predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_wrapping_layers_while_building_sequential_and_functional(tmp_path):
    keras.utils.set_random_seed(0)
    sequential = keras.Sequential([
        keras.Input((8,)), prune_low_magnitude(L.Dense(16, name="d1"), HALF_AT_ONCE), L.Dense(4, name="d2"),
    ])
    inputs = keras.Input((8,))
    hidden = prune_low_magnitude(L.Dense(16, name="d1"), HALF_AT_ONCE, block_size=(4, 4))(inputs)
    functional = keras.Model(inputs, L.Dense(4, name="d2")(hidden))
    x = np.random.default_rng(0).normal(size=(32, 8))
    for model in (sequential, functional):
        fit_once(model, x, np.zeros((32, 4)))
        kernel = wrappers(model)["d1"].layer.kernel.numpy()
        assert np.count_nonzero(kernel == 0) == 64
    blocks_2x4 = (functional.layers[1].layer.kernel.numpy().reshape(2, 4, 4, 4) != 0)
    assert (blocks_2x4.all(axis=(1, 3)) == blocks_2x4.any(axis=(1, 3))).all()
    path = str(tmp_path / "functional.keras")
    functional.save(path)
    with prune_scope():
        loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), functional.predict(x, verbose=0), atol=1e-6)
    with prune_scope():
        assert keras.saving.get_registered_object("PruneWrapper") is PruneWrapper


def test_prune_scope_is_not_needed_to_load():
    model = prune_low_magnitude(dense_model())
    restored = keras.models.model_from_json(model.to_json())
    assert set(wrappers(restored)) == {"d", "out"}


# -- tfmot itself as the reference -----------------------------------------------------------------------------

TFMOT_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras
    L, sk = keras.layers, tfmot.sparsity.keras
    out = {}

    # Block masks: a Dense kernel, one mask update at step 0, learning rate 0.
    kernel = np.array(json.loads(sys.argv[1]))
    for pooling in ("AVG", "MAX"):
        model = keras.Sequential([keras.Input((kernel.shape[0],)), L.Dense(kernel.shape[1], use_bias=False)])
        model.layers[0].set_weights([kernel])
        pruned = sk.prune_low_magnitude(model, pruning_schedule=sk.ConstantSparsity(0.5, 0, frequency=1),
                                        block_size=(2, 2), block_pooling_type=pooling)
        pruned.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
        pruned.fit(np.zeros((2, kernel.shape[0])), np.zeros((2, kernel.shape[1])), verbose=0,
                   callbacks=[sk.UpdatePruningStep()])
        out[pooling] = (sk.strip_pruning(pruned).layers[0].kernel.numpy() != 0).astype(int).tolist()

    # The XNNPACK policy on the test's MobileNet-like model, built by the same lines.
    scope = {"keras": keras, "L": L, "head": "conv"}
    exec(sys.argv[2], scope)
    pruned = sk.prune_low_magnitude(scope["model"], pruning_policy=sk.PruneForLatencyOnXNNPack())
    out["policy"] = sorted(l.layer.name for l in pruned.layers if type(l).__name__ == "PruneLowMagnitude")
    try:
        inputs = keras.Input((16, 16, 3))
        x = L.Conv2D(8, 3, strides=2, name="stem")(L.ZeroPadding2D(1)(inputs))
        x = L.GlobalAveragePooling2D()(L.Conv2D(8, 3, padding="same")(x))
        sk.prune_low_magnitude(keras.Model(inputs, x), pruning_policy=sk.PruneForLatencyOnXNNPack())
        out["refused"] = False
    except ValueError:
        out["refused"] = True
    print(json.dumps(out))
""")


@pytest.mark.tfmot
@pytest.mark.slow
def test_block_masks_and_xnnpack_policy_match_tfmot():
    pytest.importorskip("tensorflow_model_optimization")
    # Distinct block means (no ties: tfmot keeps every block tied with its threshold, we keep the first).
    kernel = np.array([
        [1.0, -1.2, 0.0, 4.0, 0.1, 0.2],
        [1.0, 1.0, 0.0, 0.0, 0.3, 0.1],
        [0.5, -0.5, 3.0, 0.0, 2.0, 2.0],
        [0.5, 0.6, 0.0, 0.0, 2.0, 2.0],
    ])
    done = subprocess.run([sys.executable, "-c", TFMOT_SCRIPT, json.dumps(kernel.tolist()), MOBILENET_LIKE],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "TF_USE_LEGACY_KERAS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    for pooling in ("AVG", "MAX"):
        ours = criteria.block_magnitude(kernel, 0.5, (2, 2), pooling)
        # tfmot reports the non-zeros of its stripped kernel, which has zeros of its own in kept blocks.
        np.testing.assert_array_equal((ours * kernel != 0).astype(int), theirs[pooling], err_msg=pooling)
    pruned = prune_low_magnitude(mobilenet_like(), pruning_policy=PruneForLatencyOnXNNPack())
    # The same layers, but the classifier head after the pooling, which tfmot also prunes.
    assert sorted([*wrappers(pruned), "head"]) == theirs["policy"]
    assert theirs["refused"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError):
            prune_low_magnitude(unsupported_between(L.Conv2D(8, 3, padding="same")),
                                pruning_policy=PruneForLatencyOnXNNPack())
