"""Recurrent layers through integer conversion: exported unrolled (same math,
no WHILE loop, int8 ops), and a converter crash on a loop that cannot be
unrolled contained in a child process."""

import logging
import types
import warnings

import keras
import numpy as np
import pytest
from architectures import argmax_agreement, gru_classifier, lstm_classifier, synthetic_data, train_briefly
from conftest import assert_unchanged, small_cnn, snapshot, toy_data

from keras_compress import inspect_tflite, predict_tflite, to_tflite
from keras_compress.export import FloatOpsWarning, conversion, converter, isolation
from keras_compress.export.rewrites import conversion_model
from keras_compress.export.signature import model_inputs
from keras_compress.export.splits import integer_splits

L = keras.layers


@pytest.mark.parametrize("build", [lstm_classifier, gru_classifier], ids=["lstm", "gru"])
def test_recurrent_classifiers_convert_to_int8_unrolled(build, caplog):
    keras.utils.set_random_seed(0)
    model = build()
    x, y = synthetic_data(model, n=128)
    train_briefly(model, x, y)
    before = snapshot(model)
    with caplog.at_level(logging.INFO, logger="keras_compress.export.converter"), warnings.catch_warnings():
        warnings.simplefilter("error", FloatOpsWarning)
        # In this process: before the rewrite, TensorFlow's calibrator killed it here.
        flatbuffer = to_tflite(model, quantization="int8", representative_data=x, isolate=False)
    info = inspect_tflite(flatbuffer)
    assert info.subgraph_count == 1 and "WHILE" not in {op.type for op in info.ops}
    assert info.float_compute_ops() == []
    assert {"FULLY_CONNECTED", "LOGISTIC", "TANH", "MUL"} <= {op.type for op in info.ops}
    assert "exported unrolled over its 12 time steps" in caplog.text
    assert argmax_agreement(model.predict(x, verbose=0), predict_tflite(flatbuffer, x)) >= 0.9
    assert_unchanged(model, before)
    assert model.layers[1].unroll is False


@pytest.fixture(scope="module")
def trained_lstm():
    keras.utils.set_random_seed(0)
    model = lstm_classifier()
    x, y = synthetic_data(model, n=128)
    train_briefly(model, x, y)
    return model, x


def test_a_float_split_becomes_the_int8_split_tensorflow_writes_in_other_runs(trained_lstm, tmp_path):
    """At an unrolled LSTM's first step the forget gate multiplies a zero
    cell state and is never read. From the same calibrated model, TensorFlow
    2.21's quantizer makes that step's SPLIT int8 in some runs and leaves it
    float between a DEQUANTIZE and QUANTIZEs in others. The rewrite turns
    the second file into the first, byte for byte."""
    model, x = trained_lstm
    exported, _ = conversion_model(model)
    inputs, pack = model_inputs(exported)
    names = converter._export_saved_model(exported, str(tmp_path), inputs, pack, 1)
    options = dict(quantization="int8", input_keys=names["input_keys"], batch_size=1, int8_io=False,
                   encodings=[False], calibrate_only=True)
    calibrated = conversion.convert(str(tmp_path), options, [x[:64]])
    variants = {}
    for _ in range(40):
        flatbuffer = conversion.quantize_calibrated(calibrated, int8_io=False, float_nodes=[], sparse=False)
        variants[bool(inspect_tflite(flatbuffer).float_compute_ops())] = flatbuffer
        if len(variants) == 2:
            break
    assert len(variants) == 2, "the quantizer gave one form only"
    assert [op.type for op in inspect_tflite(variants[True]).float_compute_ops()] == ["SPLIT"]
    fixed, count = integer_splits(variants[True])
    assert count == 1 and fixed == variants[False]
    np.testing.assert_array_equal(predict_tflite(fixed, x), predict_tflite(variants[True], x))
    assert integer_splits(fixed) == (fixed, 0)


