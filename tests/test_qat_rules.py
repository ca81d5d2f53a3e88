"""Quantization-aware training rules beyond Conv/Dense: separable convolutions,
embeddings, EinsumDense, multi-head attention, layer normalization,
activations at TFLite's int8 ranges and Keras ops used directly in a graph.

Each rule is checked on the converted file (op types and dtypes, no float
compute ops without representative data) and against an independent
expectation (the float layer, a hand-computed int8 rounding, TFLite's fixed
ranges)."""

import warnings

import keras
import numpy as np
import pytest
from conftest import value

import keras_compress as kc
from keras_compress.quantization import (
    ActivationQuantizer,
    QuantizeLayerNormalization,
    QuantizeMultiHeadAttention,
    QuantizeWrapper,
    quantize_model,
)

L = keras.layers


def quantize_quietly(model, **kwargs):
    """quantize_model, failing on any warning (every layer here has a rule)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return quantize_model(model, **kwargs)


def calibrated(model, x, **kwargs):
    """A QAT copy of `model` whose ranges were set from `x`, as the first
    training step sets them."""
    qat = quantize_quietly(model, **kwargs)
    qat(x, training=True)
    return qat


def int8_file(qat):
    """The int8 file of a QAT model, converted without representative data;
    asserts every compute op is int8."""
    flatbuffer = kc.to_tflite(qat, quantization="int8")
    info = kc.inspect_tflite(flatbuffer)
    assert info.float_compute_ops() == [], [(op.type, op.dtype) for op in info.float_compute_ops()]
    return flatbuffer, info


def compute_ops(info):
    return sorted({op.type for op in info.ops} - {"QUANTIZE", "DEQUANTIZE"})


def output_step(qat):
    """The int8 step of the model's (last) output quantizer."""
    quantizer = [l for l in qat.layers if isinstance(l, ActivationQuantizer)][-1]
    if quantizer.fixed_range is not None:
        low, high = quantizer.fixed_range
    else:
        low, high = min(value(quantizer.range_min), 0), max(value(quantizer.range_max), 0)
    return (high - low) / 255


def assert_file_matches_keras(flatbuffer, qat, x, steps=2):
    """TFLite computes what the QAT model computes, within `steps` int8 steps
    of the output (TFLite's integer requantization rounds a little
    differently from float fake quantization)."""
    expected = value(qat(x))
    got = kc.predict_tflite(flatbuffer, x)
    assert np.abs(got - expected).max() <= steps * output_step(qat) + 1e-6


# -- separable convolutions -------------------------------------------------


def test_separable_conv2d_becomes_int8_depthwise_then_pointwise_with_bn_folded():
    rng = np.random.default_rng(0)
    inputs = keras.Input((10, 10, 3))
    x = L.SeparableConv2D(8, 3, use_bias=False, padding="same", name="sep")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(6.0, name="relu6")(x)
    x = L.SeparableConv2D(4, 3, strides=2, depth_multiplier=2, name="sep_dm2")(x)
    outputs = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("bn")
    bn.set_weights([rng.uniform(0.5, 2, 8), rng.normal(0, 0.5, 8), rng.normal(0, 0.5, 8), rng.uniform(0.2, 3, 8)])
    data = rng.normal(size=(16, 10, 10, 3)).astype("float32")
    qat = calibrated(model, data)

    names = {l.name: l for l in qat.layers}
    assert "bn" not in names and "relu6" not in names  # folded into the pointwise part
    depthwise, pointwise = names["quant_sep_depthwise"], names["quant_sep_pointwise"]
    assert isinstance(depthwise.layer, L.DepthwiseConv2D) and isinstance(pointwise.layer, L.Conv2D)
    assert pointwise.batch_norm is not None and pointwise.activation == "relu6"
    assert depthwise.batch_norm is None and pointwise.layer.kernel_size == (1, 1)
    assert tuple(depthwise.kernel_range.shape) == (3,)  # per channel with depth multiplier 1
    assert tuple(names["quant_sep_dm2_depthwise"].kernel_range.shape) == ()  # per tensor with 2
    assert isinstance(names["sep_depthwise_quant"], ActivationQuantizer)  # the int8 tensor between

    # Before training the QAT model computes the float model, up to int8 rounding.
    float_out, qat_out = value(model(data)), value(qat(data))
    assert np.abs(float_out - qat_out).max() < 0.05 * np.abs(float_out).max()
    flatbuffer, info = int8_file(qat)
    assert [op.type for op in info.ops] == [
        "QUANTIZE", "DEPTHWISE_CONV_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "MEAN", "DEQUANTIZE",
    ]  # fmt: skip
    assert_file_matches_keras(flatbuffer, qat, data)


