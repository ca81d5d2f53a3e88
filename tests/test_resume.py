"""Resume with nothing lost: a fit interrupted mid-epoch and resumed ends where
an uninterrupted fit ends.

Every scenario is trained three times from the same seed: once straight
through, once interrupted by a callback that raises after a given global batch,
and once more as a fresh model and fresh callbacks resuming from the same
`keras.callbacks.BackupAndRestore` directory. The resumed run must end with the
uninterrupted run's state: masks exactly, pruning steps and counters exactly,
everything else (weights, optimizer slots, quantizer ranges) up to float noise.

Batches: `shuffle=False` on numpy arrays, so both runs see the same batches in
the same order. (A `tf.data` pipeline with `shuffle(seed=...)` would not do: a
freshly built pipeline, as a resumed process builds, starts again from the
first epoch's order, so the resumed epoch 1 would see epoch 0's batches.)

What Keras 3.15 guarantees (keras/src/callbacks/backup_and_restore.py): the
checkpoint holds the model's variables (with the optimizer's) and the epoch
number; `on_train_begin` loads them and sets the fit's initial epoch. With
`save_freq="epoch"` the checkpoint is the state at the end of the last finished
epoch, so the interrupted epoch is rerun from its start: the resumed run is the
uninterrupted run. With an integer `save_freq` the checkpoint is written
mid-epoch, but the batch index it records is never read: the resumed fit
restarts *the epoch of the save* from its first batch, on top of weights that
already trained on part of it. (Even a save after an epoch's last batch
records that epoch, because the epoch counter moves on only in
`on_epoch_end`: with `save_freq=steps_per_epoch` each resume reruns a whole
finished epoch.) Those batches are trained twice, so an integer `save_freq`
cannot reproduce the uninterrupted run;
`test_integer_save_freq_restarts_the_epoch_of_the_save` pins that behaviour
down and checks that the pruning step stays consistent with it.
"""

import keras
import numpy as np
import pytest
from conftest import compile_for_test, small_cnn, toy_data, value

from keras_compress.distillation import Distiller
from keras_compress.pruning import (
    L1Regularization,
    PolynomialDecay,
    PruneWrapper,
    ThresholdPruning,
    UpdatePruningStep,
    prune_low_magnitude,
)
from keras_compress.quantization import (
    ActivationQuantizer,
    QuantizeWrapper,
    quantize_model,
)

SEED = 7
BATCH = 16
EPOCHS = 3
STEPS_PER_EPOCH = 4  # 64 samples / 16
INTERRUPT_AFTER = 6  # global batches: epoch 1 is half done


class Interrupted(Exception):
    pass


class InterruptAfter(keras.callbacks.Callback):
    """Raises after `at` training batches of this fit (as Keras's own tests do)."""

    def __init__(self, at):
        super().__init__()
        self.at = at
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            raise Interrupted(f"interrupted after {self.seen} batches")


class StateLog(keras.callbacks.Callback):
    """The L1 strength each epoch trains with (read back from the variable)."""

    def __init__(self):
        super().__init__()
        self.l1 = {}

    def on_epoch_end(self, epoch, logs=None):
        wrappers = [l for l in self.model.layers if isinstance(l, PruneWrapper)]
        self.l1[epoch] = [float(value(w.l1_strength)) for w in wrappers]


# -- scenarios: a fresh model and fresh callbacks, built from the seed --------


def magnitude_pruning():
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, frequency=2)
    model = compile_for_test(prune_low_magnitude(small_cnn(), schedule))
    return model, [UpdatePruningStep()]


def l1_then_threshold():
    model = compile_for_test(prune_low_magnitude(small_cnn(), None))
    callbacks = [
        L1Regularization(lambda epoch: 1e-3 * (epoch + 1), end_epoch=2),
        # Epoch 1 is the interrupted one; step 9 lies after the interruption.
        ThresholdPruning(relative_threshold=0.3, epochs=1, steps=9),
    ]
    return model, callbacks


def quantization_aware():
    return compile_for_test(quantize_model(small_cnn())), []


