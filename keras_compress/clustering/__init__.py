"""Weight clustering for Keras 3 (tfmot's third pillar).

`cluster_weights` wraps layers in `ClusterWeights`: during `fit` every kernel
computes with `number_of_clusters` shared values (trainable centroids, and for
each weight the index of its centroid); `strip_clustering` writes the shared
values into plain layers. The file then compresses well (gzip), and
`kc.quantization.quantize_model(model, preserve_clusters=True)` keeps the
clusters through quantization-aware training into the int8 file.
"""

from keras_compress.clustering.centroids import CentroidInitialization
from keras_compress.clustering.cluster import cluster_weights, distinct_values, strip_clustering
from keras_compress.clustering.wrapper import ClusterWeights

__all__ = [
    "CentroidInitialization",
    "ClusterWeights",
    "cluster_weights",
    "distinct_values",
    "strip_clustering",
]
