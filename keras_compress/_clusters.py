"""Weight sharing arithmetic that clustering and cluster-preserving QAT both
use (one module, so neither technique imports the other).

Centroids come in two shapes: `(k,)`, one set shared by the whole weight
tensor, or `(channels, k)`, one set per output channel (the weight's last
axis, a Conv2D kernel's filters): then an index is the position within its
channel's set."""

import numpy as np
from keras import ops


def assign_to_centroids(weight, centroids):
    """For each weight, the index of its nearest centroid (int32, the
    weight's shape). A value halfway between two centroids goes to the larger
    one, as `np.digitize` over the midpoints would; the centroids need not be
    sorted."""
    if len(centroids.shape) == 2:
        return _assign_per_channel(weight, centroids)
    if centroids.shape[0] == 1:
        return ops.zeros(weight.shape, "int32")
    order = ops.argsort(centroids)
    ordered = ops.take(centroids, order)
    midpoints = (ordered[1:] + ordered[:-1]) / 2
    flat = ops.searchsorted(midpoints, ops.reshape(weight, (-1,)), side="right")
    return ops.reshape(ops.cast(ops.take(order, flat), "int32"), weight.shape)


def _assign_per_channel(weight, centroids):
    channels, k = centroids.shape
    if k == 1:
        return ops.zeros(weight.shape, "int32")
    order = ops.argsort(centroids, axis=-1)
    ordered = ops.take_along_axis(centroids, order, axis=-1)
    midpoints = (ordered[:, 1:] + ordered[:, :-1]) / 2  # (channels, k - 1)
    flat = ops.reshape(weight, (-1, channels))
    # The midpoints at or below each weight: `searchsorted(..., side="right")`
    # of its channel's midpoints (O(weights x k) memory, as tfmot's).
    position = ops.sum(ops.cast(flat[:, :, None] >= midpoints[None], "int32"), axis=-1)
    index = ops.take(ops.reshape(order, (-1,)), position + ops.arange(channels, dtype="int32") * k)
    return ops.reshape(ops.cast(index, "int32"), weight.shape)


def lookup(centroids, indices):
    """The shared values, `centroids[indices]` (each channel's own set when
    `centroids` is `(channels, k)`)."""
    if len(centroids.shape) == 1:
        return ops.take(centroids, indices)
    channels, k = centroids.shape
    flat = ops.reshape(indices, (-1, channels)) + ops.arange(channels, dtype="int32") * k
    return ops.reshape(ops.take(ops.reshape(centroids, (-1,)), flat), indices.shape)


def values_per_channel(kernel, distinct):
    """The most distinct values one output channel (last axis) of the numpy
    `kernel` holds, if its values are shared within each channel and not
    across them (clustered per channel: at most half of the kernel's
    `distinct` values in any channel), else `None`."""
    most = max(len(np.unique(kernel[..., c])) for c in range(kernel.shape[-1]))
    return most if 2 * most <= distinct else None


def shared_values(weight, centroids, indices_variable):
    """Training's clustered weight (tfmot's rule): every weight joins its
    nearest centroid again (written to `indices_variable`), and the result
    is the centroids' values with the gradient also passed straight through
    to `weight` (the centroids get the sum of their members' gradients)."""
    weight = ops.cast(weight, "float32")
    centroids = ops.cast(centroids, "float32")
    indices = assign_to_centroids(weight, ops.stop_gradient(centroids))
    indices_variable.assign(indices)
    return lookup(centroids, indices) + weight - ops.stop_gradient(weight)
