"""Knowledge distillation: losses against hand-computed values, the Distiller's training contract."""

import keras
import numpy as np
import pytest
from conftest import small_cnn, toy_data, value

import keras_compress as kc
from keras_compress import pruning
from keras_compress.distillation import (
    UNLABELLED,
    Distiller,
    mixed_dataset,
    feature_distillation_loss,
    hard_label_distillation_loss,
    response_distillation_loss,
)
from keras_compress.quantization import quantize_model

L = keras.layers


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def teacher_model():
    """A teacher with BatchNormalization and Dropout, both of which must stay in inference mode."""
    inputs = keras.Input((12, 12, 1))
    x = L.Conv2D(8, 3, activation="relu", name="t_conv")(inputs)
    x = L.BatchNormalization(name="t_bn")(x)
    x = L.Flatten()(x)
    x = L.Dropout(0.5)(x)
    x = L.Dense(16, activation="relu", name="t_dense")(x)
    return keras.Model(inputs, L.Dense(3, name="t_logits")(x), name="teacher")


def student_model():
    inputs = keras.Input((12, 12, 1))
    x = L.Conv2D(4, 3, activation="relu", name="s_conv")(inputs)
    x = L.Flatten()(x)
    x = L.Dense(6, activation="relu", name="s_dense")(x)
    return keras.Model(inputs, L.Dense(3, name="s_logits")(x), name="student")


def compiled(distiller, **kwargs):
    distiller.compile(optimizer="adam", metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")], **kwargs)
    return distiller


# -- losses -----------------------------------------------------------------


def test_response_loss_matches_the_formula_by_hand():
    teacher = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, -1.0]], "float32")
    student = np.array([[0.5, 0.5, 0.0], [1.0, 1.0, 1.0]], "float32")
    T = 2.0
    p, q = softmax(teacher / T), softmax(student / T)
    expected = np.mean(np.sum(p * np.log(p / q), -1)) * T**2
    assert value(response_distillation_loss(teacher, student, T)) == pytest.approx(expected, rel=1e-5)
    # Same as Keras's KLDivergence on the softened probabilities, times T^2.
    keras_kl = value(keras.losses.KLDivergence()(p, q)) * T**2
    assert value(response_distillation_loss(teacher, student, T)) == pytest.approx(keras_kl, rel=1e-4)
    assert value(response_distillation_loss(teacher, teacher, T)) == pytest.approx(0.0, abs=1e-6)


def test_response_loss_is_scaled_by_temperature_squared():
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(4, 5)) * 3, rng.normal(size=(4, 5)) * 3
    for T in (1.0, 2.0, 5.0):
        p, q = softmax(teacher / T), softmax(student / T)
        raw = np.mean(np.sum(p * np.log(p / q), -1))
        assert value(response_distillation_loss(teacher, student, T)) / raw == pytest.approx(T**2, rel=1e-4)


def test_hard_label_and_feature_losses_by_hand():
    teacher = np.array([[0.1, 2.0, 0.3], [5.0, 0.0, 1.0]], "float32")
    student = np.array([[1.0, 0.0, 0.0], [0.2, 0.1, 0.0]], "float32")
    q = softmax(student)
    expected = -np.mean(np.log([q[0, 1], q[1, 0]]))
    assert value(hard_label_distillation_loss(teacher, student)) == pytest.approx(expected, rel=1e-5)
    a, b = np.ones((2, 3)), np.zeros((2, 3))
    b[0, 0] = 3.0
    assert value(feature_distillation_loss(a, b)) == pytest.approx((4 + 5 * 1) / 6)


# -- Distiller --------------------------------------------------------------


