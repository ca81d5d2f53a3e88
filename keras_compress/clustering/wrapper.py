"""`ClusterWeights`: a layer wrapper that trains a layer whose kernels take
only `number_of_clusters` distinct values (weight clustering, weight sharing)."""

import keras
import numpy as np
from keras import layers as L
from keras import ops

from keras_compress import _models
from keras_compress._clusters import lookup, shared_values
from keras_compress._wrappers import Wrapper
from keras_compress.clustering import centroids as centroids_lib

# Which weights of which layer types are clustered: the kernels of
# `_models.KERNEL_WEIGHTS`, not the biases (tfmot's rule), or what a layer's
# `get_clusterable_weights()` returns (tfmot's ClusterableLayer protocol: a
# list of `(name, variable)` pairs), or those of the sub-layers it is built
# from (the cell of an LSTM, the projections of a MultiHeadAttention).
SUPPORTED_LAYER_NAMES = _models.kernel_weights_names("get_clusterable_weights")
_rule_for = _models.kernel_attributes


def _has_own_rule(layer):
    return _rule_for(layer) is not None or hasattr(layer, "get_clusterable_weights")


def clusterable_sublayers(layer):
    """`[layer]` when it has a rule of its own, else its nested layers that
    have one, outermost first."""
    return _models.ruled_sublayers(layer, _has_own_rule)


def clusterable_weights(layer):
    """The variables of a built `layer` that clustering shares out."""
    weights = []
    for sub in clusterable_sublayers(layer):
        attributes = _rule_for(sub)
        if attributes is None:
            weights.extend(w for _, w in sub.get_clusterable_weights())
        else:
            weights.extend(getattr(sub, name) for name in attributes)
    return weights


def per_channel_kernels(layer):
    """The variables of a built `layer` that `cluster_per_channel=True`
    clusters per output channel: the kernels of its Conv2D (sub)layers (the
    int8 converter scales a Conv2D kernel per output channel, so each channel
    keeps its own values there)."""
    return [sub.kernel for sub in clusterable_sublayers(layer) if isinstance(sub, L.Conv2D)]


def describe(layer):
    return f"'{layer.name}' ({type(layer).__name__})"


def why_not_clusterable(layer):
    """`None` if `layer` can be clustered, else the reason (a clause)."""
    if isinstance(layer, ClusterWeights):
        return "it is already a ClusterWeights wrapper"
    if _models.is_removable_wrapper(layer):
        return f"it is a {type(layer).__name__}; strip it first (strip_pruning)"
    if isinstance(layer, keras.layers.Wrapper) and getattr(layer, "_kc_quantization_aware", False):
        return "it is quantization-aware; cluster before quantize_model"
    if getattr(layer, "quantization_mode", None):
        return f"it is quantized ({layer.quantization_mode}); cluster before quantizing"
    if not layer.built and isinstance(layer, L.MultiHeadAttention):
        return None
    if not clusterable_sublayers(layer):
        return f"it has no clustering rule. Clusterable types: {SUPPORTED_LAYER_NAMES}"
    return None


def check_number_of_clusters(where, number_of_clusters):
    if isinstance(number_of_clusters, bool) or not isinstance(number_of_clusters, (int, np.integer)) \
            or number_of_clusters < 2:
        raise ValueError(f"{where}: number_of_clusters must be an integer >= 2, got {number_of_clusters!r}.")
    return int(number_of_clusters)


def check_weight_size(where, layer, weights, number_of_clusters, per_channel=False):
    """Raises when a weight of `layer` has fewer entries than clusters (with
    `per_channel`, when an output channel of a Conv2D kernel has)."""
    per_channel = {id(w) for w in per_channel_kernels(layer)} if per_channel else set()
    for w in weights:
        size = int(np.prod(w.shape))
        what = "values"
        if id(w) in per_channel:
            size, what = size // int(w.shape[-1]), "values per output channel (cluster_per_channel=True)"
        if size < number_of_clusters:
            raise ValueError(
                f"{where}: layer {describe(layer)} has weight '{w.name}' of {size} {what}, fewer than "
                f"number_of_clusters={number_of_clusters}; give at most {size} clusters, or leave the "
                "layer out (layers=)."
            )


