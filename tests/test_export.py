import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.tools import flatbuffer_utils

from conftest import assert_unchanged, compile_for_test, small_cnn, snapshot, toy_data, value
from keras_compress import evaluate_tflite, inspect_tflite, predict_tflite, to_tflite
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


def test_size_by_gzip_keeps_the_smaller_download():
    """At 80% zeros the sparse-encoded float file is the smaller file, but the
    dense one's runs of zero bytes gzip better: each measure keeps its winner."""
    import gzip

    model = pruned_mlp(0.8)
    files = {mode: to_tflite(model, sparse=mode) for mode in (True, False)}
    raw = {mode: len(f) for mode, f in files.items()}
    zipped = {mode: len(gzip.compress(f, compresslevel=9)) for mode, f in files.items()}
    by_raw, by_gzip = to_tflite(model), to_tflite(model, size_by="gzip")
    assert len(by_raw) == min(raw.values())
    assert len(gzip.compress(by_gzip, compresslevel=9)) == min(zipped.values())
    assert by_raw == files[min(raw, key=raw.get)] and by_gzip == files[min(zipped, key=zipped.get)]
    with pytest.raises(ValueError, match="to_tflite: size_by must be one of 'raw', 'gzip', got 'zip'."):
        to_tflite(model, size_by="zip")


def test_strip_names_removes_internal_names_and_changes_nothing_else():
    """The stripped file is smaller by the internal names' bytes (less the empty strings),
    keeps its input, output and signature names, computes the same outputs
    bit for bit, and has the same ops and tensor data."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = small_cnn()
    x = np.random.default_rng(0).normal(size=(16, 12, 12, 1)).astype("float32")
    for options in ({}, {"quantization": "int8", "representative_data": x}):
        full = to_tflite(model, **options)
        stripped = to_tflite(model, strip_names=True, **options)
        a = flatbuffer_utils.convert_bytearray_to_object(bytearray(full))
        b = flatbuffer_utils.convert_bytearray_to_object(bytearray(stripped))
        g, h = a.subgraphs[0], b.subgraphs[0]
        io = set(g.inputs) | set(g.outputs)
        names = [len(t.name) for i, t in enumerate(g.tensors) if i not in io]
        # Each name becomes an empty string: a length and a padded terminator, at most 8 bytes.
        assert sum(names) > 0 and len(stripped) <= len(full) - sum(names) + 8 * len(names)
        assert [h.tensors[i].name for i in io] == [g.tensors[i].name for i in io]
        assert all(not t.name for i, t in enumerate(h.tensors) if i not in io)
        assert [(o.opcodeIndex, list(o.inputs), list(o.outputs)) for o in g.operators] == \
               [(o.opcodeIndex, list(o.inputs), list(o.outputs)) for o in h.operators]
        assert [bytes(bb.data) if bb.data is not None else b"" for bb in a.buffers] == \
               [bytes(bb.data) if bb.data is not None else b"" for bb in b.buffers]
        assert [s.signatureKey for s in a.signatureDefs] == [s.signatureKey for s in b.signatureDefs]
        np.testing.assert_array_equal(predict_tflite(full, x), predict_tflite(stripped, x))
    with pytest.raises(TypeError, match="strip_names"):
        to_tflite(model, strip_names="yes")


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
    b, a = keras.Input((2,), name="b"), keras.Input((3,), name="a")
    model = keras.Model([b, a], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))
    flatbuffer = to_tflite(model, batch_size=None)
    details = load_interpreter(flatbuffer).get_input_details()
    assert [(d["name"], tuple(d["shape_signature"])) for d in details] == [("b", (-1, 2)), ("a", (-1, 3))]
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


class TwoLayerNet(keras.Model):
    """A subclassed model: no model.inputs, only a build config once called."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="relu", name="hidden")
        self.logits = keras.layers.Dense(3, name="logits")

    def call(self, x):
        return self.logits(self.hidden(x))


