"""Weight clustering: centroid initializations, the wrapper's training rule,
strip, sparsity-preserving clustering and cluster-preserving QAT, checked in
Keras and in the int8 file."""

import warnings

import keras
import numpy as np
import pytest

from conftest import assert_unchanged, compile_for_test, file_kernels, small_cnn, snapshot, toy_data, value
from keras_compress import to_tflite
from keras_compress.clustering import (
    CentroidInitialization,
    ClusterWeights,
    cluster_weights,
    distinct_values,
    strip_clustering,
)
from keras_compress.clustering.centroids import initial_centroids, nearest
from keras_compress._clusters import assign_to_centroids
from keras_compress.pruning import ConstantSparsity, UpdatePruningStep, prune_low_magnitude, strip_pruning
from keras_compress.quantization import QuantizeWrapper, quantize_model


# -- centroid initializations, by hand -----------------------------------------

def test_linear_centroids_are_evenly_spaced_between_min_and_max():
    np.testing.assert_allclose(initial_centroids([0.3, -1.0, 1.0, 0.0], 5, "linear"), [-1, -0.5, 0, 0.5, 1])


def test_density_based_centroids_are_the_mid_quantiles():
    values = np.arange(100, dtype=float)  # quantile q of 0..99 is 99 q
    np.testing.assert_allclose(initial_centroids(values, 4, "density-based"), [12.375, 37.125, 61.875, 86.625],
                               rtol=1e-6)


def test_random_centroids_lie_in_the_range_and_follow_the_seed():
    values = np.linspace(-2, 3, 50)
    a, b = initial_centroids(values, 8, "random", seed=3), initial_centroids(values, 8, "random", seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.min() >= -2 and a.max() <= 3 and np.all(np.diff(a) >= 0)
    assert not np.array_equal(a, initial_centroids(values, 8, "random", seed=4))


def test_kmeans_plus_plus_puts_one_centroid_in_each_separated_group():
    rng = np.random.default_rng(0)
    groups = np.concatenate([c + 0.01 * rng.standard_normal(200) for c in (-5.0, 0.0, 7.0)])
    for seed in range(5):
        found = initial_centroids(groups, 3, "kmeans++", seed=seed)
        np.testing.assert_allclose(found, [-5, 0, 7], atol=0.05)


@pytest.mark.parametrize("name, canonical", [
    ("CentroidInitialization.KMEANS_PLUS_PLUS", "kmeans++"), ("kmeans_plus_plus", "kmeans++"),
    ("CentroidInitialization.DENSITY_BASED", "density-based"), ("LINEAR", "linear"),
    (CentroidInitialization.RANDOM, "random"),
])
def test_tfmot_spellings_of_the_initializations(name, canonical):
    layer = ClusterWeights(keras.layers.Dense(4), 2, name)
    assert layer.cluster_centroids_init == canonical


def test_nearest_by_hand_with_ties_to_the_larger_centroid():
    centroids = [1.0, -1.0, 0.0]  # unsorted on purpose
    got = nearest([-0.9, -0.5, 0.2, 0.5, 3.0], centroids)
    np.testing.assert_array_equal(got, [1, 2, 2, 0, 0])  # -0.5 and 0.5 are ties: the larger side


def test_keras_assignment_equals_the_numpy_one():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((7, 5, 3)).astype("float32")
    centroids = rng.standard_normal(9).astype("float32")
    got = value(assign_to_centroids(keras.ops.convert_to_tensor(weight), keras.ops.convert_to_tensor(centroids)))
    np.testing.assert_array_equal(got, nearest(weight, centroids))
    # And it is the nearest centroid, by brute force.
    brute = np.argmin(np.abs(weight[..., None] - centroids), axis=-1)
    np.testing.assert_array_equal(got, brute)


def test_per_channel_assignment_by_hand_and_by_brute_force():
    # Two channels (the last axis), each with its own centroids, unsorted.
    centroids = np.array([[2.0, 0.0], [1.0, 3.0]], "float32")
    weight = np.array([[1.0, 2.0], [0.4, 2.5], [5.0, -1.0]], "float32")
    # Channel 0: 1.0 is a tie between 0 and 2 (the larger: index 0), 0.4 -> 0.0
    # (index 1), 5.0 -> 2.0. Channel 1: 2.0 a tie (3.0, index 1), 2.5 -> 3.0, -1 -> 1.0.
    np.testing.assert_array_equal(nearest(weight, centroids), [[0, 1], [1, 1], [0, 0]])
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((3, 3, 4, 6)).astype("float32")
    centroids = rng.standard_normal((6, 5)).astype("float32")
    got = nearest(weight, centroids)
    brute = np.stack([np.argmin(np.abs(weight[..., c, None] - centroids[c]), axis=-1) for c in range(6)], -1)
    np.testing.assert_array_equal(got, brute)
    from keras_compress._clusters import lookup

    shared = value(lookup(keras.ops.convert_to_tensor(centroids), keras.ops.convert_to_tensor(got)))
    np.testing.assert_array_equal(shared, np.stack([centroids[c][got[..., c]] for c in range(6)], -1))


# -- the wrapper ------------------------------------------------------------------

def dense_model(units=6, inputs=8):
    return keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(units, name="dense"),
                             keras.layers.Dense(3, name="logits")])


