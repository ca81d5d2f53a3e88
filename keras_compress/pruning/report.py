"""`sparsity_report`: how many weights of each prunable layer are zero."""

from typing import NamedTuple

import keras
import numpy as np

from keras_compress import _models
from keras_compress.pruning.wrapper import PruneWrapper, prunable_weights, why_not_prunable


class LayerSparsity(NamedTuple):
    """One row of a `SparsityReport`."""

    name: str
    type: str
    parameters: int
    zeros: int

    @property
    def sparsity(self):
        return self.zeros / self.parameters if self.parameters else 0.0


class SparsityReport(list):
    """A list of `LayerSparsity` rows that prints as a table.

    `parameters` counts the weights a pruning rule applies to (kernels, and
    biases for wrappers created with `prune_bias=True`); `total` sums them.
    """

    @property
    def total(self):
        return LayerSparsity(
            "total", "", sum(r.parameters for r in self), sum(r.zeros for r in self)
        )

    def as_dicts(self):
        """The rows (and no total) as plain dicts, for JSON or pandas."""
        return [{**r._asdict(), "sparsity": r.sparsity} for r in self]

    def __str__(self):
        rows = [*self, self.total]
        width = max(len("layer"), *(len(r.name) for r in rows))
        kind = max(len("type"), *(len(r.type) for r in rows))
        lines = [f"{'layer':<{width}}  {'type':<{kind}}  {'parameters':>10}  {'zeros':>10}  sparsity"]
        for r in rows:
            lines.append(
                f"{r.name:<{width}}  {r.type:<{kind}}  {r.parameters:>10,}  "
                f"{r.zeros:>10,}  {r.sparsity:8.2%}"
            )
        return "\n".join(lines)

    def __repr__(self):
        return f"SparsityReport(total={self.total.sparsity:.4f}, layers={len(self)})"


def count_zeros(weights):
    """`(zeros, size)` over a list of weight variables or tensors."""
    values = [keras.ops.convert_to_numpy(w) for w in weights]
    return (
        int(sum(np.count_nonzero(v == 0) for v in values)),
        int(sum(v.size for v in values)),
    )


def sparsity_report(model):
    """Counts the zero weights of every prunable layer of a model.

    Works on wrapped models (during or after pruning), on stripped models and
    on any model with prunable layers. Zeros are counted in the weights
    themselves, not in the masks, so the report tells what conversion will see.

    Args:
        model: a built `keras.Model` (nested models are included).

    Returns:
        A `SparsityReport`: a list of `LayerSparsity(name, type, parameters,
        zeros)` rows with a `sparsity` property, a `total` row, and a table
        when printed.

    Example:

    ```python
    print(kc.pruning.sparsity_report(model))
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"sparsity_report expects a keras.Model, got {type(model).__name__}."
        )
    if not model.built:
        raise ValueError(f"sparsity_report needs a built model; '{model.name}' is not built.")
    report = SparsityReport()
    for layer in _models.walk_layers(model):
        if isinstance(layer, PruneWrapper):
            inner, weights = layer.layer, layer.pruned_weights
        elif why_not_prunable(layer) is None and layer.built:
            inner, weights = layer, prunable_weights(layer)
        else:
            continue
        zeros, size = count_zeros(weights)
        report.append(LayerSparsity(inner.name, type(inner).__name__, size, zeros))
    return report
