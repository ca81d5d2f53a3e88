"""Structured pruning: rank whole units (neurons, filters, channels) and
physically remove them, so the converted model is smaller and faster.

```python
small = kc.pruning.structured.shrink(model, 0.5, criterion="l1")
```

- `layers`: the table, one row per layer kind, of what each layer does to
  the channels and which axis of each weight holds its units and its inputs;
  every module below reads it.
- `graph`: one walk over the model gives the dependency groups (units that
  are removed together) and, for a choice of units, what each layer keeps.
- `importance`: the criteria that score units (`l1_norm`, `l2_norm`,
  `bn_gamma`, `taylor`, `apoz`).
- `callbacks`: `GroupLasso`, which pushes whole units to zero during `fit`.
- `shrinking`: `shrink` and `iterative_shrink`, which rebuild the model
  with narrower layers.
"""

from keras_compress.pruning.structured.callbacks import GroupLasso
from keras_compress.pruning.structured.graph import DependencyGroup, dependency_groups
from keras_compress.pruning.structured.importance import apoz, bn_gamma, l1_norm, l2_norm, taylor
from keras_compress.pruning.structured.layers import LAYER_KINDS, SUPPORTED_LAYERS, Axes, LayerKind
from keras_compress.pruning.structured.shrinking import iterative_shrink, shrink

__all__ = [
    "Axes",
    "DependencyGroup",
    "GroupLasso",
    "LAYER_KINDS",
    "LayerKind",
    "SUPPORTED_LAYERS",
    "apoz",
    "bn_gamma",
    "dependency_groups",
    "iterative_shrink",
    "l1_norm",
    "l2_norm",
    "shrink",
    "taylor",
]