def test_inference_computes_with_the_centroids_at_the_stored_indices():
    model = dense_model()
    clustered = cluster_weights(model, 4, "linear")
    wrapper = clustered.get_layer("cluster_dense")
    centroids, indices = value(wrapper.cluster_centroids[0]), value(wrapper.pulling_indices[0])
    kernel = value(model.get_layer("dense").kernel)
    np.testing.assert_allclose(centroids, np.linspace(kernel.min(), kernel.max(), 4), rtol=1e-6)
    np.testing.assert_array_equal(indices, nearest(kernel, centroids))
    x = np.random.default_rng(0).standard_normal((5, 8)).astype("float32")
    expected = x @ centroids[indices] + value(model.get_layer("dense").bias)
    np.testing.assert_allclose(value(wrapper(x)), expected, rtol=1e-5, atol=1e-6)
    assert distinct_values(clustered) == {"cluster_dense": [4], "cluster_logits": [4]}


@pytest.mark.tf_only  # tf.GradientTape
def test_centroid_gradient_is_the_sum_of_its_members_and_passes_straight_to_the_weights():
    import tensorflow as tf

    layer = keras.layers.Dense(2, use_bias=False)
    layer.build((None, 3))
    layer.kernel.assign(np.array([[0.1, 0.9], [0.12, 1.0], [0.95, 0.11]], "float32"))
    wrapper = ClusterWeights(layer, 2, "linear")
    wrapper.build((None, 3))
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], "float32")
    with tf.GradientTape() as tape:
        loss = keras.ops.sum(wrapper(x, training=True))
    grads = tape.gradient(loss, [wrapper.cluster_centroids[0], layer.kernel])
    per_weight = np.repeat(x.sum(axis=0)[:, None], 2, axis=1)  # d loss / d W_ij = sum_b x_bi
    members = value(wrapper.pulling_indices[0])
    expected = [per_weight[members == c].sum() for c in range(2)]
    np.testing.assert_allclose(value(grads[0]), expected, rtol=1e-6)
    np.testing.assert_allclose(value(grads[1]), per_weight, rtol=1e-6)


def test_fit_keeps_k_values_and_strip_gives_the_same_outputs(tmp_path):
    x, y = toy_data(96)
    clustered = compile_for_test(cluster_weights(small_cnn(), 5, "kmeans++", seed=0))
    before = [value(c).copy() for l in clustered.layers if isinstance(l, ClusterWeights) for c in l.cluster_centroids]
    history = clustered.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    after = [value(c) for l in clustered.layers if isinstance(l, ClusterWeights) for c in l.cluster_centroids]
    assert any(not np.allclose(a, b) for a, b in zip(before, after))  # the centroids trained
    stripped = strip_clustering(clustered)
    assert not any(isinstance(l, ClusterWeights) for l in stripped.layers)
    for name in ("conv_a", "conv_b", "dense_a", "logits"):
        assert len(np.unique(value(stripped.get_layer(name).kernel))) <= 5, name
    np.testing.assert_allclose(stripped.predict(x, verbose=0), clustered.predict(x, verbose=0), atol=1e-5)
    # The file computes the same.
    tflite = to_tflite(stripped)
    from keras_compress import predict_tflite

    np.testing.assert_allclose(predict_tflite(tflite, x), stripped.predict(x, verbose=0), atol=1e-4)
    # A .keras file keeps centroids, assignments and options.
    path = str(tmp_path / "clustered.keras")
    clustered.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), clustered.predict(x, verbose=0), atol=1e-6)
    wrapper = loaded.get_layer("cluster_dense_a")
    assert (wrapper.number_of_clusters, wrapper.cluster_centroids_init, wrapper.seed) == (5, "kmeans++", 0)


