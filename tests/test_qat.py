"""Quantization-aware training: quantizers, BN folding, model rewriting, int8 export."""

import warnings

import keras
import numpy as np
import pytest
from conftest import assert_unchanged, compile_for_test, small_cnn, snapshot, value

import keras_compress as kc
from keras_compress import examples
from keras_compress import pruning
from keras_compress.quantization import (
    ActivationQuantizer,
    QuantizeAnnotate,
    QuantizeWrapper,
    fake_quant_weights,
    quantize_annotate_layer,
    quantize_apply,
    quantize_model,
)
from keras_compress.quantization.quantizers import weight_range

L = keras.layers


def conv_bn_relu_model(input_shape=(12, 12, 3)):
    inputs = keras.Input(input_shape, name="image")
    x = L.Conv2D(6, 3, use_bias=False, name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = L.BatchNormalization(name="dw_bn")(y)
    y = L.ReLU(6.0, name="dw_relu6")(y)
    x = L.Add(name="add")([x, y])
    x = L.ReLU(name="add_relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(4, name="logits")(x)
    return keras.Model(inputs, outputs, name="blocks")


def randomize_batch_norms(model, seed=0):
    """Non-trivial BN statistics and affine terms, so folding has work to do."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 2.0, n),
                    rng.normal(0, 0.5, n),
                    rng.normal(0, 0.5, n),
                    rng.uniform(0.2, 3.0, n),
                ]
            )
    return model


def op_types(flatbuffer):
    return [op.type for op in kc.inspect_tflite(flatbuffer).ops]


# -- quantizers -------------------------------------------------------------


def test_activation_quantizer_range_follows_the_batches():
    q = ActivationQuantizer(ema_decay=0.9)
    first = np.array([[-1.0, 0.5, 2.0]], "float32")
    second = np.array([[-3.0, 0.0, 1.0]], "float32")
    q(first, training=True)
    assert value(q.range_min) == pytest.approx(-1.0)  # the first batch sets it
    assert value(q.range_max) == pytest.approx(2.0)
    q(second, training=True)
    assert value(q.range_min) == pytest.approx(0.9 * -1.0 + 0.1 * -3.0)
    assert value(q.range_max) == pytest.approx(0.9 * 2.0 + 0.1 * 1.0)
    before = (value(q.range_min), value(q.range_max))
    q(second * 10)  # inference does not move the range
    assert (value(q.range_min), value(q.range_max)) == before


def test_activation_quantizer_outputs_lie_on_the_int8_grid():
    q = ActivationQuantizer()
    x = np.random.default_rng(0).uniform(-1, 3, (1000,)).astype("float32")
    q(x, training=True)
    low, high = value(q.range_min), value(q.range_max)
    y = value(q(x))
    scale = (high - low) / 255
    levels = (y - y.min()) / scale
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    assert len(np.unique(y)) <= 256
    assert np.abs(y - x).max() <= scale  # rounding error within one step
    assert 0.0 in value(q(np.zeros(3, "float32")))  # zero is exact


def test_activation_quantizer_fixed_range_and_validation():
    q = ActivationQuantizer(fixed_range=(0.0, 255 / 256))
    y = value(q(np.array([0.0, 0.3, 0.999, 1.5], "float32"), training=True))
    assert y.max() == pytest.approx(255 / 256)  # no learned range to clip lower
    np.testing.assert_allclose(y * 256, np.round(y * 256), atol=1e-4)
    assert not q.weights
    for bad in ({"ema_decay": 1.0}, {"num_bits": 1}, {"fixed_range": (1.0, 2.0)}, {"fixed_range": "x"}):
        with pytest.raises(ValueError, match="ActivationQuantizer"):
            ActivationQuantizer(**bad)


def test_weight_fake_quant_is_symmetric_per_tensor_and_per_channel():
    w = np.random.default_rng(0).normal(size=(3, 3, 4, 5)).astype("float32")
    w[..., 2] *= 10
    per_tensor = value(fake_quant_weights(w, weight_range(w)))
    assert len(np.unique(per_tensor)) <= 255
    per_channel = value(fake_quant_weights(w, weight_range(w, -1), axis=-1))
    for c in range(5):
        limit = np.abs(w[..., c]).max()
        step = 2 * limit / 254  # 255 levels, zero point 0
        assert np.abs(per_channel[..., c]).max() == pytest.approx(limit, rel=1e-5)
        np.testing.assert_allclose(per_channel[..., c] / step, np.round(per_channel[..., c] / step), atol=1e-3)
    # A channel with small weights keeps its resolution only per channel.
    assert np.abs(per_channel - w)[..., 0].max() < np.abs(per_tensor - w)[..., 0].max()
    assert value(fake_quant_weights(np.zeros((2, 2), "float32"), weight_range(np.zeros((2, 2))))).max() == 0


# -- QuantizeWrapper --------------------------------------------------------


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: L.Conv2D(5, 3, use_bias=False), (2, 8, 8, 3)),
        (lambda: L.Conv2D(5, 3, use_bias=True, bias_initializer="random_normal"), (2, 8, 8, 3)),
        (lambda: L.DepthwiseConv2D(3, bias_initializer="random_normal"), (2, 8, 8, 3)),
        (lambda: L.DepthwiseConv2D(3, depth_multiplier=2), (2, 8, 8, 3)),
        (lambda: L.Dense(7, bias_initializer="random_normal"), (2, 6)),
        (lambda: L.Conv1D(5, 3), (2, 9, 3)),
    ],
)
def test_batch_norm_folding_matches_layer_then_batch_norm(make, shape):
    x = np.random.default_rng(1).normal(size=shape).astype("float32")
    layer, bn = make(), L.BatchNormalization()
    bn(layer(x))  # builds both
    randomize_batch_norms(keras.Sequential([bn]))
    reference = value(bn(layer(x), training=False))

    wrapper = QuantizeWrapper(
        layer.__class__.from_config(layer.get_config()), batch_norm=L.BatchNormalization()
    )
    wrapper.build(shape)
    wrapper.layer.set_weights(layer.get_weights())
    wrapper.batch_norm.set_weights(bn.get_weights())
    wrapper.refresh_kernel_range()
    kernel, bias = wrapper.folded_weights()
    # The folded kernel and bias, run through the plain layer, equal layer + BN.
    folded = layer.__class__.from_config({**layer.get_config(), "use_bias": True})
    folded.build(shape)
    folded.set_weights([value(kernel), value(bias)])
    np.testing.assert_allclose(value(folded(x)), reference, rtol=1e-4, atol=1e-4)
    # The quantized wrapper is within int8 rounding of the same.
    out = value(wrapper(x))
    assert np.abs(out - reference).max() < 0.05 * np.abs(reference).max()


def test_wrapper_fuses_relu6_and_keeps_zero_weights_through_training():
    kernel = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    kernel[kernel < 0.3] = 0.0
    zeros = kernel == 0
    inputs = keras.Input((6,))
    wrapper = QuantizeWrapper(L.Dense(4), activation="relu6")
    model = compile_for_test(keras.Model(inputs, wrapper(inputs)), optimizer="adam")
    wrapper.layer.set_weights([kernel, np.zeros(4, "float32")])
    x, y = np.random.default_rng(1).normal(size=(64, 6)).astype("float32") * 10, np.zeros(64, int)
    out = value(model(x))
    assert out.min() >= 0 and out.max() <= 6
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    trained = value(wrapper.layer.kernel)
    assert np.all(trained[zeros] == 0)
    assert np.all(trained[~zeros] != kernel[~zeros])  # the others did train


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"layer": "conv"}, TypeError, "expects a keras layer"),
        ({"layer": L.LSTM(3)}, ValueError, "no kernel quantization rule"),
        ({"layer": L.Dense(3, activation="softmax")}, ValueError, "activation 'softmax'"),
        ({"layer": L.Dense(3, activation="relu"), "batch_norm": L.BatchNormalization()}, ValueError, "cannot fold"),
        ({"layer": L.Dense(3), "batch_norm": L.LayerNormalization()}, TypeError, "BatchNormalization"),
        ({"layer": L.Dense(3), "activation": "tanh"}, ValueError, "activation must be"),
        ({"layer": L.Dense(3), "preserve_sparsity": "yes"}, TypeError, "preserve_sparsity"),
    ],
)
def test_wrapper_rejects_bad_arguments(kwargs, error, match):
    kwargs = dict(kwargs)
    with pytest.raises(error, match=match):
        QuantizeWrapper(kwargs.pop("layer"), **kwargs)


# -- quantize_model ---------------------------------------------------------


def test_quantize_model_folds_blocks_and_leaves_the_original_alone():
    model = randomize_batch_norms(conv_bn_relu_model())
    before = snapshot(model)
    qat = quantize_model(model)
    assert_unchanged(model, before)
    names = {layer.name: layer for layer in qat.layers}
    assert "bn" not in names and "relu" not in names and "dw_bn" not in names
    assert names["quant_conv"].batch_norm is not None and names["quant_conv"].activation == "relu"
    assert names["quant_dw"].activation == "relu6"
    # Add -> ReLU: the ReLU after the Add carries the range, not the Add.
    assert "add_quant" not in names and "add_relu_quant" in names
    # Before training the QAT model computes what the float model did, up to int8 rounding.
    x = np.random.default_rng(0).uniform(0, 1, (16, 12, 12, 3)).astype("float32")
    qat(x, training=True)  # sets the activation ranges from a batch
    float_out, qat_out = value(model(x)), value(qat(x))
    assert np.abs(float_out - qat_out).max() < 0.1 * np.abs(float_out).max()


def test_qat_blocks_convert_to_one_int8_op_each():
    model = randomize_batch_norms(conv_bn_relu_model())
    qat = quantize_model(model)
    x = np.random.default_rng(0).uniform(0, 1, (16, 12, 12, 3)).astype("float32")
    qat(x, training=True)
    flatbuffer = kc.to_tflite(qat, quantization="int8")
    types = op_types(flatbuffer)
    assert types == [
        "QUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED", "DEQUANTIZE",
    ]  # fmt: skip
    assert not kc.inspect_tflite(flatbuffer).float_compute_ops()
    # TFLite computes what the Keras QAT model does.
    np.testing.assert_allclose(
        kc.predict_tflite(flatbuffer, x), value(qat(x)), atol=0.05 * np.abs(value(qat(x))).max()
    )


@pytest.fixture(scope="module")
def mnist_qat():
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = kc.datasets.load_mnist()
    model = examples.compile_classifier(examples.build_cnn())
    model.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    qat = examples.compile_classifier(quantize_model(model))
    qat.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    return qat, x_test, y_test


def test_qat_tflite_is_all_int8_and_agrees_with_keras_on_mnist(mnist_qat):
    qat, x_test, y_test = mnist_qat
    flatbuffer = kc.to_tflite(qat, quantization="int8")
    info = kc.inspect_tflite(flatbuffer)
    assert info.float_compute_ops() == []
    assert info.inputs[0].dtype == "float32"  # QUANTIZE / DEQUANTIZE at the edges
    tflite = kc.predict_tflite(flatbuffer, x_test)
    keras_out = qat.predict(x_test, verbose=0)
    agreement = np.mean(tflite.argmax(-1) == keras_out.argmax(-1))
    assert agreement >= 0.995
    assert np.mean(tflite.argmax(-1) == y_test) > 0.9
    # int8 weights: about a quarter of the float file.
    float_bytes = len(kc.to_tflite(examples.build_cnn()))
    assert len(flatbuffer) < 0.3 * float_bytes


def test_qat_model_converts_with_int8_io(mnist_qat):
    qat, x_test, _ = mnist_qat
    flatbuffer = kc.to_tflite(qat, quantization="int8", int8_io=True)
    info = kc.inspect_tflite(flatbuffer)
    assert info.inputs[0].dtype == "int8" and info.outputs[0].dtype == "int8"
    assert "QUANTIZE" not in [op.type for op in info.ops]
    float_file = kc.to_tflite(qat, quantization="int8")
    same = kc.predict_tflite(flatbuffer, x_test[:200]).argmax(-1) == kc.predict_tflite(
        float_file, x_test[:200]
    ).argmax(-1)
    assert same.mean() >= 0.99


def test_saved_qat_model_loads_without_custom_objects(tmp_path, mnist_qat):
    qat, x_test, _ = mnist_qat
    path = str(tmp_path / "qat.keras")
    qat.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x_test[:64], verbose=0), qat.predict(x_test[:64], verbose=0))
    for layer in qat.layers:
        if isinstance(layer, (QuantizeWrapper, ActivationQuantizer)):
            config = layer.get_config()
            assert type(layer).from_config(config).get_config() == config


def test_quantize_model_keeps_pruned_zeros_through_training_and_export():
    keras.utils.set_random_seed(0)
    (x, y), _ = kc.datasets.load_mnist()
    x, y = x[:2000], y[:2000]
    pruned = examples.compile_classifier(
        pruning.prune_low_magnitude(examples.build_cnn(), pruning.ConstantSparsity(0.8, 0))
    )
    pruned.fit(x, y, epochs=1, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    qat = examples.compile_classifier(quantize_model(pruned))
    assert not any(isinstance(l, pruning.PruneWrapper) for l in qat.layers)
    dense = [l for l in qat.layers if isinstance(l, QuantizeWrapper)][2].layer
    zeros = value(dense.kernel) == 0
    assert zeros.mean() == pytest.approx(0.8, abs=0.01)
    qat.fit(x, y, epochs=1, verbose=0)
    assert np.all(value(dense.kernel)[zeros] == 0)
    dense_file = kc.to_tflite(qat, quantization="int8", sparse=False)
    sparse_file = kc.to_tflite(qat, quantization="int8")
    assert len(sparse_file) < 0.75 * len(dense_file)
    assert not kc.inspect_tflite(sparse_file).float_compute_ops()
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=dense_file)
    weights = [
        interpreter.get_tensor(t["index"])
        for t in interpreter.get_tensor_details()
        if t["dtype"] == np.int8 and tuple(t["shape"]) == (64, 800)
    ]
    assert len(weights) == 1 and np.mean(weights[0] == 0) >= 0.79


def test_each_pruning_wrapper_comes_off_once_and_its_layer_is_kept_for_the_rewrite(monkeypatch):
    # The rewrite keys its copies by the id of the layer a wrapper stands
    # for. A stripped layer freed between visits let the next wrapper's
    # layer reuse its id and get its copy: CI once built a model calling the
    # 800x64 Dense's wrapper on the 64-wide output of the first Dense.
    from keras_compress import _models

    stripped = []
    unwrap = _models.unwrap_layer

    def recording(layer):
        new = unwrap(layer)
        if new is not layer:
            stripped.append((layer.name, new))
        return new

    monkeypatch.setattr(_models, "unwrap_layer", recording)
    inputs = keras.Input((8,))
    x = keras.layers.Dense(8, name="a")(inputs)
    x = keras.layers.Dense(6, name="b")(x)
    outputs = keras.layers.Dense(4, name="c")(x)
    pruned = pruning.prune_low_magnitude(keras.Model(inputs, outputs), pruning.ConstantSparsity(0.5, 0))
    qat = quantize_model(pruned)
    assert sorted(name for name, _ in stripped) == [
        "prune_low_magnitude_a", "prune_low_magnitude_b", "prune_low_magnitude_c"
    ]
    kernels = [tuple(l.layer.kernel.shape) for l in qat.layers if isinstance(l, QuantizeWrapper)]
    assert kernels == [(8, 8), (8, 6), (6, 4)]
    x = np.random.default_rng(0).normal(size=(3, 8)).astype("float32")
    assert qat(x).shape == (3, 4)


def test_layers_without_an_int8_rule_stay_float_with_a_warning_naming_the_reason():
    inputs = keras.Input((8,))
    x = L.Dense(6, name="d1")(inputs)
    x = L.Activation("elu", name="elu")(x)
    outputs = L.Dense(3, name="d2")(x)
    model = keras.Model(inputs, outputs)
    with pytest.warns(UserWarning, match=r"stay float.*'elu' \(Activation\): TFLite has no int8 kernel for ELU"):
        qat = quantize_model(model)
    x = np.random.default_rng(0).normal(size=(8, 8)).astype("float32")
    qat(x, training=True)
    # d2 gets its input quantized again after the float activation.
    assert isinstance(qat.get_layer("elu_quant"), ActivationQuantizer)
    info = kc.inspect_tflite(kc.to_tflite(qat, quantization="int8"))
    assert [op.type for op in info.ops].count("FULLY_CONNECTED") == 2
    assert [op.type for op in info.float_compute_ops()] == ["ELU"]  # the warning told no lie


def test_nested_models_are_inlined_and_rescaling_is_split():
    backbone = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Rescaling(1 / 127.5, offset=-1, name="scale"), L.Conv2D(4, 3, name="c")],
        name="backbone",
    )
    inputs = keras.Input((8, 8, 3))
    outputs = L.Dense(2, name="head")(L.Flatten()(backbone(inputs)))
    model = keras.Model(inputs, outputs)
    qat = quantize_model(model)
    assert "quant_c" in [l.name for l in qat.layers]
    x = np.random.default_rng(0).uniform(0, 255, (8, 8, 8, 3)).astype("float32")
    qat(x, training=True)
    flatbuffer = kc.to_tflite(qat, quantization="int8")
    assert op_types(flatbuffer)[:4] == ["QUANTIZE", "MUL", "ADD", "CONV_2D"]
    assert not kc.inspect_tflite(flatbuffer).float_compute_ops()


def test_softmax_output_gets_tflite_fixed_range():
    model = keras.Sequential([keras.Input((5,)), L.Dense(3, activation="softmax", name="probs")])
    qat = quantize_model(model)
    # The output's quantizer takes the output's name, so output_names stay.
    quantizer = qat.get_layer("probs")
    assert isinstance(quantizer, ActivationQuantizer)
    assert quantizer.fixed_range == (0.0, 255 / 256)
    assert qat.output_names == ["probs"]


def test_quantize_annotate_and_apply_quantize_only_marked_layers():
    inputs = keras.Input((12, 12, 1))
    x = quantize_annotate_layer(L.Conv2D(4, 3, name="conv"))(inputs)
    x = L.Flatten(name="flat")(x)
    outputs = L.Dense(3, name="head")(x)
    model = keras.Model(inputs, outputs)
    assert isinstance(model.get_layer("quantize_annotate_conv"), QuantizeAnnotate)
    before = snapshot(model)
    qat = quantize_apply(model)
    assert_unchanged(model, before)
    kinds = {l.name: type(l).__name__ for l in qat.layers}
    assert kinds["quant_conv"] == "QuantizeWrapper"
    assert kinds["head"] == "Dense"  # not annotated: float
    with pytest.raises(ValueError, match="no layer marked"):
        quantize_apply(small_cnn())
    with pytest.raises(TypeError, match="not a model"):
        quantize_annotate_layer(small_cnn())


def test_quantize_model_refuses_bad_models_and_leaves_them_alone():
    model = small_cnn()
    qat = quantize_model(model)
    with pytest.raises(ValueError, match="already quantization-aware"):
        quantize_model(qat)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(2)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match="subclassed"):
        quantize_model(Sub())
    with pytest.raises(TypeError, match="keras.Model"):
        quantize_model("model")
    before = snapshot(model)
    with pytest.raises(ValueError, match="ema_decay"):
        quantize_model(model, ema_decay=1.5)
    assert_unchanged(model, before)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layer of the CNN has a rule: no warning
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy's, about Keras's JAX arrays
        quantize_model(model)


def test_layers_without_kernels_convert_to_int8_ops():
    inputs = keras.Input((10, 10, 3))
    x = L.ZeroPadding2D(((2, 0), (0, 1)), name="pad")(inputs)
    a = L.Conv2D(4, 3, activation="relu", name="a")(x)
    b = L.Conv2D(4, 3, activation="relu6", name="b")(x)
    x = L.Concatenate(name="concat")([a, b])
    x = L.AveragePooling2D(2, name="avg")(x)
    x = L.Activation("sigmoid", name="gate")(x)
    x = L.Reshape((-1,), name="reshape")(x)
    outputs = L.Dense(3, name="head")(x)
    qat = quantize_model(keras.Model(inputs, outputs))
    data = np.random.default_rng(0).uniform(-1, 1, (16, 10, 10, 3)).astype("float32")
    qat(data, training=True)
    flatbuffer = kc.to_tflite(qat, quantization="int8")
    info = kc.inspect_tflite(flatbuffer)
    assert info.float_compute_ops() == []
    types = [op.type for op in info.ops]
    for expected in ("PAD", "CONCATENATION", "AVERAGE_POOL_2D", "LOGISTIC", "RESHAPE"):
        assert expected in types
    assert types.count("QUANTIZE") == 1  # no requantization: pooling keeps its input's scale
    keras_out = value(qat(data))
    np.testing.assert_allclose(kc.predict_tflite(flatbuffer, data), keras_out, atol=0.05 * np.abs(keras_out).max())


def test_standalone_batch_norm_becomes_an_int8_affine_map():
    inputs = keras.Input((6,))
    x = L.Dense(5, activation="relu", name="d")(inputs)  # BN after the activation: not foldable
    x = L.BatchNormalization(name="bn")(x)
    outputs = L.Dense(2, name="head")(x)
    model = randomize_batch_norms(keras.Model(inputs, outputs))
    qat = quantize_model(model)
    assert "bn" not in [l.name for l in qat.layers]
    data = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    qat(data, training=True)
    float_out, qat_out = value(model(data)), value(qat(data))
    assert np.abs(float_out - qat_out).max() < 0.05 * np.abs(float_out).max()
    flatbuffer = kc.to_tflite(qat, quantization="int8")
    assert kc.inspect_tflite(flatbuffer).float_compute_ops() == []
    assert [op.type for op in kc.inspect_tflite(flatbuffer).ops].count("MUL") == 1