def test_separable_conv1d_splits_too_and_its_gelu_gets_its_own_range():
    rng = np.random.default_rng(1)
    inputs = keras.Input((12, 4))
    x = L.SeparableConv1D(6, 3, activation="gelu", name="sep")(inputs)
    outputs = L.Flatten()(x)
    model = keras.Model(inputs, outputs)
    data = rng.normal(size=(16, 12, 4)).astype("float32")
    qat = calibrated(model, data)
    names = {l.name: l for l in qat.layers}
    assert isinstance(names["quant_sep_depthwise"].layer, L.DepthwiseConv1D)
    assert isinstance(names["quant_sep_pointwise"].layer, L.Conv1D)
    assert names["quant_sep_pointwise"].layer.get_config()["activation"] == "linear"
    assert names["sep_gelu"].get_config()["activation"] == "gelu"
    float_out, qat_out = value(model(data)), value(qat(data))
    assert np.abs(float_out - qat_out).max() < 0.05 * np.abs(float_out).max()
    flatbuffer, info = int8_file(qat)
    assert compute_ops(info) == ["CONV_2D", "DEPTHWISE_CONV_2D", "GELU", "RESHAPE"]
    assert_file_matches_keras(flatbuffer, qat, data)


# -- embeddings ---------------------------------------------------------------


def test_embedding_table_is_fake_quantized_per_tensor_and_gather_keeps_its_scale():
    rng = np.random.default_rng(2)
    tokens = keras.Input((6,), dtype="int32")
    x = L.Embedding(30, 8, name="embedding")(tokens)
    outputs = L.Dense(3, name="head")(L.Flatten()(x))
    model = keras.Model(tokens, outputs)
    table = rng.normal(size=(30, 8)).astype("float32")
    model.get_layer("embedding").set_weights([table])
    ids = rng.integers(0, 30, (16, 6)).astype("int32")
    qat = calibrated(model, ids)
    wrapper = qat.get_layer("quant_embedding")
    assert isinstance(wrapper, QuantizeWrapper)
    assert "embedding_quant" not in [l.name for l in qat.layers]  # no range of its own

    # Symmetric int8 rounding of the whole table, by hand.
    scale = np.abs(table).max() / 127
    expected = np.round(table / scale) * scale
    looked_up = value(keras.Model(qat.input, wrapper.output)(ids))
    np.testing.assert_allclose(looked_up, expected[ids], atol=1e-6)

    flatbuffer, info = int8_file(qat)
    gather = next(op for op in info.ops if op.type == "GATHER")
    assert gather.dtype == "int8"
    from ai_edge_litert.interpreter import Interpreter

    tensors = Interpreter(model_content=flatbuffer).get_tensor_details()
    table_tensor = next(t for t in tensors if tuple(t["shape"]) == (30, 8))
    assert table_tensor["dtype"] == np.int8
    assert table_tensor["quantization"][0] == pytest.approx(scale, rel=1e-5)
    assert_file_matches_keras(flatbuffer, qat, ids)


def test_embedding_mask_passes_through_the_quantized_table():
    tokens = keras.Input((8,), dtype="int32")
    x = L.Embedding(20, 4, mask_zero=True, name="embedding")(tokens)
    outputs = L.GlobalAveragePooling1D(name="pool")(x)  # averages the unmasked steps only
    model = keras.Model(tokens, outputs)
    ids = np.random.default_rng(3).integers(1, 20, (6, 8)).astype("int32")
    ids[:, 5:] = 0
    with pytest.warns(UserWarning, match=r"'pool' \(GlobalAveragePooling1D\): its Keras mask"):
        qat = quantize_model(model)
    qat(ids, training=True)
    wrapper = qat.get_layer("quant_embedding")
    np.testing.assert_array_equal(value(wrapper.compute_mask(ids)), ids != 0)
    table = value(wrapper.layer.embeddings)
    scale = np.abs(table).max() / 127
    rows = (np.round(table / scale) * scale)[ids]
    expected = rows[:, :5].mean(axis=1)  # the padding does not count
    assert np.abs(value(qat(ids)) - expected).max() <= 1.01 * output_step(qat)


