"""Structured pruning: criteria, dependency groups, shrink, GroupLasso, iterative loop."""

import logging

import keras
import numpy as np
import pytest
from keras import layers as L

from conftest import assert_unchanged, compile_for_test, small_cnn, snapshot, toy_data, value
from keras_compress.pruning import (
    GroupLasso,
    dependency_groups,
    iterative_shrink,
    shrink,
)
import keras_compress as kc
from keras_compress.pruning import structured as S
from keras_compress.pruning.structured.importance import measure
from keras_compress.pruning.structured.graph import Analysis


def residual_bn(name="residual"):
    """Conv-BN stem and two residual Adds, a Concatenate, then GAP -> Dense."""
    inputs = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(6, 3, padding="same", name="stem")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    y = L.Conv2D(6, 3, padding="same", name="branch")(x)
    y = L.BatchNormalization(name="branch_bn")(y)
    x = L.Add(name="add")([x, y])
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = L.Conv2D(6, 1, name="project")(y)
    x = L.Add(name="add_2")([x, y])
    z = L.Conv2D(4, 1, activation="relu", name="side")(x)
    x = L.Concatenate(name="concat")([x, z])
    x = L.Conv2D(8, 3, activation="relu", name="mix")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(3, name="head")(x), name=name)


def randomize_bn(model, seed=0):
    """BN statistics that are not the identity, so BN matters in the outputs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(size=n),
                               rng.normal(size=n), rng.uniform(0.5, 2.0, n)])


def widths(model):
    return {
        l.name: l.kernel.shape[-1] if not isinstance(l, L.DepthwiseConv2D) else l.kernel.shape[-2]
        for l in model.layers if hasattr(l, "kernel")
    }


def images(n=4, shape=(8, 8, 3), seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


# -- criteria on hand-made tensors ------------------------------------------------


def test_l1_and_l2_norms_per_unit():
    kernel = np.array([[1.0, -2.0], [3.0, 0.0]])
    np.testing.assert_array_equal(S.l1_norm(kernel), [4.0, 2.0])
    np.testing.assert_array_equal(S.l2_norm(np.array([[3.0, 0.0], [4.0, 1.0]])), [5.0, 1.0])
    conv = np.zeros((2, 2, 1, 3))
    conv[..., 0] = [[[1], [-1]], [[2], [0]]]  # filter 0: |1|+|-1|+|2| = 4, sqrt(6)
    conv[1, 1, 0, 2] = -5.0
    np.testing.assert_array_equal(S.l1_norm(conv), [4.0, 0.0, 5.0])
    np.testing.assert_allclose(S.l2_norm(conv), [np.sqrt(6.0), 0.0, 5.0])
    # A transposed conv keeps its units on axis -2.
    np.testing.assert_array_equal(S.l1_norm(np.ones((3, 3, 2, 5)), axis=-2), [45.0, 45.0])
    np.testing.assert_array_equal(S.l1_norm(keras.ops.convert_to_tensor(kernel)), [4.0, 2.0])


def test_bn_gamma_taylor_and_apoz_by_hand():
    np.testing.assert_array_equal(S.bn_gamma(np.array([-0.5, 2.0, 0.0])), [0.5, 2.0, 0.0])
    # 2 samples, 2 positions, 2 units. Sample 0: a*g = [[1, 2], [3, -4]] -> mean
    # over positions [2, -1]; sample 1: [[-2, 0], [2, 1]] -> [0, 0.5].
    a = np.array([[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 0.0], [2.0, 1.0]]])
    g = np.array([[[1.0, 1.0], [1.0, -1.0]], [[2.0, 3.0], [1.0, 1.0]]])
    np.testing.assert_allclose(S.taylor(a, g), [(2 + 0) / 2, (1 + 0.5) / 2])
    np.testing.assert_allclose(S.taylor(a[:, 0], g[:, 0]), [(1 + 2) / 2, (2 + 0) / 2])  # Dense-shaped
    relu = np.array([[[0.0, 1.0, 0.0], [0.0, 2.0, 3.0]], [[0.0, 0.0, 1.0], [5.0, 1.0, 0.0]]])
    np.testing.assert_allclose(S.apoz(relu), [3 / 4, 1 / 4, 2 / 4])
    with pytest.raises(ValueError, match="one shape"):
        S.taylor(a, g[:, :1])
    with pytest.raises(ValueError, match="batch"):
        S.apoz(np.zeros(3))


def test_measured_apoz_and_taylor_match_numpy():
    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((3,)), L.Dense(4, activation="relu", name="hidden"),
                              L.Dense(2, name="out")])
    rng = np.random.default_rng(0)
    k1, b1 = rng.normal(size=(3, 4)), rng.normal(size=4)
    k2, b2 = rng.normal(size=(4, 2)), rng.normal(size=2)
    model.set_weights([k1, b1, k2, b2])
    x, y = rng.normal(size=(10, 3)).astype("float32"), rng.normal(size=(10, 2)).astype("float32")
    h = np.maximum(x @ k1 + b1, 0)
    out = h @ k2 + b2
    analysis = Analysis(model)
    hidden = model.get_layer("hidden")
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    scores = measure(analysis, [hidden], "apoz", iter(batches), None)[id(hidden)]
    np.testing.assert_allclose(scores, 1 - (h == 0).mean(axis=0))  # 1 - APoZ: higher is kept
    loss = keras.losses.MeanSquaredError()
    scores = measure(analysis, [hidden], "taylor", iter([(x, y)]), loss)[id(hidden)]
    grad_h = (2 * (out - y) / out.size) @ k2.T  # d mean((out - y)^2) / dh
    np.testing.assert_allclose(scores, np.abs(h * grad_h).mean(axis=0), rtol=1e-4, atol=1e-7)


def test_data_criteria_pick_dead_units():
    keras.backend.clear_session()
    model = compile_for_test(keras.Sequential(
        [keras.Input((4,)), L.Dense(6, activation="relu", name="hidden"), L.Dense(3, name="out")]
    ))
    x = np.abs(np.random.default_rng(0).normal(size=(32, 4))).astype("float32")
    y = np.arange(32) % 3
    k, b = model.get_layer("hidden").get_weights()
    k[:, 1] = -np.abs(k[:, 1]) - 0.1  # positive inputs: unit 1 is always zero after its ReLU
    model.get_layer("hidden").set_weights([k, b])
    small = shrink(model, {"hidden": 1 / 6}, criterion="apoz", data=x, batch_size=8)
    assert small.compiled  # like the model it came from
    np.testing.assert_array_equal(value(small.get_layer("hidden").kernel), np.delete(k, 1, axis=1))
    k2, b2 = model.get_layer("out").get_weights()
    k2[4] = 0  # unit 4 feeds nothing: zero gradient, zero Taylor score
    model.get_layer("out").set_weights([k2, b2])
    k[:, 1] = np.abs(k[:, 1])
    model.get_layer("hidden").set_weights([k, b])
    small = shrink(model, {"hidden": 1 / 6}, criterion="taylor", data=(x, y), batch_size=8)
    np.testing.assert_array_equal(value(small.get_layer("hidden").kernel), np.delete(k, 4, axis=1))
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    small_ds = shrink(model, {"hidden": 1 / 6}, criterion="taylor", data=ds)
    np.testing.assert_array_equal(value(small_ds.get_layer("hidden").kernel), np.delete(k, 4, axis=1))


def test_bn_gamma_and_callable_criteria_choose_units():
    keras.backend.clear_session()
    model = residual_bn()
    randomize_bn(model)
    gammas = {}
    for name in ("stem_bn", "branch_bn"):
        bn = model.get_layer(name)
        w = bn.get_weights()
        w[0] = np.array([1.0, 0.1, 1.0, 0.2, 1.0, 1.0]) if name == "stem_bn" else np.array([1.0, 0.1, 1.0, 1.0, 0.1, 1.0])
        bn.set_weights(w)
        gammas[name] = w[0]
    # The stem and branch units are tied by the Add: summed |gamma| is
    # [2, 0.2, 2, 1.2, 1.1, 2], so units 1 and 4 go first, then 3.
    small = shrink(model, {"stem": 0.5}, criterion="bn_gamma")
    np.testing.assert_array_equal(value(small.get_layer("stem_bn").gamma), np.delete(gammas["stem_bn"], [1, 3, 4]))
    np.testing.assert_array_equal(value(small.get_layer("branch_bn").gamma), np.delete(gammas["branch_bn"], [1, 3, 4]))
    scores = {"side": np.array([3.0, 1.0, 2.0, 0.0])}
    small = shrink(model, {"side": 0.5}, criterion=lambda layer: scores[layer.name])
    kernel = value(model.get_layer("side").kernel)
    np.testing.assert_array_equal(value(small.get_layer("side").kernel), kernel[..., [0, 2]])
    with pytest.raises(ValueError, match="criterion='bn_gamma' needs a BatchNormalization.*'side'"):
        shrink(model, {"side": 0.5}, criterion="bn_gamma")
    with pytest.raises(ValueError, match="returned 3 scores for layer 'side', which has 4 units"):
        shrink(model, {"side": 0.5}, criterion=lambda layer: np.ones(3))


# -- dependency groups and shapes -------------------------------------------------


def test_groups_of_a_residual_model():
    keras.backend.clear_session()
    groups = {g.producers: g for g in dependency_groups(residual_bn())}
    assert set(groups) == {("stem", "branch", "project"), ("side",), ("mix",), ("head",)}
    tied = groups[("stem", "branch", "project")]
    assert tied.prunable and tied.size == 6
    assert {"stem_bn", "branch_bn", "dw", "side", "mix"} <= set(tied.layers)
    assert groups[("side",)].layers == ("side", "mix")
    assert not groups[("head",)].prunable
    assert "output units are never removed" in groups[("head",)].reason


@pytest.mark.parametrize("make, x", [(small_cnn, toy_data(4)[0]), (residual_bn, images())])
def test_shrink_halves_every_group_and_keeps_shapes(make, x):
    keras.backend.clear_session()
    model = make()
    before = snapshot(model)
    reference = value(model(x))
    small = shrink(model, 0.5)
    assert_unchanged(model, before)
    np.testing.assert_array_equal(value(model(x)), reference)
    assert type(small) is type(model)
    assert [l.name for l in small.layers] == [l.name for l in model.layers]
    old, new = widths(model), widths(small)
    outputs = {"logits", "head"}
    for name, width in old.items():
        if name in outputs:
            assert new[name] == width
        elif not name == "dw":
            assert new[name] == width - width // 2, name
    assert small(x).shape == model(x).shape
    assert small.count_params() < 0.5 * model.count_params()


def test_shapes_consistent_in_residual_groups():
    keras.backend.clear_session()
    small = shrink(residual_bn(), {"stem": 0.5, "side": 0.25})
    w = widths(small)
    assert w["stem"] == w["branch"] == w["project"] == w["dw"] == 3
    assert small.get_layer("stem_bn").gamma.shape == (3,)
    assert small.get_layer("mix").kernel.shape == (3, 3, 3 + 3, 8)  # concat of 3 + side's 3


def test_mobilenet_v2_shrinks_consistently():
    keras.backend.clear_session()
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)
    before = snapshot(model)
    groups = dependency_groups(model)
    tied = [g for g in groups if len(g.producers) > 1]
    assert tied and all(g.prunable for g in tied)  # the inverted residual stages
    small = shrink(model, 0.5, round_to=4)
    assert_unchanged(model, before)
    for g in groups:
        kept = {small.get_layer(p).kernel.shape[-1] for p in g.producers}
        assert len(kept) == 1, g.producers  # tied producers keep the same units
        if g.prunable:
            expected = g.size - g.size // 2
            assert kept.pop() == min(g.size, -(-expected // 4) * 4)
    for layer in small.layers:  # every consumer reads as many channels as it gets
        if isinstance(layer, L.DepthwiseConv2D):
            assert layer.kernel.shape[-2] == layer.input.shape[-1]
        if isinstance(layer, L.BatchNormalization):
            assert layer.gamma.shape[0] == layer.input.shape[-1]
    x = images(2, (32, 32, 3))
    assert small.predict(x, verbose=0).shape == (2, 10)
    assert small.count_params() < 0.4 * model.count_params()
    # Exact on dead units of an inverted-residual stage (two projections tied by an Add).
    randomize_bn(model, seed=1)
    for name in ("block_1_project", "block_2_project", "block_1_project_BN", "block_2_project_BN"):
        w = model.get_layer(name).get_weights()
        for v in w[:2]:  # kernel (MobileNetV2 convs have no bias), or BN gamma and beta
            v[..., [0, 5]] = 0
        model.get_layer(name).set_weights(w)
    small = shrink(model, {"block_1_project": 0.25})
    assert small.get_layer("block_2_project").kernel.shape[-1] == 6
    assert small.get_layer("block_2_expand").kernel.shape[-2] == 6
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_nested_model_stays_nested():
    keras.backend.clear_session()
    backbone = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(6, 3, name="inner_conv"), L.ReLU(name="inner_relu")],
        name="backbone",
    )
    inputs = keras.Input((8, 8, 3))
    x = L.Flatten(name="flat")(backbone(inputs))
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Dense(5, name="mid")(x)))
    kernel = value(backbone.get_layer("inner_conv").kernel)
    kernel[..., [0, 3]] = 0
    backbone.get_layer("inner_conv").kernel.assign(kernel)
    small = shrink(model, {"inner_conv": 0.34})
    assert isinstance(small.layers[1], keras.Sequential)
    assert small.layers[1].get_layer("inner_conv").kernel.shape[-1] == 4
    assert small.get_layer("mid").kernel.shape[0] == 6 * 6 * 4
    x = images()
    np.testing.assert_allclose(value(small(x)), value(model(x)), atol=1e-5)


def test_nested_sequential_takes_the_narrowed_width_of_its_input():
    # The units removed before a nested Sequential narrow its first layer's
    # inputs: its Input (16 wide) must not pin the old width.
    keras.backend.clear_session()
    inner = keras.Sequential([keras.Input((16,)), L.Dense(8, activation="relu", name="in_dense")], name="inner")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(3, name="logits")(inner(L.Dense(16, activation="relu", name="first")(inputs))))
    kernel = value(model.get_layer("first").kernel)
    kernel[:, 8:] = 0  # units 8..15 are dead: removing them changes nothing
    model.get_layer("first").kernel.assign(kernel)
    model.get_layer("first").bias.assign(np.zeros(16, "float32"))
    small = shrink(model, {"first": 0.5})
    assert small.get_layer("inner").get_layer("in_dense").kernel.shape == (8, 8)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(value(small(x)), value(model(x)), atol=1e-5)


def test_nested_functional_models_take_the_narrowed_width_of_their_input():
    # An autoencoder composed of two Functional models: the encoder's latent
    # units feed the decoder's Input (8 wide), which must follow them. A
    # shared Functional tower (called twice) stays one shared model.
    keras.backend.clear_session()
    code = keras.Input((6,), name="pixels")
    encoder = keras.Model(code, L.Dense(8, activation="relu", name="latent")(code), name="encoder")
    latent = keras.Input((8,), name="code")
    decoder = keras.Model(latent, L.Dense(6, name="recon")(L.Dense(5, activation="relu", name="dec_1")(latent)),
                          name="decoder")
    inputs = keras.Input((6,), name="x")
    model = keras.Model(inputs, decoder(encoder(inputs)), name="autoencoder")
    kernel, bias = model.get_layer("encoder").get_layer("latent").get_weights()
    kernel[:, [1, 4, 6]], bias[[1, 4, 6]] = 0, 0  # dead latent units: removing them changes nothing
    model.get_layer("encoder").get_layer("latent").set_weights([kernel, bias])
    small = shrink(model, {"latent": 3 / 8})
    assert small.get_layer("encoder").get_layer("latent").kernel.shape == (6, 5)
    assert small.get_layer("decoder").get_layer("dec_1").kernel.shape == (5, 5)
    assert tuple(small.get_layer("decoder").input.shape) == (None, 5)
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    np.testing.assert_allclose(value(small(x)), value(model(x)), atol=1e-5)

    tower_in = keras.Input((6,))
    tower = keras.Model(tower_in, L.Dense(8, activation="relu", name="tower_dense")(tower_in), name="tower")
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    siamese = keras.Model([a, b], L.Dense(2, name="out")(L.Concatenate(name="join")([tower(a), tower(b)])))
    small = shrink(siamese, {"tower_dense": 0.5})
    assert [l.name for l in small.layers if isinstance(l, keras.Model)] == ["tower"]
    assert small.get_layer("out").kernel.shape == (8, 2)
    assert small([x, x]).shape == (5, 2)


def test_depthwise_multiplier_and_shared_layer():
    keras.backend.clear_session()
    inputs = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 1, name="pw")(inputs)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)  # 8 channels
    shared = L.Dense(3, name="shared")
    a = shared(L.GlobalAveragePooling2D()(x))
    b = shared(L.GlobalMaxPooling2D()(x))
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Concatenate()([a, b])))
    k = value(model.get_layer("pw").kernel)
    k[..., 2] = 0
    model.get_layer("pw").kernel.assign(k)
    small = shrink(model, {"pw": 0.25, "shared": 0.34})
    assert small.get_layer("dw").kernel.shape == (3, 3, 3, 2)
    assert small.get_layer("dw").bias.shape == (6,)
    assert small.get_layer("shared").kernel.shape == (6, 2)
    assert small.get_layer("out").kernel.shape == (4, 2)  # two calls of the shared layer
    dw_bias = value(model.get_layer("dw").bias)
    np.testing.assert_array_equal(value(small.get_layer("dw").bias), np.delete(dw_bias, [4, 5]))


def test_keras_ops_transposed_conv_and_softmax():
    keras.backend.clear_session()
    inputs = keras.Input((6, 6, 2))
    a = L.Conv2D(4, 1, name="a")(inputs)
    x = a * L.ReLU(6.0, name="relu6")(a + 3.0) * (1.0 / 6.0)  # hard-swish, as in MobileNetV3
    x = L.Conv2DTranspose(5, 3, name="up")(x)
    x = L.Conv2D(3, 1, activation="relu", name="c")(x)
    x = L.Dense(4, name="logits")(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, L.Softmax(name="softmax")(x))
    groups = {g.producers: g for g in dependency_groups(model)}
    assert groups[("a",)].prunable and groups[("up",)].layers == ("up", "c")
    assert "layer 'softmax' (Softmax) mixes the channels" in groups[("logits",)].reason
    kernel, bias = model.get_layer("a").get_weights()
    kernel[..., 1], bias[1] = 0, 0
    model.get_layer("a").set_weights([kernel, bias])
    kernel, bias = model.get_layer("up").get_weights()  # (h, w, filters, inputs)
    kernel[:, :, [0, 2]], bias[[0, 2]] = 0, 0
    model.get_layer("up").set_weights([kernel, bias])
    small = shrink(model, {"a": 0.25, "up": 0.4})
    assert small.get_layer("up").kernel.shape == (3, 3, 3, 3)
    np.testing.assert_array_equal(value(small.get_layer("up").kernel), kernel[:, :, [1, 3, 4]][..., [0, 2, 3]])
    assert small.get_layer("c").kernel.shape == (1, 1, 3, 3)
    x = images(4, (6, 6, 2))
    np.testing.assert_allclose(value(small(x)), value(model(x)), atol=1e-6)


# -- exactness --------------------------------------------------------------------


def test_removing_all_zero_units_is_exact_behind_a_flatten():
    keras.backend.clear_session()
    model = small_cnn()
    x = toy_data(8)[0]
    for name, dead in (("conv_a", [1]), ("conv_b", [0, 5, 6]), ("dense_a", [2, 3, 9, 15])):
        kernel, bias = model.get_layer(name).get_weights()
        kernel[..., dead] = 0
        bias[dead] = 0.0
        model.get_layer(name).set_weights([kernel, bias])
    small = shrink(model, {"conv_a": 0.25, "conv_b": 3 / 8, "dense_a": 0.25})
    assert widths(small) == {"conv_a": 3, "conv_b": 5, "dense_a": 12, "logits": 3}
    # Exactly the zero units went: the kept kernels are the others'.
    kernel = value(model.get_layer("conv_b").kernel)
    np.testing.assert_array_equal(value(small.get_layer("conv_b").kernel), np.delete(kernel, [0, 5, 6], axis=-1)[:, :, [0, 2, 3], :])
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_removing_all_zero_units_is_exact_in_residual_groups():
    keras.backend.clear_session()
    model = residual_bn()
    randomize_bn(model, seed=3)
    dead = [1, 4]
    for name in ("stem", "branch", "project", "side"):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        cut = dead if name != "side" else [0]
        kernel[..., cut] = 0
        bias[cut] = 0
        layer.set_weights([kernel, bias])
    for name in ("stem_bn", "branch_bn"):  # a BN after a dead unit: zero scale and shift
        w = model.get_layer(name).get_weights()
        w[0][dead], w[1][dead] = 0, 0
        model.get_layer(name).set_weights(w)
    x = images(8)
    small = shrink(model, {"stem": 2 / 6, "side": 0.25})
    stem = value(model.get_layer("stem").kernel)
    np.testing.assert_array_equal(value(small.get_layer("stem").kernel), np.delete(stem, dead, axis=-1))
    np.testing.assert_allclose(value(small(x)), value(model(x)), atol=1e-5)


# -- errors leave the model unchanged ---------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(amount=-0.1), ValueError, r"shrink: amount must be a number in \[0, 1\), got -0.1\."),
        (dict(amount=1.0), ValueError, r"amount must be a number in \[0, 1\)"),
        (dict(amount=float("nan")), ValueError, r"amount must be a number in \[0, 1\)"),
        (dict(amount="half"), TypeError, "amount must be a number in"),
        (dict(amount=True), TypeError, "amount must be a number in"),
        (dict(amount={"conv_a": 1.5}), ValueError, r"shrink: amount\['conv_a'\] must be a number in \[0, 1\)"),
        (dict(amount={"conv_a": None}), TypeError, r"amount\['conv_a'\] must be a number"),
        (dict(amount={"nope": 0.5}), ValueError, "names 'nope', which is not a layer of model 'cnn'.*conv_a, conv_b, dense_a"),
        (dict(amount={"logits": 0.5}), ValueError, "cannot remove units of layer 'logits'.*output units are never removed"),
        (dict(amount={"pool": 0.5}), ValueError, r"layer 'pool' \(MaxPooling2D\) has no units of its own"),
        (dict(amount={3: 0.5}), TypeError, "keys must be layer names"),
        (dict(amount=0.5, criterion="l3"), ValueError, "criterion must be one of 'l1', 'l2', 'bn_gamma', 'taylor', 'apoz'"),
        (dict(amount=0.5, criterion=1), TypeError, "shrink: criterion must be one of"),
        (dict(amount=0.5, criterion="bn_gamma"), ValueError, "needs a BatchNormalization"),
        (dict(amount=0.5, criterion="apoz"), ValueError, "criterion='apoz' measures activations and needs data="),
        (dict(amount=0.5, criterion="taylor", data=toy_data(8)[0]), ValueError, r"needs labels: pass data=\(x, y\)"),
        (dict(amount=0.5, criterion="l1", data=toy_data(8)[0]), ValueError, "reads only weights"),
        (dict(amount=0.5, round_to=0), ValueError, "shrink: round_to must be an int >= 1, got 0"),
        (dict(amount=0.5, batch_size=2.0), TypeError, "shrink: batch_size must be an int >= 1, got 2.0"),
        (dict(amount=0.5, max_batches=0), ValueError, "shrink: max_batches must be an int >= 1 or None, got 0"),
    ],
)
def test_invalid_arguments_leave_model_unchanged(kwargs, error, match):
    keras.backend.clear_session()
    model = small_cnn()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        shrink(model, **kwargs)
    assert_unchanged(model, before)


def test_taylor_needs_a_loss():
    keras.backend.clear_session()
    model = small_cnn()
    with pytest.raises(ValueError, match="criterion='taylor' needs one loss: pass loss="):
        shrink(model, 0.5, criterion="taylor", data=toy_data(8))
    small = shrink(model, {"dense_a": 0.5}, criterion="taylor", data=toy_data(8),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert small.get_layer("dense_a").kernel.shape == (72, 8)


def unsupported():
    inputs = keras.Input((6,))
    x = L.Dense(8, name="a")(inputs)
    x = L.LayerNormalization(name="norm")(x)
    x = L.Dense(8, name="b")(x)
    y = L.Dense(8, name="c")(inputs)
    return keras.Model(inputs, L.Dense(2, name="out")(L.Add(name="sum")([x, y])), name="unsupported")


def test_unsupported_topologies():
    keras.backend.clear_session()
    model = unsupported()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"cannot remove units of layer 'a': layer 'norm' \(LayerNormalization\) has no structured-pruning rule"):
        shrink(model, {"a": 0.5})
    residual_input = keras.Input((4, 4, 3))
    with_input = keras.Model(residual_input, L.Add()([residual_input, L.Conv2D(3, 1, name="conv")(residual_input)]))
    with pytest.raises(ValueError, match="has no units that can be removed.*conv.*model input 'input_layer"):
        shrink(with_input, 0.5)

    class Identity(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="shrink cannot rewrite model.*subclassed Identity"):
        shrink(Identity(), 0.5)
    with pytest.raises(TypeError, match="expects a keras.Model"):
        shrink(L.Dense(3), 0.5)
    assert_unchanged(model, before)


def test_float_amount_skips_and_logs_unsupported_groups(caplog):
    keras.backend.clear_session()
    model = unsupported()
    with caplog.at_level(logging.INFO, logger="keras_compress"):
        small = shrink(model, 0.5)
    assert "leaves these layers' units in place: a (layer 'norm' (LayerNormalization)" in caplog.text
    assert widths(small) == {"a": 8, "b": 4, "c": 4, "out": 2}
    assert "shrink removed 4 units: b+c 8->4" in caplog.text


def test_tied_layers_need_one_amount():
    keras.backend.clear_session()
    with pytest.raises(ValueError, match="layers 'stem' and 'branch' share their units.*0.5 and 0.25"):
        shrink(residual_bn(), {"stem": 0.5, "branch": 0.25})


def test_amount_rounding_and_round_to():
    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((4,)), L.Dense(100, name="a"), L.Dense(2, name="b")])
    assert shrink(model, 0.29).get_layer("a").kernel.shape[-1] == 71  # floor(0.29 * 100) removed
    assert shrink(model, 0.999).get_layer("a").kernel.shape[-1] == 1  # at least one kept
    assert shrink(model, 0.29, round_to=8).get_layer("a").kernel.shape[-1] == 72
    assert shrink(model, 0.0).get_layer("a").kernel.shape[-1] == 100


# -- the shrunken model in the rest of the toolkit --------------------------------


def test_save_load_qat_and_tflite(tmp_path):
    import keras_compress as kc
    from keras_compress.quantization import quantize_model

    keras.backend.clear_session()
    model = residual_bn()
    small = shrink(model, 0.5)
    x = images(4)
    path = tmp_path / "small.keras"
    small.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(value(loaded(x)), value(small(x)), atol=1e-6)
    np.testing.assert_allclose(kc.predict_tflite(kc.to_tflite(small), x), value(small(x)), atol=1e-4)
    qat = quantize_model(small)
    compile_for_test(qat).fit(x, np.arange(4) % 3, epochs=1, verbose=0)
    assert kc.inspect_tflite(kc.to_tflite(qat, quantization="int8")).op_counts()


# -- GroupLasso -------------------------------------------------------------------


def test_group_lasso_config_and_validation():
    callback = GroupLasso(0.5, start_epoch=1, end_epoch=3, layers=["stem"])
    config = callback.get_config()
    assert config == {"strength": 0.5, "start_epoch": 1, "end_epoch": 3, "layers": ["stem"]}
    assert GroupLasso.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(callback))
    assert isinstance(restored, GroupLasso) and restored.get_config() == config
    assert [callback.strength_at(e) for e in range(4)] == [0.0, 0.5, 0.5, 0.0]
    assert GroupLasso(lambda e: 0.1 * e).strength_at(2) == pytest.approx(0.2)
    for kwargs, match in (
        (dict(strength=-1), "strength must be a number >= 0"),
        (dict(strength="big"), "strength must be a number >= 0"),
        (dict(strength=1, start_epoch=2, end_epoch=2), "end_epoch must be greater than start_epoch"),
        (dict(strength=1, start_epoch=-1), "start_epoch must be an int"),
    ):
        with pytest.raises(ValueError, match=match):
            GroupLasso(**kwargs)
    with pytest.raises(ValueError, match="strength\\(0\\) returned -1.0"):
        GroupLasso(lambda e: -1).strength_at(0)


def test_group_lasso_zeroes_whole_units_then_shrink_is_exact():
    keras.backend.clear_session()
    model = compile_for_test(residual_bn(), optimizer=keras.optimizers.SGD(0.05))
    weak = {"stem": [1, 4], "branch": [1, 4], "project": [1, 4], "side": [0],
            "stem_bn": [1, 4], "branch_bn": [1, 4]}
    for name, units in weak.items():  # small units: the penalty zeroes them first
        w = model.get_layer(name).get_weights()
        w[0][..., units] *= 0.02
        model.get_layer(name).set_weights(w)
    x, y = images(32), np.arange(32) % 3
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0,
                        callbacks=[GroupLasso(0.25, end_epoch=2, layers=["stem", "side"])])
    assert history.history["group_lasso_strength"] == [0.25, 0.25]
    # A unit is zero in every tensor of its group: kernels, biases, BN gamma and beta.
    for name in ("stem", "branch", "project"):
        kernel, bias = model.get_layer(name).get_weights()
        assert not kernel[..., [1, 4]].any() and not bias[[1, 4]].any()
        assert np.all(np.abs(kernel).sum(axis=(0, 1, 2))[[0, 2, 3, 5]] > 0)
    for name in ("stem_bn", "branch_bn"):
        gamma, beta = value(model.get_layer(name).gamma), value(model.get_layer(name).beta)
        assert not gamma[[1, 4]].any() and not beta[[1, 4]].any()
    side = value(model.get_layer("side").kernel)
    side_dead = [i for i in range(4) if not side[..., i].any()]
    assert 0 in side_dead and len(side_dead) < 4
    assert history.history["group_lasso_zero_units"][-1] == 2 + len(side_dead)
    assert np.all(np.abs(value(model.get_layer("mix").kernel)).sum(axis=(0, 1, 2)) > 0)  # not penalized
    small = shrink(model, {"stem": 2 / 6, "side": len(side_dead) / 4})
    np.testing.assert_allclose(value(small(x)), value(model(x)), atol=1e-5)


def test_group_lasso_step_is_the_weighted_proximal_step_by_hand():
    """One step on Dense(3) -> Dense(2): unit j of the first layer is its
    kernel column (4 weights) and its bias, so p = 5 and the step is
    w * max(0, 1 - lr * lambda * sqrt(5) / ||w||); the output layer's units
    are not prunable and its kernel is left alone."""
    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, name="hidden"), L.Dense(2, name="out")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(0)
    kernel, bias, head = rng.normal(size=(4, 3)), rng.normal(size=3), rng.normal(size=(3, 2))
    kernel[:, 2] *= 0.01  # a weak unit, below the threshold
    bias[2] *= 0.01
    model.get_layer("hidden").set_weights([kernel, bias])
    model.get_layer("out").set_weights([head, np.zeros(2)])
    callback = GroupLasso(0.5)
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    callback.on_train_batch_end(0)
    threshold = 0.1 * 0.5 * np.sqrt(5)
    norms = np.sqrt((kernel**2).sum(0) + bias**2)
    factor = np.maximum(0.0, 1 - threshold / norms)
    assert factor[2] == 0 and factor[:2].min() > 0
    new_kernel, new_bias = model.get_layer("hidden").get_weights()
    np.testing.assert_allclose(new_kernel, kernel * factor, rtol=1e-5)
    np.testing.assert_allclose(new_bias, bias * factor, rtol=1e-5)
    np.testing.assert_allclose(model.get_layer("out").get_weights()[0], head, rtol=1e-6)


def test_group_lasso_errors():
    keras.backend.clear_session()
    model = compile_for_test(small_cnn())
    with pytest.raises(ValueError, match="GroupLasso: layers names 'pool', which is not a Dense or Conv"):
        model.fit(*toy_data(8), verbose=0, callbacks=[GroupLasso(1.0, layers="pool")])
    with pytest.raises(ValueError, match="GroupLasso cannot penalize layer 'logits'"):
        model.fit(*toy_data(8), verbose=0, callbacks=[GroupLasso(1.0, layers="logits")])


# -- the layer table: a new layer kind is one row -----------------------------------


def test_a_new_layer_kind_is_one_table_row(monkeypatch):
    """SeparableConv2D has no built-in row; registering one makes the graph
    walk, the slicing, the l1 criterion and GroupLasso handle it."""
    keras.backend.clear_session()
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 1, name="pw")(inputs)
    x = L.SeparableConv2D(6, 3, depth_multiplier=2, padding="same", name="sep")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(x)))
    with pytest.raises(ValueError, match=r"layer 'sep' \(SeparableConv2D\) has no structured-pruning rule"):
        shrink(model, {"pw": 0.25})
    monkeypatch.setitem(S.LAYER_KINDS, L.SeparableConv2D, S.LayerKind(
        "units",
        {
            "depthwise_kernel": S.Axes(inputs=-2),  # (h, w, inputs, multiplier)
            # (1, 1, inputs * multiplier, units): input channel c at c * multiplier + m
            "pointwise_kernel": S.Axes(units=-1, inputs=-2, repeat="depth_multiplier"),
            "bias": S.Axes(units=-1),
        },
        width="filters",
        kernel="pointwise_kernel",
    ))  # fmt: skip
    groups = {g.producers: g for g in dependency_groups(model)}
    assert groups[("pw",)].layers == ("pw", "sep") and groups[("sep",)].layers == ("sep", "out")
    pw_kernel, pw_bias = model.get_layer("pw").get_weights()
    pw_kernel[..., 1], pw_bias[1] = 0, 0
    model.get_layer("pw").set_weights([pw_kernel, pw_bias])
    depthwise, pointwise, bias = model.get_layer("sep").get_weights()
    pointwise[..., [2, 4]], bias[[2, 4]] = 0, 0
    model.get_layer("sep").set_weights([depthwise, pointwise, bias])
    small = shrink(model, {"pw": 0.25, "sep": 2 / 6})
    new_depthwise, new_pointwise, new_bias = small.get_layer("sep").get_weights()
    np.testing.assert_array_equal(new_depthwise, np.delete(depthwise, 1, axis=2))
    # pw's unit 1 is the separable layer's input channel 1: pointwise rows 2 and 3.
    expected = np.delete(np.delete(pointwise, [2, 3], axis=2), [2, 4], axis=3)
    np.testing.assert_array_equal(new_pointwise, expected)
    np.testing.assert_array_equal(new_bias, np.delete(bias, [2, 4]))
    assert small.get_layer("out").kernel.shape == (4, 2)
    x = images()
    np.testing.assert_allclose(value(small(x)), value(model(x)), atol=1e-5)
    # GroupLasso: a unit of 'sep' is its pointwise column (4 inputs x 2 = 8 weights) and
    # its bias, p = 9; its depthwise kernel belongs to its inputs, not to a unit.
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    _, pointwise, bias = model.get_layer("sep").get_weights()
    callback = GroupLasso(0.5, layers=["sep"])
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    callback.on_train_batch_end(0)
    norms = np.sqrt((pointwise**2).sum(axis=(0, 1, 2)) + bias**2)
    factor = np.maximum(0.0, 1 - 0.1 * 0.5 * np.sqrt(9) / np.maximum(norms, 1e-30))
    after = model.get_layer("sep").get_weights()
    np.testing.assert_array_equal(after[0], depthwise)  # no unit axis: not part of a unit
    np.testing.assert_allclose(after[1], pointwise * factor, rtol=1e-5)
    np.testing.assert_allclose(after[2], bias * factor, rtol=1e-5, atol=1e-7)


class ChannelScale(L.Layer):
    """A custom layer: each channel times its own weight."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


