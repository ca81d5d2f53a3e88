"""Initial cluster centroids of a weight tensor (numpy, run once per weight).

The four ways tfmot offers, by the same names:

- `"linear"`: evenly spaced between the smallest and the largest weight;
- `"kmeans++"`: k-means++ seeding (D² sampling, greedy: of 2 + ln k
  candidates per centroid, the one that lowers the sum of squared distances
  most), tfmot's default;
- `"density-based"`: equal-mass bins: the centroids are the
  `(i + 1/2) / k` quantiles of the weights, so dense regions get more of
  them (tfmot interpolates a 30-point CDF for about the same);
- `"random"`: uniform between the smallest and the largest weight.
"""

import math

import numpy as np
from keras import ops

from keras_compress._clusters import assign_to_centroids

LINEAR = "linear"
KMEANS_PLUS_PLUS = "kmeans++"
DENSITY_BASED = "density-based"
RANDOM = "random"
METHODS = (LINEAR, KMEANS_PLUS_PLUS, DENSITY_BASED, RANDOM)

# tfmot's spellings (`tfmot.clustering.keras.CentroidInitialization.*` values
# and member names), so a migrated `clustering_params` dict works as it is.
_ALIASES = {
    "kmeans_plus_plus": KMEANS_PLUS_PLUS,
    "density_based": DENSITY_BASED,
}

# k-means++ seeding looks at this many weights at most (a random sample of a
# larger tensor): D² sampling is O(weights x centroids x candidates).
KMEANS_SAMPLE = 65536


class CentroidInitialization:
    """The centroid initializations, as constants (tfmot's enum, by name)."""

    LINEAR = LINEAR
    KMEANS_PLUS_PLUS = KMEANS_PLUS_PLUS
    DENSITY_BASED = DENSITY_BASED
    RANDOM = RANDOM


def check_method(where, method):
    """The canonical name of an initialization; raises a ValueError naming
    the accepted values."""
    if isinstance(method, str):
        key = method.strip().lower()
        key = key.split(".", 1)[1] if key.startswith("centroidinitialization.") else key
        key = _ALIASES.get(key, key)
        if key in METHODS:
            return key
    raise ValueError(f"{where}: cluster_centroids_init must be one of {', '.join(map(repr, METHODS))} "
                     f"(or tfmot's CentroidInitialization names), got {method!r}.")


def initial_centroids(values, k, method, seed=None):
    """`k` initial centroids (float32, sorted) of the 1-D array `values`.

    Args:
        values: the weights to cluster (any shape; flattened). Not empty.
        k: how many centroids, >= 1.
        method: one of `METHODS`.
        seed: seed of the random methods (`kmeans++`, `random`); `None`
            draws a fresh one.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("initial_centroids: no values to cluster.")
    low, high = float(values.min()), float(values.max())
    if method == LINEAR:
        centroids = np.linspace(low, high, k)
    elif method == RANDOM:
        centroids = np.random.default_rng(seed).uniform(low, high, k)
    elif method == DENSITY_BASED:
        centroids = np.quantile(values, (np.arange(k) + 0.5) / k)
    elif method == KMEANS_PLUS_PLUS:
        centroids = _kmeans_plus_plus(values, k, np.random.default_rng(seed))
    else:
        raise ValueError(f"initial_centroids: method must be one of {METHODS}, got {method!r}.")
    return np.sort(centroids).astype(np.float32)


def _kmeans_plus_plus(values, k, rng):
    if values.size > KMEANS_SAMPLE:
        values = rng.choice(values, KMEANS_SAMPLE, replace=False)
    trials = 2 + int(math.log(k))
    centroids = [values[rng.integers(values.size)]]
    closest = (values - centroids[0]) ** 2
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # every weight sits on a centroid already
            centroids.append(centroids[-1])
            continue
        candidates = values[rng.choice(values.size, trials, p=closest / total)]
        # For each candidate, the distances if it were added; keep the best.
        options = np.minimum(closest[None, :], (values[None, :] - candidates[:, None]) ** 2)
        best = int(np.argmin(options.sum(axis=1)))
        centroids.append(candidates[best])
        closest = options[best]
    return np.array(centroids)


def nearest(values, centroids):
    """For each value, the index of its nearest centroid, as a numpy array:
    `keras_compress._clusters.assign_to_centroids`, the rule training uses
    (a value halfway between two centroids goes to the larger one). With
    `(channels, k)` centroids, each channel of the last axis uses its own."""
    values = np.asarray(values, dtype=np.float32)
    centroids = np.asarray(centroids, dtype=np.float32)
    if centroids.ndim != 2:
        centroids = centroids.ravel()
    return ops.convert_to_numpy(assign_to_centroids(ops.convert_to_tensor(values), ops.convert_to_tensor(centroids)))
