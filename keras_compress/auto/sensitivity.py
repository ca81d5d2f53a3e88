"""Per-layer sensitivity to pruning: measured, and predicted by cheap proxies.

For each prunable layer and each sparsity level, the layer's weights of
smallest magnitude are zeroed in place, the model is evaluated on held-out
data, and the weights are put back: the drop of the metric is the layer's
measured sensitivity at that level. Beside it, three proxies that cost one
pass of gradients over the data for all candidates together:

- `"magnitude"`: the sum of the squared pruned weights, `sum w^2` (OBD with
  the identity as Hessian);
- `"fisher"`: the Optimal Brain Damage estimate with the empirical Fisher
  diagonal as Hessian, `1/2 sum F_ii w_i^2`, `F_ii` the mean squared
  gradient of the loss over batches;
- `"taylor"`: the first-order change of the loss, `|sum g_i w_i|`, `g` the
  mean gradient.

`SensitivityReport.correlations` is each proxy's Spearman rank correlation
with the measured drops over all candidates: how far a search could rank
candidates by the proxy instead of measuring each one.
"""

import dataclasses
import json
import math

import keras
import numpy as np

from keras_compress import _data, _models
from keras_compress.pruning.criteria import magnitude
from keras_compress.pruning.wrapper import prunable_weights, why_not_prunable
from tflite_bench.checks import check_int, describe
from tflite_bench.progress import Progress

PROXIES = ("magnitude", "fisher", "taylor")


@dataclasses.dataclass(frozen=True)
class SensitivityRow:
    """One candidate: `layer` pruned alone to `sparsity`.

    `drop` is the baseline metric minus the metric measured with the layer
    pruned (positive: worse); `proxies` maps each proxy to its predicted
    damage (larger: worse)."""

    layer: str
    sparsity: float
    metric: float
    drop: float
    proxies: dict


@dataclasses.dataclass(frozen=True)
class SensitivityReport:
    """The result of `sensitivity_analysis`."""

    model_name: str
    metric_name: str
    baseline: float
    samples: int
    rows: tuple
    correlations: dict

    def row(self, layer, sparsity):
        """The row of `layer` at `sparsity`."""
        for r in self.rows:
            if r.layer == layer and math.isclose(r.sparsity, sparsity):
                return r
        raise KeyError(f"no row for layer {layer!r} at sparsity {sparsity}")

    def layers(self):
        """The layers analysed, in model order."""
        return list(dict.fromkeys(r.layer for r in self.rows))

    def table(self):
        """A Markdown table: one line per layer, the drop at each sparsity."""
        levels = sorted({r.sparsity for r in self.rows})
        lines = [
            f"{self.metric_name} {self.baseline:.4f} on {self.samples} samples; drop when one layer is pruned:",
            "",
            "| layer | " + " | ".join(f"{s:.0%}" for s in levels) + " |",
            "|---|" + "---:|" * len(levels),
        ]
        for layer in self.layers():
            drops = [self.row(layer, s).drop for s in levels]
            lines.append(f"| {layer} | " + " | ".join(f"{d:+.4f}" for d in drops) + " |")
        lines += ["", "Spearman rank correlation of each proxy with the measured drops: "
                  + ", ".join(f"{p} {c:+.3f}" for p, c in self.correlations.items())]
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def to_json(self):
        """The report as a JSON string."""
        return json.dumps(dataclasses.asdict(self), indent=1)


