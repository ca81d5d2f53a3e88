"""Pruned zeros through quantization-aware training, in the layers QAT
quantizes and in those it leaves float; `float_layers`; round trips of the
quantization-aware layers."""

import warnings

import keras
import numpy as np
import pytest
from architectures import compile_for, embedding_text_classifier, synthetic_data, transformer_block
from conftest import assert_unchanged, snapshot, value

import keras_compress as kc
from keras_compress import pruning
from keras_compress.quantization import (
    QuantizeLayerNormalization,
    QuantizeMultiHeadAttention,
    QuantizeWrapper,
    SparsityPreservingWrapper,
    quantize_model,
)

L = keras.layers


def zero_masks(model):
    """`{variable path: zeros}` of every trainable weight of rank >= 2 but biases."""
    return {
        w.path: value(w) == 0
        for w in model.weights
        if w.trainable and len(w.shape) >= 2 and not w.name.endswith("bias")
    }


def prune_by_hand(layer_weights, fraction=0.6):
    """Zeroes the smallest `fraction` of each weight, as magnitude pruning does."""
    for w in layer_weights:
        v = value(w)
        v[np.abs(v) < np.quantile(np.abs(v), fraction)] = 0
        w.assign(v)


def test_pruned_embedding_and_separable_kernels_keep_their_zeros_through_qat():
    keras.utils.set_random_seed(0)
    model = embedding_text_classifier()
    x, y = synthetic_data(model, n=128)
    pruned = compile_for(pruning.prune_low_magnitude(model, pruning.ConstantSparsity(0.6, 0)))
    pruned.fit(x, y, epochs=1, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    qat = compile_for(quantize_model(pruning.strip_pruning(pruned)))
    before = zero_masks(qat)
    values = {w.path: value(w) for w in qat.weights}
    # The table, both separable kernels and the head, each pruned to 60%.
    assert len(before) == 4 and all(m.mean() == pytest.approx(0.6, abs=0.01) for m in before.values())
    qat.fit(x, y, epochs=1, batch_size=16, verbose=0)
    after = zero_masks(qat)
    trained = {w.path: value(w) for w in qat.weights}
    for path, zeros in before.items():
        assert np.all(after[path][zeros]), f"{path} lost zeros"
        assert np.any(trained[path][~zeros] != values[path][~zeros]), f"{path} did not train"
    assert not kc.inspect_tflite(kc.to_tflite(qat, quantization="int8")).float_compute_ops()


def test_attention_kernels_keep_their_zeros_and_biases_still_train():
    keras.utils.set_random_seed(0)
    model = transformer_block()
    x, y = synthetic_data(model, n=64)
    attention = model.get_layer("attention")
    projections = [attention.query_dense, attention.key_dense, attention.value_dense, attention.output_dense]
    prune_by_hand([p.kernel for p in projections])
    qat = compile_for(quantize_model(model))
    wrapper = qat.get_layer("quant_attention")
    assert isinstance(wrapper, QuantizeMultiHeadAttention)
    before = {path: zeros for path, zeros in zero_masks(qat).items() if "attention/" in path}
    assert len(before) == 4
    biases = [value(w) for w in wrapper.weights if w.name == "bias"]
    qat.fit(x, y, epochs=1, batch_size=16, verbose=0)
    after = zero_masks(qat)
    for path, zeros in before.items():
        assert zeros.mean() == pytest.approx(0.6, abs=0.01)
        assert np.all(after[path][zeros]), f"{path} lost zeros"
    assert all(not np.array_equal(b, value(w)) for b, w in zip(biases, [w for w in wrapper.weights if w.name == "bias"]))


def recurrent_model():
    tokens = keras.Input((10,), dtype="int32", name="tokens")
    x = L.Embedding(20, 8, mask_zero=True, name="embedding")(tokens)
    x = L.LSTM(6, name="lstm")(x)
    return keras.Model(tokens, L.Dense(3, name="logits")(x))


def test_float_layers_keep_their_pruned_zeros_in_a_sparsity_preserving_wrapper():
    keras.utils.set_random_seed(0)
    model = recurrent_model()
    lstm = model.get_layer("lstm")
    prune_by_hand([lstm.cell.kernel, lstm.cell.recurrent_kernel])
    with pytest.warns(UserWarning, match=r"'lstm' \(LSTM\): recurrent layer"):
        qat = quantize_model(model)
    wrapper = qat.get_layer("sparse_lstm")
    assert isinstance(wrapper, SparsityPreservingWrapper) and isinstance(wrapper.layer, L.LSTM)
    ids = np.random.default_rng(0).integers(1, 20, (64, 10)).astype("int32")
    ids[:, 7:] = 0
    y = np.random.default_rng(1).integers(0, 3, 64)
    # The mask of the padding still reaches the LSTM through both wrappers.
    changed = ids.copy()
    np.testing.assert_allclose(value(qat(ids)), value(qat(changed)))
    before = zero_masks(qat)
    compile_for(qat).fit(ids, y, epochs=2, batch_size=16, verbose=0)
    after = zero_masks(qat)
    kernels = [p for p in before if "lstm_cell" in p]
    assert len(kernels) == 2
    for path in kernels:
        assert before[path].mean() == pytest.approx(0.6, abs=0.01)
        assert np.all(after[path][before[path]]), f"{path} lost zeros"
        assert after[path].mean() == pytest.approx(before[path].mean(), abs=0.002)  # no new zeros either


def test_unpruned_float_layers_are_not_wrapped_and_preserve_sparsity_false_lets_zeros_move():
    keras.utils.set_random_seed(0)
    model = recurrent_model()
    with pytest.warns(UserWarning):
        assert not any(isinstance(l, SparsityPreservingWrapper) for l in quantize_model(model).layers)
    prune_by_hand([model.get_layer("lstm").cell.kernel])
    with pytest.warns(UserWarning):
        qat = quantize_model(model, preserve_sparsity=False)
    assert not any(isinstance(l, SparsityPreservingWrapper) for l in qat.layers)
    ids = np.random.default_rng(0).integers(1, 20, (32, 10)).astype("int32")
    before = zero_masks(qat)
    compile_for(qat).fit(ids, np.zeros(32, int), epochs=1, batch_size=8, verbose=0)
    kernel = next(p for p in before if p.endswith("lstm_cell/kernel"))
    assert np.mean(value(qat.get_layer("lstm").cell.kernel)[before[kernel]] == 0) < 0.1


def test_sparsity_preserving_wrapper_round_trips():
    layer = SparsityPreservingWrapper(L.GRU(4, name="gru"))
    config = layer.get_config()
    assert SparsityPreservingWrapper.from_config(config).get_config() == config
    with pytest.raises(TypeError, match="not a model"):
        SparsityPreservingWrapper(keras.Sequential([L.Dense(2)]))


# -- float_layers ---------------------------------------------------------------


def block_model():
    inputs = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = x / 2.0
    x = L.LayerNormalization(name="norm")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, L.Dense(3, name="logits")(x))


