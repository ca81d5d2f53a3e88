"""Importance of units (neurons, filters, channels) for structured pruning.

The public functions are pure: arrays in, one score per unit out (the last
axis), higher meaning more important, except `apoz`, which returns the
fraction of zeros itself (the `"apoz"` criterion ranks by `1 - apoz`).
`unit_scores` applies a criterion to a dependency group: each unit's score is
the sum of its scores in every layer of the group that holds it; which weight
and which axis it reads comes from the layer table (`layers`). `measure`
runs the data criteria (`"taylor"`, `"apoz"`) over a model and its data.
"""

import keras
import numpy as np
from keras import layers as L
from keras import ops

from keras_compress import _models
from keras_compress.pruning.structured.layers import layer_kind

CRITERIA = ("l1", "l2", "bn_gamma", "taylor", "apoz")
DATA_CRITERIA = ("taylor", "apoz")


def _per_unit(array, axis=-1):
    """`array` as float64 with the unit axis first and the rest flattened."""
    array = np.asarray(ops.convert_to_numpy(array), dtype=np.float64)
    if array.ndim == 0:
        raise ValueError("expected an array with a unit axis, got a scalar.")
    return np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)


def l1_norm(kernel, axis=-1):
    """Per-unit L1 norm of a kernel: `sum |w|` over every axis but `axis`.

    Args:
        kernel: weights whose `axis` indexes the units (a Dense kernel
            `(in, units)`, a Conv2D kernel `(h, w, in, filters)`).
        axis: the unit axis. Default -1.

    Returns:
        A float64 numpy array of one score per unit.

    Example:

    ```python
    l1_norm(np.array([[1.0, -2.0], [3.0, 0.0]]))  # [4., 2.]
    ```
    """
    return np.abs(_per_unit(kernel, axis)).sum(axis=1)


def l2_norm(kernel, axis=-1):
    """Per-unit L2 norm of a kernel: `sqrt(sum w**2)` over every axis but `axis`.

    Args:
        kernel: weights whose `axis` indexes the units.
        axis: the unit axis. Default -1.

    Returns:
        A float64 numpy array of one score per unit.

    Example:

    ```python
    l2_norm(np.array([[3.0, 0.0], [4.0, 1.0]]))  # [5., 1.]
    ```
    """
    return np.sqrt(np.square(_per_unit(kernel, axis)).sum(axis=1))


def bn_gamma(gamma):
    """Network slimming (Liu et al., 2017): `|gamma|` of the BatchNormalization
    after a unit.

    Args:
        gamma: the BatchNormalization scale, one value per channel.

    Returns:
        A float64 numpy array, `|gamma|`.
    """
    return np.abs(_per_unit(gamma)[:, 0])


def taylor(activations, gradients):
    """First-order Taylor importance (Molchanov et al., 2017).

    For each sample, the unit's activation times the gradient of the loss
    with respect to it is averaged over the spatial positions; the score is
    the mean over samples of its absolute value:
    `mean_n |mean_s a[n, s, u] * g[n, s, u]|`. It estimates how much the loss
    changes when the unit's output is set to zero.

    Args:
        activations: a unit's outputs, shape `(batch, ..., units)`.
        gradients: the gradients of the loss with respect to them, same shape.

    Returns:
        A float64 numpy array of one score per unit.
    """
    a = np.asarray(ops.convert_to_numpy(activations), dtype=np.float64)
    g = np.asarray(ops.convert_to_numpy(gradients), dtype=np.float64)
    if a.shape != g.shape or a.ndim < 2:
        raise ValueError(
            "taylor needs activations and gradients of one shape (batch, ..., units); "
            f"got {a.shape} and {g.shape}."
        )
    product = (a * g).reshape(a.shape[0], -1, a.shape[-1])
    return np.abs(product.mean(axis=1)).mean(axis=0)


def apoz(activations):
    """Average Percentage of Zeros (Hu et al., 2016) of each unit.

    Args:
        activations: a unit's outputs (after its ReLU), shape
            `(batch, ..., units)`.

    Returns:
        A float64 numpy array: per unit, the fraction of its outputs that are
        exactly zero over the batch and all positions. A unit that is zero
        more often matters less; the `"apoz"` criterion ranks by `1 - apoz`.
    """
    a = np.asarray(ops.convert_to_numpy(activations))
    if a.ndim < 2:
        raise ValueError(f"apoz needs activations of shape (batch, ..., units), got {a.shape}.")
    return (a.reshape(-1, a.shape[-1]) == 0).mean(axis=0, dtype=np.float64)


def _weight(layer, name):
    """`layer`'s weight called `name`, or None."""
    return next((w for w in layer.weights if w.name == name), None)


def kernel_scores(layer, norm):
    """`norm` (l1_norm or l2_norm) of the units of a layer's kernel."""
    kind = layer_kind(layer)
    return norm(_weight(layer, kind.kernel), axis=kind.weights[kind.kernel].units)


