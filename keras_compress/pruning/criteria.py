"""Pruning criteria: pure functions from weights to a 0/1 mask.

Each criterion takes weight tensors and an amount and returns masks of the same
shapes (float32, 1 = keep, 0 = prune). They hold no state, so they are easy to
test and to combine; the callbacks decide when to call them.
"""

import math

from keras import ops


def _count_to_prune(api, size, sparsity):
    if not 0.0 <= sparsity <= 1.0 or math.isnan(sparsity):
        raise ValueError(f"criteria.{api}: sparsity must be in [0, 1], got {sparsity!r}.")
    return int(round(sparsity * size))


def _mask_smallest(scores, count):
    """Flat mask that zeroes the `count` smallest entries of flat `scores`."""
    size = int(scores.shape[0])
    mask = ops.ones((size,), dtype="float32")
    if count == 0:
        return mask
    # A stable sort, so already-pruned zeros (the smallest scores) stay pruned
    # and ties are broken by position, never by chance.
    order = ops.argsort(scores)[:count]
    return ops.scatter_update(
        mask, ops.expand_dims(order, -1), ops.zeros((count,), dtype="float32")
    )


def magnitude(weights, sparsity):
    """Masks the `round(sparsity * size)` weights of smallest magnitude.

    Args:
        weights: a weight tensor (any shape).
        sparsity: fraction of entries to prune, in [0, 1].

    Returns:
        A float32 mask of the shape of `weights` with exactly
        `round(sparsity * size)` zeros.

    Example:

    ```python
    magnitude(np.array([0.1, -3.0, 0.2, 2.0]), 0.5)  # [0., 1., 0., 1.]
    ```
    """
    scores = ops.reshape(ops.abs(ops.convert_to_tensor(weights)), (-1,))
    count = _count_to_prune("magnitude", int(scores.shape[0]), sparsity)
    return ops.reshape(_mask_smallest(scores, count), ops.shape(weights))


def global_magnitude(weights_list, sparsity):
    """Magnitude pruning with one threshold across several tensors.

    The `round(sparsity * total)` weights of smallest magnitude over all the
    tensors together are pruned, so layers with many small weights end up
    sparser than layers with few.

    Args:
        weights_list: a list of weight tensors.
        sparsity: fraction of all their entries to prune, in [0, 1].

    Returns:
        A list of float32 masks, one per tensor.
    """
    tensors = [ops.convert_to_tensor(w) for w in weights_list]
    if not tensors:
        raise ValueError("criteria.global_magnitude needs at least one weight tensor, got an empty list.")
    flat = [ops.reshape(ops.abs(ops.cast(t, "float32")), (-1,)) for t in tensors]
    scores = ops.concatenate(flat, axis=0)
    count = _count_to_prune("global_magnitude", int(scores.shape[0]), sparsity)
    mask = _mask_smallest(scores, count)
    masks, start = [], 0
    for t, f in zip(tensors, flat):
        size = int(f.shape[0])
        masks.append(ops.reshape(mask[start : start + size], ops.shape(t)))
        start += size
    return masks


BLOCK_POOLING_TYPES = ("AVG", "MAX")