def test_fit_trains_the_student_and_leaves_the_teacher_untouched():
    x, y = toy_data(64)
    teacher = teacher_model()
    teacher(x, training=True)  # non-trivial BN statistics are not needed: they must just not move
    before = [value(w).copy() for w in teacher.weights]
    student = student_model()
    student_before = [value(w).copy() for w in student.weights]
    distiller = compiled(Distiller(student=student, teacher=teacher), alpha=0.3, temperature=2)
    history = distiller.fit(x, y, epochs=2, batch_size=16, verbose=0)
    for key in ("loss", "student_loss", "distillation_loss", "accuracy"):
        assert key in history.history
    for w, b in zip(teacher.weights, before):  # kernels, gamma, beta, moving mean and variance
        np.testing.assert_array_equal(value(w), b)
    assert any(not np.array_equal(value(w), b) for w, b in zip(student.weights, student_before))
    # The teacher runs in inference mode: Dropout off, so its outputs are deterministic.
    t1, _ = distiller.teacher_outputs(x)
    t2, _ = distiller.teacher_outputs(x)
    np.testing.assert_array_equal(value(t1), value(t2))
    # The logged loss is the weighted sum of its parts (one evaluation batch).
    result = distiller.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    logits = value(student(x))
    expected_student = value(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits))
    expected_kd = value(response_distillation_loss(value(t1), logits, 2.0))
    assert result["student_loss"] == pytest.approx(expected_student, rel=1e-4)
    assert result["distillation_loss"] == pytest.approx(expected_kd, rel=1e-4)
    assert result["loss"] == pytest.approx(0.3 * expected_student + 0.7 * expected_kd, rel=1e-4)
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == y))
    np.testing.assert_allclose(distiller.predict(x, verbose=0), logits, rtol=1e-5, atol=1e-6)


def test_hard_label_mode_uses_the_teacher_argmax():
    x, y = toy_data(32)
    teacher, student = teacher_model(), student_model()
    distiller = compiled(Distiller(student=student, teacher=teacher), alpha=0.0, mode="hard")
    result = distiller.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    t = value(teacher(x, training=False))
    expected = value(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(t.argmax(-1), value(student(x))))
    assert result["distillation_loss"] == pytest.approx(expected, rel=1e-4)
    assert result["loss"] == pytest.approx(expected, rel=1e-4)


def test_keras_logits_distillation_object_gets_a_correct_kl():
    x, y = toy_data(32)
    teacher, student = teacher_model(), student_model()
    ours = compiled(Distiller(student=student, teacher=teacher), temperature=4.0)
    theirs = compiled(
        Distiller(student=student, teacher=teacher),
        distillation_loss_fn=keras.distillation.LogitsDistillation(temperature=4.0),
    )
    a = ours.evaluate(x, y, verbose=0, return_dict=True)
    b = theirs.evaluate(x, y, verbose=0, return_dict=True)
    assert b["distillation_loss"] == pytest.approx(a["distillation_loss"], rel=1e-5)
    assert b["distillation_loss"] >= 0
    # Keras 3.15's own LogitsDistillation applies KL to clipped logits (see
    # distiller.py): its value differs from the KL of the softened distributions.
    t, s = value(teacher(x, training=False)), value(student(x))
    keras_value = value(keras.distillation.LogitsDistillation(temperature=4.0).compute_loss(t, s))
    assert abs(keras_value - a["distillation_loss"]) > 1e-3


def test_feature_hints_with_adapters_train_and_stay_out_of_the_student():
    x, y = toy_data(64)
    teacher, student = teacher_model(), student_model()
    distiller = Distiller(
        student=student,
        teacher=teacher,
        hints=[("t_dense", "s_dense"), keras.distillation.FeatureDistillation(teacher_layer_name="t_conv", student_layer_name="s_conv")],
    )
    dense_adapter, conv_adapter = distiller.adapters
    assert isinstance(dense_adapter, L.Dense) and dense_adapter.kernel.shape == (6, 16)
    assert isinstance(conv_adapter, L.Conv2D) and conv_adapter.kernel.shape == (1, 1, 4, 8)
    before = value(dense_adapter.kernel).copy()
    compiled(distiller)
    history = distiller.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert "hint_loss" in history.history
    assert history.history["hint_loss"][-1] < history.history["hint_loss"][0]
    assert not np.array_equal(value(dense_adapter.kernel), before)
    assert all("adapter" not in w.path for w in student.weights)
    assert len(student.weights) == len(student_model().weights)


