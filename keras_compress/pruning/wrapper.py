"""`PruneWrapper`: a Keras layer wrapper that holds pruning masks and applies them."""

import keras
from keras import layers as L
from keras import ops

from keras_compress import _models
from keras_compress._backend import counter_dtype
from keras_compress._wrappers import Wrapper
from keras_compress.pruning import schedules as schedules_lib
from keras_compress.pruning.criteria import check_block_pooling_type, check_block_size, check_m_by_n

# Which weights of which layer types are pruned: the kernels of
# `_models.KERNEL_WEIGHTS` (bias is added on request), or what a layer's
# `get_prunable_weights()` returns (tfmot's protocol, made explicit by
# subclassing `PrunableLayer`; duck typing is enough), or those of the
# sub-layers it is built from (see `_models.ruled_sublayers`).
PRUNABLE_WEIGHTS = _models.KERNEL_WEIGHTS

SUPPORTED_LAYER_NAMES = _models.kernel_weights_names("get_prunable_weights")
_rule_for = _models.kernel_attributes

# Containers that create their prunable sub-layers only in build(): an
# unbuilt one is accepted, and checked once built.
_SUBLAYERS_AT_BUILD = (L.MultiHeadAttention,)


def _has_own_rule(layer):
    return _rule_for(layer) is not None or hasattr(layer, "get_prunable_weights")


def prunable_sublayers(layer):
    """The sub-layers of `layer` whose weights pruning masks when `layer` is
    wrapped: `[layer]` for a layer with a rule of its own, else the nested
    layers that have one (the EinsumDense projections of a
    MultiHeadAttention, the cell of an LSTM), outermost first."""
    return _models.ruled_sublayers(layer, _has_own_rule)


def why_not_prunable(layer):
    """`None` if `layer` can be pruned, else the reason, a clause that reads
    after "cannot prune layer 'name' (Type): "."""
    if isinstance(layer, PruneWrapper):
        return "it is already a PruneWrapper"
    if getattr(layer, "quantization_mode", None):
        return f"it is quantized ({layer.quantization_mode}); prune before quantizing"
    if getattr(layer, "lora_enabled", False):
        return "it has LoRA enabled; merge or disable LoRA first"
    if not layer.built and isinstance(layer, _SUBLAYERS_AT_BUILD):
        return None
    if not prunable_sublayers(layer):
        return f"it has no pruning rule. Prunable types: {SUPPORTED_LAYER_NAMES}"
    if layer.built and _rule_for(layer) is None and hasattr(layer, "get_prunable_weights"):
        if not layer.get_prunable_weights():
            return "its get_prunable_weights() returns no weights"
    return None


def describe(layer):
    """`'name' (Type)`, the way messages name a layer."""
    return f"'{layer.name}' ({type(layer).__name__})"


def prunable_weights(layer, prune_bias=False):
    """The variables of a built `layer` that pruning masks (those of its
    prunable sub-layers for a layer built from others, see
    `prunable_sublayers`)."""
    weights = []
    for sub in prunable_sublayers(layer):
        attributes = _rule_for(sub)
        if attributes is None:
            weights.extend(sub.get_prunable_weights())
        else:
            weights.extend(getattr(sub, name) for name in attributes)
        if prune_bias and getattr(sub, "bias", None) is not None:
            weights.append(sub.bias)
    for w in weights:
        # A variable can be assigned and constrained; a computed tensor (for
        # example a LoRA-adjusted kernel) cannot be masked in place. Checked
        # by capability because keras.Variable's class moved across Keras 3.x.
        if not (hasattr(w, "assign") and hasattr(w, "constraint")):
            raise TypeError(
                f"layer '{layer.name}': prunable weight {w!r} is not a "
                "variable, so it cannot be masked."
            )
    return weights


def check_options(where, pruning_schedule, global_pruning, prune_bias):
    """Validates the PruneWrapper options; `where` names the caller for the message."""
    if pruning_schedule is not None and not isinstance(
        pruning_schedule, schedules_lib.PruningSchedule
    ):
        raise TypeError(
            f"{where}: pruning_schedule must be a PruningSchedule "
            f"(ConstantSparsity, PolynomialDecay) or None, got {pruning_schedule!r}."
        )
    for name, value in (("global_pruning", global_pruning), ("prune_bias", prune_bias)):
        if not isinstance(value, bool):
            raise TypeError(f"{where}: {name} must be True or False, got {value!r}.")


M_BY_N_LAYERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def m_by_n_reason(layer):
    """Why `layer` cannot take N:M sparsity, or None."""
    if not isinstance(layer, M_BY_N_LAYERS):
        return (f"N:M sparsity runs along a kernel's input channels, which only "
                f"{', '.join(c.__name__ for c in M_BY_N_LAYERS)} have; it is a {type(layer).__name__}")
    return None


