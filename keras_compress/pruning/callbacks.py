"""Callbacks that drive pruning during `model.fit`.

Wrappers hold the state (masks, step, L1 strength); these callbacks only decide
when it changes. They do their work between batches and only on the batches
where something changes, so a training step costs the same as without them.
"""

import math
import warnings

import keras

from keras_compress import _models
from keras_compress.pruning import criteria
from keras_compress.pruning.report import count_zeros
from keras_compress.pruning.wrapper import PruneWrapper


def prune_wrappers(model, caller):
    """All `PruneWrapper` layers of `model`, or a ValueError naming `caller`."""
    wrappers = [l for l in _models.walk_layers(model) if isinstance(l, PruneWrapper)]
    if not wrappers:
        raise ValueError(
            f"{caller} found no PruneWrapper in model '{model.name}'. Wrap the "
            "model with keras_compress.pruning.prune_low_magnitude first."
        )
    return wrappers


def _check_epochs_or_steps(name, values):
    if values is None:
        return None
    if isinstance(values, int) and not isinstance(values, bool):
        values = [values]
    try:
        values = sorted(set(values))
    except TypeError:
        raise TypeError(f"{name} must be an int or a list of ints >= 0, got {values!r}.")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"{name} must be an int or a list of ints >= 0, got {values!r}.")
    return values


def check_strength_schedule(api, strength, start_epoch, end_epoch):
    """Checks a penalty's strength (a number >= 0 or a function epoch -> number)
    and the epochs it runs in, `[start_epoch, end_epoch)`."""
    if not callable(strength) and not (
        isinstance(strength, (int, float)) and not isinstance(strength, bool)
        and strength >= 0 and math.isfinite(strength)
    ):
        raise ValueError(
            f"{api}: strength must be a number >= 0 or a function epoch -> number, got {strength!r}."
        )
    _check_epochs_or_steps("start_epoch", start_epoch)
    if end_epoch is not None:
        _check_epochs_or_steps("end_epoch", end_epoch)
        if end_epoch <= start_epoch:
            raise ValueError(
                f"{api}: end_epoch must be greater than start_epoch, got "
                f"start_epoch={start_epoch}, end_epoch={end_epoch}."
            )


def _reaches(schedule, sparsity):
    """Whether `sparsity` is the schedule's final one, to the precision the
    messages print (a gap under 0.0005 is not a schedule left unfinished)."""
    return sparsity >= schedule.final_sparsity - 5e-4


class _StepTracking(keras.callbacks.Callback):
    """Keeps a Python copy of the wrappers' step, so the schedule is checked
    between batches without reading variables (which would stall each step).

    The step is derived from the batch index `fit` passes to
    `on_train_batch_begin`, and settled against the wrappers' own count once
    per epoch. The copy is only a cache: at each epoch start it is read again
    from the wrappers' `pruning_step`, a variable saved with the model, so a
    fit whose state was restored after `on_train_begin` (by
    `BackupAndRestore`, in whatever order the callbacks come) goes on from
    the restored step.
    """

    def on_train_begin(self, logs=None):
        self._wrappers = prune_wrappers(self.model, type(self).__name__)
        unbuilt = [w.name for w in self._wrappers if not w.built]
        if unbuilt:
            # Keras builds a model without known inputs only when it traces the
            # first step, after on_train_begin: the masks and the step do not
            # exist yet, so no schedule could be applied from step 0.
            raise ValueError(
                f"{type(self).__name__}: model '{self.model.name}' is not built, so its "
                f"pruning wrappers ({', '.join(unbuilt)}) have no masks yet. Give the "
                "model its input shape (keras.Input(shape) first in a Sequential, or "
                "input_shape= on its first layer), or call it on a batch before fit."
            )
        self._read_step()

    def _read_step(self):
        steps = {int(w.pruning_step.numpy()) for w in self._wrappers}
        self._step = self._epoch_start = max(steps)
        self._last_batch = None
        if len(steps) > 1:
            self._sync_steps(self._step)

    def _steps_per_call(self):
        """How many training steps one train-function call runs."""
        return max(1, int(getattr(self.model, "steps_per_execution", 1) or 1))

    def on_epoch_begin(self, epoch, logs=None):
        self._read_step()

    def on_train_batch_begin(self, batch, logs=None):
        self._step = self._epoch_start + batch
        self._last_batch = batch

    def _sync_state(self):
        """On JAX, `fit` keeps the variables' values outside the model
        between batches; the `model` property of a callback puts them back
        (and the next step reads what the callback assigned)."""
        if keras.backend.backend() == "jax":
            self.model  # noqa: B018 (the property syncs the JAX state)

    def on_epoch_end(self, epoch, logs=None):
        if keras.backend.backend() == "jax":
            # JAX's optimizer step cannot apply the masks (see _MaskConstraint):
            # the variables get their exact zeros back here.
            for wrapper in self._wrappers:
                wrapper.apply_masks()
        if self._last_batch is None:
            return
        if self._steps_per_call() == 1:
            expected = self._epoch_start + self._last_batch + 1
            if int(self._wrappers[0].pruning_step.numpy()) == expected - 1:
                # Data of unknown size (a sharded or filtered tf.data) ends by
                # beginning one batch more than it has: that one did not run.
                expected -= 1
            self._step = expected
            self._sync_steps(self._step)
        else:  # the last call may have run fewer steps: the wrappers know
            self._step = int(self._wrappers[0].pruning_step.numpy())

    def _sync_steps(self, expected):
        """The wrappers count their own steps in the graph; they match the
        batch count unless a wrapper ran more than once per step."""
        for w in self._wrappers:
            counted = int(w.pruning_step.numpy())
            if counted != expected:
                warnings.warn(
                    f"{type(self).__name__}: layer '{w.name}' counted {counted} "
                    f"training steps, but {expected} batches ran. Was it called "
                    "more than once per step? Its step is reset to the batch count.",
                    stacklevel=2,
                )
                w.pruning_step.assign(expected)