# -- EinsumDense and attention -----------------------------------------------


def test_einsum_dense_becomes_an_int8_fully_connected_with_a_per_tensor_kernel():
    rng = np.random.default_rng(4)
    inputs = keras.Input((5, 8))
    outputs = L.EinsumDense("abc,cde->abde", (None, 2, 4), bias_axes="de", name="proj")(inputs)
    model = keras.Model(inputs, L.Reshape((40,))(outputs))
    model.get_layer("proj").set_weights([rng.normal(size=(8, 2, 4)), rng.normal(size=(2, 4))])
    data = rng.normal(size=(16, 5, 8)).astype("float32")
    qat = calibrated(model, data)
    wrapper = qat.get_layer("quant_proj")
    assert tuple(wrapper.kernel_range.shape) == ()
    kernel = value(wrapper.layer.kernel)
    assert value(wrapper.kernel_range) == pytest.approx(np.abs(kernel).max())
    flatbuffer, info = int8_file(qat)
    assert compute_ops(info) == ["FULLY_CONNECTED", "RESHAPE"]
    assert_file_matches_keras(flatbuffer, qat, data)


def attention_model(**call_kwargs):
    inputs = keras.Input((6, 16), name="sequence")
    x = L.Dense(16, name="embed")(inputs)
    attended = L.MultiHeadAttention(num_heads=2, key_dim=8, name="attention")(x, x, **call_kwargs)
    outputs = L.Dense(3, name="logits")(L.GlobalAveragePooling1D(name="pool")(attended))
    return keras.Model(inputs, outputs)


def test_multi_head_attention_runs_every_op_int8_without_representative_data():
    data = np.random.default_rng(5).normal(size=(16, 6, 16)).astype("float32")
    model = attention_model()
    qat = calibrated(model, data)
    wrapper = qat.get_layer("quant_attention")
    assert isinstance(wrapper, QuantizeMultiHeadAttention)
    assert wrapper.probabilities_quantizer.fixed_range == (0.0, 255 / 256)
    float_out, qat_out = value(model(data)), value(qat(data))
    assert np.abs(float_out - qat_out).max() < 0.1 * np.abs(float_out).max()
    flatbuffer, info = int8_file(qat)
    assert compute_ops(info) == [
        "BATCH_MATMUL", "FULLY_CONNECTED", "MEAN", "MUL", "RESHAPE", "SOFTMAX", "TRANSPOSE",
    ]  # fmt: skip
    assert [op.type for op in info.ops].count("BATCH_MATMUL") == 2  # scores and context
    assert [op.type for op in info.ops].count("FULLY_CONNECTED") == 6  # q, k, v, output, embed, logits
    assert_file_matches_keras(flatbuffer, qat, data, steps=3)


def test_attention_scores_are_the_int8_softmax_output():
    inputs = keras.Input((5, 8))
    attended, scores = L.MultiHeadAttention(2, 4, name="attention")(
        inputs, inputs, return_attention_scores=True
    )
    model = keras.Model(inputs, [L.Dense(2, name="head")(attended), scores])
    data = np.random.default_rng(6).normal(size=(8, 5, 8)).astype("float32")
    qat = calibrated(model, data)
    _, probabilities = qat(data)
    probabilities = value(probabilities)
    np.testing.assert_allclose(probabilities * 256, np.round(probabilities * 256), atol=1e-3)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=5 * 5 / 256)
    _, float_scores = model(data)
    assert np.abs(probabilities - value(float_scores)).max() < 0.05
    int8_file(qat)


