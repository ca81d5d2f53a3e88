"""Model-level pruning API: `prune_low_magnitude`, `strip_pruning` and `prune_scope`."""

import logging
import warnings

import keras
from keras import ops

from keras_compress import _models
from keras_compress._backend import check_backend
from keras_compress.pruning import schedules
from keras_compress.pruning.criteria import check_block_pooling_type, check_block_size, check_m_by_n
from keras_compress.pruning.policy import PruningPolicy
from keras_compress.pruning.wrapper import (
    NO_BLOCKS,
    SUPPORTED_LAYER_NAMES,
    PruneWrapper,
    block_reason,
    check_options,
    describe,
    m_by_n_reason,
    prunable_sublayers,
    prunable_weights,
    why_not_prunable,
)

logger = logging.getLogger("keras_compress")

_DEFAULT_SCHEDULE = schedules.ConstantSparsity(0.5, begin_step=0)
_LAYER_API = "keras_compress.pruning.PruneWrapper (or prune_low_magnitude on a layer)"


def prune_low_magnitude(
    to_prune,
    pruning_schedule=_DEFAULT_SCHEDULE,
    *,
    layers=None,
    global_pruning=False,
    prune_bias=False,
    include_frozen=False,
    sparsity_m_by_n=None,
    block_size=NO_BLOCKS,
    block_pooling_type="AVG",
    pruning_policy=None,
):
    """Wraps the prunable layers of a model (or one layer) in `PruneWrapper`.

    A model is cloned: the returned model has the same weights and, before any
    pruning step, the same outputs; the model passed in is not modified.
    Sequential, Functional and nested models are supported. Layers built
    from prunable layers are pruned through them: the query, key, value and
    output projections of a `MultiHeadAttention`, the kernel and recurrent
    kernel of an `LSTM`, `GRU` or `SimpleRNN` (also inside `Bidirectional`).
    Layers without a pruning rule (BatchNormalization, pooling, ...) are kept
    as they are; when no `layers` selection is given, those holding weights
    are listed in a warning. Frozen layers (`trainable=False`, such as a
    pretrained backbone) are left unpruned, with a warning naming them,
    unless `include_frozen=True`: training cannot move their weights, so
    their pruned weights could not be compensated. Pruning then happens
    during `fit` with the `UpdatePruningStep` callback (schedules) or
    `ThresholdPruning`.

    Args:
        to_prune: a Sequential or Functional `keras.Model`, a layer, or a list
            of layers. A layer is wrapped in place (not copied), as when
            building a model: `prune_low_magnitude(keras.layers.Dense(10))`.
        pruning_schedule: a `PruningSchedule`, or `None` to create masks that
            only `ThresholdPruning` changes (the L1-then-threshold recipe).
            Default: `ConstantSparsity(0.5, begin_step=0)`, as in tfmot.
        layers: which layers of a model to prune. `None` (default) prunes
            every prunable layer. Otherwise a layer name, a layer class, a
            list of names and classes, or a predicate `fn(layer) -> bool`
            called on each prunable layer. A class also selects the layers
            built from it (`keras.layers.EinsumDense` selects every
            `MultiHeadAttention`). A name that does not exist, or a named
            layer or class that cannot be pruned, raises `ValueError`.
        global_pruning: rank the weights of all wrapped layers together (one
            magnitude threshold for the model) instead of pruning each layer
            to the scheduled sparsity.
        prune_bias: also mask biases. Default False.
        include_frozen: also prune layers with `trainable=False`. Default
            False: they are skipped with a warning, and naming one in
            `layers` raises `ValueError`.
        sparsity_m_by_n: `None`, or `(N, M)` such as `(2, 4)` (tfmot's
            argument): at each pruning step of the schedule, every kernel
            keeps the N largest of each M consecutive weights along its
            input channels. Only Dense and Conv1D/2D/3D kernels have input
            channels to block: with `layers=None` the other prunable layers
            are left unpruned, named in a warning; naming one raises.
        block_size: `(rows, columns)`, default `(1, 1)` (weight by weight).
            Otherwise each pruned 2-D weight (a Dense or Embedding matrix, an
            LSTM kernel) loses whole blocks of that size, the blocks of
            smallest pooled |w| first, to the scheduled sparsity (tfmot's
            argument). Conv kernels are not 2-D: with `layers=None` those
            layers are left unpruned, named in a warning (tfmot raises);
            naming one raises.
        block_pooling_type: `"AVG"` (default) or `"MAX"`: a block's score is
            the mean or the largest |w| in it.
        pruning_policy: `None`, or a `PruningPolicy` such as
            `PruneForLatencyOnXNNPack()`: the model must pass its
            `ensure_model_supports_pruning`, and only the layers its
            `allow_pruning` accepts are wrapped (within `layers`, if given).
            For a model only.

    tfmot's `pruning_params` dicts work as they are:
    `prune_low_magnitude(model, **{"pruning_schedule": ..., "block_size":
    (1, 1), "block_pooling_type": "AVG"})`.

    Returns:
        The pruned model (a clone), or the wrapper(s) for layer input.

    Example:

    ```python
    schedule = kc.pruning.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000)
    pruned = kc.pruning.prune_low_magnitude(model, schedule)
    pruned.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    pruned.fit(x, y, epochs=4, callbacks=[kc.pruning.UpdatePruningStep()])
    final = kc.pruning.strip_pruning(pruned)
    ```
    """
    check_backend("prune_low_magnitude")
    if sparsity_m_by_n is not None:
        sparsity_m_by_n = check_m_by_n("prune_low_magnitude", sparsity_m_by_n)
    block_size = check_block_size("prune_low_magnitude", block_size)
    block_pooling_type = check_block_pooling_type("prune_low_magnitude", block_pooling_type)
    options = dict(
        pruning_schedule=pruning_schedule,
        global_pruning=global_pruning,
        prune_bias=prune_bias,
        sparsity_m_by_n=sparsity_m_by_n,
        block_size=block_size,
        block_pooling_type=block_pooling_type,
    )
    if pruning_policy is not None and not isinstance(pruning_policy, PruningPolicy):
        raise TypeError(
            "prune_low_magnitude: pruning_policy must be None or a keras_compress.pruning.PruningPolicy "
            f"(such as PruneForLatencyOnXNNPack()), got {pruning_policy!r}."
        )
    if pruning_policy is not None and not isinstance(to_prune, keras.Model):
        raise ValueError(
            "prune_low_magnitude: pruning_policy chooses layers within a model; it cannot apply to "
            f"{type(to_prune).__name__} {to_prune!r}. Pass the model, or wrap the layers you choose."
        )
    wrapped = _models.wrap_layers(to_prune, lambda layer: PruneWrapper(layer, **options))
    if wrapped is not None:
        return wrapped
    _models.check_graph_model(to_prune, "prune_low_magnitude", _LAYER_API)
    _models.check_finite_weights(to_prune, "prune_low_magnitude")
    check_options("prune_low_magnitude", pruning_schedule, global_pruning, prune_bias)
    if sparsity_m_by_n is not None and (global_pruning or prune_bias):
        raise ValueError("prune_low_magnitude: sparsity_m_by_n masks each kernel by its own blocks; it cannot be "
                         "combined with global_pruning=True or prune_bias=True.")
    if block_size != NO_BLOCKS and (sparsity_m_by_n is not None or global_pruning or prune_bias):
        raise ValueError(f"prune_low_magnitude: block_size={block_size} masks each kernel by its own blocks; it "
                         "cannot be combined with sparsity_m_by_n, global_pruning=True or prune_bias=True.")
    if not isinstance(include_frozen, bool):
        raise TypeError(
            f"prune_low_magnitude: include_frozen must be True or False, got {include_frozen!r}."
        )
    if pruning_policy is not None:
        pruning_policy.ensure_model_supports_pruning(to_prune)
    selected = _select_layers(to_prune, layers, include_frozen)
    if pruning_policy is not None:
        selected = _policy_layers(to_prune, selected, pruning_policy, layers)
    if sparsity_m_by_n is not None:
        selected = _fitting_layers(
            to_prune, selected, m_by_n_reason, named=layers is not None, argument="sparsity_m_by_n",
            why="sparsity_m_by_n runs along a kernel's input channels, which only Dense and Conv1D/2D/3D "
            "layers have",
        )
    if block_size != NO_BLOCKS:
        selected = _fitting_layers(
            to_prune, selected, block_reason, named=layers is not None, argument=f"block_size={block_size}",
            why="block_size applies to 2-D weight matrices (Dense, Embedding, recurrent kernels), not to "
            "Conv kernels",
        )
    if not selected:
        raise ValueError(
            f"prune_low_magnitude found nothing to prune in model '{to_prune.name}' "
            f"with layers={layers!r}"
            + ("" if include_frozen else " (frozen layers skipped; see include_frozen)")
            + ("" if pruning_policy is None else f" and pruning_policy={type(pruning_policy).__name__}()")
            + f". Prunable types: {SUPPORTED_LAYER_NAMES}."
        )

    def transform(layer):
        if id(layer) not in selected:
            return None
        copy = _models.copy_layer(layer)
        wrapper = PruneWrapper(copy, **options)
        return wrapper, lambda built, source=layer: built.layer.set_weights(source.get_weights())

    pruned = _models.clone_model(to_prune, transform)
    names = [layer.name for layer in _models.walk_layers(to_prune) if id(layer) in selected]
    logger.info("prune_low_magnitude wrapped %d layers: %s", len(names), ", ".join(names))
    return pruned