def test_a_custom_layer_class_is_one_table_row(monkeypatch):
    keras.backend.clear_session()
    inputs = keras.Input((5,))
    x = ChannelScale(name="cs")(L.Dense(6, name="a")(inputs))
    model = keras.Model(inputs, L.Dense(2, name="out")(x))
    gamma = np.array([1.0, 0.1, 2.0, 0.2, 1.0, 3.0])
    model.get_layer("cs").set_weights([gamma])
    assert not dependency_groups(model)[0].prunable
    monkeypatch.setitem(S.LAYER_KINDS, ChannelScale, S.LayerKind(
        "channelwise", {"scale": S.Axes(inputs=-1)}, scale="scale", follows_unit=True
    ))  # fmt: skip
    # bn_gamma reads the row's scale: the units with the smallest |scale| go.
    small = shrink(model, {"a": 2 / 6}, criterion="bn_gamma")
    np.testing.assert_array_equal(value(small.get_layer("cs").scale), np.delete(gamma, [1, 3]))
    kernel = value(model.get_layer("out").kernel)
    np.testing.assert_array_equal(value(small.get_layer("out").kernel), np.delete(kernel, [1, 3], axis=0))
    with pytest.raises(ValueError, match="LayerKind: role must be one of 'units'.*got 'scale'"):
        S.LayerKind("scale")
    with pytest.raises(ValueError, match="a 'units' row needs width= and a kernel="):
        S.LayerKind("units", {"w": S.Axes(units=-1)}, width="units")