def _teacher():
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(6, 3, activation="relu", name="t_conv"),
            keras.layers.Flatten(name="t_flatten"),
            keras.layers.Dense(12, activation="relu", name="t_dense"),
            keras.layers.Dense(3, name="t_logits"),
        ],
        name="teacher",
    )
    return model


def distillation():
    student = small_cnn("student")
    # A hint with an adapter (student dense_a has 16 units, the teacher's 12),
    # so the adapter's weights are part of the state that must come back.
    distiller = Distiller(student=student, teacher=_teacher(), hints=[("t_dense", "dense_a")])
    distiller.compile(
        optimizer="adam",
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        alpha=0.3,
        temperature=2.0,
    )
    return distiller, []


SCENARIOS = {
    "magnitude_pruning": magnitude_pruning,
    "l1_then_threshold": l1_then_threshold,
    "quantization_aware": quantization_aware,
    "distillation": distillation,
}


def build(scenario):
    keras.utils.set_random_seed(SEED)
    return SCENARIOS[scenario]()


def fit(model, callbacks, backup, order, interrupt_after=None, save_freq="epoch"):
    x, y = toy_data(64, seed=1)
    backup_cb = keras.callbacks.BackupAndRestore(str(backup), save_freq=save_freq)
    log = StateLog()
    callbacks = [backup_cb, *callbacks] if order == "backup_first" else [*callbacks, backup_cb]
    callbacks = callbacks + [log]
    if interrupt_after is not None:
        callbacks.append(InterruptAfter(interrupt_after))
    history = model.fit(
        x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks
    )
    return history, log


def state(model):
    """Every variable of the model and its optimizer, by position. Matched by
    name, not path: paths carry the per-process numbering of auto-named
    layers and optimizers (and optimizer slots are named after paths)."""
    weights = [(f"{v.name} ({v.path})", v.name, value(v)) for v in model.variables]
    slots = [(v.path, f"optimizer[{i}]", value(v)) for i, v in enumerate(model.optimizer.variables)]
    return weights + slots


def assert_same_state(resumed, uninterrupted):
    a, b = state(resumed), state(uninterrupted)
    assert [name for _, name, _ in a] == [name for _, name, _ in b]
    for (path, name, x), (_, _, y) in zip(a, b):
        if name.endswith("_mask") or not np.issubdtype(x.dtype, np.floating):
            np.testing.assert_array_equal(x, y, err_msg=path)
        else:
            np.testing.assert_allclose(x, y, atol=1e-5, rtol=0, err_msg=path)


def run_three_ways(scenario, tmp_path, order):
    model, callbacks = build(scenario)
    _, straight_log = fit(model, callbacks, tmp_path / "straight", order)

    broken, callbacks = build(scenario)
    with pytest.raises(Interrupted):
        fit(broken, callbacks, tmp_path / "backup", order, interrupt_after=INTERRUPT_AFTER)
    assert int(value(broken.optimizer.iterations)) == INTERRUPT_AFTER

    resumed, callbacks = build(scenario)
    history, resumed_log = fit(resumed, callbacks, tmp_path / "backup", order)
    # Epoch 0 was finished before the interruption; epochs 1 and 2 reran.
    assert len(history.history["loss"]) == EPOCHS - 1
    return model, straight_log, resumed, resumed_log


# -- the guarantees --------------------------------------------------------------


@pytest.mark.parametrize("order", ["backup_first", "backup_last"])
def test_magnitude_pruning_resumes_with_the_same_masks_and_step(tmp_path, order):
    straight, _, resumed, _ = run_three_ways("magnitude_pruning", tmp_path, order)
    assert_same_state(resumed, straight)
    steps = [int(value(w.pruning_step)) for w in resumed.layers if isinstance(w, PruneWrapper)]
    assert steps == [EPOCHS * STEPS_PER_EPOCH] * 4
    # The schedule ran to its end: 80% of each kernel pruned, as uninterrupted.
    for w in resumed.layers:
        if isinstance(w, PruneWrapper):
            mask = value(w.masks[0])
            assert np.sum(mask == 0) == round(0.8 * mask.size)