def check_m_by_n_layer(layer, value, global_pruning, prune_bias):
    """The validated `(n, m)` for `layer`; raises naming the layer."""
    where = f"layer '{layer.name}'"
    value = check_m_by_n(where, tuple(value) if isinstance(value, list) else value)
    reason = m_by_n_reason(layer)
    if reason:
        raise ValueError(f"{where}: sparsity_m_by_n cannot apply: {reason}.")
    if global_pruning or prune_bias:
        raise ValueError(f"{where}: sparsity_m_by_n masks each kernel by its own blocks; it cannot be combined "
                         f"with global_pruning=True or prune_bias=True.")
    return value


NO_BLOCKS = (1, 1)


def block_reason(layer):
    """Why the weights of a built `layer` cannot be pruned in blocks, or None
    (also None for an unbuilt layer: its wrapper checks once built)."""
    if not layer.built:
        return None
    shapes = [tuple(w.shape) for w in prunable_weights(layer) if len(w.shape) != 2]
    if shapes:
        return (f"block_size applies to 2-D weight matrices (as in tfmot), and its prunable weights have shape "
                f"{', '.join(map(str, shapes))}")
    return None


def check_block_layer(layer, block_size, block_pooling_type, sparsity_m_by_n, global_pruning, prune_bias):
    """The validated `(block_size, block_pooling_type)` for `layer`; raises naming the layer."""
    where = f"layer '{layer.name}'"
    block_size = check_block_size(where, tuple(block_size) if isinstance(block_size, list) else block_size)
    block_pooling_type = check_block_pooling_type(where, block_pooling_type)
    if block_size != NO_BLOCKS:
        if sparsity_m_by_n is not None or global_pruning or prune_bias:
            raise ValueError(f"{where}: block_size={block_size} masks each kernel by its own blocks; it cannot be "
                             "combined with sparsity_m_by_n, global_pruning=True or prune_bias=True.")
        reason = block_reason(layer)
        if reason:
            raise ValueError(f"{where}: block_size={block_size} cannot apply: {reason}.")
    return block_size, block_pooling_type


class _MaskConstraint(keras.constraints.Constraint):
    """Re-applies the mask after every optimizer step (Keras applies a
    variable's constraint right after each update), so pruned weights are
    exactly zero in the raw variables, not only in the forward pass.
    It is installed by the wrapper's build, never serialized."""

    def __init__(self, mask, inner=None):
        self.mask = mask
        self.inner = inner

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        if keras.backend.backend() == "jax":
            # JAX's optimizer step is stateless and sees only the trainable
            # and optimizer variables, not the mask. There the forward pass
            # and every mask update read weight * mask, and the pruning
            # callbacks zero the raw variables at each mask update and epoch end.
            return w
        return w * ops.cast(self.mask, w.dtype)