def _fitting_layers(model, selected, reason, named, argument, why):
    """The selected layers `argument` can apply to (`reason(layer)` is None);
    the others are named in a warning that says `why`, or refused when the
    caller named them."""
    chosen = [l for l in _models.walk_layers(model) if id(l) in selected]
    unfit = [l for l in chosen if reason(l)]
    if unfit and named:
        raise ValueError(f"prune_low_magnitude cannot apply {argument} to layer {describe(unfit[0])}: "
                         f"{reason(unfit[0])}.")
    if unfit:
        warnings.warn(f"prune_low_magnitude leaves {_names(unfit)} unpruned: {why}.", stacklevel=3)
    return {id(l) for l in chosen if not reason(l)}


def _policy_layers(model, selected, policy, layers):
    """The selected layers `policy` allows; a layer named in `layers` that
    it does not allow is refused (classes and predicates only filter)."""
    names = {layers} if isinstance(layers, str) else {
        item for item in (layers if isinstance(layers, (list, tuple)) else []) if isinstance(item, str)
    }
    chosen = [l for l in _models.walk_layers(model) if id(l) in selected]
    refused = [l for l in chosen if not policy.allow_pruning(l) and l.name in names]
    if refused:
        raise ValueError(f"prune_low_magnitude: layer {describe(refused[0])} is selected by layers but "
                         f"pruning_policy={type(policy).__name__}() does not allow pruning it.")
    return {id(l) for l in chosen if policy.allow_pruning(l)}


