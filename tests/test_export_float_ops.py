"""What an integer conversion leaves float: read in every subgraph, mapped to
Keras layers, warned about (or refused with `strict=True`), kept float on
purpose with `float_layers`; and the LayerNormalization rewrite that leaves
nothing float in a transformer block."""

import logging
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from architectures import argmax_agreement, synthetic_data, train_briefly, transformer_block
from conftest import trained_small_cnn, assert_unchanged, compile_for_test, small_cnn, snapshot, toy_data

from keras_compress import inspect_tflite, predict_tflite, quantization, to_tflite
from keras_compress.export import FloatOpsWarning, converter, layer_candidates
from keras_compress.export.rewrites import NegFreeLayerNormalization

L = keras.layers


def convert_recording(model, **kwargs):
    """The flatbuffer and the FloatOpsWarnings that converting it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flatbuffer = to_tflite(model, **kwargs)
    return flatbuffer, [str(w.message) for w in caught if issubclass(w.category, FloatOpsWarning)]


# -- naming -----------------------------------------------------------------


def nested_model():
    """outer > backbone > (bconv, brelu), plus 'dense' and 'dense_1' side by side."""
    inner_in = keras.Input((6, 6, 1))
    x = L.Conv2D(2, 3, name="bconv")(inner_in)
    backbone = keras.Model(inner_in, L.ReLU(name="brelu")(x), name="backbone")
    inputs = keras.Input((6, 6, 1), name="image")
    x = L.Flatten(name="flat")(backbone(inputs))
    x = L.Dense(4, name="dense")(x)
    x = L.Dense(4, name="dense_1")(keras.ops.relu(x))
    return keras.Model(inputs, x, name="outer")


@pytest.mark.parametrize(
    "tensor, expected",
    [
        ("outer_1/backbone_1/brelu_1/Relu;outer_1/backbone_1/bconv_1/convolution", ["brelu", "bconv"]),
        ("outer_3/backbone_2/bconv/BiasAdd", ["bconv"]),
        # 'dense_1' is 'dense' in its suffixed scope, or 'dense_1' itself.
        ("outer_1/dense_1/MatMul", ["dense", "dense_1"]),
        ("outer_1/dense_1_2/MatMul", ["dense_1"]),
        ("outer_1/Relu", []),  # a Keras op applied in the graph
        ("outer_1/backbone_1/Relu", []),
        ("tfl.quantize", []),
        ("StatefulPartitionedCall_1:0", []),
        ("other_1/dense_1/MatMul", []),  # not this model's scope
    ],
)
def test_layer_candidates_reads_keras_scopes(tensor, expected):
    assert layer_candidates(tensor, nested_model()) == expected


def test_layer_candidates_maps_every_op_of_a_converted_model():
    model = nested_model()
    expected = {"CONV_2D": {"bconv", "brelu"}, "FULLY_CONNECTED": {"dense", "dense_1"}}
    info = inspect_tflite(to_tflite(model))
    for op in info.ops:
        if op.type in expected and op.name != "dense_1":  # the output tensor is named after its layer
            assert set(layer_candidates(op.name, model)) <= expected[op.type] and layer_candidates(op.name, model), op
    with pytest.raises(TypeError, match="tensor_name must be a str"):
        layer_candidates(3, model)
    with pytest.raises(TypeError, match="model must be a keras.Model"):
        layer_candidates("outer_1/dense_1/MatMul", "outer")


# -- every subgraph ----------------------------------------------------------


def dynamic_lstm():
    """An LSTM over a sequence of unknown length: traced to a WHILE loop."""
    inputs = keras.Input((None, 4), name="sequence")
    x = L.LSTM(8, name="lstm")(inputs)
    return keras.Model(inputs, L.Dense(3, name="logits")(x), name="recurrent")


def test_inspect_reads_the_ops_of_control_flow_bodies():
    info = inspect_tflite(to_tflite(dynamic_lstm()))
    assert info.subgraph_count == 3 and info.subgraph_names[0] == "main"
    assert [op.subgraph for op in info.ops] == sorted(op.subgraph for op in info.ops)
    body = [op for op in info.ops if op.subgraph == 2]
    assert {"LOGISTIC", "TANH", "MUL"} <= {op.type for op in body}
    assert "WHILE" in {op.type for op in info.ops if op.subgraph == 0}
    float_types = {(op.subgraph, op.type) for op in info.float_compute_ops()}
    assert (2, "LOGISTIC") in float_types and (0, "FULLY_CONNECTED") in float_types
    assert all("lstm" in op.name for op in body if op.type == "LOGISTIC")
    assert "Subgraph 2" in info.summary()


class FakeQuant(L.Layer):
    """Stands in for a QAT layer: learned-range fake quantization, marked."""

    _kc_quantization_aware = True

    def call(self, x):
        return tf.quantization.fake_quant_with_min_max_args(x, -4.0, 4.0)


def test_float_ops_in_a_while_body_are_reported_with_the_layer():
    inputs = keras.Input((None, 4), name="sequence")
    x = FakeQuant(name="fq_in")(inputs)
    x = L.LSTM(8, name="lstm")(x)
    x = FakeQuant(name="fq_out")(L.Dense(3, name="logits")(FakeQuant(name="fq_mid")(x)))
    model = keras.Model(inputs, x, name="qat_recurrent")
    _, messages = convert_recording(model)  # "auto": int8, as the model is quantization-aware
    (message,) = messages
    assert "layer 'lstm' (LSTM)" in message
    assert "inside the body of a WHILE op (control flow), which TFLite's quantizer does not quantize" in message
    assert "fixed number of time steps" in message


# -- the warning, strict=True -----------------------------------------------


class Negate(L.Layer):
    def call(self, x):
        return -x


def negating_model():
    inputs = keras.Input((8,), name="x")
    x = L.Dense(8, name="hidden")(inputs)
    x = Negate(name="flip")(x)
    return keras.Model(inputs, L.Dense(3, name="logits")(x), name="negating")


def test_leftover_float_ops_are_named_with_layer_count_and_reason():
    model = negating_model()
    x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    flatbuffer, messages = convert_recording(model, quantization="int8", representative_data=x)
    (message,) = messages
    assert "to_tflite: 1 op(s) of model 'negating' stay float in the quantization='int8' file" in message
    assert "layer 'flip' (Negate): 1 NEG; TFLite has no integer kernel for NEG" in message
    assert [op.type for op in inspect_tflite(flatbuffer).float_compute_ops()] == ["NEG"]
    # Nothing to say about a fully int8 file.
    assert convert_recording(small_cnn(), quantization="int8", representative_data=toy_data(8)[0])[1] == []


def test_strict_raises_instead_and_writes_no_file(tmp_path):
    model = negating_model()
    before = snapshot(model)
    x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    path = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match=r"(?s)1 NEG; TFLite has no integer kernel for NEG.*strict=False"):
        to_tflite(model, path, quantization="int8", representative_data=x, strict=True)
    assert not path.exists()
    assert_unchanged(model, before)
    with pytest.raises(TypeError, match="strict must be True or False"):
        to_tflite(model, strict="yes")


class Halve(L.Layer):
    def call(self, x):
        return x * 0.5


def test_uncalibrated_quantization_aware_ops_say_why():
    inputs = keras.Input((8,), name="x")
    x = FakeQuant(name="fq_in")(inputs)
    x = Halve(name="halve")(L.Dense(8, activation="tanh", name="hidden")(x))  # no fake quant: no range
    x = FakeQuant(name="fq_out")(L.Dense(3, name="logits")(FakeQuant(name="fq_mid")(x)))
    model = keras.Model(inputs, x, name="partly_aware")
    flatbuffer, (message,) = convert_recording(model)
    assert "no quantization-aware layer gives it an int8 range, and no representative_data calibrated it" in message
    assert "layer 'hidden' (Dense)" in message
    assert inspect_tflite(flatbuffer).float_compute_ops()


# -- quantization="auto" -----------------------------------------------------


def test_quantization_aware_models_convert_to_int8_by_default():
    keras.utils.set_random_seed(0)
    x, y = toy_data(64)
    model = compile_for_test(small_cnn())
    model.fit(x, y, epochs=1, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qat = compile_for_test(quantization.quantize_model(model))
    qat.fit(x, y, epochs=1, verbose=0)
    default, messages = convert_recording(qat)
    info = inspect_tflite(default)
    assert messages == [] and info.float_compute_ops() == []
    assert info.op_counts()[("CONV_2D", "int8")] == 2
    assert default == to_tflite(qat, quantization="int8")
    float_file = to_tflite(qat, quantization=None)
    assert ("CONV_2D", "float32") in inspect_tflite(float_file).op_counts()
    assert to_tflite(model) == to_tflite(model, quantization=None)  # a float model stays float


# -- float_layers ------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_cnn():
    model, x, y = trained_small_cnn(0, 96, epochs=3)
    return model, x


def test_float_layers_stay_float_and_the_rest_is_quantized(trained_cnn):
    model, x = trained_cnn
    flatbuffer, messages = convert_recording(
        model, quantization="int8", representative_data=x, float_layers=["dense_a"]
    )
    assert messages == []  # kept float on purpose: not reported
    info = inspect_tflite(flatbuffer)
    compute = [op for op in info.ops if op.type not in ("QUANTIZE", "DEQUANTIZE")]
    assert [op.type for op in info.float_compute_ops()] == ["FULLY_CONNECTED"]
    assert "dense_a" in info.float_compute_ops()[0].name
    assert {op.dtype for op in compute if op not in info.float_compute_ops()} == {"int8"}
    assert info.float_compute_ops()[0].input_dtypes[:2] == ("float32", "float32")
    ref = model.predict(x, verbose=0)
    assert argmax_agreement(ref, predict_tflite(flatbuffer, x)) >= 0.9


def test_float_layers_can_name_the_output_layer_and_a_nested_model():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((8,)), L.Dense(8, activation="relu", name="inner_dense")], name="inner")
    inputs = keras.Input((8,), name="x")
    model = keras.Model(inputs, L.Dense(3, name="logits")(inner(L.Dense(8, name="first")(inputs))), name="nest")
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    for names, float_ones in ((["logits"], 1), (["inner"], 1), (["inner", "logits"], 2)):
        flatbuffer, messages = convert_recording(model, quantization="int8", representative_data=x, float_layers=names)
        assert messages == []
        floats = inspect_tflite(flatbuffer).float_compute_ops()
        assert [op.type for op in floats] == ["FULLY_CONNECTED"] * float_ones, names


def test_float_layers_names_one_layer_when_scopes_are_ambiguous():
    # Keras's second entry into layer "dense"'s scope is "dense_1", the name of
    # the next layer too: only the layer named stays float.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), L.Dense(16, activation="relu", name="dense"),
                              L.Dense(3, name="dense_1")], name="ambiguous")
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    for name, dtypes in (("dense_1", ["int8", "float32"]), ("dense", ["float32", "int8"])):
        info = inspect_tflite(to_tflite(model, quantization="int8", representative_data=x, float_layers=[name]))
        # The two FULLY_CONNECTED ops in execution order: layer "dense", then "dense_1".
        assert [op.dtype for op in info.ops if op.type == "FULLY_CONNECTED"] == dtypes, name


def test_float_layers_of_a_quantization_aware_model_are_refused(monkeypatch):
    inputs = keras.Input((8,), name="x")
    x = FakeQuant(name="fq_out")(L.Dense(3, name="logits")(FakeQuant(name="fq_in")(inputs)))
    model = keras.Model(inputs, x, name="aware")
    before = snapshot(model)
    monkeypatch.setattr(converter, "_export_saved_model", lambda *a: pytest.fail("converted"))
    with pytest.raises(ValueError, match=r"float_layers cannot keep layers of model 'aware' float: it is "
                                         r"quantization-aware"):
        to_tflite(model, representative_data=np.zeros((4, 8), "float32"), float_layers=["logits"])
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(float_layers=["dense_z"]), ValueError,
         r"float_layers names \['dense_z'\], which are not layers of model 'cnn'. Its layers are: "
         r"\['conv_a', 'pool', 'conv_b', 'flatten', 'dense_a', 'logits'\]"),
        (dict(float_layers="dense_a"), TypeError, r"float_layers must be a list of layer names, got 'dense_a'"),
        (dict(float_layers=[3]), TypeError, r"float_layers must hold layer names \(str\)"),
        (dict(float_layers=["dense_a"], quantization="dynamic"), ValueError,
         r"float_layers keeps layers float in an int8 file; it needs quantization='int8', "
         r"got quantization='dynamic'"),
        (dict(float_layers=["dense_a"], quantization="int16x8"), ValueError,
         r"got quantization='int16x8' \(TensorFlow's int16x8 quantizer cannot leave chosen ops float\)"),
        (dict(float_layers=["dense_a"], representative_data=None), ValueError, r"float_layers needs representative_data"),
    ],
)
def test_bad_float_layers_are_refused_before_converting(monkeypatch, kwargs, error, match):
    model = small_cnn()
    before = snapshot(model)
    monkeypatch.setattr(converter, "_export_saved_model", lambda *a: pytest.fail("converted"))
    kwargs = {"quantization": "int8", "representative_data": toy_data(8)[0], **kwargs}
    with pytest.raises(error, match=match):
        to_tflite(model, **kwargs)
    assert_unchanged(model, before)


# -- LayerNormalization --------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [dict(), dict(axis=[1, 2]), dict(center=False), dict(scale=False), dict(epsilon=0.1)],
    ids=["default", "two axes", "no beta", "no gamma", "epsilon"],
)
def test_the_neg_free_layer_normalization_computes_the_same(config):
    layer = L.LayerNormalization(**config)
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(4, 5, 6)).astype("float32")
    expected = layer(x)
    rng = np.random.default_rng(2)
    layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.weights])
    expected = keras.ops.convert_to_numpy(layer(x))
    rewritten = NegFreeLayerNormalization.from_config(layer.get_config())
    rewritten.build(x.shape)
    rewritten.set_weights(layer.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(rewritten(x)), expected, rtol=1e-5, atol=1e-5)


def test_a_transformer_block_converts_to_int8_without_float_ops(caplog, monkeypatch):
    keras.utils.set_random_seed(0)
    model = transformer_block()
    x, y = synthetic_data(model, n=256)
    x_test, _ = synthetic_data(model, n=256, seed=100)
    train_briefly(model, x, y)
    before = snapshot(model)
    with caplog.at_level(logging.INFO, logger="keras_compress.export.converter"):
        flatbuffer, messages = convert_recording(model, quantization="int8", representative_data=x)
    assert messages == [] and inspect_tflite(flatbuffer).float_compute_ops() == []
    assert "NEG" not in {op.type for op in inspect_tflite(flatbuffer).ops}
    assert "layer 'attention_norm' (LayerNormalization): exported as x * inv + (beta - mean * inv)" in caplog.text
    assert_unchanged(model, before)
    assert all(type(l) is L.LayerNormalization for l in model.layers if "norm" in l.name)
    # As accurate as Keras's own formula with its float NEGs, or more.
    keras_logits = model.predict(x_test, verbose=0)
    after = argmax_agreement(keras_logits, predict_tflite(flatbuffer, x_test))
    monkeypatch.setattr(converter, "conversion_model", lambda m, *_: (m, []))
    unrewritten, (message,) = convert_recording(model, quantization="int8", representative_data=x)
    for name in ("attention_norm", "ffn_norm"):
        assert f"layer '{name}' (LayerNormalization): 1 NEG; TFLite has no integer kernel for NEG" in message
    assert after >= argmax_agreement(keras_logits, predict_tflite(unrewritten, x_test)) and after >= 0.95


def causal_attention_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 16))
    x = keras.layers.Dense(16, name="proj")(inputs)
    x = keras.layers.MultiHeadAttention(2, 8, name="attn")(x, x, use_causal_mask=True)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(x))


def test_masked_attention_is_kept_float_in_post_training_int8():
    model = causal_attention_model()
    x = np.random.default_rng(0).normal(size=(128, 12, 16)).astype("float32")
    with pytest.warns(FloatOpsWarning, match=r"layer 'attn' \(MultiHeadAttention\): it is called with use_causal_mask=True"):
        flatbuffer = to_tflite(model, quantization="int8", representative_data=x)
    ops = inspect_tflite(flatbuffer).ops
    assert {op.dtype for op in ops if op.type == "SOFTMAX"} == {"float32"}
    assert any(op.type == "FULLY_CONNECTED" and op.dtype == "int8" for op in ops)  # proj and head
    reference = model.predict(x, verbose=0)
    relative = np.linalg.norm(predict_tflite(flatbuffer, x) - reference) / np.linalg.norm(reference)
    # An int8 mask leaks attention into the future: 50% relative error measured.
    assert relative < 0.1
    with pytest.raises(ValueError, match="attention layer\\(s\\) of model .* stay float"):
        to_tflite(model, quantization="int8", representative_data=x, strict=True)