def test_config_round_trip():
    wrapper = ClusterWeights(keras.layers.Dense(4, name="d"), 8, "density-based", preserve_sparsity=True, seed=2)
    again = ClusterWeights.from_config(wrapper.get_config())
    assert (again.number_of_clusters, again.cluster_centroids_init, again.preserve_sparsity, again.seed) == (
        8, "density-based", True, 2)
    assert again.get_config() == wrapper.get_config()


@pytest.mark.tf_only  # tf.GradientTape
def test_per_channel_centroid_gradient_is_the_sum_of_its_channels_members():
    import tensorflow as tf

    layer = keras.layers.Conv2D(2, 1, use_bias=False)
    layer.build((None, 1, 1, 3))
    layer.kernel.assign(np.array([[0.1, 0.9], [0.12, 1.0], [0.95, 0.11]], "float32").reshape(1, 1, 3, 2))
    wrapper = ClusterWeights(layer, 2, "linear", cluster_per_channel=True)
    wrapper.build((None, 1, 1, 3))
    centroids = value(wrapper.cluster_centroids[0])
    # Each filter's own linear spread: filter 0 holds 0.1, 0.12, 0.95; filter 1 holds 0.9, 1.0, 0.11.
    np.testing.assert_allclose(centroids, [[0.1, 0.95], [0.11, 1.0]], rtol=1e-6)
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], "float32").reshape(2, 1, 1, 3)
    with tf.GradientTape() as tape:
        loss = keras.ops.sum(wrapper(x, training=True))
    grads = tape.gradient(loss, wrapper.cluster_centroids[0])
    per_weight = x.reshape(2, 3).sum(axis=0)  # d loss / d W_i,o = sum_b x_bi, for both filters
    members = value(wrapper.pulling_indices[0]).reshape(3, 2)
    expected = [[per_weight[members[:, o] == c].sum() for c in range(2)] for o in range(2)]
    np.testing.assert_allclose(value(grads), expected, rtol=1e-6)


def test_per_channel_clustering_keeps_k_values_per_filter_through_strip_file_and_cqat(tmp_path):
    x, y = toy_data(96)
    with pytest.warns(UserWarning, match=r"applies to Conv2D kernels; 2 layer\(s\) keep one set.*'dense_a' \(Dense\)"):
        clustered = cluster_weights(small_cnn(), 4, "kmeans++", seed=0, cluster_per_channel=True)
    compile_for_test(clustered)
    shapes = {l.name: tuple(l.cluster_centroids[0].shape) for l in clustered.layers if isinstance(l, ClusterWeights)}
    assert shapes == {"cluster_conv_a": (4, 4), "cluster_conv_b": (8, 4), "cluster_dense_a": (4,),
                      "cluster_logits": (4,)}
    clustered.fit(x, y, batch_size=16, epochs=2, verbose=0)
    stripped = strip_clustering(clustered)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), clustered.predict(x, verbose=0), atol=1e-5)
    for name in ("conv_a", "conv_b"):
        kernel = value(stripped.get_layer(name).kernel)
        assert max(len(np.unique(kernel[..., c])) for c in range(kernel.shape[-1])) <= 4
        assert len(np.unique(kernel)) > 4  # each filter its own values
    path = str(tmp_path / "per_channel.keras")
    clustered.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), clustered.predict(x, verbose=0), atol=1e-6)
    assert loaded.get_layer("cluster_conv_b").cluster_per_channel is True
    # Per-channel int8 (the default) keeps each filter's 4 values as 4 int8
    # values, and to_tflite does not warn about the per-channel kernels.
    with pytest.warns(UserWarning, match="hold few shared values") as caught:
        conv_a, conv_b, _, _ = file_kernels(to_tflite(stripped, quantization="int8", representative_data=x))
    assert "conv_b" not in str(caught[0].message) and "conv_a" not in str(caught[0].message)
    for kernel in (conv_a, conv_b):  # TFLite layout: filters first
        assert max(len(np.unique(k)) for k in kernel) <= 4
    # Cluster-preserving QAT finds the per-filter clusters and keeps them.
    qat = compile_for_test(quantize_model(stripped, preserve_clusters=True))
    wrappers = {w.layer.name: w for w in qat.layers if isinstance(w, QuantizeWrapper)}
    assert [(w.clusters, w.cluster_per_channel) for w in wrappers.values()] == [(4, True), (4, True), (4, False),
                                                                               (4, False)]
    np.testing.assert_array_equal(value(wrappers["conv_b"].clustered_kernel()), value(stripped.get_layer("conv_b").kernel))
    qat.fit(x, y, batch_size=16, epochs=2, verbose=0)
    kernels = file_kernels(to_tflite(qat, quantization="int8"))
    for kernel in kernels[:2]:
        assert kernel.dtype == np.int8 and max(len(np.unique(k)) for k in kernel) <= 4
    assert all(len(np.unique(k)) <= 4 for k in kernels[2:])
    config = wrappers["conv_b"].get_config()
    assert QuantizeWrapper.from_config(config).get_config() == config