@pytest.mark.parametrize(
    "call_kwargs, reason",
    [
        ({"use_causal_mask": True}, "use_causal_mask=True"),
        ({"attention_mask": "ones"}, "attention_mask"),
    ],
)
def test_masked_attention_stays_float_with_the_reason(call_kwargs, reason):
    if call_kwargs.get("attention_mask") == "ones":
        call_kwargs = {"attention_mask": np.tril(np.ones((6, 6), bool))[None]}
    model = attention_model(**call_kwargs)
    with pytest.warns(UserWarning, match=rf"'attention' \(MultiHeadAttention\): it is called with (an )?{reason}"):
        qat = quantize_model(model)
    assert not any(isinstance(l, QuantizeMultiHeadAttention) for l in qat.layers)
    data = np.random.default_rng(7).normal(size=(8, 6, 16)).astype("float32")
    np.testing.assert_allclose(value(qat(data, training=True)), value(model(data)), atol=0.1)


def test_attention_after_a_masking_embedding_stays_float_naming_the_mask():
    tokens = keras.Input((6,), dtype="int32")
    x = L.Embedding(10, 8, mask_zero=True, name="embedding")(tokens)
    x = L.MultiHeadAttention(2, 4, name="attention")(x, x)
    model = keras.Model(tokens, L.Dense(2, name="head")(x))
    with pytest.warns(UserWarning, match=r"'attention' \(MultiHeadAttention\): its query carries a Keras mask"):
        quantize_model(model)


def test_quantize_multi_head_attention_refuses_what_int8_cannot_run():
    with pytest.raises(ValueError, match=r"'gated'.*use_gate=True"):
        QuantizeMultiHeadAttention(L.MultiHeadAttention(2, 4, use_gate=True, name="gated"))
    with pytest.raises(ValueError, match="not a MultiHeadAttention"):
        QuantizeMultiHeadAttention(L.Dense(3))
    with pytest.raises(TypeError, match="preserve_sparsity"):
        QuantizeMultiHeadAttention(L.MultiHeadAttention(2, 4), preserve_sparsity="yes")
    with pytest.raises(ValueError, match="ema_decay"):
        QuantizeMultiHeadAttention(L.MultiHeadAttention(2, 4), ema_decay=2)
    wrapper = QuantizeMultiHeadAttention(L.MultiHeadAttention(2, 4, name="mha"))
    x = np.zeros((1, 3, 8), "float32")
    with pytest.raises(ValueError, match="'quant_mha' cannot apply an attention mask"):
        wrapper(x, x, use_causal_mask=True)


# -- layer normalization ------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{}, {"center": False}, {"scale": False, "center": False}, {"axis": (1, 2)}],
    ids=["default", "no_center", "no_affine", "two_axes"],
)
def test_layer_normalization_converts_to_int8_ops_without_neg(options):
    rng = np.random.default_rng(8)
    inputs = keras.Input((6, 16))
    norm = L.LayerNormalization(name="norm", **options)
    model = keras.Model(inputs, norm(inputs))
    norm.set_weights([rng.uniform(0.5, 2, w.shape) for w in norm.weights])
    data = (rng.normal(size=(32, 6, 16)) * rng.uniform(0.5, 2, (32, 6, 1)) + 1).astype("float32")
    qat = calibrated(model, data)
    assert isinstance(qat.get_layer("quant_norm"), QuantizeLayerNormalization)
    float_out, qat_out = value(model(data)), value(qat(data))
    assert np.abs(float_out - qat_out).max() < 0.1 * np.abs(float_out).max()
    flatbuffer, info = int8_file(qat)
    ops = compute_ops(info)
    assert "NEG" not in ops and {"MEAN", "SUB", "MUL", "ADD", "RSQRT"} <= set(ops)
    assert_file_matches_keras(flatbuffer, qat, data, steps=3)


# -- activations and Keras ops --------------------------------------------------


