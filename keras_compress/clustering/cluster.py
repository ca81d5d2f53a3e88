"""Model-level clustering API: `cluster_weights`, `strip_clustering`,
`distinct_values`."""

import warnings

import keras
import numpy as np
from keras import ops

from keras_compress import _models
from keras_compress._backend import check_backend
from keras_compress.clustering import centroids as centroids_lib
from keras_compress.clustering.wrapper import (
    SUPPORTED_LAYER_NAMES,
    ClusterWeights,
    check_number_of_clusters,
    check_weight_size,
    clusterable_weights,
    describe,
    per_channel_kernels,
    why_not_clusterable,
)

_LAYER_API = "keras_compress.clustering.ClusterWeights (or cluster_weights on a layer)"


def cluster_weights(to_cluster, number_of_clusters, cluster_centroids_init=centroids_lib.KMEANS_PLUS_PLUS, *,
                    preserve_sparsity=False, layers=None, seed=None, cluster_per_channel=False):
    """Wraps the clusterable layers of a model (or one layer) in `ClusterWeights`.

    After fine-tuning and `strip_clustering`, each clustered kernel holds at
    most `number_of_clusters` distinct values: the file does not shrink by
    itself, but it compresses (gzip, zip: what an app store or an OTA update
    ships), and a quantization-aware model keeps the clusters in its int8
    file (`kc.quantization.quantize_model(..., preserve_clusters=True)`).

    A model is cloned (the model passed in is not modified); Sequential,
    Functional and nested models are supported. Frozen layers are left
    alone, named in a warning.

    Args:
        to_cluster: a built Sequential or Functional `keras.Model`, a layer,
            or a list of layers (wrapped in place, as when building a model).
        number_of_clusters: distinct values per clustered weight tensor, an
            integer >= 2 and at most the number of entries of every
            clustered weight.
        cluster_centroids_init: `"kmeans++"` (default, as tfmot),
            `"linear"`, `"density-based"` or `"random"`; tfmot's
            `CentroidInitialization` names are accepted too.
        preserve_sparsity: keep exact zeros at zero (for a pruned model);
            zero is then one of the `number_of_clusters` values.
        layers: which layers of a model to cluster: `None` (every
            clusterable layer), a name, a class, a list of names and
            classes, or a predicate `fn(layer) -> bool`.
        seed: seed of the random initializations (`"kmeans++"`, `"random"`).
        cluster_per_channel: `True` gives each output channel (filter) of a
            Conv2D kernel its own `number_of_clusters` centroids (tfmot's
            option, for the same layers). Other clustered weights keep one
            set per tensor; the layers that have no Conv2D kernel are named
            in a warning. Keep `to_tflite`'s per-channel int8 (its default)
            for such a model: each channel then keeps at most
            `number_of_clusters` int8 values. Default False.

    Returns:
        The model with `ClusterWeights` layers (a clone), or the wrapper(s).

    Example:

    ```python
    clustered = kc.clustering.cluster_weights(model, 16, "kmeans++")
    clustered.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    clustered.fit(x, y, epochs=2)
    final = kc.clustering.strip_clustering(clustered)
    ```
    """
    check_backend("cluster_weights")
    number_of_clusters = check_number_of_clusters("cluster_weights", number_of_clusters)
    cluster_centroids_init = centroids_lib.check_method("cluster_weights", cluster_centroids_init)
    if not isinstance(cluster_per_channel, bool):
        raise TypeError(f"cluster_weights: cluster_per_channel must be True or False, got {cluster_per_channel!r}.")
    options = dict(number_of_clusters=number_of_clusters, cluster_centroids_init=cluster_centroids_init,
                   preserve_sparsity=preserve_sparsity, seed=seed, cluster_per_channel=cluster_per_channel)
    wrapped = _models.wrap_layers(to_cluster, lambda layer: ClusterWeights(layer, **options))
    if wrapped is not None:
        return wrapped
    _models.check_graph_model(to_cluster, "cluster_weights", _LAYER_API)
    _models.check_finite_weights(to_cluster, "cluster_weights")
    if not isinstance(preserve_sparsity, bool):
        raise TypeError(f"cluster_weights: preserve_sparsity must be True or False, got {preserve_sparsity!r}.")
    selected = _select_layers(to_cluster, layers)
    for layer in selected:
        check_weight_size("cluster_weights", layer, clusterable_weights(layer), number_of_clusters,
                          cluster_per_channel)
    if cluster_per_channel:
        per_tensor = [describe(layer) for layer in selected if not per_channel_kernels(layer)]
        if per_tensor:
            warnings.warn(f"cluster_weights: cluster_per_channel=True applies to Conv2D kernels; "
                          f"{len(per_tensor)} layer(s) keep one set of centroids per weight tensor: "
                          f"{', '.join(per_tensor)}.", stacklevel=2)
    chosen = {id(layer) for layer in selected}

    def transform(layer):
        if id(layer) not in chosen:
            return None
        copy = _models.copy_layer(layer)
        wrapper = ClusterWeights(copy, **options)
        # The wrapper initializes its centroids from the copied weights when
        # it builds: build the copy with them first.
        copy.build_from_config(layer.get_build_config())
        copy.set_weights(layer.get_weights())
        return wrapper, lambda built, source=layer: None

    return _models.clone_model(to_cluster, transform)


