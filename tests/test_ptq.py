"""Post-training quantization modes of `to_tflite`, checked with `inspect_tflite`."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.tools import flatbuffer_utils
from conftest import assert_unchanged, small_cnn, snapshot, toy_data, trained_small_cnn

from keras_compress import inspect_tflite, predict_tflite, to_tflite
from keras_compress.export import TFLiteInfo, converter

MODES = {
    "float": {},
    "dynamic": {"quantization": "dynamic"},
    "float16": {"quantization": "float16"},
    "int8": {"quantization": "int8"},
    "int8_io": {"quantization": "int8", "int8_io": True},
    "int16x8": {"quantization": "int16x8"},
}


@pytest.fixture(scope="module")
def trained():
    """A small CNN fitted for a few epochs, so its logits are not near ties."""
    model, x, y = trained_small_cnn(0, 128, epochs=3)
    return model, x, y


@pytest.fixture(scope="module")
def converted(trained):
    """Each mode's flatbuffer, converted once (lazily) for the module."""
    model, x, _ = trained
    cache = {}

    def get(mode):
        if mode not in cache:
            # Modes without calibration ignore representative_data.
            cache[mode] = to_tflite(model, representative_data=x, calibration_steps=16, **MODES[mode])
        return cache[mode]

    return get


def test_float_mode_computes_in_float32(converted):
    info = inspect_tflite(converted("float"))
    assert [op.type for op in info.ops] == [
        "CONV_2D", "MAX_POOL_2D", "CONV_2D", "RESHAPE", "FULLY_CONNECTED", "FULLY_CONNECTED"
    ]
    assert {op.dtype for op in info.ops} == {"float32"}
    assert info.float_compute_ops() == list(info.ops)


def test_dynamic_mode_has_int8_weights_and_float_activations(converted):
    info = inspect_tflite(converted("dynamic"))
    assert {op.dtype for op in info.ops} == {"float32"}
    # Dynamic range quantizes only weight tensors of >= 1024 values: here
    # dense_a's 72x16 kernel; the small conv kernels stay float.
    dense_a = next(op for op in info.ops if op.type == "FULLY_CONNECTED")
    assert dense_a.input_dtypes[:2] == ("float32", "int8")
    assert [t.dtype for t in info.inputs + info.outputs] == ["float32", "float32"]


def test_float16_mode_stores_float16_weights_dequantized_at_load(converted):
    info = inspect_tflite(converted("float16"))
    dequantize = [op for op in info.ops if op.type == "DEQUANTIZE"]
    assert len(dequantize) >= 4  # both conv kernels and both dense kernels, at least
    assert all(op.input_dtypes == ("float16",) and op.output_dtypes == ("float32",) for op in dequantize)
    compute = [op for op in info.ops if op.type != "DEQUANTIZE"]
    assert {op.dtype for op in compute} == {"float32"}


def test_int8_mode_computes_in_int8_with_float_io(trained, converted):
    model, x, _ = trained
    flatbuffer = converted("int8")
    info = inspect_tflite(flatbuffer)
    assert info.float_compute_ops() == []
    assert (info.ops[0].type, info.ops[0].input_dtypes, info.ops[0].dtype) == ("QUANTIZE", ("float32",), "int8")
    assert (info.ops[-1].type, info.ops[-1].input_dtypes, info.ops[-1].dtype) == ("DEQUANTIZE", ("int8",), "float32")
    counts = info.op_counts()
    assert counts[("CONV_2D", "int8")] == 2 and counts[("FULLY_CONNECTED", "int8")] == 2
    assert [(t.dtype, t.scale) for t in info.inputs + info.outputs] == [("float32", None)] * 2
    conv = next(op for op in info.ops if op.type == "CONV_2D")
    assert conv.input_dtypes == ("int8", "int8", "int32")  # int32 bias
    agree = np.mean(predict_tflite(flatbuffer, x).argmax(-1) == model.predict(x, verbose=0).argmax(-1))
    assert agree >= 0.9