class PairNet(keras.Model):
    """Two inputs as a list, two outputs as a dict."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a = keras.layers.Dense(2, name="a")
        self.b = keras.layers.Dense(1, name="b")

    def call(self, inputs):
        first, second = inputs
        joined = keras.ops.concatenate([first, second], axis=-1)
        return {"scores": self.a(joined), "value": self.b(second)}


class TokenNet(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embedding = keras.layers.Embedding(20, 4, name="embedding")
        self.logits = keras.layers.Dense(3, name="logits")

    def call(self, tokens):
        return self.logits(keras.ops.mean(self.embedding(tokens), axis=1))


def test_a_subclassed_model_called_on_data_converts():
    net = TwoLayerNet(name="net")
    x = np.random.default_rng(0).normal(size=(16, 5)).astype("float32")
    net(x[:2])
    before = snapshot(net)
    for flatbuffer in (to_tflite(net), to_tflite(net, quantization="int8", representative_data=x)):
        info = inspect_tflite(flatbuffer)
        assert [(t.name, t.shape) for t in info.inputs] == [("input_0", (1, 5))]
        assert [t.name for t in info.outputs] == ["output_0"]
        np.testing.assert_allclose(predict_tflite(flatbuffer, x), value(net(x)), atol=0.1)
    np.testing.assert_allclose(predict_tflite(to_tflite(net), x), value(net(x)), rtol=1e-5, atol=1e-6)
    assert_unchanged(net, before)


def test_a_subclassed_model_with_list_inputs_and_dict_outputs_converts():
    net = PairNet()
    first, second = np.ones((4, 3), "float32"), np.arange(8, dtype="float32").reshape(4, 2)
    expected = net([first, second])
    info = inspect_tflite(flatbuffer := to_tflite(net, batch_size=None))
    assert [t.name for t in info.inputs] == ["input_0", "input_1"]
    assert [t.name for t in info.outputs] == ["scores", "value"]
    scores, score = predict_tflite(flatbuffer, [first, second])
    np.testing.assert_allclose(scores, value(expected["scores"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score, value(expected["value"]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "signature",
    [
        [keras.InputSpec(shape=(None, 6), dtype="int32")],
        keras.InputSpec(shape=(None, 6), dtype="int32"),
        ((None, 6), "int32"),
        [tf.TensorSpec((None, 6), tf.int32, name="tokens")],
    ],
    ids=["InputSpec list", "InputSpec", "pair", "TensorSpec"],
)
def test_input_signature_gives_a_subclassed_model_integer_inputs(signature):
    net = TokenNet()
    tokens = np.random.default_rng(0).integers(0, 20, (8, 6)).astype("int32")
    net(tokens)
    flatbuffer = to_tflite(net, input_signature=signature)
    (spec,) = inspect_tflite(flatbuffer).inputs
    assert spec.dtype == "int32" and spec.shape == (1, 6)
    assert spec.name == ("tokens" if isinstance(signature, list) and isinstance(signature[0], tf.TensorSpec) else "input_0")
    np.testing.assert_allclose(predict_tflite(flatbuffer, tokens), value(net(tokens)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make, kwargs, error, match",
    [
        (lambda: TwoLayerNet(name="fresh"), {}, ValueError,
         r"needs a built model with known inputs; model 'fresh' is not built: its weights do not exist yet. "
         r"Call it on a batch of data first \(model\(x\)\)"),
        (small_cnn, dict(input_signature=[((None, 12, 12, 1), "float32")] * 2), ValueError,
         r"input_signature describes 2 input\(s\), but model 'cnn' has 1"),
        (small_cnn, dict(input_signature=((None, 10, 10, 1), "float32")), ValueError,
         r"input_signature gives shape \(batch, 10, 10, 1\) for input 'input_layer\w*' of model 'cnn', "
         r"which expects \(batch, 12, 12, 1\)"),
        (small_cnn, dict(input_signature=["float32"]), TypeError, r"input_signature\[0\] must be a keras.InputSpec"),
        (small_cnn, dict(input_signature=[keras.InputSpec(ndim=4)]), ValueError,
         r"input_signature\[0\] needs a full shape with the batch axis first"),
        (small_cnn, dict(input_signature=[((None, 12, 12, 1), "float33")]), ValueError,
         r"input_signature\[0\] has an unknown dtype 'float33'"),
    ],
)
def test_bad_input_signatures_and_unbuilt_models_are_refused(make, kwargs, error, match):
    model = make()
    before = snapshot(model) if model.built else None
    with pytest.raises(error, match=match):
        to_tflite(model, **kwargs)
    if before is not None:
        assert_unchanged(model, before)


def test_pruned_weights_the_sparse_encoding_cannot_cover_are_named():
    from keras_compress.export import DenseZerosWarning

    tokens = keras.Input((10,), dtype="int32")
    x = keras.layers.Flatten()(keras.layers.Embedding(300, 16, name="table")(tokens))
    model = keras.Model(tokens, keras.layers.Dense(4, name="head")(x))
    rng = np.random.default_rng(0)
    for layer in (model.get_layer("table"), model.get_layer("head")):
        weights = layer.get_weights()
        weights[0][rng.permutation(weights[0].size).reshape(weights[0].shape) < 0.8 * weights[0].size] = 0
        layer.set_weights(weights)
    with pytest.warns(DenseZerosWarning, match=r"'table': 80% of 4,800 values, read by GATHER") as record:
        flatbuffer = to_tflite(model)
    assert len(record) == 1 and "'head'" not in str(record[0].message)  # its kernel is sparse-encoded
    info = inspect_tflite(flatbuffer)
    assert len(info.sparse_tensors) == 1  # the head's kernel; the table is not
    assert info.constant_bytes["float32"] >= 300 * 16 * 4  # the table, whole
    with warnings.catch_warnings():
        warnings.simplefilter("error", DenseZerosWarning)
        to_tflite(model, sparse=False)  # no encoding asked for: nothing to say


def test_converter_log_lines_stay_off_stderr_unless_asked(capfd, monkeypatch):
    model, x = small_cnn(), np.random.default_rng(0).random((8, 12, 12, 1), dtype=np.float32)
    capfd.readouterr()
    to_tflite(model, quantization="int8", representative_data=x)
    err = capfd.readouterr().err
    assert "fully_quantize" not in err and "loader.cc" not in err and "flatbuffer_export" not in err
    monkeypatch.setenv("KERAS_COMPRESS_CONVERTER_OUTPUT", "1")  # the same lines, shown
    to_tflite(model, quantization="int8", representative_data=x)
    assert "fully_quantize: 0" in capfd.readouterr().err


def test_captured_converter_output_keeps_warnings_and_quotes_a_failure(capfd):
    import os

    from keras_compress.export.converter_output import captured_converter_output

    with pytest.warns(UserWarning, match="a warning of ours"):
        with captured_converter_output():
            os.write(2, b"native line on fd 2\n")
            os.write(1, b"native line on fd 1\n")
            warnings.warn("a warning of ours", UserWarning)
    out, err = capfd.readouterr()
    assert "native line" not in out + err
    with pytest.raises(ValueError, match="bad model") as caught:
        with captured_converter_output():
            os.write(2, b"the converter's reason\n")
            raise ValueError("bad model")
    assert "the converter's reason" in "\n".join(caught.value.__notes__)
    os.write(2, b"after\n")  # the descriptors are back
    assert capfd.readouterr().err == "after\n"


def test_conversion_freezes_the_heap_for_tensorflows_collection_and_gives_it_back():
    """TensorFlow's converter runs gc.collect() per conversion; to_tflite
    freezes the objects that exist before it (so that collection scans only
    the conversion's own) and unfreezes them after, leaving a freeze the
    caller made alone. The file is the same either way."""
    import gc

    from keras_compress.export.conversion import frozen_heap

    model = small_cnn()
    assert gc.get_freeze_count() == 0
    with frozen_heap():
        inside = gc.get_freeze_count()
    assert inside > 1000 and gc.get_freeze_count() == 0
    seen = []
    collect = gc.collect

    def recording_collect(*args, **kwargs):
        seen.append(gc.get_freeze_count())
        return collect(*args, **kwargs)

    gc.collect = recording_collect
    try:
        plain = to_tflite(model)
    finally:
        gc.collect = collect
    assert seen and min(seen) > 1000  # TensorFlow's collection ran with the heap frozen
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        mine = gc.get_freeze_count()
        with frozen_heap():
            assert gc.get_freeze_count() == mine
        again = to_tflite(model)
        assert gc.get_freeze_count() == mine  # the caller's freeze is left as it was
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
    assert again == plain