def test_per_channel_quantize_wrapper_needs_clusters_and_a_conv2d():
    with pytest.raises(ValueError, match="cluster_per_channel=True needs clusters= .* on a Dense"):
        QuantizeWrapper(keras.layers.Dense(3, name="d"), clusters=4, cluster_per_channel=True)
    with pytest.raises(ValueError, match="cluster_per_channel=True needs clusters="):
        QuantizeWrapper(keras.layers.Conv2D(3, 3), cluster_per_channel=True)
    with pytest.raises(TypeError, match="cluster_per_channel must be a bool"):
        QuantizeWrapper(keras.layers.Conv2D(3, 3), clusters=4, cluster_per_channel=1)


def pruned_small_cnn(x, y):
    pruned = compile_for_test(prune_low_magnitude(small_cnn(), ConstantSparsity(0.5, begin_step=0)))
    pruned.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    return strip_pruning(pruned)


def test_preserve_sparsity_keeps_every_zero_and_zero_is_one_of_the_k_values():
    x, y = toy_data(96)
    pruned = pruned_small_cnn(x, y)
    zeros = {n: value(pruned.get_layer(n).kernel) == 0 for n in ("conv_a", "conv_b", "dense_a", "logits")}
    clustered = compile_for_test(cluster_weights(pruned, 4, preserve_sparsity=True, seed=0))
    clustered.fit(x, y, batch_size=16, epochs=2, verbose=0)
    stripped = strip_clustering(clustered)
    for name, was_zero in zeros.items():
        kernel = value(stripped.get_layer(name).kernel)
        np.testing.assert_array_equal(kernel == 0, was_zero, err_msg=name)
        assert len(np.unique(kernel[kernel != 0])) <= 3, name
    # Without it, zeros join their nearest centroid (linear centroids miss 0).
    plain = strip_clustering(cluster_weights(pruned, 4, "linear"))
    dense = value(pruned.get_layer("dense_a").kernel)
    assert 0 not in np.linspace(dense.min(), dense.max(), 4)
    assert np.count_nonzero(value(plain.get_layer("dense_a").kernel) == 0) == 0


def test_recurrent_embedding_and_attention_layers_cluster_through_their_sublayers():
    inputs = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(50, 8, name="embed")(inputs)
    h = keras.layers.MultiHeadAttention(2, 4, name="attention")(h, h)
    h = keras.layers.LSTM(5, name="lstm")(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(h))
    clustered = cluster_weights(model, 4, "linear")
    counts = distinct_values(clustered)
    assert counts["cluster_embed"] == [4] and counts["cluster_lstm"] == [4, 4]
    assert counts["cluster_attention"] == [4, 4, 4, 4]  # query, key, value, output kernels
    x = np.random.default_rng(0).integers(0, 50, (4, 6))
    stripped = strip_clustering(clustered)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), clustered.predict(x, verbose=0), atol=1e-5)