def test_int8_io_has_int8_inputs_and_outputs(trained, converted):
    model, x, _ = trained
    flatbuffer = converted("int8_io")
    info = inspect_tflite(flatbuffer)
    assert not {"QUANTIZE", "DEQUANTIZE"} & {op.type for op in info.ops}
    assert info.float_compute_ops() == []
    for tensor in info.inputs + info.outputs:
        assert tensor.dtype == "int8" and tensor.scale > 0 and -128 <= tensor.zero_point <= 127
    details = Interpreter(model_content=flatbuffer).get_input_details()[0]
    assert details["quantization"] == pytest.approx((info.inputs[0].scale, info.inputs[0].zero_point))
    agree = np.mean(predict_tflite(flatbuffer, x).argmax(-1) == model.predict(x, verbose=0).argmax(-1))
    assert agree >= 0.9


def test_int16x8_mode_has_int16_activations_and_int8_weights(converted):
    info = inspect_tflite(converted("int16x8"))
    assert info.float_compute_ops() == []
    compute = [op for op in info.ops if op.type not in ("QUANTIZE", "DEQUANTIZE")]
    assert {op.dtype for op in compute} == {"int16"}
    for op in compute:
        if op.type in ("CONV_2D", "FULLY_CONNECTED"):
            assert op.input_dtypes[:2] == ("int16", "int8"), op


def _batches(x, size, dtype="float32"):
    for start in range(0, len(x), size):
        yield x[start : start + size].astype(dtype)


def _endless_samples(x):
    """A generator function yielding single samples forever, in TFLite's own
    `[x]` convention: reading must stop at calibration_steps."""
    while True:
        for sample in x:
            yield [sample]


FORMS = {
    "(x, y)": lambda x, y: (x, y),
    "(x, y, sample_weight)": lambda x, y: (x, y, np.ones(len(y))),
    "tf.data batched (x, y)": lambda x, y: tf.data.Dataset.from_tensor_slices((x, y)).batch(5),
    "tf.data unbatched x": lambda x, y: tf.data.Dataset.from_tensor_slices(x),
    "generator of float64 batches": lambda x, y: _batches(x, 5, "float64"),
    "callable": lambda x, y: lambda: _endless_samples(x),
    "list of samples": lambda x, y: list(x[:20]),
}


@pytest.fixture(scope="module")
def calibrated_on_numpy():
    """A model, its data, and its int8 file calibrated on the first 16 samples."""
    keras.utils.set_random_seed(0)
    model = small_cnn()
    x, y = toy_data(24)
    return model, x, y, to_tflite(model, quantization="int8", representative_data=x, calibration_steps=16)


@pytest.mark.parametrize("form", list(FORMS))
def test_every_representative_data_form_calibrates_like_numpy(calibrated_on_numpy, form):
    model, x, y, expected = calibrated_on_numpy
    data = FORMS[form](x, y)
    assert to_tflite(model, quantization="int8", representative_data=data, calibration_steps=16) == expected


def test_calibration_feeds_a_fixed_batch_larger_than_one():
    model = small_cnn()
    x, _ = toy_data(10)  # not a multiple of 4: the last batch is padded
    flatbuffer = to_tflite(model, quantization="int8", representative_data=x, batch_size=4)
    assert inspect_tflite(flatbuffer).inputs[0].shape == (4, 12, 12, 1)
    np.testing.assert_allclose(predict_tflite(flatbuffer, x), keras.ops.convert_to_numpy(model(x)), atol=0.05)