def test_teacher_cache_gives_the_same_losses():
    x, y = toy_data(48)
    teacher, student = teacher_model(), student_model()
    distiller = compiled(Distiller(student=student, teacher=teacher, hints=[("t_dense", "s_dense")]))
    live = distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    cached = distiller.evaluate(*distiller.cache_teacher(x, y), batch_size=16, verbose=0, return_dict=True)
    for key in ("loss", "student_loss", "distillation_loss", "hint_loss", "accuracy"):
        assert cached[key] == pytest.approx(live[key], rel=1e-5)
    distiller.fit(*distiller.cache_teacher(x, y), epochs=1, batch_size=16, verbose=0)


# -- unlabelled and mixed data -------------------------------------------


def readme_compiled(distiller):
    """The README's own compile line: metrics given, as most users will."""
    distiller.compile(optimizer="adam", metrics=[keras.metrics.SparseCategoricalAccuracy()], alpha=0.1, temperature=4)
    return distiller


@pytest.mark.parametrize("cached", [False, True], ids=["live", "cached"])
@pytest.mark.parametrize("hints", [None, [("t_dense", "s_dense")]], ids=["logits", "hints"])
def test_unlabelled_fit_with_compiled_metrics(cached, hints):
    # Used to fail: "Cannot get result() since the metric has not yet been built".
    x, y = toy_data(48)
    distiller = readme_compiled(Distiller(student=student_model(), teacher=teacher_model(), hints=hints))
    data = distiller.cache_teacher(x) if cached else (x,)
    before = value(distiller.student.get_layer("s_logits").kernel).copy()
    history = distiller.fit(*data, epochs=2, batch_size=16, verbose=0).history
    assert not np.array_equal(value(distiller.student.get_layer("s_logits").kernel), before)
    # No label, no accuracy: only the losses are reported, and the student loss is 0.
    assert "sparse_categorical_accuracy" not in history
    assert history["student_loss"] == [0.0, 0.0]
    assert history["distillation_loss"][-1] > 0
    hint = history["hint_loss"][-1] if hints else 0.0
    assert history["loss"][-1] == pytest.approx(0.9 * history["distillation_loss"][-1] + hint, rel=1e-4)
    result = distiller.evaluate(*data, batch_size=16, verbose=0, return_dict=True)
    assert set(result) >= {"loss", "distillation_loss"} and "sparse_categorical_accuracy" not in result
    assert distiller.predict(x, verbose=0).shape == (48, 3)
    # The same distiller, given labels later, measures them.
    labelled = distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    expected = np.mean(distiller.predict(x, verbose=0).argmax(-1) == y)
    assert labelled["sparse_categorical_accuracy"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("cached", [False, True], ids=["live", "cached"])
def test_mixed_labels_hard_loss_and_metrics_use_the_labelled_samples_only(cached):
    x, y = toy_data(48)
    distiller = Distiller(student=student_model(), teacher=teacher_model())
    distiller.compile(optimizer="adam", metrics=["accuracy"], alpha=0.3, temperature=2.0)
    x_mixed, y_mixed = mixed_dataset(x[:20], y[:20], x[20:])
    assert np.array_equal(y_mixed, np.concatenate([y[:20], np.full(28, -1)])) and UNLABELLED == -1
    np.testing.assert_array_equal(x_mixed, x)
    data = distiller.cache_teacher(x_mixed, y_mixed) if cached else (x_mixed, y_mixed)
    result = distiller.evaluate(*data, batch_size=48, verbose=0, return_dict=True)
    # Independent expectations, from the student's and teacher's logits in numpy.
    student_logits = value(distiller.student(x, training=False))
    teacher_logits = value(distiller.teachers[0](x, training=False))
    log_q = np.log(softmax(student_logits))
    hard = -np.mean(log_q[np.arange(20), y[:20]])  # the 20 labelled samples only
    p, q = softmax(teacher_logits / 2), softmax(student_logits / 2)
    soft = np.mean(np.sum(p * np.log(p / q), -1)) * 4  # all 48 samples
    assert result["student_loss"] == pytest.approx(hard, rel=1e-4)
    assert result["distillation_loss"] == pytest.approx(soft, rel=1e-4)
    assert result["loss"] == pytest.approx(0.3 * hard + 0.7 * soft, rel=1e-4)
    assert result["accuracy"] == pytest.approx(np.mean(student_logits[:20].argmax(-1) == y[:20]), abs=1e-6)
    history = distiller.fit(*data, epochs=2, batch_size=16, verbose=0).history
    assert 0 <= history["accuracy"][-1] <= 1 and history["student_loss"][-1] > 0


def test_a_batch_without_labels_gives_a_zero_student_loss():
    x, y = toy_data(32)
    distiller = Distiller(student=student_model(), teacher=teacher_model())
    distiller.compile(optimizer="adam", metrics=["accuracy"], alpha=0.5)
    y_none = np.full(32, UNLABELLED)
    result = distiller.evaluate(x, y_none, batch_size=32, verbose=0, return_dict=True)
    assert result["student_loss"] == 0.0
    assert result["loss"] == pytest.approx(0.5 * result["distillation_loss"], rel=1e-5)


def test_a_student_loss_returning_a_scalar_is_refused_with_the_reason():
    x, y = toy_data(16)
    distiller = Distiller(student=student_model(), teacher=teacher_model())
    distiller.compile(
        optimizer="adam",
        student_loss_fn=lambda t, p: keras.ops.mean(keras.losses.sparse_categorical_crossentropy(t, p, from_logits=True)),
    )
    with pytest.raises(ValueError, match="student_loss_fn must return one value per sample"):
        distiller.fit(x, y, epochs=1, verbose=0)


def test_one_hot_labels_mark_unlabelled_rows_with_minus_one():
    x, y = toy_data(30)
    one_hot = np.eye(3, dtype="float32")[y]
    x_mixed, y_mixed = mixed_dataset(x[:10], one_hot[:10], x[10:])
    assert y_mixed.shape == (30, 3) and np.all(y_mixed[10:] == -1)
    distiller = Distiller(student=student_model(), teacher=teacher_model())
    distiller.compile(
        optimizer="adam", metrics=["categorical_accuracy"], alpha=0.5,
        student_loss_fn=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    result = distiller.evaluate(x_mixed, y_mixed, batch_size=30, verbose=0, return_dict=True)
    logits = value(distiller.student(x, training=False))
    assert result["student_loss"] == pytest.approx(-np.mean(np.log(softmax(logits))[np.arange(10), y[:10]]), rel=1e-4)
    assert result["categorical_accuracy"] == pytest.approx(np.mean(logits[:10].argmax(-1) == y[:10]), abs=1e-6)


def test_mixed_dataset_with_several_inputs():
    a, b = np.arange(12.0).reshape(6, 2), np.arange(6.0).reshape(6, 1)
    x, y = mixed_dataset({"a": a[:2], "b": b[:2]}, [1, 2], {"a": a[2:], "b": b[2:]})
    np.testing.assert_array_equal(x["a"], a)
    np.testing.assert_array_equal(x["b"], b)
    assert y.tolist() == [1, 2, -1, -1, -1, -1]
    x, y = mixed_dataset([a[:2], b[:2]], np.array([0, 1], "uint8"), [a[2:], b[2:]])
    assert isinstance(x, list) and y.dtype.kind == "i" and y.tolist() == [0, 1, -1, -1, -1, -1]


@pytest.mark.parametrize(
    "args, error, match",
    [
        (("x", [1], np.zeros((2, 3))), TypeError, "mixed_dataset: x_labelled must be a numpy array, or a list or dict"),
        ((np.zeros((2, 3)), [1, 2], np.zeros((2, 4))), ValueError, r"x_unlabelled samples must have the shape of x_labelled samples, \(3,\)"),
        ((np.zeros((2, 3)), [1], np.zeros((2, 3))), ValueError, "x_labelled has 2 samples and y_labelled 1"),
        ((np.zeros((2, 3)), [1, -1], np.zeros((2, 3))), ValueError, "y_labelled must not contain the label -1"),
        ((np.zeros((2, 3)), ["a", "b"], np.zeros((2, 3))), ValueError, "y_labelled must hold numbers"),
        ((np.zeros((2, 3)), 3, np.zeros((2, 3))), TypeError, "y_labelled must be an array of labels"),
        ((np.zeros((0, 3)), [], np.zeros((2, 3))), ValueError, "x_labelled must hold at least one sample"),
        ((np.zeros((2, 3)), [1, 2], [np.zeros((2, 3))] * 2), ValueError, "x_unlabelled must have the form of x_labelled"),
        (({"a": np.zeros((2, 3))}, [1, 2], {"b": np.zeros((2, 3))}), ValueError, "must have the keys of x_labelled"),
    ],
)
def test_mixed_dataset_errors(args, error, match):
    originals = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]
    with pytest.raises(error, match=match):
        mixed_dataset(*args)
    for arg, original in zip(args, originals):
        if isinstance(arg, np.ndarray):
            np.testing.assert_array_equal(arg, original)


def test_cache_teacher_reads_datasets_generators_and_several_inputs():
    import tensorflow as tf

    x, y = toy_data(40)
    distiller = compiled(Distiller(student=student_model(), teacher=teacher_model(), hints=[("t_dense", "s_dense")]))
    x_ref, ref = distiller.cache_teacher(x, y, batch_size=16)
    forms = {
        "tf.data (x, y)": tf.data.Dataset.from_tensor_slices((x, y)).batch(7),
        "generator fn": lambda: ((x[i : i + 9], y[i : i + 9]) for i in range(0, 40, 9)),
        "(x, y) tuple": (x, y),
    }
    for name, data in forms.items():
        x_got, got = distiller.cache_teacher(data, batch_size=16)
        np.testing.assert_array_equal(x_got, x_ref, err_msg=name)
        np.testing.assert_array_equal(got["labels"], y, err_msg=name)
        np.testing.assert_allclose(got["teacher_logits"], ref["teacher_logits"], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(got["teacher_features"][0], ref["teacher_features"][0], rtol=1e-5, atol=1e-6)
    x_only, unlabelled = distiller.cache_teacher(tf.data.Dataset.from_tensor_slices(x).batch(8))
    assert "labels" not in unlabelled
    distiller.fit(x_only, unlabelled, epochs=1, batch_size=16, verbose=0)

    # Two inputs: a dict by name or a list in order, cached and trained on.
    def two_inputs(name, units):
        a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
        h = L.Dense(units, activation="relu")(L.Concatenate()([a, b]))
        return keras.Model([a, b], L.Dense(3)(h), name=name)

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(24, 4)).astype("float32"), rng.normal(size=(24, 3)).astype("float32")
    teacher = two_inputs("teacher2", 16)
    two = Distiller(student=two_inputs("student2", 4), teacher=teacher)
    two.compile(optimizer="adam", metrics=["accuracy"])
    x_two, targets = two.cache_teacher({"a": a, "b": b}, y[:24], batch_size=10)
    assert isinstance(x_two, list) and len(x_two) == 2
    np.testing.assert_allclose(targets["teacher_logits"], value(teacher([a, b])), rtol=1e-5, atol=1e-6)
    history = two.fit(x_two, targets, epochs=1, batch_size=8, verbose=0).history
    assert "accuracy" in history


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda d, x, y: d.cache_teacher("images"), TypeError, "Distiller.cache_teacher: x must be a numpy array of samples"),
        (lambda d, x, y: d.cache_teacher(x[:, :5]), ValueError, r"Distiller.cache_teacher: x has shape \(8, 5, 12, 1\), but model 'teacher' expects \(batch, 12, 12, 1\)"),
        (lambda d, x, y: d.cache_teacher(x, y[:3]), ValueError, "x has 8 samples and y 3"),
        (lambda d, x, y: d.cache_teacher((x, y), y), ValueError, "x already yields labels"),
        (lambda d, x, y: d.cache_teacher(x, batch_size=0), ValueError, "Distiller.cache_teacher: batch_size must be an int >= 1, got 0"),
        (lambda d, x, y: d.cache_teacher(x, batch_size=2.0), TypeError, "batch_size must be an int >= 1"),
        (lambda d, x, y: d.cache_teacher(x[:0]), ValueError, "Distiller.cache_teacher: x is empty"),
    ],
)
def test_cache_teacher_errors(call, error, match):
    x, y = toy_data(8)
    with pytest.raises(error, match=match):
        call(Distiller(student=student_model(), teacher=teacher_model()), x, y)