def test_clustering_params_dict_and_layer_forms():
    params = {"number_of_clusters": 3, "cluster_centroids_init": "CentroidInitialization.LINEAR",
              "preserve_sparsity": False, "cluster_per_channel": False}
    model = cluster_weights(dense_model(), **params, layers=["dense"])
    assert [type(l).__name__ for l in model.layers] == ["ClusterWeights", "Dense"]
    wrapped = cluster_weights(keras.layers.Dense(4), 3)
    built = keras.Sequential([keras.Input((5,)), wrapped])
    assert distinct_values(built) == {wrapped.name: [3]}


# -- bad input: a clear error, nothing modified ------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"number_of_clusters": 1}, "number_of_clusters must be an integer >= 2"),
    ({"number_of_clusters": 0}, "number_of_clusters must be an integer >= 2"),
    ({"number_of_clusters": 2.5}, "number_of_clusters must be an integer >= 2"),
    ({"number_of_clusters": True}, "number_of_clusters must be an integer >= 2"),
    ({"number_of_clusters": 4, "cluster_centroids_init": "kmeans"}, "cluster_centroids_init must be one of"),
    ({"number_of_clusters": 4, "cluster_per_channel": "yes"}, "cluster_per_channel must be True or False"),
    # conv_a per channel: 3 x 3 x 1 = 9 weights per filter.
    ({"number_of_clusters": 10, "cluster_per_channel": True},
     "layer 'conv_a' (Conv2D) has weight 'kernel' of 9 values per output channel (cluster_per_channel=True)"),
    ({"number_of_clusters": 4, "layers": ["nope"]}, "layers names 'nope'"),
    ({"number_of_clusters": 4, "layers": [keras.layers.Flatten]}, "no clustering rule"),
    ({"number_of_clusters": 4, "preserve_sparsity": "yes"}, "preserve_sparsity must be True or False"),
    # conv_a: 3 x 3 x 1 x 4 = 36 weights.
    ({"number_of_clusters": 37}, "layer 'conv_a' (Conv2D) has weight 'kernel' of 36 values, fewer than"),
])
def test_bad_arguments_are_refused_and_the_model_is_untouched(kwargs, message):
    model = small_cnn()
    before = snapshot(model)
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        cluster_weights(model, **kwargs)
    assert_unchanged(model, before)


def test_wrapped_layers_are_refused_with_the_way_out():
    pruned = prune_low_magnitude(dense_model(), ConstantSparsity(0.5, begin_step=0))
    before = snapshot(pruned)
    with pytest.raises(ValueError, match="strip it first"):
        cluster_weights(pruned, 4)
    assert_unchanged(pruned, before)
    with pytest.raises(ValueError, match="already a ClusterWeights"):
        cluster_weights(cluster_weights(dense_model(), 4), 4)


# -- cluster-preserving QAT ------------------------------------------------------

def test_cluster_preserving_qat_keeps_k_int8_values_per_kernel_in_the_file(tmp_path):
    x, y = toy_data(96)
    clustered = compile_for_test(cluster_weights(small_cnn(), 6, seed=0))
    clustered.fit(x, y, batch_size=16, epochs=1, verbose=0)
    stripped = strip_clustering(clustered)
    qat = compile_for_test(quantize_model(stripped, preserve_clusters=True))
    wrappers = [l for l in qat.layers if isinstance(l, QuantizeWrapper)]
    assert [w.clusters for w in wrappers] == [6, 6, 6, 6]
    np.testing.assert_array_equal(value(wrappers[2].clustered_kernel()), value(stripped.get_layer("dense_a").kernel))
    before = [value(w.cluster_centroids).copy() for w in wrappers]
    qat.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert any(not np.allclose(value(w.cluster_centroids), b) for w, b in zip(wrappers, before))
    for w in wrappers:  # each entry keeps its centroid
        kernel = value(w.clustered_kernel())
        np.testing.assert_array_equal(kernel, value(w.cluster_centroids)[value(w.cluster_indices)])
        assert len(np.unique(kernel)) <= 6
    kernels = file_kernels(to_tflite(qat, quantization="int8"))
    assert len(kernels) == 4
    for kernel in kernels:
        assert kernel.dtype == np.int8 and len(np.unique(kernel)) <= 6
    # Plain QAT of the same model re-spreads the values.
    plain = compile_for_test(quantize_model(stripped))
    plain.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert max(len(np.unique(value(w.kernel_variable))) for w in plain.layers if isinstance(w, QuantizeWrapper)) > 6
    # The .keras file keeps the clusters.
    path = str(tmp_path / "cqat.keras")
    qat.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), qat.predict(x, verbose=0), atol=1e-5)
    assert loaded.get_layer(wrappers[2].name).clusters == 6