def block_magnitude(weights, sparsity, block_size, pooling="AVG"):
    """Block sparsity: masks whole blocks of a 2-D weight matrix.

    The matrix is cut into `block_size = (rows, columns)` blocks from its top
    left corner (the last row and column of blocks may be smaller), each
    block is scored by the mean (`"AVG"`) or the largest (`"MAX"`) of its
    |w|, and the `round(sparsity * number_of_blocks)` blocks of smallest
    score are masked; of equal scores, the block first in row-major order
    is masked first (as `magnitude` does with weights). This is tfmot's
    `block_size` / `block_pooling_type` (its pooling uses SAME padding, so a
    partial block is scored on its own weights only, as here).

    Args:
        weights: a rank-2 weight tensor (a Dense kernel, an Embedding matrix).
        sparsity: fraction of the blocks to prune, in [0, 1].
        block_size: `(rows, columns)`, two ints >= 1.
        pooling: `"AVG"` or `"MAX"`.

    Returns:
        A float32 mask of the shape of `weights`, constant on every block.

    Example:

    ```python
    w = np.array([[1., 1., 0., 3.],
                  [1., 1., 0., 0.]])
    block_magnitude(w, 0.5, (2, 2), "AVG")  # keeps the left block (mean 1 > 0.75)
    block_magnitude(w, 0.5, (2, 2), "MAX")  # keeps the right block (max 3 > 1)
    ```
    """
    import numpy as np

    block_size = check_block_size("criteria.block_magnitude", block_size)
    pooling = check_block_pooling_type("criteria.block_magnitude", pooling)
    magnitudes = np.abs(np.asarray(ops.convert_to_numpy(weights), dtype="float64"))
    if magnitudes.ndim != 2:
        raise ValueError(f"criteria.block_magnitude: weights must have rank 2, got shape {magnitudes.shape}.")
    rows, cols = magnitudes.shape
    bh, bw = block_size
    padded = np.full((-(-rows // bh) * bh, -(-cols // bw) * bw), np.nan)
    padded[:rows, :cols] = magnitudes
    blocks = padded.reshape(padded.shape[0] // bh, bh, padded.shape[1] // bw, bw)
    # NaN padding is ignored by the pooling: a partial block is scored on its own weights.
    pool = np.nanmean if pooling == "AVG" else np.nanmax
    scores = pool(blocks, axis=(1, 3))
    count = _count_to_prune("block_magnitude", scores.size, sparsity)
    keep = ops.convert_to_numpy(_mask_smallest(ops.convert_to_tensor(scores.reshape(-1), "float32"), count))
    keep = np.repeat(np.repeat(keep.reshape(scores.shape), bh, axis=0), bw, axis=1)
    return keep[:rows, :cols].astype("float32")


def check_block_size(api, value):
    """`value` as a `(rows, columns)` tuple of ints >= 1; raises naming `api`."""
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        raise ValueError(f"{api}: block_size must be a pair (rows, columns) of integers >= 1, such as (1, 1) "
                         f"(no blocks) or (1, 4), got {value!r}.")
    return int(value[0]), int(value[1])


def check_block_pooling_type(api, value):
    """`value` if it is one of `BLOCK_POOLING_TYPES`; raises naming `api`."""
    if value not in BLOCK_POOLING_TYPES:
        raise ValueError(f"{api}: block_pooling_type must be 'AVG' or 'MAX' (tfmot's values), got {value!r}.")
    return value


def threshold(weights, epsilon):
    """Masks the weights with `|w| < epsilon`.

    Args:
        weights: a weight tensor.
        epsilon: absolute threshold (>= 0).
    """
    if not epsilon >= 0:
        raise ValueError(f"criteria.threshold: epsilon must be a number >= 0, got {epsilon!r}.")
    w = ops.convert_to_tensor(weights)
    return ops.cast(ops.abs(w) >= epsilon, "float32")


def relative_threshold(weights, alpha):
    """Masks the weights with `|w| < alpha * max|w|`.

    Args:
        weights: a weight tensor.
        alpha: fraction of the largest magnitude, in [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"criteria.relative_threshold: alpha must be in [0, 1], got {alpha!r}.")
    w = ops.abs(ops.convert_to_tensor(weights))
    return ops.cast(w >= alpha * ops.max(w), "float32")


def m_by_n(weights, n, m, axis=-2):
    """N:M structured sparsity: in every block of `m` consecutive weights
    along `axis` (the input-channel axis of a Dense or Conv kernel, -2), the
    `n` of largest magnitude are kept and the others masked.

    The blocks are taken at every other index fixed; a last block shorter
    than `m` keeps its `n` largest too. Ties are broken by position (the
    first kept), never by chance.

    Args:
        weights: a weight tensor of rank >= 2.
        n: weights kept per block, 1 <= n < m.
        m: the block length.
        axis: the axis the blocks run along.

    Returns:
        A float32 mask of the shape of `weights`.

    Example:

    ```python
    m_by_n(np.array([[1.0], [-5.0], [3.0], [0.5]]), 2, 4)  # [[0], [1], [1], [0]]
    ```
    """
    import numpy as np

    check_m_by_n("criteria.m_by_n", (n, m))
    magnitudes = np.abs(np.asarray(ops.convert_to_numpy(weights), dtype="float64"))
    if magnitudes.ndim < 2:
        raise ValueError(f"criteria.m_by_n: weights must have rank >= 2, got shape {magnitudes.shape}.")
    moved = np.moveaxis(magnitudes, axis, -1)
    length = moved.shape[-1]
    pad = -length % m
    # Padding ranks below every real weight (magnitudes are >= 0).
    padded = np.concatenate([moved, np.full(moved.shape[:-1] + (pad,), -1.0)], axis=-1)
    blocks = padded.reshape(padded.shape[:-1] + (-1, m))
    order = np.argsort(-blocks, axis=-1, kind="stable")
    ranks = np.argsort(order, axis=-1, kind="stable")
    keep = (ranks < n).reshape(padded.shape)[..., :length]
    return np.moveaxis(keep, -1, axis).astype("float32")


def check_m_by_n(api, value):
    """`value` as an `(n, m)` tuple of ints with 1 <= n < m; raises naming `api`."""
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{api}: sparsity_m_by_n must be a pair (N, M) of integers, such as (2, 4), got {value!r}.")
    n, m = value
    if not 1 <= n < m:
        raise ValueError(f"{api}: sparsity_m_by_n=(N, M) needs 1 <= N < M (N kept in each block of M), "
                         f"got {tuple(value)!r}.")
    return int(n), int(m)
