"""The shared data adapter (`keras_compress._data`): every accepted form read
into the same arrays, and errors that name the API, the argument and the forms."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_compress import _data

SPECS = [_data.InputSpec("a", (3,), "float32"), _data.InputSpec("b", (2, 2), "int32")]
A = np.arange(15, dtype="float32").reshape(5, 3)
B = np.arange(20, dtype="int32").reshape(5, 2, 2)
Y = np.array([0, 1, 2, 1, 0])


def read(data, **kwargs):
    return _data.read_inputs(data, SPECS, api="api", argument="data", model_name="m", labels=True, **kwargs)


def check(result, n=5, labels=True):
    (a, b), y = result
    np.testing.assert_array_equal(a, A[:n])
    np.testing.assert_array_equal(b, B[:n])
    assert a.dtype == np.float32 and b.dtype == np.int32
    if labels:
        np.testing.assert_array_equal(y, Y[:n])
    else:
        assert y is None


def batches_of(size):
    for start in range(0, 5, size):
        yield {"a": A[start : start + size], "b": B[start : start + size]}, Y[start : start + size]


@pytest.mark.parametrize(
    "data, labels",
    [
        ({"a": A, "b": B}, False),
        ([A, B], False),
        (({"a": A, "b": B}, Y), True),
        (([A, B], Y, np.ones(5)), True),
        (lambda: batches_of(2), True),  # a generator function
        (list(batches_of(3)), True),  # an iterable of batches
        (({"a": a, "b": b} for a, b in zip(A, B)), False),  # single samples
        (tf.data.Dataset.from_tensor_slices(({"a": A, "b": B}, Y)).batch(2), True),
        (tf.data.Dataset.from_tensor_slices((A, B)).batch(4), False),
    ],
    ids=["dict", "list", "dict+y", "list+y+sw", "generator fn", "iterable", "samples", "tf.data+y", "tf.data list"],
)
def test_every_form_gives_the_same_arrays(data, labels):
    check(read(data), labels=labels)


def test_max_samples_stops_reading():
    check(read(lambda: batches_of(2), max_samples=3), n=3)
    check(read({"a": A, "b": B}, max_samples=4), n=4, labels=False)
    seen = []

    def endless():
        while True:
            seen.append(1)
            yield [A[:2], B[:2]]

    (a, _), _ = read(endless, max_samples=3)
    assert len(a) == 3 and len(seen) == 2  # stopped once it had 3


def test_iter_batches_yields_one_batch_per_element():
    sizes = [len(batch[0]) for batch in _data.iter_batches(lambda: batches_of(2), SPECS, api="api", argument="data")]
    assert sizes == [2, 2, 1]


def test_input_specs_of_a_keras_model():
    a = keras.Input((3,), name="a")
    b = keras.Input((2, 2), name="b", dtype="int32")
    out = keras.layers.Concatenate()([a, keras.layers.Flatten()(keras.ops.cast(b, "float32"))])
    specs = _data.input_specs(keras.Model([a, b], out))
    assert specs == SPECS


@pytest.mark.parametrize(
    "data, error, match",
    [
        (None, TypeError, "api: data must be a numpy array of samples .*; got NoneType"),
        (3, TypeError, "api: data must be .*tf.data.Dataset.*; got int"),
        ({"a": A}, ValueError, r"api: data as a dict needs one entry per input of model 'm', keyed by input name: 'a', 'b'; missing \['b'\]"),
        (A, ValueError, r"api: model 'm' has 2 inputs \('a', 'b'\); data must give one array per input"),
        ([A, B[:3]], ValueError, r"api: data gives a different number of samples per input of model 'm'"),
        ([A[:, :2], B], ValueError, r"api: data has shape \(5, 2\) for input 'a', but model 'm' expects \(batch, 3\)"),
        ([A, B + 0.5], ValueError, "api: data has fractional values for input 'b'"),
        ([A.astype(str), B], ValueError, "api: data has dtype <U32 for input 'a'"),
        ([], ValueError, "api: data is empty"),
        ((A, B, Y, Y), TypeError, "api: model 'm' has 2 inputs"),
    ],
)
def test_errors_name_the_api_argument_and_forms(data, error, match):
    with pytest.raises(error, match=match):
        read(data)


def test_labels_for_some_batches_only_are_refused():
    with pytest.raises(ValueError, match="api: data gives labels for some batches and not for others"):
        read([([A[:2], B[:2]], Y[:2]), [A[2:], B[2:]]])