def _select_layers(model, layers, include_frozen):
    """Ids of the layers to wrap; raises on an invalid selection."""
    all_layers = list(_models.walk_layers(model))
    prunable = [l for l in all_layers if why_not_prunable(l) is None]
    if layers is None:
        skipped = [
            l for l in all_layers
            if why_not_prunable(l) is not None
            and l.weights and not isinstance(l, PruneWrapper)
        ]
        if skipped:
            logger.warning(
                "prune_low_magnitude leaves these layers unpruned (no pruning "
                "rule for their type): %s",
                _names(skipped),
            )
        chosen = prunable
    elif callable(layers) and not isinstance(layers, type):
        chosen = [l for l in prunable if layers(l)]
    else:
        chosen = _named_or_typed(model, layers, all_layers, include_frozen)
    frozen = [l for l in chosen if _is_frozen(l)]
    if frozen and not include_frozen:
        warnings.warn(
            f"prune_low_magnitude leaves {len(frozen)} frozen (trainable=False) "
            f"layer(s) of model '{model.name}' unpruned: {_names(frozen)}. Training "
            "cannot move their weights, so pruning them would only lose accuracy. "
            "Pass include_frozen=True to prune them too.",
            stacklevel=3,
        )
        chosen = [l for l in chosen if not _is_frozen(l)]
    return {id(l) for l in chosen}