def spearman(a, b):
    """Spearman's rank correlation of two equal-length sequences (ties get
    their average rank); `nan` when either is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"spearman needs two 1-D sequences of one length >= 2, got shapes {a.shape} and {b.shape}.")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator else float("nan")


def _ranks(values):
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):  # ties: their average rank
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _accuracy(y_true, y_pred):
    y_pred = np.asarray(y_pred)
    y_true = np.asarray(y_true)
    predicted = y_pred.argmax(-1) if y_pred.ndim > 1 and y_pred.shape[-1] > 1 else (y_pred.reshape(-1) > 0.5)
    truth = y_true.argmax(-1) if y_true.ndim > 1 and y_true.shape[-1] > 1 else y_true.reshape(-1)
    return float(np.mean(predicted.reshape(-1) == truth.reshape(-1)))


def sensitivity_analysis(
    model,
    data,
    *,
    sparsities=(0.5, 0.75, 0.9),
    layers=None,
    metric=None,
    loss=None,
    batch_size=256,
    max_samples=2000,
    proxy_batches=8,
    verbose=True,
):
    """Measures how much each prunable layer's pruning costs, and how well
    cheap proxies predict it.

    Each candidate (layer, sparsity) is measured alone: that layer's weights
    of smallest magnitude are zeroed (`magnitude` criterion, the pruned
    fraction of each of its prunable weights), the model is evaluated on
    `data`, and the weights are restored. The model is left exactly as it
    was, also when an error interrupts the analysis.

    Args:
        model: a built Keras model (Sequential, Functional or nested).
        data: held-out samples with labels: `(x, y)` arrays, a dict or list
            of arrays per input with `y`, a `tf.data.Dataset` or generator
            of `(x, y)` batches (the forms `to_tflite(representative_data=)`
            reads, with labels).
        sparsities: the levels to measure, each in (0, 1).
        layers: names of the layers to analyse; default every layer with
            prunable weights (Dense, Conv, EinsumDense, Embedding, the
            layers built from them...) that is trainable.
        metric: `None` for top-1 accuracy (argmax; one output above 0.5 for
            a single-unit output), or a function `(y_true, y_pred) -> float`
            where larger is better.
        loss: the loss the proxies differentiate: a Keras loss or its name;
            default the loss `model` was compiled with.
        batch_size: evaluation batch size.
        max_samples: read at most this many samples of `data`.
        proxy_batches: batches of `batch_size` samples whose gradients the
            Fisher and Taylor proxies average.
        verbose: show progress (one line per layer outside a terminal).

    Returns:
        A `SensitivityReport` (rows, baseline, correlations, `table()`).

    Raises:
        TypeError / ValueError: a bad argument, naming it; nothing changed.
    """
    api = "sensitivity_analysis"
    _models.check_graph_model(model, api, "sensitivity_analysis on a Functional model wrapping it")
    levels = _check_sparsities(api, sparsities)
    check_int(api, "batch_size", batch_size, minimum=1)
    check_int(api, "max_samples", max_samples, minimum=1)
    check_int(api, "proxy_batches", proxy_batches, minimum=1)
    if metric is not None and not callable(metric):
        raise TypeError(f"{api}: metric must be None (accuracy) or a function (y_true, y_pred) -> float, got {describe(metric)}.")
    loss_fn = _loss(api, model, loss)
    candidates = _candidates(api, model, layers)
    arrays, y = _data.read_inputs(data, _data.input_specs(model), api=api, argument="data",
                                  model_name=model.name, max_samples=max_samples, labels=True)
    if y is None:
        raise ValueError(f"{api}: data needs labels: give (x, y).")
    x = arrays[0] if len(arrays) == 1 else arrays
    score = metric or _accuracy
    metric_name = "accuracy" if metric is None else getattr(metric, "__name__", type(metric).__name__)

    def evaluate():
        value = score(y, model.predict(x, batch_size=batch_size, verbose=0))
        if not isinstance(value, (int, float, np.floating)) or not math.isfinite(float(value)):
            raise ValueError(f"{api}: metric must return a finite number, got {describe(value)}.")
        return float(value)

    originals = {id(w): np.array(keras.ops.convert_to_numpy(w)) for _, weights in candidates for w in weights}
    try:
        baseline = evaluate()
        mean_grad, mean_sq = _gradient_moments(model, x, y, loss_fn, candidates, batch_size, proxy_batches)
        rows = []
        progress = Progress(len(candidates), unit="layer") if verbose else None
        for done, (layer, weights) in enumerate(candidates, 1):
            for sparsity in levels:
                masks = [np.asarray(keras.ops.convert_to_numpy(magnitude(originals[id(w)], sparsity))) for w in weights]
                for w, mask in zip(weights, masks):
                    w.assign(originals[id(w)] * mask)
                try:
                    value = evaluate()
                finally:
                    for w in weights:
                        w.assign(originals[id(w)])
                proxies = _proxies(weights, masks, originals, mean_grad, mean_sq)
                rows.append(SensitivityRow(layer.name, sparsity, value, baseline - value, proxies))
            if progress is not None:
                progress.update(done, layer.name)
    finally:
        for _, weights in candidates:
            for w in weights:
                w.assign(originals[id(w)])
    drops = [r.drop for r in rows]
    correlations = {p: (spearman([r.proxies[p] for r in rows], drops) if len(rows) > 1 else float("nan"))
                    for p in PROXIES}
    return SensitivityReport(model.name, metric_name, baseline, len(np.asarray(y)), tuple(rows), correlations)


def _check_sparsities(api, sparsities):
    try:
        levels = list(sparsities)
    except TypeError:
        raise TypeError(f"{api}: sparsities must be a list of numbers in (0, 1), got {describe(sparsities)}.") from None
    if not levels:
        raise ValueError(f"{api}: sparsities must not be empty.")
    for s in levels:
        if isinstance(s, bool) or not isinstance(s, (int, float)):
            raise TypeError(f"{api}: sparsities must be numbers in (0, 1), got {describe(s)}.")
        if not 0 < s < 1:
            raise ValueError(f"{api}: sparsities must be numbers in (0, 1), got {s!r}.")
    return sorted(set(float(s) for s in levels))


def _loss(api, model, loss):
    if loss is None:
        loss = getattr(model, "loss", None)
        if loss is None:
            raise ValueError(f"{api}: model '{model.name}' is not compiled; give loss= for the proxies.")
    try:
        return keras.losses.get(loss)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{api}: loss must be a Keras loss or its name, got {describe(loss)}.") from error


def _candidates(api, model, names):
    found = [(layer, prunable_weights(layer)) for layer in _models.walk_layers(model)
             if not isinstance(layer, keras.Model) and layer.trainable and layer.weights
             and why_not_prunable(layer) is None]
    found = [(layer, weights) for layer, weights in found if weights]
    if names is not None:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"{api}: layers must be a list of layer names, got {describe(names)}.")
        by_name = {layer.name: (layer, weights) for layer, weights in found}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"{api}: layers {unknown} are not prunable layers of model '{model.name}'; "
                             f"prunable: {sorted(by_name)}.")
        found = [by_name[n] for n in dict.fromkeys(names)]
    if not found:
        raise ValueError(f"{api}: model '{model.name}' has no trainable prunable layer to analyse.")
    return found


def _gradient_moments(model, x, y, loss_fn, candidates, batch_size, batches):
    """Mean gradient and mean squared gradient of the loss, per candidate
    weight, over the first `batches` batches."""
    import tensorflow as tf  # Keras 3 has no backend-neutral gradient API

    weights = [w for _, ws in candidates for w in ws]
    total = [np.zeros(w.shape) for w in weights]
    squares = [np.zeros(w.shape) for w in weights]
    count = 0
    samples = len(np.asarray(y))
    for start in range(0, samples, batch_size):
        if count >= batches:
            break
        xb = x[start : start + batch_size] if not isinstance(x, list) else [a[start : start + batch_size] for a in x]
        with tf.GradientTape() as tape:
            value = loss_fn(y[start : start + batch_size], model(xb, training=False))
            value = keras.ops.mean(value)
        grads = tape.gradient(value, [w.value for w in weights])
        for i, g in enumerate(grads):
            g = np.zeros(weights[i].shape) if g is None else np.asarray(g, dtype=np.float64)
            total[i] += g
            squares[i] += g * g
        count += 1
    return ({id(w): t / count for w, t in zip(weights, total)},
            {id(w): s / count for w, s in zip(weights, squares)})


def _proxies(weights, masks, originals, mean_grad, mean_sq):
    magnitude_damage = fisher = taylor = 0.0
    for w, mask in zip(weights, masks):
        pruned = mask == 0
        value = originals[id(w)].astype(np.float64)[pruned]
        magnitude_damage += float((value * value).sum())
        fisher += 0.5 * float((mean_sq[id(w)][pruned] * value * value).sum())
        taylor += float((mean_grad[id(w)][pruned] * value).sum())
    return {"magnitude": magnitude_damage, "fisher": fisher, "taylor": abs(taylor)}
