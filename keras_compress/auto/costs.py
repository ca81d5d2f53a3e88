"""Cost models of the search: what a structured plan costs, before building it.

`StructureCosts` reads a model's dependency groups once and gives, for any
number of units removed per group, the parameters, the multiply-accumulates
(MACs) and the output activations of the narrower model, from the layers'
shapes alone (no model is built). Parameters and MACs are exact counts
(tests check them against the models `shrink` builds).

`LinearCost` turns those counts into file bytes or p50 latency: a
least-squares fit `cost = c0 + c1 * feature1 + ...` on a few models that
were actually converted and measured (`calibrate`), with its leave-one-out
error on those points as its validation; the search then re-measures every
model it picks on its real `.tflite` file.
"""

import dataclasses
import math

import numpy as np

from keras_compress import _models
from keras_compress.pruning.structured.graph import Analysis
from keras_compress.pruning.structured.layers import layer_kind, spread

# Weights whose every element is a multiply-accumulate per output position.
_MAC_WEIGHTS = ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings_never")


def _spatial(layer):
    """Output positions per sample (every axis but the batch and the channels)."""
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return 1
    return int(np.prod([d for d in shape[1:-1] if d is not None])) if len(shape) > 2 else 1


class StructureCosts:
    """Exact parameter and MAC counts of `model` with units removed per group.

    Args:
        model: a built Sequential or Functional model.

    Attributes:
        groups: the prunable `DependencyGroup`s, in graph order; a plan is a
            list of units removed, one count per group.
    """

    def __init__(self, model):
        self.model = model
        self.analysis = Analysis(model)
        self.groups = [g for g in self.analysis.groups if g.reason is None]
        self._layers = []
        for layer in _models.walk_layers(model):
            if not layer.weights or isinstance(layer, type(model)) and layer is model:
                continue
            if hasattr(layer, "layers") and getattr(layer, "layers", None):
                continue  # a nested model: its layers are walked
            self._layers.append(layer)
        self.base = self.counts([0] * len(self.groups))

    def key(self, group):
        """A group's name in plans and reports: its producers joined by "+"."""
        return "+".join(p.name for p in group.producers)

    def counts(self, removed):
        """`{"params", "macs", "activations", "units"}` of the model with
        `removed[i]` units of group `i` removed (the first ones: counts do
        not depend on which)."""
        if len(removed) != len(self.groups):
            raise ValueError(f"counts: expected {len(self.groups)} removal counts, got {len(removed)}.")
        gone = set()
        for group, n in zip(self.groups, removed):
            if not 0 <= n < group.size:
                raise ValueError(f"counts: group '{self.key(group)}' has {group.size} units; cannot remove {n}.")
            gone.update(group.units[:n])
        changes = self.analysis.plan(gone)
        params = macs = activations = units = 0
        for layer in self._layers:
            change = changes.get(id(layer))
            try:
                kind = layer_kind(layer)
            except (KeyError, ValueError, TypeError):
                kind = None
            positions = _spatial(layer)
            width = None
            for w in layer.weights:
                shape = list(w.shape)
                if change is not None and kind is not None and w.name in kind.weights:
                    _, keep_in, keep_out = change
                    axes = kind.weights[w.name]
                    if axes.inputs is not None and keep_in is not None:
                        shape[axes.inputs] = len(spread(keep_in, axes.per_channel(layer)))
                    if axes.units is not None and keep_out is not None:
                        shape[axes.units] = len(keep_out)
                size = int(np.prod(shape)) if shape else 1
                params += size
                if w.name in _MAC_WEIGHTS:
                    macs += size * positions
                    width = shape[-1]
            if width is not None:
                units += width
                activations += width * positions
        return {"params": params, "macs": macs, "activations": activations, "units": units}


def model_counts(model):
    """`StructureCosts(model).base`: the parameters, MACs, activations and
    units of a built model as it is; for a model the graph walk cannot read
    (a subclassed one), its parameters only (MACs 0)."""
    try:
        return StructureCosts(model).base
    except (ValueError, TypeError, AttributeError):
        return {"macs": 0, "params": int(model.count_params()), "activations": 0, "units": 0}


@dataclasses.dataclass
class LinearCost:
    """`cost = intercept + sum(coefficient * feature)`, fitted on measured models.

    Attributes:
        resource: what it predicts ("bytes" or "latency_ms").
        features: the `StructureCosts.counts` keys it reads.
        coefficients: intercept first, then one per feature.
        points: the `(counts, measured)` pairs it was fitted on.
        max_relative_error: leave-one-out relative error on those points
            (the largest), its validation.
    """

    resource: str
    features: tuple
    coefficients: tuple
    points: list
    max_relative_error: float

    def predict(self, counts):
        return float(self.coefficients[0] + sum(c * counts[f] for c, f in zip(self.coefficients[1:], self.features)))

    def to_dict(self):
        return {
            "resource": self.resource,
            "features": list(self.features),
            "coefficients": [float(c) for c in self.coefficients],
            "points": len(self.points),
            "max_relative_error": self.max_relative_error,
            "measured": [float(m) for _, m in self.points],
        }


def fit_linear(resource, features, points):
    """A `LinearCost` fitted by least squares (non-negative slopes) on
    `points`, `[(counts, measured)]`, validated leave-one-out."""

    def solve(rows):
        a = np.array([[1.0] + [float(c[f]) for f in features] for c, _ in rows])
        b = np.array([float(m) for _, m in rows])
        coef, *_ = np.linalg.lstsq(a, b, rcond=None)
        if len(coef) > 1 and (coef[1:] < 0).any():
            # A negative slope is noise: drop those features and refit.
            keep = [0] + [i + 1 for i, c in enumerate(coef[1:]) if c >= 0]
            sub, *_ = np.linalg.lstsq(a[:, keep], b, rcond=None)
            coef = np.zeros_like(coef)
            coef[keep] = sub
        return coef

    coef = solve(points)
    errors = []
    if len(points) > len(features) + 1:
        for i in range(len(points)):
            rest = points[:i] + points[i + 1 :]
            c = solve(rest)
            counts, measured = points[i]
            predicted = c[0] + sum(k * counts[f] for k, f in zip(c[1:], features))
            errors.append(abs(predicted - measured) / max(abs(measured), 1e-12))
    error = max(errors) if errors else math.nan
    return LinearCost(resource, tuple(features), tuple(float(c) for c in coef), list(points), float(error))