def test_float_layers_stay_float_without_a_warning_and_the_rest_is_int8():
    model = block_model()
    # Keras numbers op names per session: "true_divide", "true_divide_1", ...
    divide = next(op.name for op in model.operations if type(op).__name__ == "TrueDivide")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # leaving layers float on request is not news
        qat = quantize_model(model, float_layers=["bn", "norm", divide])
    kinds = {l.name: type(l).__name__ for l in qat.layers}
    assert kinds["bn"] == "BatchNormalization" and kinds["norm"] == "LayerNormalization"
    # The conv keeps its rule but can no longer fold the float BN; the ReLU after the BN gets a range.
    assert kinds["quant_conv"] == "QuantizeWrapper" and qat.get_layer("quant_conv").batch_norm is None
    assert "relu_quant" in kinds
    assert not any(isinstance(l, QuantizeLayerNormalization) for l in qat.layers)
    data = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    qat(data, training=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = kc.inspect_tflite(kc.to_tflite(qat, quantization="int8"))
    floats = {op.type for op in info.float_compute_ops()}
    assert "CONV_2D" not in floats and "FULLY_CONNECTED" not in floats
    assert {"RSQRT"} <= floats  # the float LayerNormalization


def test_float_layers_stay_float_in_the_file_too():
    from conftest import compile_for_test, small_cnn, toy_data

    x, y = toy_data(64)
    model = compile_for_test(small_cnn())
    model.fit(x, y, epochs=1, verbose=0)
    qat = compile_for_test(quantize_model(model, float_layers=["dense_a"]))
    qat.fit(x, y, epochs=1, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # to_tflite names the float ops
        flatbuffer = kc.to_tflite(qat, quantization="int8")
    counts = kc.inspect_tflite(flatbuffer).op_counts()
    # Without the float64 round trip after dense_a, the converter would carry
    # the int8 scales around it through its FULLY_CONNECTED.
    assert counts[("FULLY_CONNECTED", "float32")] == 1 and counts[("FULLY_CONNECTED", "int8")] == 1
    assert counts[("CONV_2D", "int8")] == 2
    keras_out = value(qat(x))
    np.testing.assert_allclose(kc.predict_tflite(flatbuffer, x), keras_out, atol=0.05 * np.abs(keras_out).max())


def test_float_layers_by_nested_model_name_and_with_pruning_wrappers():
    inner = keras.Sequential([keras.Input((6,)), L.Dense(4, name="inner_dense")], name="backbone")
    inputs = keras.Input((6,))
    model = keras.Model(inputs, L.Dense(2, name="head")(inner(inputs)))
    qat = quantize_model(model, float_layers=["backbone"])
    assert type(qat.get_layer("inner_dense")).__name__ == "Dense"
    assert isinstance(qat.get_layer("quant_head"), QuantizeWrapper)
    pruned = pruning.prune_low_magnitude(model, pruning.ConstantSparsity(0.5, 0))
    qat = quantize_model(pruned, float_layers=["head"])  # the inner layer's name works too
    assert type(qat.get_layer("head")).__name__ == "Dense"


@pytest.mark.parametrize(
    "float_layers, error, match",
    [
        ("conv", TypeError, "must be a list, tuple or set"),
        ([3], TypeError, "must hold layer names"),
        (["conv", "nope"], ValueError, r"names \['nope'\].*Its layers and ops: \[.*'bn', 'conv'"),
    ],
)
def test_float_layers_bad_values_raise_and_leave_the_model_alone(float_layers, error, match):
    model = block_model()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        quantize_model(model, float_layers=float_layers)
    assert_unchanged(model, before)


# -- round trips ------------------------------------------------------------------


def test_quantized_transformer_saves_loads_and_its_layers_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    model = transformer_block()
    x, _ = synthetic_data(model, n=32)
    qat = quantize_model(model)
    qat(x, training=True)
    path = str(tmp_path / "qat.keras")
    qat.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(value(loaded(x)), value(qat(x)))
    kinds = set()
    for layer in qat.layers:
        if isinstance(layer, (QuantizeWrapper, QuantizeLayerNormalization, QuantizeMultiHeadAttention)):
            config = layer.get_config()
            assert type(layer).from_config(config).get_config() == config
            kinds.add(type(layer.layer).__name__)
    assert kinds == {"Embedding", "MultiHeadAttention", "LayerNormalization", "Dense"}


def test_quantize_apply_keeps_the_zeros_of_layers_it_leaves_float():
    from keras_compress.quantization import quantize_annotate_layer, quantize_apply

    inputs = keras.Input((8,))
    x = quantize_annotate_layer(L.Dense(6, name="annotated"))(inputs)
    outputs = L.Dense(3, name="plain")(x)
    model = keras.Model(inputs, outputs)
    prune_by_hand([model.get_layer("plain").kernel], 0.5)
    qat = quantize_apply(model)
    wrapper = qat.get_layer("sparse_plain")
    assert isinstance(wrapper, SparsityPreservingWrapper)
    zeros = value(wrapper.layer.kernel) == 0
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    compile_for(qat).fit(x, np.zeros(32, int), epochs=2, batch_size=8, verbose=0)
    assert np.all(value(wrapper.layer.kernel)[zeros] == 0)