def test_converting_an_lstm_again_gives_the_same_bytes(trained_lstm):
    model, x = trained_lstm
    files = {to_tflite(model, quantization="int8", representative_data=x, calibration_steps=32) for _ in range(4)}
    assert len(files) == 1


def test_unrolling_keeps_the_math_of_bidirectional_and_stacked_layers():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((7, 4), name="sequence")
    x = L.Bidirectional(L.LSTM(5, return_sequences=True), name="bidirectional")(inputs)
    x = L.SimpleRNN(6, name="simple")(x)
    model = keras.Model(inputs, L.Dense(3, name="logits")(x), name="stacked")
    clone, notes = conversion_model(model)
    assert [n.split(":")[0] for n in notes] == ["layer 'bidirectional' (Bidirectional)", "layer 'simple' (SimpleRNN)"]
    assert clone.get_layer("bidirectional").forward_layer.unroll and clone.get_layer("simple").unroll
    assert not model.get_layer("simple").unroll
    x = np.random.default_rng(0).normal(size=(16, 7, 4)).astype("float32")
    np.testing.assert_allclose(clone.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    info = inspect_tflite(to_tflite(model, quantization="int8", representative_data=x))
    assert info.subgraph_count == 1 and info.float_compute_ops() == []


def test_sequences_of_unknown_length_are_not_unrolled():
    inputs = keras.Input((None, 4))
    model = keras.Model(inputs, L.GRU(3)(inputs))
    assert conversion_model(model) == (model, [])


def dynamic_lstm():
    inputs = keras.Input((None, 8), name="sequence")
    x = L.LSTM(16, name="lstm")(inputs)
    return keras.Model(inputs, L.Dense(3, name="logits")(x), name="dynamic")


def test_a_calibrator_crash_becomes_an_error_naming_the_signal_and_the_layer():
    """TensorFlow 2.21's calibrator dies with SIGSEGV on this WHILE loop (a
    sequence of unknown length cannot be unrolled); "auto" converts it in a
    child process, and this one lives on to raise."""
    model = dynamic_lstm()
    before = snapshot(model)
    x = np.random.default_rng(0).normal(size=(16, 12, 8)).astype("float32")
    with pytest.raises(RuntimeError) as error:
        to_tflite(model, quantization="int8", representative_data=x, calibration_steps=4)
    message = str(error.value)
    assert "TensorFlow's TFLite converter crashed (SIGSEGV) while converting model 'dynamic'" in message
    assert "control flow from layer 'lstm' (LSTM, While)" in message
    assert "fixed number of time steps" in message
    assert_unchanged(model, before)


def test_the_child_process_reports_any_crash(monkeypatch, tmp_path):
    """The isolation mechanism itself, on a child that aborts: the real
    launcher and job files, a conversion module whose run_job calls abort."""
    script = tmp_path / "aborting_conversion.py"
    script.write_text("import os\n\ndef run_job(directory):\n    os.abort()\n")
    fake = types.SimpleNamespace(
        __file__=str(script), write_job=conversion.write_job, read_result=conversion.read_result
    )
    monkeypatch.setattr(isolation, "conversion", fake)
    with pytest.raises(RuntimeError, match=r"TensorFlow's TFLite converter crashed \(SIGABRT\) while converting "
                                           r"model 'cnn' with quantization=None, in a child process"):
        to_tflite(small_cnn(), isolate=True)


def test_a_child_conversion_gives_the_same_bytes():
    model = small_cnn()
    x, _ = toy_data(16)
    assert to_tflite(model, quantization="int8", representative_data=x, isolate=True) == to_tflite(
        model, quantization="int8", representative_data=x, isolate=False
    )


def test_isolate_is_checked():
    with pytest.raises(ValueError, match=r"isolate must be 'auto', True or False, got 1"):
        to_tflite(small_cnn(), isolate=1)
    with pytest.raises(ValueError, match=r"isolate must be 'auto', True or False, got 'always'"):
        to_tflite(small_cnn(), isolate="always")