def _select_layers(model, layers):
    """The layers to wrap, in model order; raises on an invalid selection."""
    all_layers = list(_models.walk_layers(model))
    clusterable = [l for l in all_layers if why_not_clusterable(l) is None]
    if layers is None:
        wrapped = [l for l in all_layers if isinstance(l, keras.layers.Wrapper) and why_not_clusterable(l)]
        if wrapped:
            raise ValueError(f"cluster_weights cannot cluster layer {describe(wrapped[0])}: "
                             f"{why_not_clusterable(wrapped[0])}.")
        skipped = [l for l in all_layers if l.weights and why_not_clusterable(l)]
        if skipped:
            warnings.warn(f"cluster_weights leaves {len(skipped)} layer(s) with weights unclustered (no clustering "
                          f"rule for their type): {', '.join(describe(l) for l in skipped)}.", stacklevel=3)
        chosen = clusterable
    elif callable(layers) and not isinstance(layers, type):
        chosen = [l for l in clusterable if layers(l)]
    else:
        items = [layers] if isinstance(layers, (str, type)) else list(layers)
        names = {l.name for l in all_layers}
        chosen = []
        for item in items:
            if isinstance(item, str):
                if item not in names:
                    raise ValueError(f"cluster_weights: layers names '{item}', which is not a layer of model "
                                     f"'{model.name}'. Its layers are: {', '.join(sorted(names))}.")
                matches = [l for l in all_layers if l.name == item]
            elif isinstance(item, type) and issubclass(item, keras.layers.Layer):
                matches = [l for l in all_layers if isinstance(l, item)]
            else:
                raise TypeError("cluster_weights: layers must be None, a layer name, a layer class, a list of "
                                f"those, or a predicate; got item {item!r}.")
            for l in matches:
                reason = why_not_clusterable(l)
                if reason:
                    raise ValueError(f"cluster_weights cannot cluster layer {describe(l)}: {reason}.")
                if l not in chosen:
                    chosen.append(l)
    frozen = [l for l in chosen if not l.trainable]
    if frozen:
        warnings.warn(f"cluster_weights leaves {len(frozen)} frozen (trainable=False) layer(s) unclustered: "
                      f"{', '.join(describe(l) for l in frozen)}; training could not fit their centroids.",
                      stacklevel=3)
        chosen = [l for l in chosen if l.trainable]
    if not chosen:
        raise ValueError(f"cluster_weights found nothing to cluster in model '{model.name}' with "
                         f"layers={layers!r}. Clusterable types: {SUPPORTED_LAYER_NAMES}.")
    return chosen


def strip_clustering(model):
    """Removes every `ClusterWeights`, writing the clustered values into the
    layers' weights.

    Returns a plain Keras model (a clone; `model` is not modified) whose
    outputs equal the clustered model's in inference, and whose clustered
    kernels hold at most `number_of_clusters` distinct values. A single
    wrapper gives back a copy of its inner layer.

    Args:
        model: a model containing `ClusterWeights` layers, or one wrapper.
    """
    return _models.strip_wrappers(model, ClusterWeights, _clustered_weights, "strip_clustering")


# quantize_model takes a clustering wrapper off through this hook (the
# clusters are then in the kernels it quantizes), without importing clustering.
_models.register_unwrap(ClusterWeights, strip_clustering)


def _clustered_weights(wrapper):
    values = {id(w): v for w, v in zip(wrapper.clustered_weights, wrapper.clustered_values())}
    return [ops.convert_to_numpy(values.get(id(w), w)) for w in wrapper.layer.weights]


def distinct_values(model):
    """`{layer name: [distinct values of each clustered-kind weight]}` for
    every layer of `model` (wrapped or not) that has kernels clustering
    applies to: how many values a kernel really holds. In a
    `ClusterWeights` it counts the clustered values."""
    counts = {}
    for layer in _models.walk_layers(model):
        if isinstance(layer, ClusterWeights):
            counts[layer.name] = [len(np.unique(ops.convert_to_numpy(v))) for v in layer.clustered_values()]
        elif why_not_clusterable(layer) is None and layer.built:
            counts[layer.name] = [len(np.unique(ops.convert_to_numpy(w))) for w in clusterable_weights(layer)]
    return counts
