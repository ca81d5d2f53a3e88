"""Low-rank factorization: the SVD arithmetic against hand-worked spectra,
exact reconstruction of low-rank kernels, the truncation error against the
discarded singular values, parameter counts by hand, every model form, the
`.keras` round trip, the `.tflite` against Keras, and bad inputs that leave
the model untouched."""

import re
import warnings

import keras
import numpy as np
import pytest

from conftest import assert_unchanged, small_cnn, snapshot, value
from keras_compress import factorization, to_tflite
from keras_compress.export import predict_tflite
from keras_compress.factorization import svd


def orthonormal(n, k, seed):
    """An n x k matrix with orthonormal columns."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, k)))
    return q


def with_spectrum(n_in, n_out, values, seed=0):
    """An n_in x n_out matrix whose singular values are exactly `values`."""
    k = len(values)
    return orthonormal(n_in, k, seed) @ np.diag(values) @ orthonormal(n_out, k, seed + 1).T


def dense_model(kernel, bias=None, activation=None, name="fc"):
    n_in, n_out = kernel.shape
    model = keras.Sequential([keras.Input((n_in,)), keras.layers.Dense(n_out, activation=activation,
                                                                      use_bias=bias is not None, name=name)])
    model.layers[0].set_weights([kernel.astype("float32")] + ([bias.astype("float32")] if bias is not None else []))
    return model


# -- the arithmetic ----------------------------------------------------------


def test_energy_and_rank_by_hand():
    values = [3.0, 2.0, 1.0]  # squares 9, 4, 1 of 14
    assert svd.retained_energy(values, 1) == pytest.approx(9 / 14)
    assert svd.retained_energy(values, 2) == pytest.approx(13 / 14)
    assert svd.rank_for_energy(values, 0.5) == 1
    assert svd.rank_for_energy(values, 9 / 14) == 1
    assert svd.rank_for_energy(values, 0.65) == 2
    assert svd.rank_for_energy(values, 0.93) == 3
    assert svd.rank_for_energy(values, 1.0) == 3
    assert svd.rank_for_energy([0.0, 0.0], 0.9) == 1 and svd.retained_energy([0.0, 0.0], 1) == 1.0


def test_truncated_svd_of_a_diagonal_keeps_the_largest_values():
    a, b = svd.truncated_svd(np.diag([1.0, 3.0, 2.0]), 2)
    assert a.shape == (3, 2) and b.shape == (2, 3)
    np.testing.assert_allclose(a @ b, np.diag([0.0, 3.0, 2.0]), atol=1e-12)
    # sqrt(S) on both sides: the factors have the same norms.
    np.testing.assert_allclose(np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=1))


# -- Dense -------------------------------------------------------------------


def test_a_rank_one_dense_kernel_is_rebuilt_exactly_at_rank_one():
    rng = np.random.default_rng(0)
    kernel = np.outer(rng.normal(size=8), rng.normal(size=6))
    bias = rng.normal(size=6)
    model = dense_model(kernel, bias, "relu")
    small = factorization.factorize(model, rank=1)
    first, second = small.get_layer("fc").layers
    assert (first.units, first.use_bias, first.activation.__name__) == (1, False, "linear")
    assert (second.units, second.use_bias, second.activation.__name__) == (6, True, "relu")
    # 8 * 6 + 6 = 54 parameters before; 1 * (8 + 6) + 6 = 20 after.
    assert model.count_params() == 54 and small.count_params() == 20
    np.testing.assert_allclose(value(first.kernel) @ value(second.kernel), kernel, atol=1e-5)
    np.testing.assert_array_equal(value(second.bias), bias.astype("float32"))
    x = rng.normal(size=(16, 8)).astype("float32")
    np.testing.assert_allclose(value(small(x)), np.maximum(x @ kernel + bias, 0), atol=1e-5)


def test_truncation_error_is_the_discarded_singular_values():
    # Kernel with singular values 8, 7, ..., 1; the inputs are the 10 basis
    # vectors (orthonormal), so the outputs are the kernel's rows and the squared
    # error is the sum of the discarded squared values: 5^2 + 4^2 + ... + 1^2 = 55.
    kernel = with_spectrum(10, 8, [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    model = dense_model(kernel)
    small = factorization.factorize(model, rank=3)
    x = np.eye(10, dtype="float32")
    error = value(small(x)) - value(model(x))
    assert np.sum(error**2) == pytest.approx(55.0, rel=1e-5)
    row = factorization.factorization_report(model, rank=3)[0]
    assert row.retained_energy == pytest.approx((64 + 49 + 36) / 204)
    assert (row.parameters, row.factorized_parameters) == (80, 3 * 18)


def test_full_rank_layer_pair_reproduces_a_dense():
    rng = np.random.default_rng(1)
    layer = keras.layers.Dense(7, activation="tanh", name="fc")
    layer.build((None, 12))
    layer.set_weights([rng.normal(size=(12, 7)).astype("float32"), rng.normal(size=7).astype("float32")])
    pair = factorization.factorize_layer(layer, rank=7)
    assert isinstance(pair, keras.Sequential) and pair.name == "fc"
    x = rng.normal(size=(32, 12)).astype("float32")
    np.testing.assert_allclose(value(pair(x)), value(layer(x)), atol=1e-5)
    with pytest.raises(ValueError, match=r"factorize_layer: rank must be an int in \[1, 7\] for layer 'fc'"):
        factorization.factorize_layer(layer, rank=8)


def test_energy_picks_the_rank_worked_by_hand():
    # Singular values 4, 3, 2, 1 (squares 16, 9, 4, 1 of 30): 0.5 -> rank 1
    # (16/30), 0.8 -> rank 2 (25/30), 0.9 -> rank 3 (29/30).
    model = dense_model(with_spectrum(20, 4, [4.0, 3.0, 2.0, 1.0]))
    for energy, rank in ((0.5, 1), (0.8, 2), (0.9, 3)):
        row = factorization.factorization_report(model, energy=energy)[0]
        assert row.rank == rank and row.retained_energy == pytest.approx([16, 25, 29][rank - 1] / 30)
        assert factorization.factorize(model, energy=energy).get_layer("fc").layers[0].units == rank
    np.testing.assert_allclose(factorization.singular_values(model)["fc"], [4, 3, 2, 1], atol=1e-5)


# -- Conv2D ------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    dict(strides=2, padding="same"),
    dict(strides=(1, 2), padding="valid", dilation_rate=1),
    dict(padding="same", dilation_rate=2),
])
def test_full_rank_conv_pair_gives_identical_outputs(options):
    rng = np.random.default_rng(2)
    layer = keras.layers.Conv2D(6, (3, 2), activation="relu", name="conv", **options)
    layer.build((None, 9, 9, 4))
    layer.set_weights([rng.normal(size=(3, 2, 4, 6)).astype("float32"), rng.normal(size=6).astype("float32")])
    pair = factorization.factorize_layer(layer, rank=6)  # min(3 * 2 * 4, 6)
    first, second = pair.layers
    assert first.kernel.shape == (3, 2, 4, 6) and second.kernel.shape == (1, 1, 6, 6)
    assert (first.strides, first.padding, first.dilation_rate) == (layer.strides, layer.padding, layer.dilation_rate)
    assert (second.strides, second.use_bias, first.use_bias) == ((1, 1), True, False)
    x = rng.normal(size=(3, 9, 9, 4)).astype("float32")
    np.testing.assert_allclose(value(pair(x)), value(layer(x)), atol=1e-5)


def test_a_low_rank_conv_kernel_in_a_model_is_exact_and_counted_by_hand():
    rng = np.random.default_rng(3)
    model = keras.Sequential([
        keras.Input((10, 10, 4)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling2D(name="pool"),
    ])
    kernel = (rng.normal(size=(36, 2)) @ rng.normal(size=(2, 16))).reshape(3, 3, 4, 16)
    model.layers[0].set_weights([kernel.astype("float32"), rng.normal(size=16).astype("float32")])
    small = factorization.factorize(model, rank=2)
    # 3*3*4*16 + 16 = 592 before; 3*3*4*2 (k x k to rank) + 2*16 + 16 (1x1 with bias) = 120 after.
    assert model.count_params() == 592 and small.count_params() == 120
    x = rng.normal(size=(4, 10, 10, 4)).astype("float32")
    np.testing.assert_allclose(value(small(x)), value(model(x)), atol=1e-4)
    spectrum = factorization.singular_values(model)["conv"]
    np.testing.assert_allclose(spectrum, np.linalg.svd(kernel.reshape(36, 16), compute_uv=False),
                               rtol=1e-5, atol=1e-5 * spectrum[0])  # the kernel is float32


# -- models ------------------------------------------------------------------


def rank_two(layer, seed):
    n_in, n_out = layer.kernel.shape
    rng = np.random.default_rng(seed)
    layer.kernel.assign((rng.normal(size=(n_in, 2)) @ rng.normal(size=(2, n_out))).astype("float32"))


def branchy_model():
    """Two inputs, a Dense shared by both, a nested Sequential, a Concatenate."""
    a, b = keras.Input((16,), name="a"), keras.Input((16,), name="b")
    shared = keras.layers.Dense(16, activation="relu", name="shared")
    inner = keras.Sequential([keras.Input((32,)), keras.layers.Dense(24, name="inner_fc")], name="inner")
    joined = keras.layers.Concatenate(name="join")([shared(a), shared(b)])
    out = keras.layers.Dense(12, name="head")(inner(joined))
    model = keras.Model([a, b], out, name="branchy")
    for i, name in enumerate(("shared", "head")):
        rank_two(model.get_layer(name), i)
    rank_two(inner.layers[0], 5)
    return model


def test_functional_branches_shared_and_nested_layers_keep_their_outputs():
    model = branchy_model()
    before = snapshot(model)
    small = factorization.factorize(model, energy=1.0)  # rank 2 keeps everything and is smaller
    report = factorization.factorization_report(model, energy=1.0)
    assert {r.name: r.rank for r in report} == {"shared": 2, "inner_fc": 2, "head": 2}
    assert small.output_names == model.output_names and [t.name for t in small.inputs] == ["a", "b"]
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(5, 16)).astype("float32") for _ in range(2)]
    np.testing.assert_allclose(value(small(x)), value(model(x)), atol=1e-4)
    # The shared layer stays one layer (one pair), the nested model stays nested.
    assert isinstance(small.get_layer("shared"), keras.Sequential)
    assert isinstance(small.get_layer("inner").get_layer("inner_fc"), keras.Sequential)
    # Parameters: 2 * (16 + 16) + 16 + 2 * (32 + 24) + 24 + 2 * (24 + 12) + 12 = 80 + 136 + 84.
    assert small.count_params() == 300 == report.parameters[1]
    assert_unchanged(model, before)


def test_skipped_layers_are_named_in_a_warning_and_stay():
    model = small_cnn()
    with pytest.warns(UserWarning, match=r"'logits': rank 8 is above its size min\(16, 3\) = 3") as caught:
        small = factorization.factorize(model, rank=8)
    (message,) = [str(w.message) for w in caught if "left as they are" in str(w.message)]
    assert "'conv_a': rank 8 is above its size min(9, 4) = 4" in message
    assert "'conv_b': rank 8 would not make it smaller" in message
    assert type(small.get_layer("logits")) is keras.layers.Dense
    assert isinstance(small.get_layer("dense_a"), keras.Sequential)
    # dense_a: a 72 x 16 kernel (3 x 3 x 8 flattened); 8 * (72 + 16) + 16 = 720 instead of 72 * 16 + 16 = 1168.
    assert small.count_params() == model.count_params() - 1168 + 720


def test_the_report_has_a_row_per_candidate_and_the_totals():
    model = small_cnn()
    with pytest.warns(UserWarning, match="left as they are"):
        report = factorization.factorization_report(model, rank=8)
    assert [r.name for r in report] == ["conv_a", "conv_b", "dense_a", "logits"]
    assert [r.name for r in report.factorized] == ["dense_a"]
    # conv_a 9 * 4 + 4 = 40, conv_b 36 * 8 + 8 = 296, dense_a 72 * 16 + 16 = 1168, logits 16 * 3 + 3 = 51.
    assert [r.parameters for r in report] == [40, 296, 1168, 51]
    assert report.parameters == (1555, 1555 - 1168 + 720)
    lines = str(report).splitlines()
    assert lines[0].split()[:4] == ["layer", "type", "matrix", "rank"]
    assert lines[3].split()[:6] == ["dense_a", "Dense", "72x16", "8", "1,168", "720"]
    assert lines[-1].split() == ["total", "1,555", "1,107"]
    assert report.as_dicts()[2]["retained_energy"] == report[2].retained_energy < 1


def test_the_factorized_model_round_trips_through_a_keras_file(tmp_path):
    model = small_cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        small = factorization.factorize(model, rank={"dense_a": 4, "conv_b": 4})
    path = tmp_path / "small.keras"
    small.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects
    x = np.random.default_rng(0).normal(size=(3, 12, 12, 1)).astype("float32")
    np.testing.assert_array_equal(value(loaded(x)), value(small(x)))
    assert [type(l).__name__ for l in loaded.get_layer("conv_b").layers] == ["Conv2D", "Conv2D"]


def test_the_tflite_file_matches_keras():
    model = small_cnn()
    small = factorization.factorize(model, rank={"dense_a": 4, "conv_b": 4})
    x = np.random.default_rng(0).normal(size=(4, 12, 12, 1)).astype("float32")
    flatbuffer = to_tflite(small)
    np.testing.assert_allclose(predict_tflite(flatbuffer, x), value(small(x)), atol=1e-5)


# -- bad input ---------------------------------------------------------------


@pytest.mark.parametrize("arguments, error, pattern", [
    (dict(rank=0), ValueError, r"factorize: rank must be an int >= 1, got 0"),
    (dict(rank=-2), ValueError, r"rank must be an int >= 1, got -2"),
    (dict(rank=1.5), TypeError, r"rank must be an int >= 1, got 1.5"),
    (dict(rank=True), TypeError, r"rank must be an int >= 1, got True"),
    (dict(rank={"dense_a": 0}), ValueError, r"rank\['dense_a'\] must be an int >= 1, got 0"),
    (dict(rank={"logits": 4}), ValueError, r"rank\['logits'\] must be an int in \[1, 3\] for layer 'logits'"),
    (dict(rank=4, layers=["logits"]), ValueError, r"rank must be an int in \[1, 3\] for layer 'logits'"),
    # dense_a is 72 x 16: rank 14 keeps 14 * 88 = 1232 >= 1152 weights; 13 * 88 = 1144 is smaller.
    (dict(rank={"dense_a": 14}), ValueError,
     r"layer 'dense_a' with rank\['dense_a'\]=14: rank 14 would not make it smaller "
     r"\(14 \* \(72 \+ 16\) = 1,232 >= 72 \* 16 = 1,152 kernel weights; ranks up to 13 do\)"),
    (dict(energy=0.0), ValueError, r"energy must be a number in \(0, 1\], got 0.0"),
    (dict(energy=1.5), ValueError, r"energy must be a number in \(0, 1\], got 1.5"),
    (dict(energy=float("nan")), ValueError, r"energy must be a number in \(0, 1\]"),
    (dict(energy={"dense_a": -0.1}), ValueError, r"energy\['dense_a'\] must be a number in \(0, 1\]"),
    (dict(), ValueError, r"give exactly one of `rank` .* and `energy`"),
    (dict(rank=2, energy=0.9), ValueError, r"give exactly one of `rank`"),
    (dict(rank=2, layers=["nope"]), ValueError, r"'nope' is not a layer of model 'cnn'. Layers that factorize: "
                                                r"conv_a, conv_b, dense_a, logits"),
    (dict(rank=2, layers=["flatten"]), ValueError, r"cannot factorize layer 'flatten': it is a Flatten; factorize "
                                                   r"rewrites Dense, Conv2D \(groups=1\) layers"),
    (dict(rank=2, layers="dense_a"), TypeError, r"layers must be a list of layer names"),
    (dict(rank=2, layers=[]), ValueError, r"layers must name at least one layer"),
    (dict(rank={"dense_a": 2}, layers=["dense_a"]), ValueError, r"layers must be None when rank is a dict"),
    (dict(rank=50), ValueError, r"no layer of model 'cnn' gets smaller with rank=50: 'conv_a': rank 50 is above"),
])
def test_bad_arguments_are_refused_and_the_model_is_unchanged(arguments, error, pattern):
    model = small_cnn()
    before = snapshot(model)
    with pytest.raises(error, match=pattern):
        factorization.factorize(model, **arguments)
    assert_unchanged(model, before)
    with pytest.raises(error, match=re.sub("^factorize: ", "factorization_report: ", pattern)):
        factorization.factorization_report(model, **arguments)
    assert_unchanged(model, before)


def test_layers_that_cannot_factorize_are_refused_by_name():
    grouped = keras.Sequential([keras.Input((6, 6, 4)), keras.layers.Conv2D(8, 3, groups=2, name="grouped")])
    with pytest.raises(ValueError, match=r"cannot factorize layer 'grouped': it is a grouped convolution \(groups=2\)"):
        factorization.factorize(grouped, rank=1, layers=["grouped"])
    with pytest.raises(ValueError, match="has no layer that factorizes"):
        factorization.factorize(grouped, rank=1)
    nan = dense_model(np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match="layer 'fc' .* non-finite"):
        factorization.factorize(nan, rank=1)

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = keras.layers.Dense(3)

        def call(self, x):
            return self.fc(x)

    sub = Subclassed()
    sub(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match=r"subclassed .* factorize_layer\(layer, rank=...\)"):
        factorization.factorize(sub, rank=1)
    with pytest.raises(TypeError, match="factorize expects a keras.Model"):
        factorization.factorize(keras.layers.Dense(3), rank=1)
    with pytest.raises(ValueError, match="factorize_layer cannot factorize layer 'fc2': it is not built"):
        factorization.factorize_layer(keras.layers.Dense(3, name="fc2"), rank=1)
