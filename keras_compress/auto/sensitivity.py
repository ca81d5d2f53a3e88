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
import warnings

import keras
import numpy as np

from keras_compress._backend import check_backend, require_tensorflow
from keras_compress import _data, _models
from keras_compress.pruning.criteria import magnitude
from keras_compress.pruning.structured import dependency_groups, shrink
from keras_compress.pruning.wrapper import prunable_weights, why_not_prunable
from keras_compress.export import to_tflite
from keras_compress.export.converter import SPARSE_AUTO_MIN_SPARSITY, has_sparse_weights
from tflite_bench.checks import check_bool, check_choice, check_int, describe
from tflite_bench.progress import Progress

PROXIES = ("magnitude", "fisher", "taylor")


ACTIONS = ("prune", "shrink")


@dataclasses.dataclass(frozen=True)
class SensitivityRow:
    """One candidate: `layer` alone changed by `action` at `amount`.

    `action` is `"prune"` (the fraction `amount` of the layer's weights of
    smallest magnitude set to zero) or `"shrink"` (the fraction `amount` of
    the units of the layer's dependency group removed by
    `kc.pruning.shrink`, lowest L1 norm first; `layer` then names the
    group's producers joined by "+"). `drop` is the baseline metric minus the
    metric measured after the change (positive: worse); `weights_removed` the
    weights it zeroes or removes, the cost a search trades against `drop`;
    `proxies` maps each proxy to its predicted damage (pruning rows only);
    `bytes` the size of the candidate's converted `.tflite` (with
    `measure_bytes=True`) as `to_tflite(sparse="auto")` makes it, and
    `bytes_by_encoding` its sizes without and with the sparse weight
    encoding (`{"dense": n, "sparse": n}`)."""

    layer: str
    action: str
    amount: float
    metric: float
    drop: float
    weights_removed: int
    proxies: dict
    bytes: int = None
    bytes_by_encoding: dict = None