# -- the iterative loop -----------------------------------------------------------


def test_iterative_shrink_reaches_the_one_shot_width():
    keras.backend.clear_session()
    model = small_cnn()
    x, y = toy_data(16)
    seen = []

    def fine_tune(m):
        seen.append(widths(m))
        compile_for_test(m).fit(x, y, epochs=1, verbose=0)

    final = iterative_shrink(model, {"conv_b": 0.75, "dense_a": 0.5}, steps=2, fit=fine_tune)
    assert [s["conv_b"] for s in seen] == [5, 2]  # 8 -> 8 - 3 -> 8 - 6
    assert [s["dense_a"] for s in seen] == [12, 8]
    assert widths(final) == widths(shrink(model, {"conv_b": 0.75, "dense_a": 0.5}))
    # round_to reaches every step: 16 - floor(9.6) = 7 units, rounded up to 8.
    rounded = iterative_shrink(model, {"dense_a": 0.6}, steps=2, fit=lambda m: None, round_to=8)
    assert widths(rounded)["dense_a"] == 8 == widths(shrink(model, {"dense_a": 0.6}, round_to=8))["dense_a"]
    with pytest.raises(ValueError, match="iterative_shrink: steps must be an int >= 1, got 0"):
        iterative_shrink(model, 0.5, steps=0, fit=fine_tune)
    with pytest.raises(TypeError, match="iterative_shrink: steps must be an int >= 1, got 2.0"):
        iterative_shrink(model, 0.5, steps=2.0, fit=fine_tune)
    with pytest.raises(TypeError, match="iterative_shrink got unexpected keyword arguments 'round'"):
        iterative_shrink(model, 0.5, steps=2, fit=fine_tune, round=8)
    with pytest.raises(ValueError, match="iterative_shrink: round_to must be an int >= 1, got 0"):
        iterative_shrink(model, 0.5, steps=2, fit=fine_tune, round_to=0)
    other = keras.Sequential([keras.Input((12, 12, 1)), L.Flatten(), L.Dense(3, name="x")])
    with pytest.raises(ValueError, match="after step 1, the model has no layer 'conv_a'.*fit must return"):
        iterative_shrink(model, 0.5, steps=2, fit=lambda m: other)


