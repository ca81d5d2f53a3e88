"""`shrink` and `iterative_shrink`: rank whole units (neurons, filters,
channels) and physically remove them, so the converted model is smaller and
faster.

```python
small = kc.pruning.structured.shrink(model, 0.5, criterion="l1")
```

The dependency groups come from one walk over the graph (`graph`); criteria
only score their units (`importance`); `shrink` rebuilds the model with
narrower layers through the same cloning helper as the unstructured API,
slicing each weight along the axes the layer table (`layers`) gives.
"""

import inspect
import logging
import math

import keras
import numpy as np
from keras import ops

from keras_compress._backend import check_backend
from keras_compress import _data, _models
from keras_compress.pruning.structured.graph import LAYER_API, Analysis
from keras_compress.pruning.structured.importance import CRITERIA, DATA_CRITERIA, measure, unit_scores
from keras_compress.pruning.structured.layers import layer_kind, spread
from tflite_bench.checks import check_choice, check_int, check_number

logger = logging.getLogger("keras_compress")


def shrink(
    model,
    amount,
    criterion="l1",
    data=None,
    *,
    loss=None,
    batch_size=32,
    max_batches=None,
    round_to=1,
):
    """Returns a smaller copy of `model` without its least important units.

    Units (Dense neurons, Conv filters) are removed in dependency groups: with
    a unit go its weights in the layer that makes it, in the channel-wise
    layers after it (BatchNormalization, DepthwiseConv), in every consumer
    (the next Dense or Conv input channels, the Dense rows behind a Flatten),
    and, when Add / Multiply / Concatenate tie several layers together
    (residual blocks), the same unit of every tied layer. The model's output
    units are never removed. Removing units whose signal is zero (kernel and
    bias zero, and a BatchNormalization after them, if any, with zero gamma
    and beta) leaves the outputs unchanged.

    Sequential models come back Sequential, Functional ones Functional, with
    the same layer names, nested models kept nested, compiled like `model`
    (with a fresh optimizer) if it was compiled; `model` is not modified.

    Args:
        model: a built Sequential or Functional model.
        amount: the fraction of each group's units to remove, in [0, 1):
            `floor(amount * units)` are removed, so at least one stays. A
            float applies to every prunable group (groups that cannot be
            pruned are skipped and logged); a dict `{layer name: fraction}`
            to the groups of the named Dense / Conv layers only.
        criterion: how units are ranked, lowest removed first:
            - `"l1"` (default), `"l2"`: the norm of the unit's kernel
              (`l1_norm`, `l2_norm`);
            - `"bn_gamma"`: `|gamma|` of the BatchNormalization after it
              (network slimming);
            - `"taylor"`: `|activation x gradient|` over `data` (`taylor`),
              needs labels and a loss;
            - `"apoz"`: `1 - `the fraction of zero activations over `data`
              (`apoz`);
            - a function `layer -> scores`, one per unit of the layer.
            Tied units are scored by the sum of their scores.
        data: samples for `"taylor"` and `"apoz"`, in any form
            `to_tflite(representative_data=)` and `Distiller.cache_teacher`
            take: an array `x`, a list or dict (by input name) of arrays for
            several inputs, a tuple `(x, y)`, a `tf.data.Dataset` or an
            iterable of `x` or `(x, y)` batches.
        loss: the loss for `"taylor"`: a Keras loss or its name. Default:
            the loss `model` was compiled with.
        batch_size: batch size when `data` is given as arrays.
        max_batches: read at most this many batches of `data`.
        round_to: keep a multiple of this many units in each group (at
            most all of them), e.g. 8 for hardware-friendly widths.

    Returns:
        The new, smaller model.

    Example:

    ```python
    small = kc.pruning.shrink(model, 0.5)                   # half of every group
    small = kc.pruning.shrink(model, {"conv_b": 0.25})      # one layer's group
    small = kc.pruning.shrink(model, 0.3, "taylor", data=(x, y))
    small.compile(optimizer="adam", loss=...); small.fit(x, y, epochs=2)
    ```
    """
    check_backend("shrink")
    options = _check_options(
        model, "shrink", criterion, data,
        dict(loss=loss, batch_size=batch_size, max_batches=max_batches, round_to=round_to),
    )  # fmt: skip
    analysis = Analysis(model)
    counts = [
        (group, _count(group.size, value, round_to))
        for group, value in _targets(analysis, amount, "shrink")
    ]
    return _remove(model, analysis, counts, criterion, options)


