"""`factorize`: replace Dense and Conv2D layers by two smaller layers from a
truncated SVD of their kernels.

```python
small = kc.factorization.factorize(model, energy=0.9)
print(kc.factorization.factorization_report(model, energy=0.9))
```
"""

import logging
import warnings

import keras

from keras_compress import _models
from keras_compress.factorization import svd
from keras_compress.factorization.layers import SUPPORTED, kind_of, why_not_factorizable
from keras_compress.factorization.report import FactorizationReport, LayerFactorization
from tflite_bench.checks import check_int, check_number, describe

logger = logging.getLogger("keras_compress")

_LAYER_API = "factorize_layer(layer, rank=...)"


def factorize(model, rank=None, energy=None, layers=None):
    """Returns a copy of `model` with Dense and Conv2D layers factorized.

    Each selected layer is replaced by a `keras.Sequential` of the same name
    holding two plain layers, from the truncated SVD `W ~ U_r S_r V_r^T` of
    its kernel `W`:

    - `Dense(units)` becomes `Dense(rank, use_bias=False)` with kernel
      `U_r sqrt(S_r)`, then `Dense(units)` with kernel `sqrt(S_r) V_r^T`
      and the layer's bias and activation;
    - `Conv2D(filters, (kh, kw))` (groups=1), its kernel read as a
      `(kh * kw * in_channels, filters)` matrix, becomes
      `Conv2D(rank, (kh, kw))` with the layer's strides, padding and
      dilation and no bias, then a 1x1 `Conv2D(filters)` with the layer's
      bias and activation.

    A layer of `n_in` inputs and `n_out` outputs keeps `rank * (n_in +
    n_out)` kernel weights instead of `n_in * n_out`. At the full rank
    `min(n_in, n_out)` the outputs are unchanged up to float rounding;
    below it the kernel is the best rank-`rank` approximation (its squared
    Frobenius error the sum of the discarded squared singular values), and
    a few epochs of fine-tuning usually recover the accuracy.

    The new layers are plain Keras layers: the model saves to and loads
    from `.keras` files and converts with `to_tflite` without custom
    objects. It comes back uncompiled; `model` is not modified. Sequential,
    Functional (branches, several inputs, shared layers) and nested models
    are rewritten; a subclassed model is refused (use `factorize_layer` on
    its layers in your own `__init__`).

    Args:
        model: a built Sequential or Functional model.
        rank: the rank of every selected layer (an int >= 1), or a dict
            `{layer name: rank}` selecting the named layers.
        energy: instead of `rank`, the fraction of each kernel's energy
            (sum of squared singular values) to keep, in (0, 1]: each
            layer gets the smallest rank that keeps it. A number, or a
            dict `{layer name: energy}` selecting the named layers.
        layers: the names of the layers to factorize with a number `rank`
            or `energy`; default None: every Dense and Conv2D layer,
            nested models included. Must be None when `rank` or `energy`
            is a dict.

    Give exactly one of `rank` and `energy`. When the layers are chosen by
    default, a layer whose rank is above its size `min(n_in, n_out)` or
    whose factorization would not have fewer parameters (`rank * (n_in +
    n_out) >= n_in * n_out`) is skipped with a warning naming it; a layer
    named in `layers` or a dict is refused with a `ValueError` instead.

    Returns:
        The new model. `factorization_report` with the same arguments tells
        what was done per layer; `singular_values` shows the spectra to
        choose ranks from.

    Raises:
        ValueError: a rank below 1 or above a named layer's size, an energy
            outside (0, 1], an unknown layer name, a named layer that is not
            a Dense or Conv2D (or cannot be factorized), a named layer that
            would not get smaller, or no layer left to factorize. Nothing
            is modified.
        TypeError: arguments of the wrong type, or `model` not a model.

    Example:

    ```python
    model = kc.examples.build_cnn()  # ... trained
    small = kc.factorization.factorize(model, rank={"dense": 16})
    kc.examples.compile_classifier(small).fit(x, y, epochs=2)
    ```
    """
    _, factors = _plan(model, rank, energy, layers, "factorize", with_factors=True)
    done = {}

    def transform(layer):
        if id(layer) not in factors:
            return None
        row, kind, first_kernel, second_kernel = factors[id(layer)]
        first, second = kind.pair(layer, row.rank)
        bias = [layer.bias.numpy()] if layer.use_bias else []

        def fill(pair):
            pair.layers[0].set_weights([first_kernel])
            pair.layers[1].set_weights([second_kernel, *bias])

        done[row.name] = row
        return keras.Sequential([first, second], name=layer.name), fill

    new = _models.clone_model(model, transform)
    logger.info("factorize: %s", "; ".join(
        f"{r.name} rank {r.rank} ({r.parameters:,} -> {r.factorized_parameters:,} parameters, "
        f"energy {r.retained_energy:.4f})" for r in done.values()))
    return new