@pytest.mark.slow
def test_structured_benchmark_quick():
    from test_benchmarks import run_script

    stdout = run_script("structured_benchmark.py", "--quick")
    assert "latency ratio" in stdout
    assert "params ratio" in stdout


def test_data_criteria_read_every_form_of_the_shared_data_adapter():
    """The same samples as arrays, (x, y), a tf.data.Dataset, a generator or a
    dict by input name give the same taylor / apoz choice."""
    import tensorflow as tf

    model = keras.Sequential([keras.Input((6,), name="features"), L.Dense(8, activation="relu", name="hidden"),
                              L.Dense(3, name="out")])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    y = np.arange(32) % 3
    forms = {
        "tuple": (x, y),
        "dataset": tf.data.Dataset.from_tensor_slices((x, y)).batch(8),
        "generator": ((x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)),
        "dict": ({"features": x}, y),
    }
    widths = {}
    for name, data in forms.items():
        small = kc.pruning.shrink(model, 0.5, "taylor", data=data, batch_size=8)
        widths[name] = [w.tolist() for w in small.get_layer("out").get_weights()]
    assert all(w == widths["tuple"] for w in widths.values())
    apoz = [kc.pruning.shrink(model, 0.5, "apoz", data=d).get_layer("hidden").get_weights()[0].tolist()
            for d in (x, {"features": x})]
    assert apoz[0] == apoz[1]
    with pytest.raises(ValueError, match="shrink: data"):
        kc.pruning.shrink(model, 0.5, "apoz", data=np.zeros((4, 5), "float32"))