def unit_scores(analysis, group, criterion, measured=None):
    """One score per unit of `group` (higher: keep).

    Args:
        analysis: the `Analysis` of the model.
        group: one of its groups.
        criterion: a name from `CRITERIA` or a function `layer -> scores of
            its units`.
        measured: for `"taylor"` and `"apoz"`, `{id(producer): scores}` from
            `measure`.
    """
    scores = np.zeros(group.size)
    if criterion == "bn_gamma":
        covered = np.zeros(group.size, dtype=bool)
        for layer in analysis.layers.values():
            scale = layer_kind(layer).scale
            gamma = None if scale is None else _weight(layer, scale)
            if gamma is not None:
                positions, units = analysis.positions(layer, group, inputs=True)
                np.add.at(scores, units, bn_gamma(gamma)[positions])
                covered[units] = True
        if not covered.all():
            names = ", ".join(f"'{p.name}'" for p in group.producers)
            raise ValueError(
                f"criterion='bn_gamma' needs a BatchNormalization (with scale=True) "
                f"after the units of {names}; {int((~covered).sum())} of their "
                f"{group.size} units have none. Use 'l1', 'l2', 'taylor' or 'apoz'."
            )
        return scores
    for layer in group.producers:
        if callable(criterion):
            values = np.asarray(criterion(layer), dtype=np.float64).reshape(-1)
            expected = len(analysis.unit_roots[id(layer)])
            if values.shape != (expected,):
                raise ValueError(
                    f"criterion {criterion!r} returned {values.shape[0]} scores for layer "
                    f"'{layer.name}', which has {expected} units."
                )
        elif criterion in ("l1", "l2"):
            values = kernel_scores(layer, l1_norm if criterion == "l1" else l2_norm)
        else:
            values = measured[id(layer)]
        positions, units = analysis.positions(layer, group)
        np.add.at(scores, units, values[positions])
    return scores


# -- data-driven criteria -------------------------------------------------------


def _chain_end(owner, node, consumers):
    """The tensor where a producer's units are measured: its output after the
    BatchNormalization and activation layers that follow it alone."""
    tensor = node.outputs[0]
    while True:
        users = consumers[id(owner)].get(id(tensor), [])
        if len(users) != 1 or users[0] is None:
            return tensor
        kind = layer_kind(users[0].operation)
        if kind is None or not kind.follows_unit:
            return tensor
        tensor = users[0].outputs[0]


def _flat_model(model, tensors):
    """A flat Functional copy of `model` (nested models inlined, layers
    copied with their weights) that also outputs the copies of `tensors`."""
    wanted = {id(t) for t in tensors}
    captured, copies, fills = {}, {}, []

    def call(node, args, kwargs):
        op = node.operation
        if isinstance(op, keras.Model):
            outputs = _models.run_graph(op, keras.tree.flatten(args[0]), call)
        else:
            if isinstance(op, L.Layer):
                if id(op) not in copies:
                    copies[id(op)] = _models.copy_layer(op)
                    fills.append((copies[id(op)], op))
                op = copies[id(op)]
            outputs = op(*args, **kwargs)
        for old, new in zip(node.outputs, keras.tree.flatten(outputs)):
            if id(old) in wanted:
                captured[id(old)] = new
        return outputs

    inputs = _models.new_inputs_like(model)
    outputs = _models.run_graph(model, inputs, call)
    flat = keras.Model(
        inputs[0] if len(inputs) == 1 else inputs, [outputs, [captured[id(t)] for t in tensors]]
    )
    for copy, source in fills:
        copy.set_weights(source.get_weights())
    return flat


def measure(analysis, producers, criterion, batches, loss):
    """`{id(producer): scores}` of a data criterion ("taylor" or "apoz")
    over `batches` of `(x, y)`."""
    ends = []  # (producer id, end tensor)
    consumers = {}
    for layer in producers:
        for owner, node in analysis.calls[id(layer)]:
            if id(owner) not in consumers:
                consumers[id(owner)] = _models.consumers_of(owner)
            ends.append((id(layer), _chain_end(owner, node, consumers)))
    flat = _flat_model(analysis.model, [t for _, t in ends])
    totals = [0.0] * len(ends)
    seen = 0
    for x, y in batches:
        count = len(keras.tree.flatten(x)[0])
        if criterion == "apoz":
            _, acts = flat(x, training=False)
            scores = [1.0 - apoz(a) for a in acts]
        else:
            acts, grads = _gradients(flat, x, y, loss)
            scores = [taylor(a, g) for a, g in zip(acts, grads)]
        totals = [t + s * count for t, s in zip(totals, scores)]
        seen += count
    if seen == 0:
        raise ValueError(f"criterion='{criterion}': data gave no samples.")
    result = {}
    for (lid, _), total in zip(ends, totals):
        result[lid] = result.get(lid, 0.0) + total / seen
    return result


def _gradients(flat, x, y, loss):
    # Keras 3 has no backend-neutral way to differentiate with respect to
    # intermediate tensors, so Taylor importance uses TensorFlow's tape.
    import tensorflow as tf

    with tf.GradientTape() as tape:
        outputs, acts = flat(x, training=False)
        value = loss(y, outputs)
    grads = tape.gradient(value, acts)
    if any(g is None for g in grads):
        raise ValueError("criterion='taylor': the loss does not depend on every measured unit.")
    return acts, grads
