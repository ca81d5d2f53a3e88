import keras
import numpy as np
import pytest
from ai_edge_litert.tools import flatbuffer_utils

from conftest import assert_unchanged, compile_for_test, small_cnn, snapshot, toy_data, value
from keras_compress import evaluate_tflite, predict_tflite, to_tflite
from keras_compress.export import load_interpreter
from keras_compress.pruning import PruneWrapper, prune_low_magnitude, strip_pruning
from keras_compress.pruning.criteria import magnitude


def pruned_cnn(sparsity=0.8):
    model = prune_low_magnitude(small_cnn(), None)
    for w in model.layers:
        if isinstance(w, PruneWrapper):
            w.set_masks([magnitude(w.layer.kernel, sparsity)])
    return model


def sparse_tensors(flatbuffer):
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    return [t for t in model.subgraphs[0].tensors if t.sparsity is not None]


def buffer_bytes(flatbuffer):
    """Bytes of constant data (weights) in a flatbuffer, without names and metadata."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    return sum(len(b.data) for b in model.buffers if b.data is not None)


def pruned_mlp(sparsity):
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, name="wide"), keras.layers.Dense(10)])
    for layer in model.layers:
        layer.kernel.assign(value(magnitude(layer.kernel, sparsity)) * value(layer.kernel))
    return model


def test_float_conversion_matches_keras():
    model = small_cnn()
    x, _ = toy_data(16)
    flatbuffer = to_tflite(model)
    np.testing.assert_allclose(predict_tflite(flatbuffer, x), value(model(x)), rtol=1e-4, atol=1e-5)


def test_sparse_auto_encodes_pruned_weights_and_shrinks_the_file():
    model = pruned_mlp(0.8)
    auto, dense = to_tflite(model), to_tflite(model, sparse=False)
    assert len(sparse_tensors(auto)) == 2 and not sparse_tensors(dense)
    # 20% of the values plus 16-bit (or 8-bit) indices: well under half.
    assert len(auto) < 0.45 * len(dense)
    x = np.random.default_rng(0).normal(size=(8, 64)).astype("float32")
    np.testing.assert_allclose(predict_tflite(auto, x), predict_tflite(dense, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sparsity, encoded", [(0.5, False), (0.9, True)])
def test_sparse_auto_keeps_the_smaller_int8_file(sparsity, encoded):
    """int8 weights take 1 byte, so the encoding's indices outweigh what half
    zeros save: "auto" keeps the dense file there, and the sparse one at 90%."""
    model = pruned_mlp(sparsity)
    x = np.random.default_rng(0).normal(size=(32, 64)).astype("float32")
    files = {mode: to_tflite(model, quantization="int8", representative_data=x, sparse=mode)
             for mode in ("auto", True, False)}
    assert len(files["auto"]) == min(len(files[True]), len(files[False]))
    assert (len(files[True]) < len(files[False])) == encoded
    assert bool(sparse_tensors(files["auto"])) == encoded


def test_sparse_auto_leaves_a_dense_model_alone():
    model = small_cnn()
    assert to_tflite(model) == to_tflite(model, sparse=False)


def test_wrapped_model_converts_like_the_stripped_one():
    wrapped = pruned_cnn(0.7)
    x, _ = toy_data(8)
    a, b = to_tflite(wrapped), to_tflite(strip_pruning(wrapped))
    assert buffer_bytes(a) == buffer_bytes(b)  # masks folded into the weights, not stored
    assert len(sparse_tensors(a)) == len(sparse_tensors(b)) > 0
    np.testing.assert_allclose(predict_tflite(a, x), predict_tflite(b, x), rtol=1e-5, atol=1e-6)


def test_int8_modes_give_int8_weights_and_close_outputs():
    model = small_cnn()
    x, _ = toy_data(64)
    compile_for_test(model).fit(x, toy_data(64)[1], epochs=2, verbose=0)
    for mode in ("dynamic", "int8"):
        flatbuffer = to_tflite(model, quantization=mode, representative_data=x)
        interpreter = load_interpreter(flatbuffer, use_xnnpack=False)
        dtypes = {d["dtype"] for d in interpreter.get_tensor_details()}
        assert np.int8 in dtypes, mode
        ref = value(model(x[:8]))
        out = predict_tflite(flatbuffer, x[:8])
        assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max() + 0.05, mode
    with pytest.raises(ValueError, match="needs representative_data"):
        to_tflite(model, quantization="int8")
    with pytest.raises(ValueError, match=r"representative_data has shape \(4, 5\), but model 'cnn' expects \(batch, 12, 12, 1\)"):
        to_tflite(model, quantization="int8", representative_data=np.zeros((4, 5)))


def test_output_file_and_evaluate(tmp_path):
    model = small_cnn()
    x, y = toy_data(32)
    path = tmp_path / "m.tflite"
    flatbuffer = to_tflite(model, path)
    assert path.read_bytes() == flatbuffer
    expected = float(np.mean(value(model(x)).argmax(-1) == y))
    assert evaluate_tflite(path, x, y)["accuracy"] == pytest.approx(expected)
    assert evaluate_tflite(flatbuffer, x, np.eye(3)[y])["accuracy"] == pytest.approx(expected)


def test_dynamic_batch_and_multi_input():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))
    flatbuffer = to_tflite(model, batch_size=None)
    names = sorted(d["name"] for d in load_interpreter(flatbuffer).get_input_details())
    assert any("a" in n for n in names) and len(names) == 2
    single = to_tflite(small_cnn(), batch_size=None)
    x, _ = toy_data(5)
    np.testing.assert_allclose(predict_tflite(single, x).shape, (5, 3))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(sparse="yes"), ValueError, "sparse must be 'auto', True or False"),
        (dict(quantization="int4"), ValueError, "quantization must be one of"),
        (dict(batch_size=0), ValueError, "batch_size must be an int >= 1 or None"),
        (dict(output=3), TypeError, "output must be a file path"),
        (dict(quantization="int8", representative_data=np.zeros((4, 12, 12, 1)), calibration_steps=0), ValueError, "calibration_steps must be an int >= 1"),
    ],
)
def test_invalid_conversion_arguments_leave_the_model_unchanged(kwargs, error, match):
    model = small_cnn()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        to_tflite(model, **kwargs)
    assert_unchanged(model, before)


def test_unbuilt_and_non_models_are_refused():
    with pytest.raises(ValueError, match="needs a built model"):
        to_tflite(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(TypeError, match="expects a keras.Model"):
        to_tflite(keras.layers.Dense(2))


def test_not_a_tflite_file(tmp_path):
    bad = tmp_path / "notes.tflite"
    bad.write_text("hello, this is not a flatbuffer")
    with pytest.raises(ValueError, match="is not a TFLite flatbuffer"):
        predict_tflite(bad, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="No TFLite file at"):
        evaluate_tflite(tmp_path / "missing.tflite", np.zeros((1, 3)), np.zeros(1))
    with pytest.raises(TypeError, match="Expected TFLite flatbuffer bytes or a .tflite path"):
        load_interpreter(12)


def test_wrong_input_shape_and_labels():
    flatbuffer = to_tflite(small_cnn())
    with pytest.raises(ValueError, match=r"x has shape \(2, 5, 5, 1\), but the model's input .* expects \(batch, 12, 12, 1\)"):
        predict_tflite(flatbuffer, np.zeros((2, 5, 5, 1), "float32"))
    with pytest.raises(ValueError, match="x has 2 samples but y has 3"):
        evaluate_tflite(flatbuffer, np.zeros((2, 12, 12, 1), "float32"), np.zeros(3))