@keras.saving.register_keras_serializable(package="keras_compress")
class ClusterWeights(Wrapper):
    """Trains a layer whose kernels take at most `number_of_clusters` values.

    tfmot's design: each clustered weight gets a vector of centroids
    (trainable) and, for every entry, the index of its centroid
    (non-trainable). The layer computes with `centroids[indices]`. In
    training the original weights are kept and trained too (the gradient of
    the clustered weight passes straight through to them), and every step
    assigns each weight to its nearest centroid again, so weights can move
    between clusters; a centroid's gradient is the sum of its members'. In
    inference the stored assignments are read, so the layer computes exactly
    the clustered weights that `strip_clustering` writes into it.

    Biases are not clustered. Clustered weights: the kernels of Dense,
    EinsumDense, the convolutions (both kernels of a separable one),
    Embedding tables, the kernel and recurrent kernel of LSTM / GRU /
    SimpleRNN cells, and what a custom layer's `get_clusterable_weights()`
    returns.

    Args:
        layer: the layer to cluster.
        number_of_clusters: distinct values per weight tensor, >= 2.
        cluster_centroids_init: `"kmeans++"` (default, as tfmot), `"linear"`,
            `"density-based"` or `"random"` (see
            `keras_compress.clustering.centroids`).
        preserve_sparsity: keep the weights that are exactly zero at zero (a
            pruned model stays pruned): they are held by a fixed mask, and
            `number_of_clusters - 1` centroids share the non-zero weights, so
            zero is one of the `number_of_clusters` values. Default False.
        seed: seed of the random initializations.
        cluster_per_channel: `True` gives each output channel (filter) of a
            Conv2D kernel its own `number_of_clusters` centroids, as tfmot's
            option does (other weights keep one set per tensor). Per-channel
            int8 (`to_tflite`'s default, and quantization-aware training of
            a Conv2D) then keeps at most `number_of_clusters` int8 values per
            channel. Default False.
        **kwargs: base layer arguments (`name`...). The default name is
            `"cluster_" + layer.name`.
    """

    name_prefix = "cluster_"

    def __init__(self, layer, number_of_clusters, cluster_centroids_init=centroids_lib.KMEANS_PLUS_PLUS,
                 preserve_sparsity=False, seed=None, cluster_per_channel=False, **kwargs):
        self.expect_layer(layer, why_not_clusterable)
        where = f"ClusterWeights '{layer.name}'"
        number_of_clusters = check_number_of_clusters(where, number_of_clusters)
        cluster_centroids_init = centroids_lib.check_method(where, cluster_centroids_init)
        if not isinstance(preserve_sparsity, bool):
            raise TypeError(f"{where}: preserve_sparsity must be True or False, got {preserve_sparsity!r}.")
        if not isinstance(cluster_per_channel, bool):
            raise TypeError(f"{where}: cluster_per_channel must be True or False, got {cluster_per_channel!r}.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"{where}: seed must be an int or None, got {seed!r}.")
        if layer.built:
            check_weight_size(where, layer, clusterable_weights(layer), number_of_clusters, cluster_per_channel)
        super().__init__(layer, **kwargs)
        self.number_of_clusters = number_of_clusters
        self.cluster_centroids_init = cluster_centroids_init
        self.preserve_sparsity = preserve_sparsity
        self.seed = seed
        self.cluster_per_channel = cluster_per_channel

    def build(self, input_shape=None):
        super().build(input_shape)
        self._clustered = clusterable_weights(self.layer)
        if not self._clustered:
            raise ValueError(f"ClusterWeights '{self.name}': layer {describe(self.layer)} has no clusterable "
                             f"weights once built. Clusterable types: {SUPPORTED_LAYER_NAMES}.")
        check_weight_size(f"ClusterWeights '{self.name}'", self.layer, self._clustered, self.number_of_clusters,
                          self.cluster_per_channel)
        slots = self.number_of_clusters - 1 if self.preserve_sparsity else self.number_of_clusters
        per_channel = {id(w) for w in per_channel_kernels(self.layer)} if self.cluster_per_channel else set()
        self.cluster_centroids, self.pulling_indices, self.sparsity_masks = [], [], []
        for i, w in enumerate(self._clustered):
            values = ops.convert_to_numpy(ops.cast(w, "float32"))
            mask = (values != 0) if self.preserve_sparsity else np.ones(values.shape, bool)
            seed = None if self.seed is None else self.seed + i
            if id(w) in per_channel:
                start = np.stack([self._initial_centroids(values[..., c], mask[..., c], slots,
                                                          None if seed is None else [seed, c])
                                  for c in range(values.shape[-1])])
            else:
                start = self._initial_centroids(values, mask, slots, seed)
            name = f"{i}_{w.name}"
            centroids = self.add_weight(name=f"cluster_centroids_{name}", shape=start.shape,
                                        initializer="zeros", trainable=True, autocast=False)
            centroids.assign(start)
            indices = self.add_state(f"pulling_indices_{name}", w.shape, dtype="int32",
                                     aggregation="only_first_replica")
            indices.assign(centroids_lib.nearest(values, start))
            self.cluster_centroids.append(centroids)
            self.pulling_indices.append(indices)
            if self.preserve_sparsity:
                self.sparsity_masks.append(self.add_state(f"sparsity_mask_{name}", w.shape, aggregation="none"))
                self.sparsity_masks[-1].assign(mask.astype(np.float32))
            else:
                self.sparsity_masks.append(None)

    def _initial_centroids(self, values, mask, slots, seed):
        shared = values[mask] if mask.any() else np.zeros(1, np.float32)
        return centroids_lib.initial_centroids(shared, slots, self.cluster_centroids_init, seed)

    @property
    def clustered_weights(self):
        """The variables this wrapper clusters, aligned with
        `cluster_centroids` and `pulling_indices`."""
        return list(self._clustered)

    def clustered_values(self):
        """The weights the layer computes with, `centroids[indices]` (times
        the sparsity mask), aligned with `clustered_weights`."""
        return [self._shared(c, idx, m, w.dtype)
                for w, c, idx, m in zip(self._clustered, self.cluster_centroids, self.pulling_indices,
                                        self.sparsity_masks)]

    @staticmethod
    def _shared(centroids, indices, mask, dtype):
        values = lookup(centroids, indices)
        if mask is not None:
            values = values * mask
        return ops.cast(values, dtype)

    def call(self, inputs, *args, training=None, **kwargs):
        replaced = {}
        for w, c, idx, m in zip(self._clustered, self.cluster_centroids, self.pulling_indices, self.sparsity_masks):
            if training:
                original = ops.cast(w, "float32")
                if m is not None:
                    original = original * m
                value = shared_values(original, c, idx)
                if m is not None:
                    value = value * m
                replaced[id(w)] = ops.cast(value, w.dtype)
            else:
                replaced[id(w)] = self._shared(ops.cast(c, "float32"), idx, m, w.dtype)
        mapping = [(v, replaced.get(id(v), v.value)) for v in self.layer.variables]
        outputs, scope = self.call_layer(mapping, inputs, *args, **kwargs)
        self.keep_state(mapping, scope)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update({
            "number_of_clusters": self.number_of_clusters,
            "cluster_centroids_init": self.cluster_centroids_init,
            "preserve_sparsity": self.preserve_sparsity,
            "seed": self.seed,
            "cluster_per_channel": self.cluster_per_channel,
        })
        return config