def factorization_report(model, rank=None, energy=None, layers=None):
    """What `factorize(model, rank, energy, layers)` does, layer by layer.

    Takes the same arguments, checks them the same way and warns about the
    same skipped layers, but builds no model.

    Returns:
        A `FactorizationReport`: a list of `LayerFactorization(name, type,
        shape, rank, parameters, factorized_parameters, retained_energy,
        skipped)` rows, one per candidate layer, that prints as a table.

    Example:

    ```python
    print(kc.factorization.factorization_report(model, energy=0.9))
    ```
    """
    report, _ = _plan(model, rank, energy, layers, "factorization_report", with_factors=False)
    return report


def singular_values(model, layers=None):
    """The singular values of the kernels `factorize` would factor.

    Args:
        model: a built Sequential or Functional model.
        layers: names of Dense / Conv2D layers; default None: every one.

    Returns:
        A dict `{layer name: 1-D float64 array}`, largest value first; a
        Conv2D kernel is read as a `(kh * kw * in_channels, filters)` matrix.
        `np.cumsum(s**2) / np.sum(s**2)` is the energy kept per rank.
    """
    api = "singular_values"
    _models.check_graph_model(model, api, _LAYER_API)
    chosen = _select(model, None if layers is None else _check_names(api, layers), api)
    return {layer.name: svd.singular_values(_matrix(layer)) for layer, _ in chosen}


def factorize_layer(layer, rank=None, energy=None):
    """One layer's factorization: a built `keras.Sequential` of two layers.

    For layers of a subclassed model, which `factorize` cannot rewrite: use
    the returned pair in place of `layer` in your model's `__init__`.

    Args:
        layer: a built Dense or Conv2D (groups=1) layer.
        rank: an int in [1, min(n_in, n_out)].
        energy: instead of `rank`, the fraction of energy to keep, in (0, 1].

    Returns:
        `keras.Sequential([first, second], name=layer.name)`, built, with the
        factor weights (see `factorize`). It is returned even when it has
        more parameters than `layer`.
    """
    api = "factorize_layer"
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(f"{api}: layer must be a keras Layer, got {describe(layer)}.")
    reason = why_not_factorizable(layer)
    if reason:
        raise ValueError(f"{api} cannot factorize layer '{layer.name}': {reason}.")
    setting, argument = _check_choice_of_setting(api, rank, energy)
    _check_setting(api, argument, setting)
    row, kind, first_kernel, second_kernel = _layer_plan(layer, argument, setting, argument, api, strict=True,
                                                         require_smaller=False)
    first, second = kind.pair(layer, row.rank)
    pair = keras.Sequential([first, second], name=layer.name)
    channels = layer.kernel.shape[-2]
    if not kind.conv:
        pair.build((None, channels))
    elif layer.data_format == "channels_first":
        pair.build((None, channels, None, None))
    else:
        pair.build((None, None, None, channels))
    first.set_weights([first_kernel])
    second.set_weights([second_kernel, *([layer.bias.numpy()] if layer.use_bias else [])])
    return pair


# -- planning ------------------------------------------------------------------


def _check_choice_of_setting(api, rank, energy):
    if (rank is None) == (energy is None):
        raise ValueError(
            f"{api}: give exactly one of `rank` (an int >= 1, or a dict {{layer name: int}}) and "
            f"`energy` (a number in (0, 1], or a dict {{layer name: number}}); got rank={describe(rank)}, "
            f"energy={describe(energy)}."
        )
    return (rank, "rank") if rank is not None else (energy, "energy")


def _check_setting(api, argument, value):
    if argument == "energy" or argument.startswith("energy["):
        return check_number(api, argument, value, 0, 1, inclusive=(False, True))
    return check_int(api, argument, value, minimum=1)


def _check_names(api, layers):
    if isinstance(layers, str) or not isinstance(layers, (list, tuple)):
        raise TypeError(f"{api}: layers must be a list of layer names or None, got {describe(layers)}.")
    if not layers:
        raise ValueError(f"{api}: layers must name at least one layer (or be None for every Dense and Conv2D).")
    for name in layers:
        if not isinstance(name, str):
            raise TypeError(f"{api}: layers must hold layer names (str), got {describe(name)}.")
    return list(dict.fromkeys(layers))


def _candidates(model):
    return [layer for layer in _models.walk_layers(model) if kind_of(layer) is not None]


def _select(model, names, api):
    """`[(layer, explicit)]`: the named layers, each checked, or every
    factorizable Dense / Conv2D layer when `names` is None."""
    if names is None:
        chosen = [(layer, False) for layer in _candidates(model) if why_not_factorizable(layer) is None]
        if not chosen:
            raise ValueError(
                f"{api}: model '{model.name}' has no layer that factorizes ({SUPPORTED}, built, float, no LoRA)."
            )
        return chosen
    by_name = {}
    for layer in _models.walk_layers(model):
        by_name.setdefault(layer.name, []).append(layer)
    accepted = ", ".join(l.name for l in _candidates(model) if why_not_factorizable(l) is None) or "none"
    chosen = []
    for name in names:
        if name not in by_name:
            raise ValueError(
                f"{api}: '{name}' is not a layer of model '{model.name}'. Layers that factorize: {accepted}."
            )
        if len(by_name[name]) > 1:
            raise ValueError(f"{api}: model '{model.name}' has several layers named '{name}'; name them apart.")
        layer = by_name[name][0]
        reason = why_not_factorizable(layer)
        if reason:
            raise ValueError(f"{api} cannot factorize layer '{name}': {reason}. Layers that factorize: {accepted}.")
        chosen.append((layer, True))
    return chosen