def test_several_teachers_average_their_logits():
    x, _ = toy_data(8)
    t1, t2 = teacher_model(), teacher_model()
    distiller = Distiller(student=student_model(), teacher=[t1, t2])
    logits, _ = distiller.teacher_outputs(x)
    expected = (value(t1(x, training=False)) + value(t2(x, training=False))) / 2
    np.testing.assert_allclose(value(logits), expected, rtol=1e-5, atol=1e-6)


def test_pruned_student_keeps_its_sparsity():
    x, y = toy_data(64)
    student = pruning.prune_low_magnitude(small_cnn(), pruning.ConstantSparsity(0.5, 0, frequency=1))
    distiller = compiled(Distiller(student=student, teacher=teacher_model()))
    distiller.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    final = pruning.strip_pruning(distiller.student)
    report = pruning.sparsity_report(final)
    for layer in report:
        assert layer.sparsity == pytest.approx(0.5, abs=0.02)


def test_qat_student_exports_to_int8():
    x, y = toy_data(64)
    student = quantize_model(small_cnn())
    distiller = compiled(Distiller(student=student, teacher=teacher_model()))
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    flatbuffer = kc.to_tflite(distiller.student, quantization="int8")
    assert kc.inspect_tflite(flatbuffer).float_compute_ops() == []
    agreement = kc.predict_tflite(flatbuffer, x).argmax(-1) == value(distiller.student(x)).argmax(-1)
    assert agreement.mean() >= 0.95


