"""Weight sharing arithmetic that clustering and cluster-preserving QAT both
use (one module, so neither technique imports the other)."""

from keras import ops


def assign_to_centroids(weight, centroids):
    """For each weight, the index of its nearest centroid (int32, the
    weight's shape). A value halfway between two centroids goes to the larger
    one, as `np.digitize` over the midpoints would; the centroids need not be
    sorted."""
    if centroids.shape[0] == 1:
        return ops.zeros(weight.shape, "int32")
    order = ops.argsort(centroids)
    ordered = ops.take(centroids, order)
    midpoints = (ordered[1:] + ordered[:-1]) / 2
    flat = ops.searchsorted(midpoints, ops.reshape(weight, (-1,)), side="right")
    return ops.reshape(ops.cast(ops.take(order, flat), "int32"), weight.shape)


def shared_values(weight, centroids, indices_variable):
    """Training's clustered weight (tfmot's rule): every weight joins its
    nearest centroid again (written to `indices_variable`), and the result
    is the centroids' values with the gradient also passed straight through
    to `weight` (the centroids get the sum of their members' gradients)."""
    weight = ops.cast(weight, "float32")
    centroids = ops.cast(centroids, "float32")
    indices = assign_to_centroids(weight, ops.stop_gradient(centroids))
    indices_variable.assign(indices)
    return ops.take(centroids, indices) + weight - ops.stop_gradient(weight)
