"""Models with several inputs and outputs through `to_tflite`, `predict_tflite`
and `evaluate_tflite`: every representative-data form, the file's input and
output order and names checked against the Keras model's own predictions."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from architectures import argmax_agreement, synthetic_data, train_briefly, two_in_two_out
from conftest import assert_unchanged, snapshot

from keras_compress import evaluate_tflite, inspect_tflite, predict_tflite, to_tflite
from keras_compress.export import converter

INPUTS = ["numbers", "image"]
OUTPUTS = ["zeta_class", "alpha_score"]  # model order; alphabetical order is the reverse


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(3)
    model = two_in_two_out()
    (numbers, image), targets = synthetic_data(model, n=256)
    train_briefly(model, [numbers, image], targets, epochs=4)
    return model, numbers, image, targets


@pytest.fixture(scope="module")
def float_file(trained):
    return to_tflite(trained[0])


@pytest.fixture(scope="module")
def int8_file(trained):
    model, numbers, image, _ = trained
    data = {"numbers": numbers, "image": image}
    return to_tflite(model, quantization="int8", representative_data=data, calibration_steps=16)


def signature(flatbuffer):
    return Interpreter(model_content=flatbuffer).get_signature_list()["serving_default"]


def test_the_file_follows_the_models_input_and_output_order_and_names(trained, float_file):
    model, numbers, image, _ = trained
    info = inspect_tflite(float_file)
    assert [t.name for t in info.inputs] == INPUTS == [t.name for t in model.inputs]
    assert [t.name for t in info.outputs] == OUTPUTS == model.output_names
    assert [t.shape for t in info.outputs] == [(1, 3), (1, 1)]
    assert sorted(signature(float_file)["inputs"]) == sorted(INPUTS)
    assert sorted(signature(float_file)["outputs"]) == sorted(OUTPUTS)
    # The values, not just the names: output i is the model's output i.
    expected = model.predict([numbers[:32], image[:32]], verbose=0)
    for given in ([numbers[:32], image[:32]], {"image": image[:32], "numbers": numbers[:32]}):
        outputs = predict_tflite(float_file, given)
        assert len(outputs) == 2
        for out, ref in zip(outputs, expected):
            np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_the_signature_runner_maps_keys_to_the_right_tensors(trained, float_file):
    model, numbers, image, _ = trained
    runner = Interpreter(model_content=float_file).get_signature_runner("serving_default")
    result = runner(numbers=numbers[:1], image=image[:1])
    expected = model.predict([numbers[:1], image[:1]], verbose=0)
    for name, ref in zip(OUTPUTS, expected):
        np.testing.assert_allclose(result[name], ref, rtol=1e-4, atol=1e-5)


def test_int8_file_has_the_same_order_and_names_and_agrees_with_keras(trained, int8_file):
    model, numbers, image, _ = trained
    info = inspect_tflite(int8_file)
    assert [t.name for t in info.inputs] == INPUTS and [t.name for t in info.outputs] == OUTPUTS
    assert info.float_compute_ops() == []
    label, score = predict_tflite(int8_file, [numbers, image])
    keras_label, keras_score = model.predict([numbers, image], verbose=0)
    assert argmax_agreement(keras_label, label) >= 0.9
    # The regression output is the model's second, not the class logits.
    assert np.corrcoef(score[:, 0], keras_score[:, 0])[0, 1] > 0.95


def test_int8_io_keeps_the_keras_names(trained):
    model, numbers, image, _ = trained
    flatbuffer = to_tflite(model, quantization="int8", int8_io=True,
                           representative_data=[numbers, image], calibration_steps=16)
    info = inspect_tflite(flatbuffer)
    assert [(t.name, t.dtype) for t in info.inputs] == [("numbers", "int8"), ("image", "int8")]
    assert [(t.name, t.dtype) for t in info.outputs] == [("zeta_class", "int8"), ("alpha_score", "int8")]
    assert sorted(signature(flatbuffer)["inputs"]) == sorted(INPUTS)
    label, _ = predict_tflite(flatbuffer, {"numbers": numbers, "image": image})
    assert argmax_agreement(model.predict([numbers, image], verbose=0)[0], label) >= 0.9


def _generator_of_single_samples(numbers, image):
    for n, i in zip(numbers, image):
        yield [n, i]


def _generator_of_batches(numbers, image, targets):
    for start in range(0, len(numbers), 5):
        part = slice(start, start + 5)
        yield {"numbers": numbers[part], "image": image[part]}, [t[part] for t in targets]


FORMS = {
    "list": lambda n, i, t: [n, i],
    "tuple": lambda n, i, t: (n, i),
    "(list, y)": lambda n, i, t: ([n, i], t),
    "(dict, y, sample_weight)": lambda n, i, t: ({"numbers": n, "image": i}, t, np.ones(len(n))),
    "generator of single-sample lists": lambda n, i, t: _generator_of_single_samples(n, i),
    "generator of (dict, y) batches": lambda n, i, t: _generator_of_batches(n, i, t),
    "callable": lambda n, i, t: lambda: _generator_of_single_samples(n, i),
    "tf.data batched (dict, y)": lambda n, i, t: tf.data.Dataset.from_tensor_slices(
        ({"numbers": n, "image": i}, tuple(t))).batch(4),
    "tf.data unbatched tuple": lambda n, i, t: tf.data.Dataset.from_tensor_slices((n, i)),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_every_representative_data_form_calibrates_like_the_dict(trained, int8_file, form):
    model, numbers, image, targets = trained
    data = FORMS[form](numbers[:16], image[:16], [t[:16] for t in targets])
    assert to_tflite(model, quantization="int8", representative_data=data, calibration_steps=16) == int8_file


def _first_sample_wrong(numbers, image):
    yield {"numbers": numbers[0], "image": image[0, :, :, 0]}


BAD_DATA = {
    "one array": (lambda n, i: n, ValueError,
                  r"model 'two_in_two_out' has 2 inputs \('numbers', 'image'\); representative_data must give "
                  r"one array per input, as a dict by input name or a list in that order; got a single array "
                  r"of shape \(8, 8\)"),
    "dict missing an input": (lambda n, i: {"numbers": n}, ValueError,
                              r"dict needs one entry per input of model 'two_in_two_out', keyed by input "
                              r"name: 'numbers', 'image'; missing \['image'\]"),
    "dict with an unknown key": (lambda n, i: {"numbers": n, "image": i, "extra": n}, ValueError,
                                 r"unknown keys \['extra'\]"),
    "three arrays": (lambda n, i: (n, i, n, i), TypeError,
                     r"a representative_data tuple or list must hold one array per input in that order, "
                     r"or be \(x, y\) or \(x, y, sample_weight\).*got a tuple of 4 items"),
    "image of the wrong shape": (lambda n, i: [n, i[:, :4]], ValueError,
                                 r"representative_data has shape \(8, 4, 8, 1\) for input 'image', but model "
                                 r"'two_in_two_out' expects \(batch, 8, 8, 1\) for its input 'image'"),
    "yielded sample of the wrong shape": (_first_sample_wrong, ValueError,
                                          r"yielded an element of shape \(8, 8\) for input 'image', but model "
                                          r"'two_in_two_out' expects \(batch, 8, 8, 1\) or single samples "
                                          r"\(8, 8, 1\) for its input 'image'"),
    "different sample counts": (lambda n, i: [n, i[:5]], ValueError,
                                r"different number of samples per input of model 'two_in_two_out': "
                                r"\{'numbers': 8, 'image': 5\}"),
    "strings": (lambda n, i: [n.astype(str), i], ValueError,
                r"has dtype <U\d+ for input 'numbers', but model 'two_in_two_out' expects numbers"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_wrong_representative_data_fails_before_converting_and_names_the_input(monkeypatch, case):
    model = two_in_two_out()
    (numbers, image), _ = synthetic_data(model, n=8)
    make, error, match = BAD_DATA[case]
    before = snapshot(model)
    monkeypatch.setattr(converter, "_export_saved_model", lambda *a: pytest.fail("converted"))
    with pytest.raises(error, match=match):
        to_tflite(model, quantization="int8", representative_data=make(numbers, image))
    assert_unchanged(model, before)


def test_evaluate_takes_labels_per_output(trained, float_file):
    model, numbers, image, targets = trained
    labels = targets[0]
    keras_accuracy = float(np.mean(model.predict([numbers, image], verbose=0)[0].argmax(-1) == labels))
    result = evaluate_tflite(float_file, [numbers, image], {"zeta_class": labels})
    assert result == {"accuracy": {"zeta_class": pytest.approx(keras_accuracy)}, "samples": len(labels)}
    by_list = evaluate_tflite(float_file, {"numbers": numbers, "image": image}, [np.eye(3)[labels], None])
    assert by_list["accuracy"]["zeta_class"] == pytest.approx(keras_accuracy)


@pytest.mark.parametrize(
    "x, y, match",
    [
        ("list", {"alpha_score": "score"}, r"output 'alpha_score' has a single unit, not class scores"),
        ("list", {"beta": "labels"}, r"y as a dict gives labels by output name, of \['zeta_class', 'alpha_score'\]; "
                                     r"got unknown keys \['beta'\]"),
        ("list", "labels", r"the model has 2 outputs \['zeta_class', 'alpha_score'\]; y must be a dict"),
        ("list", ["labels"], r"got a list of 1"),
        ("list", [None, None], r"y gives no labels for any output"),
        ("numbers", ["labels", None], r"the model has 2 inputs \['numbers', 'image'\]; x must be a dict of "
                                      r"arrays by input name or a list of one array per input"),
        ("dict without image", ["labels", None], r"missing \['image'\]"),
        ("short image", ["labels", None], r"the inputs have different numbers of samples: "
                                          r"\{'numbers': 16, 'image': 4\}"),
        ("list", ["few labels", None], r"x has 16 samples but y has 3"),
    ],
)
def test_multi_io_evaluate_and_predict_errors(trained, float_file, x, y, match):
    _, numbers, image, targets = trained
    numbers, image, labels = numbers[:16], image[:16], targets[0][:16]
    xs = {"list": [numbers, image], "numbers": numbers, "dict without image": {"numbers": numbers},
          "short image": [numbers, image[:4]]}[x]
    values = {"score": targets[1][:16], "labels": labels, "few labels": labels[:3]}

    def fill(v):
        return values.get(v, v) if isinstance(v, str) else v

    y = {k: fill(v) for k, v in y.items()} if isinstance(y, dict) else (
        [fill(v) for v in y] if isinstance(y, list) else fill(y))
    with pytest.raises(ValueError, match=match):
        evaluate_tflite(float_file, xs, y)


def test_predict_errors_name_the_input(trained, float_file):
    _, numbers, image, _ = trained
    with pytest.raises(ValueError, match=r"input 'image' has shape \(4, 8, 8\), but the model's input 'image' "
                                         r"expects \(batch, 8, 8, 1\)"):
        predict_tflite(float_file, [numbers[:4], image[:4, :, :, 0]])
    with pytest.raises(ValueError, match=r"x is empty"):
        predict_tflite(float_file, [numbers[:0], image[:0]])


def test_dict_outputs_are_named_by_their_keys():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    outputs = {"sum": keras.layers.Dense(2, name="d")(a) + b, "first": keras.layers.Dense(1, name="f")(a)}
    model = keras.Model({"b": b, "a": a}, outputs, name="dicts")
    flatbuffer = to_tflite(model, batch_size=None)
    info = inspect_tflite(flatbuffer)
    assert [t.name for t in info.inputs] == ["a", "b"]  # model.inputs' order
    assert [t.name for t in info.outputs] == ["first", "sum"]  # keras.tree.flatten's order
    x = {"a": np.ones((4, 3), "float32"), "b": np.arange(8, dtype="float32").reshape(4, 2)}
    expected = model.predict(x, verbose=0)
    first, total = predict_tflite(flatbuffer, x)
    np.testing.assert_allclose(first, expected["first"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(total, expected["sum"], rtol=1e-5, atol=1e-6)