@keras.saving.register_keras_serializable(package="keras_compress")
class PruneWrapper(Wrapper):
    """Prunes the weights of a layer with 0/1 masks held as non-trainable variables.

    The forward pass uses `weight * mask`, and the mask is re-applied to the
    raw variable after every optimizer step, so pruned weights are exactly 0.
    The masks change only when a pruning callback changes them:
    `UpdatePruningStep` (following `pruning_schedule`) or `ThresholdPruning`.
    The wrapper also holds the training step it has seen and an L1 strength
    (set by `L1Regularization`); while that callback runs,
    `l1_strength * sum|w|` over the pruned weights is added to the loss.

    Args:
        layer: the layer to prune: Dense, EinsumDense, Conv1D/2D/3D, their
            Transpose variants, DepthwiseConv1D/2D, SeparableConv1D/2D (both
            kernels), Embedding, or a layer that implements
            `get_prunable_weights()`.
        pruning_schedule: a `PruningSchedule` (`ConstantSparsity`,
            `PolynomialDecay`) for magnitude pruning, or `None` when masks are
            only set by threshold pruning.
        global_pruning: if True, `UpdatePruningStep` ranks this layer's weights
            together with those of every other wrapper that has
            `global_pruning=True` (they must share one schedule), instead of
            pruning each layer to the same sparsity.
        prune_bias: if True, the bias is masked too. Default False.
        sparsity_m_by_n: `None`, or `(N, M)` such as `(2, 4)`: at every
            pruning step of `pruning_schedule` the kernel is masked to keep
            the N largest of every M consecutive weights along its input
            channels (tfmot's `sparsity_m_by_n`; the schedule's sparsity
            level is not used). For Dense and Conv1D/2D/3D layers.
        block_size: `(rows, columns)`, default `(1, 1)` (weight by weight).
            Otherwise the schedule's sparsity is reached by masking whole
            blocks of that size of each 2-D prunable weight (a Dense kernel
            is `(inputs, units)`), ranked by their pooled |w| (tfmot's
            `block_size`; see `criteria.block_magnitude`). Layers whose
            prunable weights are not 2-D (Conv kernels) are refused, as in
            tfmot.
        block_pooling_type: how a block is scored: `"AVG"` (mean |w|,
            default) or `"MAX"` (largest |w|).
        **kwargs: base layer arguments (`name`, ...). The default name is
            `"prune_low_magnitude_" + layer.name`.

    Example:

    ```python
    model = keras.Sequential([
        keras.Input((784,)),
        PruneWrapper(keras.layers.Dense(10), PolynomialDecay(0.0, 0.8, 0, 1000)),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=5, callbacks=[UpdatePruningStep()])
    ```
    """

    name_prefix = "prune_low_magnitude_"
    nested_config = ("pruning_schedule",)

    def __init__(
        self,
        layer,
        pruning_schedule=None,
        global_pruning=False,
        prune_bias=False,
        sparsity_m_by_n=None,
        block_size=NO_BLOCKS,
        block_pooling_type="AVG",
        **kwargs,
    ):
        self.expect_layer(layer)
        reason = why_not_prunable(layer)
        if reason:
            raise ValueError(f"PruneWrapper cannot wrap layer {describe(layer)}: {reason}.")
        check_options(f"layer '{layer.name}'", pruning_schedule, global_pruning, prune_bias)
        if sparsity_m_by_n is not None:
            sparsity_m_by_n = check_m_by_n_layer(layer, sparsity_m_by_n, global_pruning, prune_bias)
        block_size, block_pooling_type = check_block_layer(
            layer, block_size, block_pooling_type, sparsity_m_by_n, global_pruning, prune_bias
        )
        super().__init__(layer, **kwargs)
        self.pruning_schedule = pruning_schedule
        self.global_pruning = global_pruning
        self.prune_bias = prune_bias
        self.sparsity_m_by_n = sparsity_m_by_n
        self.block_size = block_size
        self.block_pooling_type = block_pooling_type
        # Whether the L1 term is traced into training steps. Only
        # L1Regularization turns it on (and retraces), so plain magnitude
        # pruning pays nothing for it.
        self.l1_active = False

    def build(self, input_shape=None):
        super().build(input_shape)
        self._pruned = prunable_weights(self.layer, self.prune_bias)
        if not self._pruned:
            raise ValueError(
                f"PruneWrapper '{self.name}': layer {describe(self.layer)} has no "
                f"prunable weights once built. Prunable types: {SUPPORTED_LAYER_NAMES}."
            )
        if self.block_size != NO_BLOCKS and block_reason(self.layer):
            raise ValueError(
                f"PruneWrapper '{self.name}': block_size={self.block_size} cannot apply to layer "
                f"{describe(self.layer)}: {block_reason(self.layer)}."
            )
        # Masks stay float32 and are written only from cross-replica context
        # (callbacks); the step is counted inside the train step, once per
        # replica, so only the first replica's count is kept.
        self.masks = [
            self.add_state(f"{w.name}_mask", w.shape, initializer="ones", aggregation="none")
            for w in self._pruned
        ]
        self.pruning_step = self.add_state(
            "pruning_step", dtype=counter_dtype(), aggregation="only_first_replica"
        )
        self.l1_strength = self.add_state("l1_strength", aggregation="none")
        for w, mask in zip(self._pruned, self.masks):
            w.constraint = _MaskConstraint(mask, w.constraint)

    @property
    def pruned_weights(self):
        """The variables this wrapper masks, aligned with `masks`."""
        return list(self._pruned)

    def masked_weights(self):
        """The pruned weights as the forward pass reads them, weight * mask
        (aligned with `pruned_weights`)."""
        return [w * ops.cast(m, w.dtype) for w, m in zip(self._pruned, self.masks)]

    def apply_masks(self):
        """Zeroes the pruned entries of the variables (weight = weight * mask)."""
        for w, m in zip(self._pruned, self.masks):
            w.assign(w * ops.cast(m, w.dtype))

    def set_masks(self, masks):
        """Assigns new masks (aligned with `pruned_weights`) and zeroes the
        weights they prune."""
        if len(masks) != len(self.masks):
            raise ValueError(
                f"layer '{self.name}' holds {len(self.masks)} masks, got {len(masks)}."
            )
        for w, variable, mask in zip(self._pruned, self.masks, masks):
            mask = ops.cast(mask, "float32")
            variable.assign(mask)
            w.assign(w * ops.cast(mask, w.dtype))

    def call(self, inputs, *args, training=None, **kwargs):
        masked = {
            id(w): ops.cast(w, w.dtype) * ops.cast(m, w.dtype)
            for w, m in zip(self._pruned, self.masks)
        }
        if training:
            self.pruning_step.assign_add(1)
            if self.l1_active:
                l1 = sum(ops.sum(ops.abs(ops.cast(v, "float32"))) for v in masked.values())
                self.add_loss(self.l1_strength * l1)
        # The wrapped layer runs unchanged but reads the masked values in place
        # of its variables; gradients flow to the variables through the masks.
        mapping = [(v, masked.get(id(v), v.value)) for v in self.layer.variables]
        outputs, _ = self.call_layer(mapping, inputs, *args, **kwargs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update({"global_pruning": self.global_pruning, "prune_bias": self.prune_bias,
                       "sparsity_m_by_n": None if self.sparsity_m_by_n is None else list(self.sparsity_m_by_n),
                       "block_size": list(self.block_size), "block_pooling_type": self.block_pooling_type})
        return config