def iterative_shrink(model, amount, steps, fit, criterion="l1", data=None, **options):
    """Prunes in `steps` equal steps, calling `fit` after each.

    The final widths are those `shrink(model, amount, ...)` gives in one go;
    step `k` removes the units that bring each group to
    `k / steps` of the way there, ranking them again on the fine-tuned model.

    Args:
        model: a built Sequential or Functional model (not modified).
        amount: as in `shrink`: a fraction or `{layer name: fraction}`.
        steps: number of prune / fine-tune rounds (int >= 1).
        fit: `fit(model)`, called after each step with the new model; it
            compiles and trains it, and returns `None` or the model to
            continue with (with the same layer names).
        criterion, data: as in `shrink`.
        **options: `loss`, `batch_size`, `max_batches`, `round_to`, by
            keyword, as in `shrink`.

    Returns:
        The model after the last step and its `fit`.

    Example:

    ```python
    from keras_compress.examples import compile_classifier

    def fine_tune(model):
        compile_classifier(model).fit(x, y, epochs=1)

    small = kc.pruning.iterative_shrink(model, 0.5, steps=3, fit=fine_tune)
    ```
    """
    options = _check_options(model, "iterative_shrink", criterion, data, options)
    round_to = options["round_to"]
    check_int("iterative_shrink", "steps", steps, minimum=1)
    if not callable(fit):
        raise TypeError(f"iterative_shrink: fit must be a function fit(model), got {fit!r}.")
    # Widths by the first producer's name: names survive each rebuild.
    targets = {
        group.producers[0].name: (group.size, group.size - _count(group.size, value, round_to))
        for group, value in _targets(Analysis(model), amount, "iterative_shrink")
    }
    current = model
    for step in range(1, steps + 1):
        analysis = Analysis(current)
        found = {g.producers[0].name: g for g in analysis.groups}
        missing = sorted(set(targets) - set(found))
        if missing:
            raise ValueError(
                f"iterative_shrink: after step {step - 1}, the model has no layer "
                f"{', '.join(repr(n) for n in missing)}; fit must return None or "
                "the model it was given."
            )
        counts = []
        for name, (size, final) in targets.items():
            keep = size - ((size - final) * step) // steps
            keep = min(size, -(-keep // round_to) * round_to)
            counts.append((found[name], max(0, found[name].size - keep)))
        current = _remove(current, analysis, counts, criterion, options)
        logger.info("iterative_shrink: step %d of %d done; fine-tuning", step, steps)
        trained = fit(current)
        if trained is not None:
            current = trained
    return current


# -- shared steps ----------------------------------------------------------------


def _count(size, amount, round_to):
    """How many of `size` units `amount` removes."""
    # The tolerance keeps products like 0.29 * 100 = 28.999999999999996 at 29.
    keep = size - math.floor(amount * size + 1e-9)
    keep = min(size, -(-keep // round_to) * round_to)
    return size - keep


def _shrink_options():
    """`shrink`'s keyword-only arguments and their defaults."""
    parameters = inspect.signature(shrink).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}


def _check_options(model, api, criterion, data, options):
    """Validates everything but `amount`; returns the options `_remove` needs."""
    defaults = _shrink_options()
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(
            f"{api} got unexpected keyword arguments {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(defaults)} as in shrink."
        )
    options = {**defaults, **options}
    _models.check_graph_model(model, api, LAYER_API)
    if not callable(criterion):
        check_choice(api, "criterion", criterion, CRITERIA)
    check_int(api, "batch_size", options["batch_size"], minimum=1)
    check_int(api, "max_batches", options["max_batches"], minimum=1, allow_none=True)
    check_int(api, "round_to", options["round_to"], minimum=1)
    if criterion in DATA_CRITERIA and data is None:
        raise ValueError(f"{api}: criterion='{criterion}' measures activations and needs data=.")
    if criterion not in DATA_CRITERIA and data is not None and not callable(criterion):
        raise ValueError(
            f"{api}: criterion='{criterion}' reads only weights; data= is used by "
            "'taylor' and 'apoz'."
        )
    loss_fn = None
    if criterion == "taylor":
        if keras.backend.backend() != "tensorflow":
            raise ValueError(f"{api}: criterion='taylor' needs the TensorFlow backend (it differentiates the "
                             f"loss with TensorFlow's GradientTape); Keras runs on '{keras.backend.backend()}'. "
                             "Use criterion='l1', 'l2' or 'apoz' there, or KERAS_BACKEND=tensorflow.")
        if hasattr(data, "shape"):
            raise ValueError(f"{api}: criterion='taylor' needs labels: pass data=(x, y).")
        loss = options["loss"] if options["loss"] is not None else getattr(model, "loss", None)
        if loss is None or isinstance(loss, (dict, list, tuple)):
            raise ValueError(
                f"{api}: criterion='taylor' needs one loss: pass loss= (a Keras loss or its "
                f"name), or compile model '{model.name}' with a single loss first."
            )
        loss_fn = keras.losses.get(loss)
    return dict(options, data=data, loss=loss_fn, api=api)


def _check_amount(api, name, value):
    """`value` as a float: the fraction of a group's units removed, in [0, 1)
    (at least one unit is kept)."""
    return check_number(api, name, value, 0, 1, inclusive=(True, False))


def _prunable_names(analysis):
    names = [p.name for g in analysis.groups if g.reason is None for p in g.producers]
    return ", ".join(names) or "none"


def _targets(analysis, amount, api):
    """`[(group, fraction)]` from a float or a `{layer name: fraction}` dict."""
    model = analysis.model
    if isinstance(amount, dict):
        by_name = {}
        for layer in _models.walk_layers(model):
            by_name.setdefault(layer.name, []).append(layer)
        chosen = {}  # id(group) -> (group, fraction, layer name)
        for name, value in amount.items():
            if not isinstance(name, str):
                raise TypeError(f"{api}: amount keys must be layer names, got {name!r}.")
            if name not in by_name:
                raise ValueError(
                    f"{api}: amount names '{name}', which is not a layer of model "
                    f"'{model.name}'. Layers with prunable units: {_prunable_names(analysis)}."
                )
            if len(by_name[name]) > 1:
                raise ValueError(f"{api}: model '{model.name}' has several layers named '{name}'.")
            layer = by_name[name][0]
            group = analysis.group_of.get(id(layer))
            if group is None:
                raise ValueError(
                    f"{api}: layer '{name}' ({type(layer).__name__}) has no units of its own "
                    "to remove (units are removed from Dense and Conv layers, and with "
                    f"them from the layers after them). Prunable: {_prunable_names(analysis)}."
                )
            if group.reason is not None:
                raise ValueError(f"{api} cannot remove units of layer '{name}': {group.reason}.")
            value = _check_amount(api, f"amount['{name}']", value)
            if id(group) in chosen and chosen[id(group)][1] != value:
                other = chosen[id(group)][2]
                raise ValueError(
                    f"{api}: layers '{other}' and '{name}' share their units (one "
                    f"dependency group: {', '.join(p.name for p in group.producers)}) but "
                    f"got different amounts {chosen[id(group)][1]} and {value}."
                )
            chosen[id(group)] = (group, value, name)
        return [(group, value) for group, value, _ in chosen.values()]
    value = _check_amount(api, "amount", amount)
    prunable = [g for g in analysis.groups if g.reason is None]
    if not prunable:
        reasons = "; ".join(
            f"{', '.join(p.name for p in g.producers)}: {g.reason}" for g in analysis.groups
        )
        raise ValueError(
            f"{api}: model '{model.name}' has no units that can be removed. "
            f"{reasons or 'It has no Dense or Conv layers.'}"
        )
    skipped = [g for g in analysis.groups if g.reason and "output units are never removed" not in g.reason]
    if skipped:
        logger.warning(
            "%s leaves these layers' units in place: %s", api,
            "; ".join(f"{', '.join(p.name for p in g.producers)} ({g.reason})" for g in skipped),
        )
    return [(g, value) for g in prunable]


def _batches(model, data, api, batch_size, max_batches):
    """`(x, y)` batches (`y` may be None) of at most `batch_size` samples from
    any form the package's data adapter reads (`keras_compress._data`): an
    array, a list or dict of arrays for several inputs, `(x, y)`, a
    `tf.data.Dataset` or an iterable of those. `x` is an array, or a list of
    arrays in the model's input order."""
    specs = _data.input_specs(model)
    count = 0
    for arrays, y in _data.iter_batches(data, specs, api=api, argument="data", model_name=model.name, labels=True):
        for start in range(0, len(arrays[0]), batch_size):
            if max_batches is not None and count >= max_batches:
                return
            x = [a[start : start + batch_size] for a in arrays]
            yield (x[0] if len(x) == 1 else x), (None if y is None else y[start : start + batch_size])
            count += 1


def _labelled(batches, api):
    for x, y in batches:
        if y is None:
            raise ValueError(f"{api}: criterion='taylor' needs labels: data must give (x, y).")
        yield x, y


def _remove(model, analysis, counts, criterion, options):
    """Removes `count` lowest-scoring units of each `(group, count)`."""
    counts = [(g, n) for g, n in counts if n > 0]
    measured = None
    if criterion in DATA_CRITERIA and counts:
        batches = _batches(model, options["data"], options["api"], options["batch_size"], options["max_batches"])
        if criterion == "taylor":
            batches = _labelled(batches, options["api"])
        producers = [p for g, _ in counts for p in g.producers]
        measured = measure(analysis, producers, criterion, batches, options["loss"])
    removed = set()
    for group, count in counts:
        scores = unit_scores(analysis, group, criterion, measured)
        # Stable: among equal scores the first units go, never a random pick.
        removed.update(group.units[i] for i in np.argsort(scores, kind="stable")[:count])
    changes = analysis.plan(removed)

    def transform(layer):
        if id(layer) not in changes:
            return None
        source, keep_in, keep_out = changes[id(layer)]
        return narrowed_layer(source, keep_out), lambda built: built.set_weights(
            sliced_weights(source, keep_in, keep_out)
        )

    new = _models.clone_model(model, transform)
    if counts:
        logger.info(
            "%s removed %d units: %s", options["api"], sum(n for _, n in counts),
            ", ".join(f"{'+'.join(p.name for p in g.producers)} {g.size}->{g.size - n}" for g, n in counts),
        )
    return new


def narrowed_layer(layer, keep_out):
    """An unbuilt copy of `layer` with `len(keep_out)` units."""
    config = layer.get_config()
    if keep_out is not None:
        config[layer_kind(layer).width] = len(keep_out)
    return layer.__class__.from_config(config)


def sliced_weights(layer, keep_in, keep_out):
    """`layer`'s weights with only the kept input channels and units (a
    `None` keeps that axis whole), along the axes of its row in the layer
    table."""
    weights = layer_kind(layer).weights
    values = []
    for w in layer.weights:
        axes, v = weights[w.name], ops.convert_to_numpy(w)
        if axes.inputs is not None and keep_in is not None:
            v = np.take(v, spread(keep_in, axes.per_channel(layer)), axis=axes.inputs)
        if axes.units is not None and keep_out is not None:
            v = np.take(v, keep_out, axis=axes.units)
        values.append(v)
    return values
