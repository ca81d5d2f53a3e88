"""Quantization-aware training on the model families people ship
(tests/architectures.py): every compute op of the int8 file is int8 without
representative data, and the file agrees with the trained Keras model."""

import warnings

import keras
import numpy as np
import pytest
from architectures import FAMILIES, argmax_agreement, synthetic_data, train_briefly

import keras_compress as kc
from keras_compress.quantization import SparsityPreservingWrapper, quantize_model

HELD_OUT = 200


def _split(v, n):
    if isinstance(v, list):
        return [a[:n] for a in v], [a[n:] for a in v]
    return v[:n], v[n:]


def _trained_qat(family):
    """(float model, QAT model after one epoch, held-out inputs)."""
    keras.utils.set_random_seed(0)
    model = FAMILIES[family]()
    x, y = synthetic_data(model, n=256 + HELD_OUT)
    (x_train, x_test), (y_train, _) = _split(x, 256), _split(y, 256)
    train_briefly(model, x_train, y_train)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qat = quantize_model(model)
    train_briefly(qat, x_train, y_train, epochs=1)
    return model, qat, x_test, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def _agreement(qat, flatbuffer, x):
    keras_out = qat.predict(x, verbose=0)
    tflite_out = kc.predict_tflite(flatbuffer, x)
    if not isinstance(keras_out, list):
        keras_out, tflite_out = [keras_out], [tflite_out]
    return min(argmax_agreement(a, b) for a, b in zip(keras_out, tflite_out))


@pytest.mark.parametrize(
    "family",
    [
        "transformer",
        "embedding_text",
        "conv1d",
        "unet",
        "two_in_two_out",
        "raw_ops",
        pytest.param("frozen_backbone", marks=pytest.mark.slow),
    ],
)
def test_qat_file_is_all_int8_without_representative_data_and_agrees_with_keras(family):
    _, qat, x_test, warned = _trained_qat(family)
    assert warned == []  # every layer and op has an int8 rule
    flatbuffer = kc.to_tflite(qat, quantization="int8")
    info = kc.inspect_tflite(flatbuffer)
    assert info.float_compute_ops() == [], [(op.type, op.dtype) for op in info.float_compute_ops()]
    if family != "frozen_backbone":
        # The randomly initialized MobileNetV2 base amplifies one-step int8
        # differences layer after layer (post-training int8 agrees with its
        # float model on 55% only), so its head's argmax is not a fair bar.
        assert _agreement(qat, flatbuffer, x_test) >= 0.995


@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_recurrent_layers_stay_float_with_the_reason_and_the_rest_is_int8(family):
    model, qat, x_test, warned = _trained_qat(family)
    name = family
    assert len(warned) == 1 and f"'{name}' ({type(model.get_layer(name)).__name__}): recurrent layer" in warned[0]
    assert not any(isinstance(l, SparsityPreservingWrapper) for l in qat.layers)  # nothing pruned
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # to_tflite names the float recurrent ops too
        flatbuffer = kc.to_tflite(qat, quantization="int8")
    ops = kc.inspect_tflite(flatbuffer).ops
    assert sum(op.type == "FULLY_CONNECTED" and op.dtype == "int8" for op in ops) == 2  # hidden, logits
    keras_out, tflite_out = qat.predict(x_test, verbose=0), kc.predict_tflite(flatbuffer, x_test)
    assert np.abs(keras_out - tflite_out).max() < 0.1 * np.abs(keras_out).max()