def _plan(model, rank, energy, layers, api, with_factors):
    """Checks everything, then returns `(FactorizationReport, {id(layer):
    (row, kind, first kernel, second kernel)})` for the layers to factorize
    (the kernels only `with_factors`)."""
    _models.check_graph_model(model, api, _LAYER_API)
    setting, argument = _check_choice_of_setting(api, rank, energy)
    if isinstance(setting, dict):
        if layers is not None:
            raise ValueError(
                f"{api}: layers must be None when {argument} is a dict (its keys name the layers); "
                f"got layers={describe(layers)}."
            )
        names = _check_names(api, list(setting))
        settings = {name: _check_setting(api, f"{argument}['{name}']", setting[name]) for name in names}
        labels = {name: f"{argument}['{name}']" for name in names}
    else:
        value = _check_setting(api, argument, setting)
        names = None if layers is None else _check_names(api, layers)
        settings = labels = None
    chosen = _select(model, names, api)
    _models.check_finite_weights(model, api)
    report, factors, skipped = FactorizationReport(), {}, []
    for layer, explicit in chosen:
        layer_value = value if settings is None else settings[layer.name]
        label = argument if labels is None else labels[layer.name]
        row, kind, first, second = _layer_plan(layer, argument, layer_value, label, api, strict=explicit,
                                               with_factors=with_factors)
        report.append(row)
        if row.skipped:
            skipped.append(row)
        else:
            factors[id(layer)] = (row, kind, first, second)
    if not factors:
        raise ValueError(
            f"{api}: no layer of model '{model.name}' gets smaller with {argument}={describe(setting)}: "
            + "; ".join(f"'{r.name}': {r.skipped}" for r in skipped) + "."
        )
    if skipped:
        warnings.warn(
            f"{api}: {len(skipped)} layer(s) of model '{model.name}' left as they are: "
            + "; ".join(f"'{r.name}': {r.skipped}" for r in skipped) + ".",
            stacklevel=3,
        )
    return report, factors


def _matrix(layer):
    return kind_of(layer).matrix(layer.kernel.numpy())


def _layer_plan(layer, argument, value, label, api, strict, with_factors=True, require_smaller=True):
    """`(row, kind, first kernel, second kernel)` of one layer; `row.skipped`
    says why it is left alone (raised instead when `strict`)."""
    kind = kind_of(layer)
    kernel = layer.kernel.numpy()
    matrix = kind.matrix(kernel)
    values = svd.singular_values(matrix)
    n_in, n_out = matrix.shape
    rank = svd.rank_for_energy(values, value) if argument.startswith("energy") else value
    bias = n_out if layer.use_bias else 0
    before = n_in * n_out + bias
    after = rank * (n_in + n_out) + bias
    row = LayerFactorization(layer.name, type(layer).__name__, (n_in, n_out), rank, before, after,
                             svd.retained_energy(values, rank))
    reason = None
    if rank > min(n_in, n_out):
        if strict:
            raise ValueError(_above_size(api, label, layer, row))
        reason = f"rank {rank} is above its size min({n_in}, {n_out}) = {min(n_in, n_out)}"
    elif after >= before and require_smaller:
        largest = -(-n_in * n_out // (n_in + n_out)) - 1
        reason = (f"rank {rank} would not make it smaller ({rank} * ({n_in} + {n_out}) = {rank * (n_in + n_out):,} "
                  f">= {n_in} * {n_out} = {n_in * n_out:,} kernel weights; ranks up to {largest} do)")
        if strict:
            raise ValueError(
                f"{api} cannot factorize layer '{layer.name}' with {label}={describe(value)}: {reason}."
                + (" Keep less energy, or leave the layer out." if argument.startswith("energy") else "")
            )
    if reason:
        return row._replace(factorized_parameters=before, skipped=reason), kind, None, None
    if not with_factors:
        return row, kind, None, None
    first, second = svd.truncated_svd(matrix, rank)
    dtype = kernel.dtype
    first, second = kind.factor_kernels(kernel, first.astype(dtype), second.astype(dtype))
    return row, kind, first, second


def _above_size(api, label, layer, row):
    n_in, n_out = row.shape
    return (
        f"{api}: {label} must be an int in [1, {min(n_in, n_out)}] for layer '{layer.name}' "
        f"({row.type}, its kernel a {n_in} x {n_out} matrix: the rank is at most min({n_in}, {n_out})), "
        f"got {row.rank}."
    )