@pytest.mark.parametrize(
    "activation, ops, fixed",
    [
        ("sigmoid", ["LOGISTIC"], (0.0, 255 / 256)),
        ("tanh", ["TANH"], (-1.0, 127 / 128)),
        ("softmax", ["SOFTMAX"], (0.0, 255 / 256)),
        ("log_softmax", ["LOG_SOFTMAX"], (-255 / 16, 0.0)),
        ("gelu", ["GELU"], None),
        ("hard_swish", ["HARD_SWISH"], None),
        ("leaky_relu", ["LEAKY_RELU"], None),
        ("swish", ["LOGISTIC", "MUL"], None),
        ("hard_sigmoid", ["ADD", "MUL"], None),
    ],
)
def test_activations_convert_to_tflite_int8_kernels_at_their_ranges(activation, ops, fixed):
    inputs = keras.Input((12,))
    x = L.Dense(12, name="dense")(inputs)
    outputs = L.Activation(activation, name="act")(x)
    model = keras.Model(inputs, outputs)
    data = np.random.default_rng(9).normal(size=(64, 12)).astype("float32") * 2
    qat = calibrated(model, data)
    assert qat.get_layer("act").fixed_range == fixed
    flatbuffer, info = int8_file(qat)
    assert compute_ops(info) == sorted(["FULLY_CONNECTED", *ops])
    float_out, qat_out = value(model(data)), value(qat(data))
    assert np.abs(float_out - qat_out).max() < 0.08 * max(np.abs(float_out).max(), 1)
    # Each intermediate is quantized as TFLite's kernel quantizes it: the
    # file agrees with training within an int8 step.
    assert_file_matches_keras(flatbuffer, qat, data, steps=1)


def test_swish_trains_on_the_int8_sigmoid():
    inputs = keras.Input((4,), name="x")
    outputs = L.Activation("swish", name="act")(inputs)
    x = np.linspace(-6, 6, 40, dtype="float32").reshape(10, 4)
    qat = calibrated(keras.Model(inputs, outputs), x)
    probe = keras.Model(qat.input, [qat.get_layer(n).output for n in ("x_quant", "act_sigmoid_quant")])
    quantized_x, gate = (value(t) for t in probe(x))
    # LOGISTIC's int8 output: multiples of 1/256, the sigmoid of the int8 input.
    np.testing.assert_allclose(gate * 256, np.round(gate * 256), atol=1e-3)
    assert np.abs(gate - 1 / (1 + np.exp(-quantized_x))).max() <= 0.5 / 256 + 1e-6
    np.testing.assert_allclose(value(qat(x)), value(qat.get_layer("act")(quantized_x * gate)), atol=1e-6)


def test_keras_ops_in_a_functional_graph_convert_to_int8():
    inputs = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(8, 3, name="conv_1")(inputs)
    x = keras.ops.relu(x)  # fused into conv_1
    x = x / 6.0
    y = keras.ops.sigmoid(x)
    x = keras.ops.concatenate([x * y, keras.ops.tanh(x)], axis=-1)
    x = keras.ops.reshape(keras.ops.transpose(x, (0, 3, 1, 2)), (-1, 16, 36))
    x = keras.ops.matmul(x, keras.ops.transpose(x, (0, 2, 1)))
    x = keras.ops.silu(x[:, :8])
    x = keras.ops.mean(x - 1.0, axis=1)
    outputs = L.Dense(3, name="logits")(keras.ops.softmax(x))
    model = keras.Model(inputs, outputs)
    data = np.random.default_rng(10).normal(size=(32, 8, 8, 3)).astype("float32")
    qat = calibrated(model, data)
    assert "conv_1_quant" in [l.name for l in qat.layers] and "relu_quant" not in [l.name for l in qat.layers]
    assert qat.get_layer("quant_conv_1").activation == "relu"
    float_out, qat_out = value(model(data)), value(qat(data))
    assert np.abs(float_out - qat_out).max() < 0.1 * np.abs(float_out).max()
    flatbuffer, info = int8_file(qat)
    for op in ("MUL", "LOGISTIC", "TANH", "CONCATENATION", "TRANSPOSE", "BATCH_MATMUL", "SUB", "MEAN", "SOFTMAX"):
        assert op in compute_ops(info)
    assert_file_matches_keras(flatbuffer, qat, data, steps=3)