INPUT = r"for its input 'input_layer\w*'"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"representative_data": np.zeros((4, 28, 28, 1))}, ValueError,
         r"representative_data has shape \(4, 28, 28, 1\), but model 'cnn' expects \(batch, 12, 12, 1\) " + INPUT),
        ({"representative_data": (np.zeros((12, 12)) for _ in range(3))}, ValueError,
         r"yielded an element of shape \(12, 12\), but model 'cnn' expects \(batch, 12, 12, 1\) "
         r"or single samples \(12, 12, 1\) " + INPUT),
        ({"representative_data": [np.zeros((28, 28, 1))]}, ValueError,
         r"yielded an element of shape \(28, 28, 1\), but model 'cnn' expects \(batch, 12, 12, 1\)"),
        ({"representative_data": np.full((4, 12, 12, 1), "a")}, ValueError,
         r"has dtype <U1, but model 'cnn' expects numbers for its input 'input_layer\w*' \(shape \(batch, 12, 12, 1\)"),
        ({"representative_data": np.zeros((0, 12, 12, 1))}, ValueError, "representative_data is empty"),
        ({"representative_data": iter([])}, ValueError, "representative_data is empty"),
        ({"representative_data": None}, ValueError, "quantization='int8' needs representative_data"),
        ({"representative_data": 3}, TypeError, r"representative_data must be a numpy array .*; got int"),
        ({"representative_data": "x.npy"}, TypeError, "representative_data must be a numpy array"),
        ({"representative_data": {"x": np.zeros((4, 12, 12, 1))}}, ValueError,
         r"representative_data as a dict needs one entry per input of model 'cnn', keyed by input "
         r"name: 'input_layer\w*'; missing \['input_layer\w*'\]; unknown keys \['x'\]"),
        ({"representative_data": (1, 2, 3, 4)}, TypeError, r"must be \(x,\), \(x, y\) or \(x, y, sample_weight\)"),
        ({"quantization": "int16x8"}, ValueError, "quantization='int16x8' needs representative_data"),
        ({"quantization": "dynamic", "int8_io": True}, ValueError,
         "int8_io=True needs quantization='int8'.*got quantization='dynamic'"),
        ({"quantization": None, "int8_io": True}, ValueError, "int8_io=True needs quantization='int8'"),
        ({"int8_io": 1}, TypeError, "int8_io must be True or False"),
        ({"quantization": "INT8"}, ValueError,
         r"quantization must be one of \('auto', None, 'dynamic', 'float16', 'int8', 'int16x8'\), got 'INT8'"),
    ],
)
def test_bad_quantization_arguments_fail_before_converting(monkeypatch, kwargs, error, match):
    model = small_cnn()
    before = snapshot(model)
    monkeypatch.setattr(converter, "_export_saved_model", lambda *a: pytest.fail("converted"))
    kwargs = {"quantization": "int8", **kwargs}
    with pytest.raises(error, match=match):
        to_tflite(model, **kwargs)
    assert_unchanged(model, before)


def test_a_single_array_for_a_multi_input_model_names_the_inputs():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])), name="two")
    with pytest.raises(ValueError, match=r"model 'two' has 2 inputs \('a', 'b'\); representative_data must "
                       r"give one array per input, as a dict by input name or a list in that order; "
                       r"got a single array of shape \(4, 3\)"):
        to_tflite(model, quantization="int8", representative_data=np.zeros((4, 3)))


class FakeQuant(keras.layers.Layer):
    """Stands in for a QAT layer: learned-range fake quantization, marked."""

    _kc_quantization_aware = True

    def call(self, x):
        return tf.quantization.fake_quant_with_min_max_args(x, -4.0, 4.0)


class FakeQuantDense(keras.layers.Dense):
    _kc_quantization_aware = True

    def call(self, x):
        kernel = tf.quantization.fake_quant_with_min_max_args(self.kernel, -1.0, 1.0, narrow_range=True)
        return tf.quantization.fake_quant_with_min_max_args(x @ kernel + self.bias, -4.0, 4.0)


def test_quantization_aware_models_need_no_representative_data():
    assert not converter._is_quantization_aware(small_cnn())
    inner = keras.Sequential([keras.Input((8,)), FakeQuantDense(4)])  # found in a nested model
    model = keras.Sequential([keras.Input((8,)), FakeQuant(), inner])
    assert converter._is_quantization_aware(model)
    info = inspect_tflite(to_tflite(model, quantization="int8"))
    assert info.op_counts() == {("QUANTIZE", "int8"): 1, ("FULLY_CONNECTED", "int8"): 1, ("DEQUANTIZE", "float32"): 1}
    info = inspect_tflite(to_tflite(model, quantization="int8", int8_io=True))
    assert [op.type for op in info.ops] == ["FULLY_CONNECTED"] and info.inputs[0].dtype == "int8"


def dense_model():
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(6), keras.layers.Dense(2)], name="mlp")