def test_cluster_preserving_qat_of_a_pruned_clustered_model_keeps_the_zeros():
    x, y = toy_data(96)
    pruned = pruned_small_cnn(x, y)
    stripped = strip_clustering(cluster_weights(pruned, 4, preserve_sparsity=True, seed=0))
    zero = value(stripped.get_layer("dense_a").kernel) == 0
    qat = compile_for_test(quantize_model(stripped, preserve_clusters=True))
    qat.fit(x, y, batch_size=16, epochs=2, verbose=0)
    kernels = file_kernels(to_tflite(qat, quantization="int8"))
    dense = kernels[2]  # TFLite layout: (out, in)
    np.testing.assert_array_equal(dense.T == 0, zero)
    assert all(len(np.unique(k)) <= 4 for k in kernels)


def test_preserve_clusters_names_the_kernels_it_cannot_keep():
    model = dense_model()  # unclustered: every kernel value distinct
    model.get_layer("logits").kernel.assign(np.round(value(model.get_layer("logits").kernel), 1))
    with pytest.warns(UserWarning, match=r"cannot keep the clusters of 1 layer.*'dense' \(48 distinct values in 48\)"):
        qat = quantize_model(model, preserve_clusters=True)
    assert [getattr(l, "clusters", None) for l in qat.layers if isinstance(l, QuantizeWrapper)][0] is None
    with pytest.raises(TypeError, match="preserve_clusters must be a bool"):
        quantize_model(model, preserve_clusters="yes")
    with pytest.raises(ValueError, match="clusters must be None or an integer >= 1"):
        QuantizeWrapper(keras.layers.Dense(3), clusters=0)


def test_per_tensor_ptq_keeps_a_clustered_kernels_values_and_per_channel_spreads_them():
    x, y = toy_data(96)
    stripped = strip_clustering(cluster_weights(small_cnn(), 6, "linear"))
    per_channel = file_kernels(to_tflite(stripped, quantization="int8", representative_data=x))
    per_tensor = file_kernels(to_tflite(stripped, quantization="int8", representative_data=x, per_channel=False))
    assert all(len(np.unique(k)) <= 6 for k in per_tensor)
    # Per channel, each output channel has its own scale: the same 6 float
    # values become different int8 values from channel to channel.
    assert max(len(np.unique(k)) for k in per_channel) > 6
    dynamic = file_kernels(to_tflite(stripped, quantization="dynamic", per_channel=False))
    assert any(k.dtype == np.int8 and len(np.unique(k)) <= 6 for k in dynamic)


@pytest.mark.parametrize("kwargs", [{"per_channel": "no"}, {"per_channel": False, "quantization": None},
                                    {"per_channel": False, "quantization": "float16"}])
def test_per_channel_argument_is_checked(kwargs):
    with pytest.raises((TypeError, ValueError), match="per_channel"):
        to_tflite(small_cnn(), **kwargs)


def test_per_channel_ptq_of_a_clustered_model_says_so_and_a_pruned_one_does_not():
    x, y = toy_data(96)
    stripped = strip_clustering(cluster_weights(small_cnn(), 6, "linear"))
    with pytest.warns(UserWarning, match=r"'dense_a' \(6 values\).*per_channel=False"):
        to_tflite(stripped, quantization="int8", representative_data=x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        to_tflite(stripped, quantization="int8", representative_data=x, per_channel=False)
        # Pruned, not clustered: its non-zero weights are all different.
        to_tflite(pruned_small_cnn(x, y), quantization="int8", representative_data=x)