def test_config_and_keras_file_round_trip(tmp_path):
    x, y = toy_data(32)
    distiller = compiled(
        Distiller(student=student_model(), teacher=teacher_model(), hints=[("t_dense", "s_dense")]),
        alpha=0.25, temperature=5.0, mode="hard",
    )
    distiller.fit(x, y, epochs=1, verbose=0)
    clone = Distiller.from_config(distiller.get_config())
    assert clone.get_config() == distiller.get_config()
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Distiller)
    assert (loaded.alpha, loaded.temperature, loaded.mode) == (0.25, 5.0, "hard")
    result = loaded.evaluate(x, y, verbose=0, return_dict=True)  # compiled on load
    assert result["loss"] == pytest.approx(distiller.evaluate(x, y, verbose=0, return_dict=True)["loss"], rel=1e-5)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0), rtol=1e-6)


@pytest.mark.parametrize(
    "loss, fn",
    [
        ("mae", keras.losses.mean_absolute_error),
        (keras.losses.MeanAbsoluteError(), keras.losses.mean_absolute_error),
        # keras.losses.cosine_similarity's gradient at an all-zero feature is NaN on JAX (finite on TF).
        pytest.param(keras.losses.cosine_similarity, keras.losses.cosine_similarity, marks=pytest.mark.tf_only),
        ("mse", None),  # the default: kept as a plain pair
        (feature_distillation_loss, feature_distillation_loss),  # ours, registered with Keras
    ],
    ids=["mae", "MeanAbsoluteError", "cosine_similarity", "mse", "feature_distillation_loss"],
)
def test_feature_distillation_hint_loss_survives_config_and_keras_file(tmp_path, loss, fn):
    # Used to reload as MSE: the config kept only the layer names.
    x, y = toy_data(32)
    hint = keras.distillation.FeatureDistillation(loss=loss, teacher_layer_name="t_dense", student_layer_name="s_dense")
    distiller = compiled(
        Distiller(student=student_model(), teacher=teacher_model(), hints=[hint, ("t_conv", "s_conv")]),
        alpha=0.3, temperature=2.0, distillation_loss_fn=keras.distillation.LogitsDistillation(temperature=2.0),
    )
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    config = distiller.get_config()
    clone = Distiller.from_config(config)
    assert clone.get_config() == config  # and from_config left `config` intact
    assert distiller.get_config() == config

    def hint_fn(d):
        f = d.hints[0][2]
        return getattr(f, "fn", f)

    assert hint_fn(clone) is fn and clone.hints[1] == ("t_conv", "s_conv", None)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert hint_fn(loaded) is fn and loaded.get_config()["hints"] == config["hints"]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0), rtol=1e-6)
    # The hint loss is the same function on the same weights: the same value.
    before = distiller.evaluate(x, y, verbose=0, return_dict=True)
    after = loaded.evaluate(x, y, verbose=0, return_dict=True)
    for key in ("loss", "hint_loss", "distillation_loss", "student_loss", "accuracy"):
        assert after[key] == pytest.approx(before[key], rel=1e-5)
    if fn not in (None, feature_distillation_loss):  # and it is not what MSE would give
        mse = Distiller(student=distiller.student, teacher=distiller.teachers[0], hints=[("t_dense", "s_dense"), ("t_conv", "s_conv")])
        mse.adapters = distiller.adapters
        compiled(mse, alpha=0.3, temperature=2.0)
        assert mse.evaluate(x, y, verbose=0, return_dict=True)["hint_loss"] != pytest.approx(after["hint_loss"], rel=1e-3)


