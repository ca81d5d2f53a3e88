import glob
import warnings

import keras
import numpy as np
import pytest

from conftest import compile_for_test, small_cnn, toy_data, value
from keras_compress.pruning import (
    ConstantSparsity,
    L1Regularization,
    PolynomialDecay,
    PruneWrapper,
    PruningSummaries,
    ThresholdPruning,
    UpdatePruningStep,
    prune_low_magnitude,
    sparsity_report,
)


def wrappers(model):
    return [l for l in model.layers if isinstance(l, PruneWrapper)]


def zeros(variable):
    return int(np.count_nonzero(value(variable) == 0))


class MaskRecorder(keras.callbacks.Callback):
    """Zeros in each wrapper's first mask as each batch starts (after pruning)."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def on_train_batch_begin(self, batch, logs=None):
        self.rows.append([zeros(w.masks[0]) for w in wrappers(self.model)])


def test_masks_change_exactly_at_scheduled_steps_to_scheduled_counts():
    x, y = toy_data(64)
    schedule = PolynomialDecay(0.0, 0.75, begin_step=2, end_step=12, power=1, frequency=5)
    pruned = compile_for_test(prune_low_magnitude(small_cnn(), schedule))
    recorder = MaskRecorder()
    pruned.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
               callbacks=[UpdatePruningStep(), recorder])
    sizes = [int(np.prod(w.masks[0].shape)) for w in wrappers(pruned)]
    # Hand-computed: prune at steps 2, 7, 12 to 0, 0.375, 0.75 (linear).
    target = {0: 0.0, 1: 0.0, **{s: 0.0 for s in range(2, 7)},
              **{s: 0.375 for s in range(7, 12)}, **{s: 0.75 for s in range(12, 16)}}
    expected = [[round(target[s] * n) for n in sizes] for s in range(16)]
    assert recorder.rows == expected
    assert [int(w.pruning_step.numpy()) for w in wrappers(pruned)] == [16] * 4


def test_steps_continue_across_consecutive_fits():
    x, y = toy_data(32)
    pruned = compile_for_test(prune_low_magnitude(small_cnn(), ConstantSparsity(0.5, begin_step=6, frequency=100)))
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    assert sparsity_report(pruned).total.zeros == 0  # steps 0-3: not yet
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    assert sparsity_report(pruned).total.sparsity == pytest.approx(0.5, abs=0.01)
    assert int(wrappers(pruned)[0].pruning_step.numpy()) == 8


def test_global_pruning_ranks_all_layers_together():
    x, y = toy_data(32)
    model = small_cnn()
    pruned = compile_for_test(prune_low_magnitude(model, ConstantSparsity(0.7, 0), global_pruning=True))
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    report = sparsity_report(pruned)
    assert report.total.zeros == round(0.7 * report.total.parameters)
    assert len({round(r.sparsity, 2) for r in report}) > 1  # layers differ
    # Same ranking as the criterion applied to the weights at step 0.
    from keras_compress.pruning.criteria import global_magnitude

    expected = global_magnitude([value(l.kernel) for l in model.layers if hasattr(l, "kernel")], 0.7)
    for w, m in zip(wrappers(pruned), expected):
        np.testing.assert_array_equal(value(w.masks[0]), value(m))


def test_global_pruning_needs_one_schedule():
    model = small_cnn()
    a = prune_low_magnitude(model, ConstantSparsity(0.5, 0), global_pruning=True, layers="dense_a")
    b = prune_low_magnitude(a, ConstantSparsity(0.6, 0), global_pruning=True, layers="conv_a")
    compile_for_test(b)
    with pytest.raises(ValueError, match="must share one schedule"):
        b.fit(*toy_data(8), verbose=0, callbacks=[UpdatePruningStep()])


def test_warns_when_the_fit_cannot_reach_final_sparsity():
    x, y = toy_data(32)  # 4 steps per epoch, 8 in the fit
    late = compile_for_test(prune_low_magnitude(small_cnn(), PolynomialDecay(0.0, 0.8, 0, 400, frequency=100)))
    with pytest.warns(UserWarning, match=r"will not reach its final sparsity 0.8 in this fit \(steps 0 to 7\): its last pruning step in this fit is 0") as record:
        late.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])
    unreachable = [str(w.message) for w in record if "will not reach" in str(w.message)]
    assert len(unreachable) == 1  # one schedule shared by 4 layers: one warning naming them all
    assert "prune_low_magnitude_conv_a, prune_low_magnitude_conv_b" in unreachable[0]
    never = compile_for_test(prune_low_magnitude(small_cnn(), ConstantSparsity(0.5, begin_step=100)))
    with pytest.warns(UserWarning, match="no pruning step falls within this fit"):
        never.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])


def test_no_warning_when_the_schedule_completes():
    x, y = toy_data(32)
    pruned = compile_for_test(prune_low_magnitude(small_cnn(), PolynomialDecay(0.0, 0.8, 0, 6, frequency=2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy's, about Keras's JAX arrays
        pruned.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])
    assert sparsity_report(pruned).total.sparsity == pytest.approx(0.8, abs=0.01)


@pytest.mark.tf_only  # TensorFlow runs the step counter of the batch begun past the data; JAX does not
def test_data_of_unknown_size_warns_at_the_end_of_fit_with_the_sparsity_reached():
    """A filtered tf.data has no length, so the check at the first epoch cannot
    run; the end of fit names the layers and the sparsity they were left at."""
    import tensorflow as tf

    x, y = toy_data(64)
    keep = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: b >= 0)  # keeps all, length unknown
    data = keep.batch(8)  # 8 steps: 0..7
    schedule = PolynomialDecay(0.0, 0.8, 0, 20, frequency=2, power=1)
    pruned = compile_for_test(prune_low_magnitude(small_cnn(), schedule))
    with pytest.warns(UserWarning, match=r"the fit ended after \d+ training steps") as record:
        pruned.fit(data, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    ended = [str(w.message) for w in record if "the fit ended" in str(w.message)]
    assert len(ended) == 1
    # Keras begins a 9th batch (step 8) before it finds the data exhausted, and
    # the masks are set before it: 0.8 * (8 / 20) = 0.32 (power 1), as the masks say.
    assert "at sparsity 0.320, short of the final sparsity 0.8" in ended[0]
    assert "prune_low_magnitude_conv_a" in ended[0] and "steps_per_epoch" in ended[0]
    assert sparsity_report(pruned).total.sparsity == pytest.approx(0.32, abs=0.01)


def test_data_of_unknown_size_that_completes_the_schedule_is_silent():
    import tensorflow as tf

    x, y = toy_data(64)
    data = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: b >= 0).batch(8)
    pruned = compile_for_test(prune_low_magnitude(small_cnn(), PolynomialDecay(0.0, 0.8, 0, 6, frequency=2)))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pruned.fit(data, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    assert not [w for w in record if "UpdatePruningStep" in str(w.message)]
    assert sparsity_report(pruned).total.sparsity == pytest.approx(0.8, abs=0.01)


@pytest.mark.tf_only  # TensorFlow runs the step counter of the batch begun past the data; JAX does not
def test_data_of_unknown_size_keeps_the_step_count_across_epochs():
    """Each epoch of unknown-size data begins one batch it does not have
    (as sharded data does across processes). On TensorFlow the wrappers'
    counter of that step still runs (its increment does not wait for the
    data), so they count 9 per epoch of 8 batches; the callback follows their
    count, with no warning about a wrapper counting wrong, and the schedule
    completes. (On JAX the phantom step does not run and the count is 8 per
    epoch: tests/test_multiworker.py, multi-process pruning.)"""
    import tensorflow as tf

    x, y = toy_data(64)
    data = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: b >= 0).batch(8)  # 8 steps an epoch
    pruned = compile_for_test(prune_low_magnitude(small_cnn(), PolynomialDecay(0.0, 0.8, 0, 12, frequency=4)))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pruned.fit(data, epochs=3, verbose=0, callbacks=[UpdatePruningStep()])
    assert not [w for w in record if "UpdatePruningStep" in str(w.message)], [str(w.message) for w in record]
    steps = {int(value(layer.pruning_step)) for layer in pruned.layers if hasattr(layer, "pruning_step")}
    assert steps == {3 * 9}
    assert sparsity_report(pruned).total.sparsity == pytest.approx(0.8, abs=0.01)


def test_a_gap_too_small_to_print_is_not_called_unreached():
    """PolynomialDecay(power=3) pruned last at step 99 of 100 sits at
    0.7 * (1 - 0.01**3) = 0.6999993: printed 0.700, so not worth a warning
    that would say "will not reach 0.7 ... at sparsity 0.700"."""
    from keras_compress.pruning.callbacks import _reaches

    schedule = PolynomialDecay(0.0, 0.7, 0, 100, frequency=1, power=3)
    assert f"{schedule.sparsity(99):.3f}" == "0.700" and schedule.sparsity(99) < 0.7
    assert _reaches(schedule, schedule.sparsity(99))
    assert not _reaches(schedule, schedule.sparsity(90))  # 0.6993, printed 0.699


def test_steps_per_execution_counts_every_step():
    x, y = toy_data(64)
    pruned = prune_low_magnitude(small_cnn(), PolynomialDecay(0.0, 0.5, 0, 8, frequency=4, power=1))
    pruned.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), steps_per_execution=4)
    pruned.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])
    assert int(wrappers(pruned)[0].pruning_step.numpy()) == 16
    assert sparsity_report(pruned).total.sparsity == pytest.approx(0.5, abs=0.01)


def test_save_mid_training_and_continue_with_same_masks_and_step(tmp_path):
    x, y = toy_data(64)
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=24, frequency=4)
    pruned = compile_for_test(prune_low_magnitude(small_cnn(), schedule))
    pruned.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[UpdatePruningStep()])
    pruned.save(tmp_path / "mid.keras")
    loaded = keras.saving.load_model(tmp_path / "mid.keras")
    for a, b in zip(wrappers(loaded), wrappers(pruned)):
        assert int(a.pruning_step.numpy()) == int(b.pruning_step.numpy()) == 8
        np.testing.assert_array_equal(value(a.masks[0]), value(b.masks[0]))
    for model in (pruned, loaded):
        model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[UpdatePruningStep()])
    for a, b in zip(wrappers(loaded), wrappers(pruned)):
        assert int(a.pruning_step.numpy()) == 32
        np.testing.assert_array_equal(value(a.masks[0]), value(b.masks[0]))
        np.testing.assert_allclose(value(a.layer.kernel), value(b.layer.kernel), rtol=1e-4, atol=1e-6)


def test_l1_then_threshold_then_fine_tune_in_one_fit():
    x, y = toy_data(64)
    model = small_cnn()
    pruned = compile_for_test(prune_low_magnitude(model, None))
    reference = compile_for_test(prune_low_magnitude(model, None))

    class MasksAtEpochStart(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.masks = {}

        def on_epoch_begin(self, epoch, logs=None):
            self.masks[epoch] = [value(w.masks[0]) for w in wrappers(self.model)]

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:  # the last L1 epoch, before thresholding
                self.l1_sum = sum(float(np.abs(value(w.layer.kernel)).sum()) for w in wrappers(self.model))

    seen = MasksAtEpochStart()
    history = pruned.fit(
        x, y, batch_size=8, epochs=5, verbose=0, shuffle=False,
        callbacks=[L1Regularization(0.05, end_epoch=3),
                   ThresholdPruning(relative_threshold=0.2, epochs=3), seen],
    )
    reference.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False)
    assert history.history["l1_strength"] == [0.05, 0.05, 0.05, 0.0, 0.0]
    # L1 shrinks the weights compared with the same 3 epochs without it.
    ref_sum = sum(float(np.abs(value(w.layer.kernel)).sum()) for w in wrappers(reference))
    assert seen.l1_sum < 0.9 * ref_sum
    assert all(m.all() for m in seen.masks[2])  # nothing pruned before epoch 3
    pruned_at_3 = seen.masks[3]
    assert sum(int((m == 0).sum()) for m in pruned_at_3) > 0
    for w, m in zip(wrappers(pruned), pruned_at_3):  # held fixed while fine-tuning
        np.testing.assert_array_equal(value(w.masks[0]), m)
        assert np.all(value(w.layer.kernel)[m == 0] == 0)
    assert all(float(w.l1_strength.numpy()) == 0.0 for w in wrappers(pruned))


def test_l1_recipe_in_consecutive_fits():
    x, y = toy_data(32)
    pruned = compile_for_test(prune_low_magnitude(small_cnn(), None))
    pruned.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[L1Regularization(0.01)])
    kernels = [value(w.layer.kernel) for w in wrappers(pruned)]
    expected = [np.abs(k) >= 0.1 * np.abs(k).max() for k in kernels]
    pruned.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[ThresholdPruning(relative_threshold=0.1)])
    for w, keep in zip(wrappers(pruned), expected):
        np.testing.assert_array_equal(value(w.masks[0]), keep.astype("float32"))


def test_threshold_at_a_step_and_masks_only_narrow():
    x, y = toy_data(32)
    pruned = compile_for_test(prune_low_magnitude(small_cnn(), None))
    first = wrappers(pruned)[2]
    first.set_masks([np.zeros(first.masks[0].shape, "float32")])  # all pruned already
    recorder = MaskRecorder()
    pruned.fit(x, y, batch_size=8, epochs=2, verbose=0,
               callbacks=[ThresholdPruning(threshold=0.0, steps=[5]), recorder])
    assert zeros(first.masks[0]) == first.masks[0].shape[0] * first.masks[0].shape[1]
    others = [row[0] for row in recorder.rows]
    assert others == [0] * 8  # threshold 0 prunes nothing new
    big = compile_for_test(prune_low_magnitude(small_cnn(), None))
    recorder = MaskRecorder()
    big.fit(x, y, batch_size=8, epochs=2, verbose=0,
            callbacks=[ThresholdPruning(threshold=0.05, steps=[5]), recorder])
    counts = [row[2] for row in recorder.rows]
    assert counts[:5] == [0] * 5 and counts[5] > 0 and len(set(counts[5:])) == 1


def test_pruning_summaries_in_history_and_tensorboard(tmp_path):
    x, y = toy_data(32)
    pruned = compile_for_test(prune_low_magnitude(small_cnn(), ConstantSparsity(0.6, 0)))
    history = pruned.fit(x, y, batch_size=8, epochs=2, verbose=0,
                         callbacks=[UpdatePruningStep(), PruningSummaries(log_dir=tmp_path)])
    report = sparsity_report(pruned)
    for row in report:
        assert history.history[f"sparsity/{row.name}"][-1] == pytest.approx(row.sparsity)
    assert history.history["sparsity"][-1] == pytest.approx(report.total.sparsity)
    assert glob.glob(str(tmp_path / "events.out.tfevents.*"))


@pytest.mark.parametrize(
    "callback", [UpdatePruningStep(), ThresholdPruning(threshold=0.1), L1Regularization(0.1), PruningSummaries()]
)
def test_callbacks_need_wrappers(callback):
    model = compile_for_test(small_cnn(name="plain"))
    with pytest.raises(ValueError, match=f"{type(callback).__name__} found no PruneWrapper in model 'plain'"):
        model.fit(*toy_data(8), verbose=0, callbacks=[callback])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ThresholdPruning(), "exactly one of threshold"),
        (lambda: ThresholdPruning(threshold=0.1, relative_threshold=0.1), "exactly one of threshold"),
        (lambda: ThresholdPruning(threshold=-1), "threshold must be a number >= 0"),
        (lambda: ThresholdPruning(relative_threshold=1.5), r"relative_threshold must be in \[0, 1\]"),
        (lambda: ThresholdPruning(threshold=0.1, epochs=[-1]), "epochs must be an int or a list of ints >= 0"),
        (lambda: L1Regularization(-0.1), "strength must be a number >= 0"),
        (lambda: L1Regularization(0.1, start_epoch=3, end_epoch=2), "end_epoch must be greater than start_epoch"),
    ],
)
def test_invalid_callback_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_l1_strength_function_of_epoch():
    x, y = toy_data(16)
    pruned = compile_for_test(prune_low_magnitude(small_cnn(), None))
    history = pruned.fit(x, y, batch_size=8, epochs=3, verbose=0,
                         callbacks=[L1Regularization(lambda epoch: 0.001 * (epoch + 1))])
    assert history.history["l1_strength"] == pytest.approx([0.001, 0.002, 0.003])


def test_l1_term_is_traced_only_while_l1_regularization_runs():
    x, y = toy_data(16)
    pruned = compile_for_test(prune_low_magnitude(small_cnn(), None))
    seen = []

    class Losses(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append([w.l1_active for w in wrappers(self.model)])

    pruned.fit(x, y, epochs=1, verbose=0, callbacks=[L1Regularization(0.1), Losses()])
    assert seen == [[True] * 4]
    assert not any(w.l1_active for w in wrappers(pruned))
    # A later fit without the callback trains the plain loss: its first-step
    # loss equals the cross-entropy alone.
    plain = pruned.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    history = pruned.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert history.history["loss"][0] == pytest.approx(plain, rel=1e-5)


# -- config round trips of every public callback -------------------------------


def public_callback_classes():
    """Every keras.callbacks.Callback class that keras_compress exports."""
    import keras_compress as kc

    found = {}
    for module in (kc, kc.pruning, kc.quantization, kc.distillation):
        for name in getattr(module, "__all__", dir(module)):
            obj = getattr(module, name, None)
            if isinstance(obj, type) and issubclass(obj, keras.callbacks.Callback):
                found[obj.__name__] = obj
    return found


# Non-default arguments for each, so that a config that drops one shows.
CALLBACK_ARGUMENTS = {
    "UpdatePruningStep": {},
    "ThresholdPruning": {"relative_threshold": 0.25, "epochs": [1, 3], "steps": None},
    "L1Regularization": {"strength": 1e-3, "start_epoch": 1, "end_epoch": 4},
    "PruningSummaries": {"log_dir": None},
    "GroupLasso": {"strength": 0.5, "start_epoch": 2, "end_epoch": 5, "layers": ["conv_a"]},
}


def test_every_public_callback_has_round_trip_arguments():
    # A new public callback must be added to CALLBACK_ARGUMENTS (and round-trip).
    assert set(public_callback_classes()) == set(CALLBACK_ARGUMENTS)


@pytest.mark.parametrize("name", sorted(CALLBACK_ARGUMENTS))
def test_public_callback_config_round_trips(name):
    cls = public_callback_classes()[name]
    callback = cls(**CALLBACK_ARGUMENTS[name])
    config = callback.get_config()
    for key, expected in CALLBACK_ARGUMENTS[name].items():
        assert config[key] == expected
    clone = cls.from_config(config)
    assert type(clone) is cls and clone.get_config() == config
    # Through Keras's serialization, by registered name, as in a saved config.
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(callback))
    assert type(restored) is cls and restored.get_config() == config


def test_threshold_pruning_absolute_and_summaries_log_dir_round_trip(tmp_path):
    pytest.importorskip("tensorboard")
    for callback in (ThresholdPruning(threshold=0.05, steps=7), PruningSummaries(log_dir=tmp_path)):
        config = callback.get_config()
        assert type(callback).from_config(config).get_config() == config
    assert ThresholdPruning(threshold=0.05, steps=7).get_config()["steps"] == [7]
    assert PruningSummaries(log_dir=tmp_path).get_config()["log_dir"] == str(tmp_path)