@keras.saving.register_keras_serializable(package="keras_compress")
class UpdatePruningStep(_StepTracking):
    """Advances the pruning step and applies each wrapper's schedule in `fit`.

    Before each batch, every `PruneWrapper` whose `pruning_schedule` says
    "prune at this step" gets new magnitude masks at the scheduled sparsity:
    per layer (weight by weight, or in whole blocks for a wrapper with a
    `block_size`), or across all layers created with `global_pruning=True`.
    Required for schedule-driven pruning, as in tfmot.

    Unlike tfmot, it warns when the fit it runs in cannot reach a schedule's
    final sparsity (for example when `frequency` exceeds the steps run, or
    `end_step` lies beyond the last step).

    The step is each wrapper's `pruning_step` variable, read at every epoch
    start, so the schedule goes on from a state restored by
    `keras.callbacks.BackupAndRestore`, whichever callback comes first.

    Example:

    ```python
    pruned.fit(x, y, epochs=4, callbacks=[kc.pruning.UpdatePruningStep()])
    ```
    """

    def __init__(self):
        super().__init__()
        self._warned = False

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._groups = []  # (schedule, [wrappers], is_global)
        global_wrappers = [w for w in self._wrappers if w.global_pruning and w.pruning_schedule]
        if global_wrappers:
            schedule = global_wrappers[0].pruning_schedule
            for w in global_wrappers[1:]:
                if w.pruning_schedule != schedule:
                    raise ValueError(
                        "UpdatePruningStep: layers with global_pruning=True must "
                        f"share one schedule; '{global_wrappers[0].name}' has "
                        f"{schedule!r} but '{w.name}' has {w.pruning_schedule!r}."
                    )
            self._groups.append((schedule, global_wrappers, True))
        for w in self._wrappers:
            if w.pruning_schedule and not w.global_pruning:
                self._groups.append((w.pruning_schedule, [w], False))
        if not self._groups:
            warnings.warn(
                "UpdatePruningStep: no PruneWrapper has a pruning_schedule, so it "
                "will not prune. Use ThresholdPruning for schedule-free masks.",
                stacklevel=2,
            )
        self._checked_reach = False

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        steps = self.params.get("steps")
        epochs = self.params.get("epochs")
        # Checked once per fit, warned once per callback: training in several
        # short fits with one callback gets one warning, not one per fit.
        if self._checked_reach or self._warned or not steps or not epochs:
            return
        self._checked_reach = True
        last = self._step + steps * (epochs - epoch) - 1
        for schedule, names in self._layers_by_schedule():
            self._warn_if_unreachable(schedule, names, last)

    def _layers_by_schedule(self):
        """`[(schedule, [layer names])]`, one entry per distinct schedule, so
        that a warning names every layer a schedule drives."""
        found = []
        for schedule, wrappers, _ in self._groups:
            for known, names in found:
                if known == schedule:
                    names.extend(w.name for w in wrappers)
                    break
            else:
                found.append((schedule, [w.name for w in wrappers]))
        return found

    def _warn_if_unreachable(self, schedule, layer_names, last_step):
        first = self._step
        steps = schedule.pruning_steps(0, last_step)
        reached = max((schedule.sparsity(s) for s in steps), default=0.0)
        if _reaches(schedule, reached):
            return
        if not steps or steps[-1] < first:
            what = "no pruning step falls within this fit"
        else:
            what = (
                f"its last pruning step in this fit is {steps[-1]}, at sparsity "
                f"{reached:.3f}"
            )
        self._warned = True
        warnings.warn(
            f"UpdatePruningStep: {schedule!r} on {', '.join(layer_names)} will not reach its final "
            f"sparsity {schedule.final_sparsity} in this fit (steps {first} to "
            f"{last_step}): {what}. Train longer, lower end_step, or make "
            "end_step - begin_step a multiple of frequency.",
            stacklevel=2,
        )

    def on_train_end(self, logs=None):
        # The check at the first epoch needs the number of steps; data of
        # unknown size (a filtered tf.data without steps_per_epoch) only
        # tells at the end. Whatever the data, a fit that ends short of a
        # schedule's final sparsity says so, naming the layers.
        if self._warned or getattr(self, "_last_batch", None) is None:
            return
        # Masks were last set before the last batch begun (data of unknown
        # size begins one batch more than it has, then stops); the wrappers
        # count the steps that trained.
        last_step = self._epoch_start + self._last_batch + self._steps_per_call() - 1
        trained = int(self._wrappers[0].pruning_step.numpy())
        for schedule, names in self._layers_by_schedule():
            steps = schedule.pruning_steps(0, last_step)
            reached = schedule.sparsity(steps[-1]) if len(steps) else 0.0
            if _reaches(schedule, reached):
                continue
            self._warned = True
            warnings.warn(
                f"UpdatePruningStep: the fit ended after {trained} training steps with "
                f"{', '.join(names)} at sparsity {reached:.3f}, short of the final "
                f"sparsity {schedule.final_sparsity} of {schedule!r}. Train for more "
                "steps (with data of unknown size, pass steps_per_epoch to fit), or "
                "lower end_step.",
                stacklevel=2,
            )

    def on_train_batch_begin(self, batch, logs=None):
        super().on_train_batch_begin(batch, logs)
        span = range(self._step, self._step + self._steps_per_call())
        for schedule, wrappers, is_global in self._groups:
            due = [s for s in span if schedule.should_prune(s)]
            if due:
                self._sync_state()
                self._prune(wrappers, schedule.sparsity(due[-1]), is_global)

    @staticmethod
    def _prune(wrappers, sparsity, is_global):
        if is_global:
            weights = [w for wrapper in wrappers for w in wrapper.masked_weights()]
            masks = iter(criteria.global_magnitude(weights, sparsity))
            for wrapper in wrappers:
                wrapper.set_masks([next(masks) for _ in wrapper.pruned_weights])
        else:
            for wrapper in wrappers:
                if wrapper.sparsity_m_by_n is not None:
                    n, m = wrapper.sparsity_m_by_n
                    masks = [criteria.m_by_n(w, n, m) for w in wrapper.masked_weights()]
                elif wrapper.block_size != (1, 1):
                    masks = [
                        criteria.block_magnitude(w, sparsity, wrapper.block_size, wrapper.block_pooling_type)
                        for w in wrapper.masked_weights()
                    ]
                else:
                    masks = [criteria.magnitude(w, sparsity) for w in wrapper.masked_weights()]
                wrapper.set_masks(masks)