def test_distiller_get_config_of_a_mae_hint_is_readable():
    hint = keras.distillation.FeatureDistillation(loss="mae", teacher_layer_name="t_dense", student_layer_name="s_dense")
    config = Distiller(student=student_model(), teacher=teacher_model(), hints=[hint]).get_config()
    (entry,) = config["hints"]
    assert entry["teacher_layer_name"] == "t_dense" and entry["student_layer_name"] == "s_dense"
    assert keras.losses.deserialize(entry["loss"]) is keras.losses.mean_absolute_error


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: Distiller(student="s", teacher=teacher_model()), TypeError, "student must be a keras.Model"),
        (
            lambda: Distiller(student=keras.Sequential([keras.Input((10,)), L.Dense(3)]), teacher=teacher_model()),
            ValueError,
            "takes inputs of shape",
        ),
        (
            lambda: Distiller(
                student=keras.Sequential([keras.Input((12, 12, 1)), L.Flatten(), L.Dense(4)]),
                teacher=teacher_model(),
            ),
            ValueError,
            "one logits output of the same shape",
        ),
        (
            lambda: Distiller(student=student_model(), teacher=teacher_model(), hints=[("t_dense", "nope")]),
            ValueError,
            "hint layer 'nope' is not in the student 'student'; its layers are: .*s_dense",
        ),
        (
            lambda: Distiller(student=student_model(), teacher=teacher_model(), hints=[("t_conv", "s_dense")]),
            ValueError,
            "cannot map the hint",
        ),
        (lambda: Distiller(student=student_model(), teacher=teacher_model(), hints="t_dense"), TypeError, "hints"),
        (lambda: Distiller(student=student_model(), teacher=[]), ValueError, "non-empty list"),
    ],
)
def test_construction_errors(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"temperature": 0}, ValueError, "temperature must be a number > 0"),
        ({"temperature": -2.0}, ValueError, "temperature"),
        ({"alpha": 1.5}, ValueError, r"alpha must be a number in \[0, 1\]"),
        ({"alpha": -0.1}, ValueError, "alpha"),
        ({"mode": "medium"}, ValueError, "mode must be one of"),
        ({"hint_weight": -1}, ValueError, "hint_weight"),
        ({"distillation_loss_fn": 3}, TypeError, "distillation_loss_fn"),
    ],
)
def test_compile_errors(kwargs, error, match):
    distiller = Distiller(student=student_model(), teacher=teacher_model())
    with pytest.raises(error, match=match):
        distiller.compile(optimizer="adam", **kwargs)