def test_ops_without_an_int8_kernel_are_named_in_the_warning():
    inputs = keras.Input((6,))
    x = L.Dense(6, name="dense")(inputs)
    x = keras.ops.negative(x)
    x = keras.ops.square(x)
    outputs = L.Dense(2, name="head")(x)
    with pytest.warns(UserWarning) as caught:
        qat = quantize_model(keras.Model(inputs, outputs))
    message = str(next(w.message for w in caught if "stay float" in str(w.message)))
    assert "(Negative): TFLite has no int8 kernel for NEG" in message
    assert "(Square): TFLite has no int8 kernel for SQUARE" in message
    qat(np.ones((2, 6), "float32"), training=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # to_tflite reports them too
        info = kc.inspect_tflite(kc.to_tflite(qat, quantization="int8"))
    assert sorted(op.type for op in info.float_compute_ops()) == ["NEG", "SQUARE"]


def test_quantize_layer_normalization_validates_and_round_trips():
    with pytest.raises(ValueError, match="'dense'.*not a LayerNormalization"):
        QuantizeLayerNormalization(L.Dense(3, name="dense"))
    with pytest.raises(TypeError, match="expects a keras layer"):
        QuantizeLayerNormalization("norm")
    with pytest.raises(ValueError, match="ema_decay"):
        QuantizeLayerNormalization(L.LayerNormalization(), ema_decay=-0.1)
    wrapper = QuantizeLayerNormalization(L.LayerNormalization(name="norm"), ema_decay=0.9)
    wrapper(np.ones((2, 3, 4), "float32"))
    config = wrapper.get_config()
    restored = QuantizeLayerNormalization.from_config(config)
    assert restored.get_config() == config and restored.quantizers["mean"].ema_decay == 0.9


def test_a_kernel_layer_with_an_activation_without_int8_kernel_is_int8_up_to_it():
    inputs = keras.Input((6,))
    outputs = L.Dense(4, activation="elu", name="dense")(inputs)
    with pytest.warns(UserWarning, match=r"'dense' \(Dense\): its activation: TFLite has no int8 kernel for ELU"):
        qat = quantize_model(keras.Model(inputs, L.Dense(2, name="head")(outputs)))
    qat(np.ones((2, 6), "float32"), training=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = kc.inspect_tflite(kc.to_tflite(qat, quantization="int8"))
    assert [op.type for op in info.float_compute_ops()] == ["ELU"]
    assert info.op_counts()[("FULLY_CONNECTED", "int8")] == 2


# -- layers of keras.applications -------------------------------------------


def test_normalization_layer_becomes_an_int8_mul_and_add():
    inputs = keras.Input((6, 6, 3))
    x = L.Normalization(mean=[1.0, 2.0, 3.0], variance=[4.0, 0.25, 9.0], name="norm")(inputs)
    model = keras.Model(inputs, L.Conv2D(4, 3, name="conv")(x))
    x = np.random.default_rng(1).normal(2, 2, (32, 6, 6, 3)).astype("float32")
    qat = calibrated(model, x)
    # (x - mean) / std is x * (1 / std) + (-mean / std): each step its own range.
    scale, offset = qat.get_layer("norm_scale"), qat.get_layer("norm_offset")
    np.testing.assert_allclose(value(scale.scale), [1 / 2, 2, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(value(offset.offset), [-1 / 2, -4, -1], rtol=1e-6)
    flatbuffer, info = int8_file(qat)
    assert compute_ops(info) == ["ADD", "CONV_2D", "MUL"]
    assert_file_matches_keras(flatbuffer, qat, x)


def test_grouped_conv2d_is_an_int8_grouped_conv():
    inputs = keras.Input((8, 8, 8))
    x = L.Conv2D(8, 3, groups=8, padding="same", name="grouped")(inputs)  # ConvNeXt's depthwise form
    model = keras.Model(inputs, L.Conv2D(4, 1, name="pointwise")(L.ReLU()(x)))
    x = np.random.default_rng(2).normal(size=(32, 8, 8, 8)).astype("float32")
    qat = calibrated(model, x)
    assert isinstance(qat.get_layer("quant_grouped"), QuantizeWrapper)
    flatbuffer, info = int8_file(qat)
    assert compute_ops(info) == ["CONV_2D"]
    assert_file_matches_keras(flatbuffer, qat, x)


def test_application_layers_layer_scale_and_custom_scale_convert_to_int8():
    from keras.src.applications.convnext import LayerScale
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    inputs = keras.Input((10, 8))
    a = L.Dense(8, name="a")(inputs)
    scaled = LayerScale(0.5, 8, name="layer_scale")(a)
    mixed = CustomScaleLayer(0.17, name="custom_scale")([a, scaled])  # a + scaled * 0.17
    model = keras.Model(inputs, L.Dense(3, name="head")(mixed))
    x = np.random.default_rng(3).normal(size=(32, 10, 8)).astype("float32")
    qat = calibrated(model, x)
    layers = {l.name: l for l in qat.layers}
    assert value(layers["custom_scale_scale"].scale) == pytest.approx(0.17)
    assert isinstance(layers["custom_scale_add"], L.Add)
    # The float model computes the same function before any rounding.
    np.testing.assert_allclose(
        value(model(x)), value(model.get_layer("head")(value(model.get_layer("a")(x)) * (1 + 0.5 * 0.17))),
        rtol=1e-5, atol=1e-5,
    )
    flatbuffer, info = int8_file(qat)
    assert compute_ops(info) == ["ADD", "FULLY_CONNECTED", "MUL"]
    assert_file_matches_keras(flatbuffer, qat, x, steps=3)


def test_a_relu_layer_read_only_by_max_pooling_learns_its_range_after_the_pooling():
    """Fake quantization is monotone, so it commutes with max pooling: the
    range learned on the pooled tensor gives the same values on a quarter of
    the elements. TFLite gives MAX_POOL_2D's input its output's scale, so the
    CONV_2D still writes int8."""
    from keras.quantizers import fake_quant_with_min_max_vars

    rng = np.random.default_rng(0)
    t = rng.normal(size=(4, 8, 8, 3)).astype("float32") * 3
    pool = keras.layers.MaxPooling2D()
    np.testing.assert_array_equal(value(fake_quant_with_min_max_vars(pool(t), -2.0, 5.0)),
                                  value(pool(fake_quant_with_min_max_vars(t, -2.0, 5.0))))

    L = keras.layers
    inputs = keras.Input((10, 10, 1), name="image")
    a = L.Conv2D(4, 3, activation="relu", name="conv_relu")(inputs)  # read only by the pooling
    a = L.MaxPooling2D(name="pool")(a)
    b = L.Conv2D(4, 3, name="conv_linear")(a)  # no ReLU: keeps its own range
    c = L.MaxPooling2D(name="pool_b")(b)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Flatten()(c)))
    qat = quantize_quietly(model)
    names = [l.name for l in qat.layers]
    assert names.index("conv_relu_quant") == names.index("pool") + 1
    assert names.index("conv_linear_quant") == names.index("quant_conv_linear") + 1
    x = rng.normal(size=(64, 10, 10, 1)).astype("float32")
    qat.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, np.arange(64) % 2, epochs=1, verbose=0)
    flatbuffer = kc.to_tflite(qat, quantization="int8")
    info = kc.inspect_tflite(flatbuffer)
    assert not info.float_compute_ops()
    np.testing.assert_array_equal(kc.predict_tflite(flatbuffer, x).argmax(1), value(qat(x)).argmax(1))


def test_non_negative_activation_quantizer_learns_the_same_int8_values_without_the_minimum():
    """On ReLU outputs the moving minimum is 0 (or clamped to 0), so a
    quantizer that skips it quantizes exactly as the one that learns it."""
    from keras_compress.quantization import ActivationQuantizer

    rng = np.random.default_rng(1)
    full, relu = ActivationQuantizer(name="full"), ActivationQuantizer(non_negative=True, name="relu")
    for step in range(5):
        batch = np.maximum(rng.normal(size=(16, 8)), 0).astype("float32") + 0.01 * step  # min > 0 from step 1
        a, b = value(full(batch, training=True)), value(relu(batch, training=True))
        np.testing.assert_array_equal(a, b)
    assert float(value(relu.range_min)) == 0.0 and float(value(full.range_min)) > 0
    np.testing.assert_allclose(value(relu.range_max), value(full.range_max))
    assert ActivationQuantizer.from_config(relu.get_config()).non_negative is True
    with pytest.raises(TypeError, match="non_negative must be True or False"):
        ActivationQuantizer(non_negative="yes")