@keras.saving.register_keras_serializable(package="keras_compress")
class ThresholdPruning(_StepTracking):
    """Prunes small weights at chosen epochs or steps, then holds the masks.

    At each chosen point, weights with `|w| < threshold` (absolute), or with
    `|w| < relative_threshold * max|w|` of their tensor, are pruned. Masks only
    grow: a weight pruned once stays pruned. Between pruning points, and after
    the last one, the masks are held fixed, so training fine-tunes the rest.
    With neither `epochs` nor `steps`, it prunes once at the start of `fit`.

    This is the second half of L1-regularized pruning: train with
    `L1Regularization` to push weights towards zero, then threshold.

    The masks and the step are variables of the wrappers, so a fit resumed by
    `keras.callbacks.BackupAndRestore` prunes at the same `epochs` and
    `steps` as one that was never interrupted. A resumed fit is still a new
    fit: without `epochs` and `steps` it prunes again at its start.

    Args:
        threshold: absolute magnitude threshold (>= 0).
        relative_threshold: fraction of the largest magnitude in each tensor,
            in [0, 1]. Give exactly one of `threshold` and `relative_threshold`.
        epochs: epoch index or list of indices at whose start to prune
            (indices as `fit` counts them, so `initial_epoch` is respected).
        steps: global training step or list of steps before which to prune.

    Example:

    ```python
    model.fit(x, y, epochs=4, callbacks=[
        kc.pruning.L1Regularization(3e-4, end_epoch=2),
        kc.pruning.ThresholdPruning(relative_threshold=0.2, epochs=2),
    ])
    ```
    """

    def __init__(self, threshold=None, relative_threshold=None, epochs=None, steps=None):
        super().__init__()
        if (threshold is None) == (relative_threshold is None):
            raise ValueError(
                "ThresholdPruning needs exactly one of threshold (absolute) and "
                f"relative_threshold; got threshold={threshold!r}, "
                f"relative_threshold={relative_threshold!r}."
            )
        if threshold is not None and not (
            isinstance(threshold, (int, float)) and threshold >= 0 and math.isfinite(threshold)
        ):
            raise ValueError(f"ThresholdPruning: threshold must be a number >= 0, got {threshold!r}.")
        if relative_threshold is not None and not (
            isinstance(relative_threshold, (int, float)) and 0 <= relative_threshold <= 1
        ):
            raise ValueError(
                "ThresholdPruning: relative_threshold must be in [0, 1], got "
                f"{relative_threshold!r}."
            )
        self.threshold = threshold
        self.relative_threshold = relative_threshold
        self.epochs = _check_epochs_or_steps("epochs", epochs)
        self.steps = _check_epochs_or_steps("steps", steps)

    def get_config(self):
        return {
            "threshold": self.threshold,
            "relative_threshold": self.relative_threshold,
            "epochs": self.epochs,
            "steps": self.steps,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def masks_for(self, weights):
        """The thresholded mask of one weight tensor."""
        if self.threshold is not None:
            return criteria.threshold(weights, self.threshold)
        return criteria.relative_threshold(weights, self.relative_threshold)

    def prune(self):
        """Thresholds every wrapper now (masks are only ever narrowed)."""
        self._sync_state()
        for wrapper in self._wrappers:
            wrapper.set_masks(
                [m * self.masks_for(w) for w, m in zip(wrapper.masked_weights(), wrapper.masks)]
            )

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.epochs is None and self.steps is None:
            self.prune()

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        if self.epochs and epoch in self.epochs:
            self.prune()

    def on_train_batch_begin(self, batch, logs=None):
        super().on_train_batch_begin(batch, logs)
        if self.steps and any(
            s in self.steps for s in range(self._step, self._step + self._steps_per_call())
        ):
            self.prune()


@keras.saving.register_keras_serializable(package="keras_compress")
class L1Regularization(keras.callbacks.Callback):
    """Schedules the L1 strength of the PruneWrappers during `fit`.

    While the strength `lambda` is above zero, each wrapper adds
    `lambda * sum|w|` over its pruned weights to the training loss, pushing
    weights towards zero for a later `ThresholdPruning`. `lambda` is set at the
    start of each epoch, recorded in the logs (and History) as
    `l1_strength`, and reset to 0 when `fit` ends, so a later fit without this
    callback trains without the penalty. Being a function of the epoch index,
    the strength picks up where it was when a fit is resumed by
    `keras.callbacks.BackupAndRestore` (which restores the epoch).

    Args:
        strength: `lambda` (>= 0), or a function `epoch -> lambda`.
        start_epoch: first epoch with the penalty. Default 0.
        end_epoch: first epoch without it (`None`: until the end of `fit`).

    Example:

    ```python
    model.fit(x, y, epochs=4, callbacks=[
        kc.pruning.L1Regularization(3e-4, end_epoch=2),
        kc.pruning.ThresholdPruning(relative_threshold=0.2, epochs=2),
    ])
    ```
    """

    def __init__(self, strength, start_epoch=0, end_epoch=None):
        super().__init__()
        check_strength_schedule("L1Regularization", strength, start_epoch, end_epoch)
        self.strength = strength
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch

    def get_config(self):
        return {"strength": self.strength, "start_epoch": self.start_epoch, "end_epoch": self.end_epoch}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def strength_at(self, epoch):
        """`lambda` during `epoch`."""
        if epoch < self.start_epoch or (self.end_epoch is not None and epoch >= self.end_epoch):
            return 0.0
        value = self.strength(epoch) if callable(self.strength) else self.strength
        value = float(value)
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(
                f"L1Regularization: strength({epoch}) returned {value}; it must be a "
                "finite number >= 0."
            )
        return value

    def _assign(self, value):
        for w in self._wrappers:
            w.l1_strength.assign(value)

    def _trace_l1(self, active):
        """Adds (or removes) the L1 term in the traced training step."""
        for w in self._wrappers:
            w.l1_active = active
        self.model.make_train_function(force=True)

    def on_train_begin(self, logs=None):
        self._wrappers = prune_wrappers(self.model, "L1Regularization")
        self._trace_l1(True)

    def on_epoch_begin(self, epoch, logs=None):
        self._value = self.strength_at(epoch)
        self._assign(self._value)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["l1_strength"] = self._value

    def on_train_end(self, logs=None):
        self._assign(0.0)
        self._trace_l1(False)


@keras.saving.register_keras_serializable(package="keras_compress")
class PruningSummaries(keras.callbacks.Callback):
    """Records the sparsity of each pruned layer at the end of every epoch.

    The values go into the epoch logs, so they appear in `History`, as
    `sparsity/<layer name>` and `sparsity` (all pruned weights together), and,
    with `log_dir`, to TensorBoard as scalars.

    Args:
        log_dir: TensorBoard log folder, or `None` for logs and History only.

    Example:

    ```python
    history = model.fit(x, y, epochs=4, callbacks=[
        kc.pruning.UpdatePruningStep(), kc.pruning.PruningSummaries()])
    history.history["sparsity"]
    ```
    """

    def __init__(self, log_dir=None):
        super().__init__()
        if log_dir is not None:
            try:
                import tensorboard  # noqa: F401  (tf.summary needs it to write)
            except ImportError:
                raise ImportError(
                    "PruningSummaries(log_dir=...) writes TensorBoard summaries, "
                    "which needs the tensorboard package: pip install tensorboard. "
                    "Without log_dir, sparsity still goes to the logs and History."
                ) from None
        self.log_dir = log_dir
        self._writer = None

    def get_config(self):
        return {"log_dir": None if self.log_dir is None else str(self.log_dir)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def on_train_begin(self, logs=None):
        self._wrappers = prune_wrappers(self.model, "PruningSummaries")
        if self.log_dir is not None and self._writer is None:
            import tensorflow as tf  # Keras has no summary-writing API.

            self._writer = tf.summary.create_file_writer(str(self.log_dir))

    def sparsities(self):
        """`{layer name: sparsity}` of the pruned weights, plus the total."""
        values, zeros, total = {}, 0, 0
        for wrapper in self._wrappers:
            z, n = count_zeros(wrapper.pruned_weights)
            values[f"sparsity/{wrapper.layer.name}"] = z / n
            zeros, total = zeros + z, total + n
        values["sparsity"] = zeros / total
        return values

    def on_epoch_end(self, epoch, logs=None):
        values = self.sparsities()
        if logs is not None:
            logs.update(values)
        if self._writer is not None:
            import tensorflow as tf

            with self._writer.as_default():
                for name, value in values.items():
                    tf.summary.scalar(name, value, step=epoch)
                step = int(self._wrappers[0].pruning_step.numpy())
                tf.summary.scalar("pruning_step", step, step=epoch)
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