def test_inspect_a_dense_model(tmp_path):
    flatbuffer = to_tflite(dense_model())
    path = tmp_path / "mlp.tflite"
    path.write_bytes(flatbuffer)
    info = inspect_tflite(flatbuffer)
    assert isinstance(info, TFLiteInfo) and info == inspect_tflite(path)
    assert [(op.index, op.type) for op in info.ops] == [(0, "FULLY_CONNECTED"), (1, "FULLY_CONNECTED")]
    assert info.op_counts() == {("FULLY_CONNECTED", "float32"): 2}
    assert info.size_bytes == len(flatbuffer)
    assert info.tensor_count == len(Interpreter(model_content=flatbuffer).get_tensor_details())
    assert [(t.shape, t.dtype, t.scale, t.zero_point) for t in info.inputs] == [((1, 8), "float32", None, None)]
    assert [(t.shape, t.dtype) for t in info.outputs] == [((1, 2), "float32")]
    assert info.subgraph_count == 1
    text = str(info)
    assert text == info.summary()
    assert f"{len(flatbuffer):,} bytes" in text and text.count("FULLY_CONNECTED") == 2


def test_inspect_dynamic_batch_and_custom_ops():
    flatbuffer = to_tflite(dense_model(), batch_size=None)
    assert inspect_tflite(flatbuffer).inputs[0].shape == (None, 8)
    # A custom op is named by its custom code, not "CUSTOM".
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    code = model.operatorCodes[model.subgraphs[0].operators[0].opcodeIndex]
    code.builtinCode = code.deprecatedBuiltinCode = flatbuffer_utils.BuiltinOperator.CUSTOM
    code.customCode = b"MyOp"
    custom = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    assert {op.type for op in inspect_tflite(custom).ops} == {"MyOp"}


def test_inspect_refuses_what_is_not_tflite(tmp_path):
    bad = tmp_path / "notes.tflite"
    bad.write_text("hello, this is not a flatbuffer")
    with pytest.raises(ValueError, match="is not a TFLite flatbuffer"):
        inspect_tflite(bad)
    with pytest.raises(ValueError, match="No TFLite file at"):
        inspect_tflite(tmp_path / "missing.tflite")
    with pytest.raises(ValueError, match="Cannot read the TFLite flatbuffer"):
        inspect_tflite(to_tflite(dense_model())[:200])
    with pytest.raises(TypeError, match="Expected TFLite flatbuffer bytes or a .tflite path"):
        inspect_tflite(12)


def test_int16x8_layer_normalization_runs_in_litert_and_beats_int8():
    inputs = keras.Input((16, 32))
    outputs = keras.layers.Dense(4, name="head")(keras.layers.LayerNormalization(name="norm")(inputs))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    model.get_layer("norm").set_weights([rng.uniform(0.5, 2, 32), rng.normal(size=32)])
    x = rng.normal(2, 3, (64, 16, 32)).astype("float32")
    errors = {}
    for mode in ("int8", "int16x8"):
        flatbuffer = to_tflite(model, quantization=mode, representative_data=x)
        info = inspect_tflite(flatbuffer)
        assert info.float_compute_ops() == []
        # LiteRT has no int16 SQUARED_DIFFERENCE: the int16x8 export squares by MUL.
        assert mode == "int8" or "SQUARED_DIFFERENCE" not in {op.type for op in info.ops}
        errors[mode] = np.abs(predict_tflite(flatbuffer, x) - model.predict(x, verbose=0)).max()
    assert errors["int16x8"] < errors["int8"] / 3


def test_int16x8_refuses_integer_inputs_before_converting():
    tokens = keras.Input((8,), dtype="int32", name="tokens")
    x = keras.layers.Flatten()(keras.layers.Embedding(20, 4)(tokens))
    model = keras.Model(tokens, keras.layers.Dense(2)(x))
    data = np.random.default_rng(0).integers(0, 20, (16, 8)).astype("int32")
    with pytest.raises(ValueError, match=r"int16x8' cannot convert model .*input 'tokens' \(int32\) is not float"):
        to_tflite(model, quantization="int16x8", representative_data=data)
    to_tflite(model, quantization="int8", representative_data=data)  # int8 takes it
