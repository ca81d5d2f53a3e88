"""`GroupLasso`: pushes whole units to zero during `fit`, for `shrink`.

Which weights make a unit, and along which axis, comes from the layer table
(`layers`); the groups come from the same graph walk as `shrink`'s.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_compress import _models
from keras_compress.pruning.callbacks import check_strength_schedule
from keras_compress.pruning.structured.graph import LAYER_API, Analysis
from keras_compress.pruning.structured.layers import weight_axes


@keras.saving.register_keras_serializable(package="keras_compress")
class GroupLasso(keras.callbacks.Callback):
    """Group-lasso regularization of whole units, with a schedule, during `fit`.

    A unit's weights form one group: its kernel slice and bias in the layer
    that makes it, its gamma and beta in the BatchNormalization after it, its
    DepthwiseConv slice, and the same for every unit tied to it in a
    dependency group (residual Adds). After each training batch, each group takes the proximal
    step of the group-lasso penalty `lambda * sqrt(p_g) * ||w_g||_2` (Yuan &
    Lin, 2006), `p_g` being the number of weights in the group:

    `w_g <- w_g * max(0, 1 - lr * lambda * sqrt(p_g) / ||w_g||_2)`

    with `lr` the optimizer's current learning rate. The `sqrt(p_g)` weight
    makes one `lambda` fit every layer: a group's norm grows as `sqrt(p_g)`,
    so without it the small groups of a first convolution would vanish long
    before the large ones of a Dense layer. Groups whose norm falls below
    `lr * lambda * sqrt(p_g)` become exactly zero, and `shrink` then removes them
    without changing the model's outputs. `lambda` is set at the start of each
    epoch and recorded in the logs (and History) as `group_lasso_strength`,
    with the number of all-zero units as `group_lasso_zero_units`. Once the
    penalty stops, training can bring zeroed units back: shrink after an
    epoch with the penalty. The step runs between batches, a few small ops
    per weight tensor (with `steps_per_execution=k`, once per k steps, with k
    times the threshold).

    Args:
        strength: `lambda` (>= 0), or a function `epoch -> lambda`.
        start_epoch: first epoch with the penalty. Default 0.
        end_epoch: first epoch without it (`None`: until the end of `fit`).
        layers: names of Dense / Conv layers whose groups are penalized;
            `None` (default): every group `shrink` can prune.

    Example:

    ```python
    model.fit(x, y, epochs=4, callbacks=[kc.pruning.GroupLasso(0.1)])
    small = kc.pruning.shrink(model, 0.5)  # the zeroed units rank lowest
    small.fit(x, y, epochs=2)              # compiled like model
    ```
    """

    def __init__(self, strength, start_epoch=0, end_epoch=None, layers=None):
        super().__init__()
        check_strength_schedule("GroupLasso", strength, start_epoch, end_epoch)
        if layers is not None:
            layers = [layers] if isinstance(layers, str) else list(layers)
            if not all(isinstance(n, str) for n in layers):
                raise TypeError(f"GroupLasso: layers must be layer names, got {layers!r}.")
        self.strength = strength
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.layers = layers
        self._value = 0.0

    def get_config(self):
        return {name: getattr(self, name) for name in ("strength", "start_epoch", "end_epoch", "layers")}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def strength_at(self, epoch):
        """`lambda` during `epoch`."""
        active = epoch >= self.start_epoch and (self.end_epoch is None or epoch < self.end_epoch)
        if not active:
            return 0.0
        value = float(self.strength(epoch) if callable(self.strength) else self.strength)
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(
                f"GroupLasso: strength({epoch}) returned {value}; it must be a finite number >= 0."
            )
        return value

    # -- the groups ---------------------------------------------------------

    def _select(self, analysis):
        groups = [g for g in analysis.groups if g.reason is None]
        if self.layers is not None:
            wanted = []
            for name in self.layers:
                group = next(
                    (g for g in analysis.groups if any(p.name == name for p in g.producers)), None
                )
                if group is None:
                    raise ValueError(
                        f"GroupLasso: layers names '{name}', which is not a Dense or Conv "
                        f"layer of model '{self.model.name}'. Those are: "
                        f"{', '.join(p.name for g in analysis.groups for p in g.producers)}."
                    )
                if group.reason is not None:
                    raise ValueError(f"GroupLasso cannot penalize layer '{name}': {group.reason}.")
                if all(g is not group for g in wanted):
                    wanted.append(group)
            groups = wanted
        return groups

    def _group_members(self, analysis, groups):
        """`[(variable, axis, unit index per position)]` and the unit count;
        positions outside the groups get the index of a last, untouched unit."""
        offsets, total = [], 0
        for g in groups:
            offsets.append(total)
            total += g.size
        members = []
        for lid, layer in analysis.layers.items():
            # A producer's units, or a channel-wise layer's input channels; a
            # consumer's input rows belong to the units of the layer before.
            producer = lid in analysis.unit_roots
            roots = (analysis.unit_roots if producer else analysis.input_roots)[lid]
            index = np.full(len(roots), total, dtype=np.int32)
            for g, offset in zip(groups, offsets):
                positions, units = analysis.positions(layer, g, inputs=not producer)
                index[positions] = units + offset
            if (index == total).all():
                continue
            for w in layer.trainable_weights:
                axes = weight_axes(layer, w)
                axis = axes.units if producer else axes.inputs
                if axis is None or not axes.penalize:
                    continue  # e.g. PReLU's alpha shapes the activation, not the size of a unit
                per_position = index if producer else np.repeat(index, axes.per_channel(layer))
                members.append((w, axis % len(w.shape), per_position))
        return [(w, axis, ops.convert_to_tensor(i)) for w, axis, i in members], total

    # -- fit hooks ----------------------------------------------------------

    def on_train_begin(self, logs=None):
        _models.check_graph_model(self.model, "GroupLasso", LAYER_API)
        analysis = Analysis(self.model)
        groups = self._select(analysis)
        if not groups:
            raise ValueError(
                f"GroupLasso: model '{self.model.name}' has no unit groups that shrink can "
                "prune; see kc.pruning.dependency_groups(model) for the reasons."
            )
        self._members, self._units = self._group_members(analysis, groups)
        self._root_sizes = self._group_root_sizes()

    def _group_root_sizes(self):
        """`sqrt(p_g)` per unit: the square root of its group's weight count."""
        sizes = ops.zeros((self._units + 1,))
        for w, axis, index in self._members:
            per_position = float(np.prod(w.shape)) / len(index)
            ones = ops.full((len(index),), per_position)
            sizes = sizes + ops.segment_sum(ones, index, num_segments=self._units + 1)
        return ops.sqrt(sizes)

    def on_epoch_begin(self, epoch, logs=None):
        self._value = self.strength_at(epoch)

    def _norms(self):
        squares = ops.zeros((self._units + 1,))
        for w, axis, index in self._members:
            per_position = ops.sum(ops.reshape(ops.moveaxis(ops.square(w), axis, 0), (len(index), -1)), axis=1)
            squares = squares + ops.segment_sum(per_position, index, num_segments=self._units + 1)
        return ops.sqrt(squares)

    def on_train_batch_end(self, batch, logs=None):
        if self._value == 0.0:
            return
        lr = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))
        steps = max(1, int(getattr(self.model, "steps_per_execution", 1) or 1))
        threshold = lr * self._value * steps * self._root_sizes
        norms = self._norms()
        factor = ops.where(norms > threshold, 1.0 - threshold / ops.maximum(norms, 1e-30), 0.0)
        factor = ops.concatenate([factor[:-1], ops.ones((1,))])  # the untouched positions
        for w, axis, index in self._members:
            shape = [1] * len(w.shape)
            shape[axis] = len(index)
            w.assign(w * ops.cast(ops.reshape(ops.take(factor, index), shape), w.dtype))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["group_lasso_strength"] = self._value
            logs["group_lasso_zero_units"] = int(
                ops.convert_to_numpy(ops.sum(ops.cast(self._norms()[:-1] == 0, "int32")))
            )