@pytest.mark.parametrize("order", ["backup_first", "backup_last"])
def test_l1_and_threshold_resume_with_the_same_schedule_and_masks(tmp_path, order):
    straight, straight_log, resumed, resumed_log = run_three_ways("l1_then_threshold", tmp_path, order)
    assert_same_state(resumed, straight)
    # The L1 strength the resumed epochs trained with is the schedule's, epoch by epoch.
    assert {e: straight_log.l1[e] for e in (1, 2)} == resumed_log.l1
    assert resumed_log.l1[1] == [pytest.approx(2e-3)] * 4 and resumed_log.l1[2] == [0.0] * 4
    masks = [value(w.masks[0]) for w in resumed.layers if isinstance(w, PruneWrapper)]
    assert all(0 < np.mean(m == 0) < 1 for m in masks)


def test_quantization_aware_training_resumes_with_the_same_ranges(tmp_path):
    straight, _, resumed, _ = run_three_ways("quantization_aware", tmp_path, "backup_first")
    assert_same_state(resumed, straight)
    quantizers = [l for l in resumed.layers if isinstance(l, ActivationQuantizer) and l.fixed_range is None]
    assert quantizers and all(int(value(q.updates)) == EPOCHS * STEPS_PER_EPOCH for q in quantizers)
    assert any(isinstance(l, QuantizeWrapper) for l in resumed.layers)


def test_distiller_resumes_with_the_same_student_and_adapter(tmp_path):
    straight, _, resumed, _ = run_three_ways("distillation", tmp_path, "backup_first")
    assert_same_state(resumed, straight)
    assert resumed.adapters[0] is not None


def test_integer_save_freq_restarts_the_epoch_of_the_save(tmp_path):
    """Keras writes a mid-epoch checkpoint but resumes at the start of that epoch."""
    broken, callbacks = build("magnitude_pruning")
    with pytest.raises(Interrupted):
        fit(broken, callbacks, tmp_path / "backup", "backup_first", INTERRUPT_AFTER, save_freq=1)
    resumed, callbacks = build("magnitude_pruning")
    history, _ = fit(resumed, callbacks, tmp_path / "backup", "backup_first", save_freq=1)
    # The save after global batch 6 (epoch 1, batch 1) is restored, then all of
    # epochs 1 and 2 run: 6 + 8 steps, where an uninterrupted fit runs 12.
    assert len(history.history["loss"]) == EPOCHS - 1
    total = INTERRUPT_AFTER + (EPOCHS - 1) * STEPS_PER_EPOCH
    assert int(value(resumed.optimizer.iterations)) == total
    # The pruning step follows the steps actually trained, so the schedule
    # stays on the optimizer's clock (and reaches its final sparsity).
    for w in resumed.layers:
        if isinstance(w, PruneWrapper):
            assert int(value(w.pruning_step)) == total
            mask = value(w.masks[0])
            assert np.sum(mask == 0) == round(0.8 * mask.size)


def test_model_checkpoint_keras_file_resumes_pruning(tmp_path):
    """A full `.keras` ModelCheckpoint holds the masks, the step and the
    optimizer: loading it and fitting from the next epoch ends as uninterrupted."""
    x, y = toy_data(64, seed=1)
    kwargs = {"batch_size": BATCH, "shuffle": False, "verbose": 0}
    straight, callbacks = build("magnitude_pruning")
    straight.fit(x, y, epochs=EPOCHS, callbacks=callbacks, **kwargs)

    broken, callbacks = build("magnitude_pruning")
    path = tmp_path / "last.keras"
    checkpoint = keras.callbacks.ModelCheckpoint(str(path))
    with pytest.raises(Interrupted):
        broken.fit(x, y, epochs=EPOCHS, callbacks=[*callbacks, checkpoint, InterruptAfter(INTERRUPT_AFTER)], **kwargs)
    loaded = keras.saving.load_model(path)  # no custom_objects
    loaded.fit(x, y, epochs=EPOCHS, initial_epoch=1, callbacks=[UpdatePruningStep()], **kwargs)
    assert_same_state(loaded, straight)