@dataclasses.dataclass(frozen=True)
class SensitivityReport:
    """The result of `sensitivity_analysis`."""

    model_name: str
    metric_name: str
    baseline: float
    samples: int
    rows: tuple
    correlations: dict
    base_bytes: int = None
    base_bytes_by_encoding: dict = None

    def predict_bytes(self, choices):
        """The file size predicted for several candidates applied together.

        The sparse encoding is chosen for the whole file, so for each
        encoding the unchanged model's bytes plus each chosen candidate's
        measured change under that encoding, and the smaller of the two (as
        `to_tflite(sparse="auto")` keeps). `choices` maps layer names (as in
        `rows`) to `(action, amount)`. Needs `measure_bytes=True`."""
        if self.base_bytes_by_encoding is None:
            raise ValueError("predict_bytes needs a report made with measure_bytes=True.")
        rows = [self.row(layer, amount, action) for layer, (action, amount) in choices.items()]
        # to_tflite tries the encoding only when a weight is pruned enough.
        sparse = any(r.action == "prune" and r.amount >= SPARSE_AUTO_MIN_SPARSITY for r in rows)
        return min(
            base + sum(r.bytes_by_encoding[encoding] - base for r in rows)
            for encoding, base in self.base_bytes_by_encoding.items()
            if sparse or encoding == "dense"
        )

    def row(self, layer, amount, action="prune"):
        """The row of `layer` changed by `action` at `amount`."""
        for r in self.rows:
            if r.layer == layer and r.action == action and math.isclose(r.amount, amount):
                return r
        raise KeyError(f"no {action} row for layer {layer!r} at {amount}")

    def layers(self, action="prune"):
        """The layers (or groups) analysed by `action`, in model order."""
        return list(dict.fromkeys(r.layer for r in self.rows if r.action == action))

    def table(self):
        """Markdown tables, one per action: a line per layer, the drop at each amount."""
        lines = [f"{self.metric_name} {self.baseline:.4f} on {self.samples} samples."]
        titles = {"prune": "Drop when one layer alone is pruned to a sparsity (magnitude):",
                  "shrink": "Drop when one group alone loses a fraction of its units (L1 norm):"}
        for action in ACTIONS:
            levels = sorted({r.amount for r in self.rows if r.action == action})
            if not levels:
                continue
            lines += ["", titles[action], "",
                      "| layer | " + " | ".join(f"{a:.0%}" for a in levels) + " |",
                      "|---|" + "---:|" * len(levels)]
            for layer in self.layers(action):
                drops = [self.row(layer, a, action).drop for a in levels]
                lines.append(f"| {layer} | " + " | ".join(f"{d:+.4f}" for d in drops) + " |")
        if self.correlations:
            lines += ["", "Spearman rank correlation of each proxy with the measured pruning drops: "
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
    fractions=(0.25, 0.5),
    layers=None,
    metric=None,
    loss=None,
    batch_size=256,
    max_samples=2000,
    proxy_batches=8,
    measure_bytes=False,
    quantization="int8",
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
        sparsities: the unstructured sparsity levels to measure, each in
            (0, 1); may be empty.
        fractions: the structured removal fractions to measure, each in
            (0, 1): per dependency group of a named (or any) layer, that
            fraction of its units removed by `kc.pruning.shrink` (L1 norm);
            may be empty. Groups that cannot be shrunk are left out.
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
        measure_bytes: also convert every candidate to a `.tflite` file
            (`to_tflite` with `quantization`, calibrated on up to 200 samples
            of `data` for "int8", without and with the sparse encoding) and
            record its sizes, the cost a size budget reads;
            `SensitivityReport.predict_bytes` adds them up.
        quantization: the `to_tflite` mode for `measure_bytes`.

    Returns:
        A `SensitivityReport` (rows, baseline, correlations, `table()`).

    Raises:
        TypeError / ValueError: a bad argument, naming it; nothing changed.
    """
    check_backend("sensitivity_analysis")
    api = "sensitivity_analysis"
    _models.check_graph_model(model, api, "sensitivity_analysis on a Functional model wrapping it")
    levels = _check_levels(api, "sparsities", sparsities)
    removals = _check_levels(api, "fractions", fractions)
    if not levels and not removals:
        raise ValueError(f"{api}: sparsities and fractions are both empty: nothing to measure.")
    check_int(api, "batch_size", batch_size, minimum=1)
    check_int(api, "max_samples", max_samples, minimum=1)
    check_int(api, "proxy_batches", proxy_batches, minimum=1)
    check_bool(api, "measure_bytes", measure_bytes)
    check_choice(api, "quantization", quantization, ("float", "dynamic", "float16", "int8", "int16x8"))
    if metric is not None and not callable(metric):
        raise TypeError(f"{api}: metric must be None (accuracy) or a function (y_true, y_pred) -> float, got {describe(metric)}.")
    if levels:
        require_tensorflow(api, "the Fisher and Taylor proxies of unstructured pruning differentiate the loss "
                           "with TensorFlow's GradientTape",
                           "Pass sparsities=() (structured fractions only), or run with KERAS_BACKEND=tensorflow "
                           "on the model saved as a .keras file.")
    loss_fn = _loss(api, model, loss)
    candidates = _candidates(api, model, layers)
    arrays, y = _data.read_inputs(data, _data.input_specs(model), api=api, argument="data",
                                  model_name=model.name, max_samples=max_samples, labels=True)
    if y is None:
        raise ValueError(f"{api}: data needs labels: give (x, y).")
    x = arrays[0] if len(arrays) == 1 else arrays
    score = metric or _accuracy
    metric_name = "accuracy" if metric is None else getattr(metric, "__name__", type(metric).__name__)

    def file_bytes(target=model):
        if not measure_bytes:
            return None, None
        options = {"quantization": None if quantization == "float" else quantization}
        if quantization in ("int8", "int16x8"):
            options.update(representative_data=arrays[0][:200] if len(arrays) == 1 else [a[:200] for a in arrays],
                           calibration_steps=200)
        sizes = {"dense": len(to_tflite(target, sparse=False, **options)),
                 "sparse": len(to_tflite(target, sparse=True, **options))}
        # What to_tflite(sparse="auto") gives: the smaller, when it tries both.
        return (min(sizes.values()) if has_sparse_weights(target) else sizes["dense"]), sizes

    def evaluate(target=model):
        # A shrunk copy is a new model: its own predict function would be
        # traced once and thrown away (0.1 s on the demo CNN, 3x its eager
        # batches); the model pruned in place keeps one traced function.
        outputs = (target.predict(x, batch_size=batch_size, verbose=0) if target is model
                   else _predict_eagerly(target, x, batch_size))
        value = score(y, outputs)
        if not isinstance(value, (int, float, np.floating)) or not math.isfinite(float(value)):
            raise ValueError(f"{api}: metric must return a finite number, got {describe(value)}.")
        return float(value)

    originals = {id(w): np.array(keras.ops.convert_to_numpy(w)) for _, weights in candidates for w in weights}
    try:
        baseline = evaluate()
        base_bytes, base_sizes = file_bytes()
        if levels:
            mean_grad, mean_sq = _gradient_moments(model, x, y, loss_fn, candidates, batch_size, proxy_batches)
        rows = []
        groups = _shrinkable_groups(api, model, candidates, layers) if removals else []
        progress = Progress(len(candidates) + len(groups), unit="candidate layer") if verbose else None
        done = 0
        for layer, weights in candidates:
            for sparsity in levels:
                masks = [np.asarray(keras.ops.convert_to_numpy(magnitude(originals[id(w)], sparsity))) for w in weights]
                for w, mask in zip(weights, masks):
                    w.assign(originals[id(w)] * mask)
                try:
                    value = evaluate()
                    size, sizes = file_bytes()
                finally:
                    for w in weights:
                        w.assign(originals[id(w)])
                proxies = _proxies(weights, masks, originals, mean_grad, mean_sq)
                removed = int(sum((mask == 0).sum() for mask in masks))
                rows.append(SensitivityRow(layer.name, "prune", sparsity, value, baseline - value, removed, proxies,
                                           size, sizes))
            done += 1
            if progress is not None:
                progress.update(done, layer.name)
        for group in groups:
            for fraction in removals:
                small = shrink(model, {group.producers[0]: fraction}, criterion="l1")
                value = evaluate(small)
                removed = model.count_params() - small.count_params()
                size, sizes = file_bytes(small)
                rows.append(SensitivityRow("+".join(group.producers), "shrink", fraction, value,
                                           baseline - value, int(removed), {}, size, sizes))
            done += 1
            if progress is not None:
                progress.update(done, "+".join(group.producers))
    finally:
        for _, weights in candidates:
            for w in weights:
                w.assign(originals[id(w)])
    pruned = [r for r in rows if r.action == "prune"]
    drops = [r.drop for r in pruned]
    correlations = {p: spearman([r.proxies[p] for r in pruned], drops) for p in PROXIES} if len(pruned) > 1 else {}
    return SensitivityReport(model.name, metric_name, baseline, len(np.asarray(y)), tuple(rows), correlations,
                             base_bytes, base_sizes)


def _predict_eagerly(model, x, batch_size):
    """`model.predict(x)` by eager calls on batches of `batch_size`."""
    n = len(x[0]) if isinstance(x, list) else len(x)
    batches = []
    for start in range(0, n, batch_size):
        batch = [a[start:start + batch_size] for a in x] if isinstance(x, list) else x[start:start + batch_size]
        batches.append(keras.tree.map_structure(keras.ops.convert_to_numpy, model(batch, training=False)))
    return keras.tree.map_structure(lambda *parts: np.concatenate(parts), *batches)


def _check_levels(api, name, levels):
    if isinstance(levels, (str, bytes)):
        raise TypeError(f"{api}: {name} must be a list of numbers in (0, 1), got {describe(levels)}.")
    try:
        levels = list(levels)
    except TypeError:
        raise TypeError(f"{api}: {name} must be a list of numbers in (0, 1), got {describe(levels)}.") from None
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, (int, float)):
            raise TypeError(f"{api}: {name} must be numbers in (0, 1), got {describe(level)}.")
        if not 0 < level < 1:
            raise ValueError(f"{api}: {name} must be numbers in (0, 1), got {level!r}.")
    return sorted(set(float(level) for level in levels))


def _shrinkable_groups(api, model, candidates, named):
    """The prunable dependency groups with a producer among the candidate
    layers, in model order. A layer the caller named whose group cannot be
    shrunk is named in a warning, with the reason."""
    names = {layer.name for layer, _ in candidates}
    groups = [g for g in dependency_groups(model) if set(g.producers) & names]
    left_out = [g for g in groups if not g.prunable or g.size < 2]
    if named is not None and left_out:
        warnings.warn(
            f"{api}: no structured candidates for "
            + "; ".join(f"{'+'.join(g.producers)} ({g.reason or 'a single unit'})" for g in left_out)
            + ".",
            stacklevel=3,
        )
    return [g for g in groups if g not in left_out]


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