def _named_or_typed(model, layers, all_layers, include_frozen):
    """The layers a list of names and classes selects. A class also selects
    the layers built from it (EinsumDense selects a MultiHeadAttention)."""
    items = [layers] if isinstance(layers, (str, type)) else list(layers)
    by_name = {}
    for l in all_layers:
        by_name.setdefault(l.name, []).append(l)
    chosen = []
    for item in items:
        if isinstance(item, str):
            if item not in by_name:
                raise ValueError(
                    f"prune_low_magnitude: layers names '{item}', which is not a "
                    f"layer of model '{model.name}'. Its layers are: "
                    f"{', '.join(sorted(by_name))}."
                )
            matches = by_name[item]
        elif isinstance(item, type) and issubclass(item, keras.layers.Layer):
            matches = [
                l for l in all_layers
                if isinstance(l, item)
                or (why_not_prunable(l) is None
                    and any(isinstance(s, item) for s in prunable_sublayers(l)))
            ]
        else:
            raise TypeError(
                "prune_low_magnitude: layers must be None, a layer name, a layer "
                f"class, a list of those, or a predicate; got item {item!r}."
            )
        for l in matches:
            reason = why_not_prunable(l)
            if reason:
                raise ValueError(f"prune_low_magnitude cannot prune layer {describe(l)}: {reason}.")
            if isinstance(item, str) and _is_frozen(l) and not include_frozen:
                raise ValueError(
                    f"prune_low_magnitude: layer {describe(l)} named in layers is "
                    "frozen (trainable=False), so training cannot recover from "
                    "pruning it. Pass include_frozen=True to prune it anyway, or "
                    "set its trainable to True."
                )
            if l not in chosen:
                chosen.append(l)
    return chosen


def _is_frozen(layer):
    """Whether training cannot change `layer`'s prunable weights."""
    return not layer.trainable or not any(w.trainable for w in prunable_weights(layer))


def _names(layers, limit=8):
    names = ", ".join(describe(l) for l in layers[:limit])
    return names + (f" and {len(layers) - limit} more" if len(layers) > limit else "")


def strip_pruning(model):
    """Removes every `PruneWrapper`, baking the masks into the weights.

    Returns a plain Keras model (a clone; `model` is not modified) whose
    outputs equal the wrapped model's, ready for saving and conversion.
    A single `PruneWrapper` gives back a copy of its inner layer.

    Args:
        model: a model containing `PruneWrapper` layers, or one wrapper.
    """
    return _models.strip_wrappers(model, PruneWrapper, _masked_weights, "strip_pruning")


def prune_scope():
    """A scope for loading pruned models, kept for code ported from tfmot.

    Not needed: `PruneWrapper`, the schedules and the callbacks are
    registered Keras classes, so `keras.saving.load_model` restores a pruned
    `.keras` file without a scope or `custom_objects`. It returns a
    `keras.saving.CustomObjectScope` holding the wrapper and the schedules,
    so that tfmot's `with prune_scope(): keras.models.load_model(path)`
    runs unchanged.
    It cannot read files written by tfmot with tf_keras (their weights are
    laid out differently): strip those with tfmot, then prune again here.

    Example:

    ```python
    with kc.pruning.prune_scope():
        model = keras.saving.load_model("pruned.keras")
    ```
    """
    return keras.saving.CustomObjectScope({
        "PruneWrapper": PruneWrapper,
        "ConstantSparsity": schedules.ConstantSparsity,
        "PolynomialDecay": schedules.PolynomialDecay,
    })


# Other techniques (quantize_model) take a pruning wrapper off through this
# hook, without importing pruning.
_models.register_unwrap(PruneWrapper, strip_pruning)


def _masked_weights(wrapper):
    masks = {id(w): m for w, m in zip(wrapper.pruned_weights, wrapper.masks)}
    return [
        ops.convert_to_numpy(w * masks[id(w)] if id(w) in masks else w)
        for w in wrapper.layer.weights
    ]
