"""fidelity_report: where a TFLite file departs from its Keras model, layer by layer."""

import json
import sys

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from ai_edge_litert.tools import flatbuffer_utils

import keras_compress as kc
from architectures import frozen_backbone, synthetic_data, two_in_two_out
from conftest import assert_unchanged, compile_for_test, snapshot, trained_small_cnn, value
from keras_compress import quantization
from keras_compress._models import walk_layers
from keras_compress.export.fidelity import MAX_SNR_DB, FidelityReport, fidelity_metrics, fidelity_report

L = keras.layers


@pytest.fixture(scope="module")
def cnn():
    """The conftest CNN trained a little, its data, and its int8 file."""
    model, x, y = trained_small_cnn(7, 256, epochs=3)
    return model, x, y, kc.to_tflite(model, quantization="int8", representative_data=x)


def copy_of(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def most_active_channel(model, layer, x):
    activations = value(keras.Model(model.inputs[0], model.get_layer(layer).output)(x))
    return int(np.argmax(activations.reshape(-1, activations.shape[-1]).mean(0)))


def with_outlier_channel(model, x, factor=1000.0):
    """conv_b's busiest output channel scaled up `factor` times and dense_a's
    weights reading it scaled down as much: ReLU commutes with a positive
    scale, so the Keras model computes the same, but conv_b's per-tensor int8
    range now spans that channel and crushes the seven others to a step."""
    broken = copy_of(model)
    channel = most_active_channel(broken, "conv_b", x)
    conv, dense = broken.get_layer("conv_b"), broken.get_layer("dense_a")
    kernel, bias = conv.get_weights()
    kernel[..., channel] *= factor
    bias[channel] *= factor
    conv.set_weights([kernel, bias])
    dense_kernel, dense_bias = dense.get_weights()
    dense_kernel[channel::8] /= factor  # Flatten puts channel c of each pixel at c, c + 8, ...
    dense.set_weights([dense_kernel, dense_bias])
    return broken


def with_crushed_weights(model, factor=1000.0):
    """dense_a given huge weights on inputs that are always zero (a dead
    conv_b channel): the Keras model ignores them, but each unit's int8
    weight scale spans them and rounds its real weights to zero."""
    broken = copy_of(model)
    conv, dense = broken.get_layer("conv_b"), broken.get_layer("dense_a")
    kernel, bias = conv.get_weights()
    kernel[..., 0], bias[0] = 0.0, -1.0  # channel 0 is 0 after the ReLU, always
    conv.set_weights([kernel, bias])
    dense_kernel, dense_bias = dense.get_weights()
    dense_kernel[0::8] = factor * np.abs(dense_kernel).max()
    dense.set_weights([dense_kernel, dense_bias])
    return broken


def nested_model():
    """A Functional model around a Sequential backbone, with names that
    collide once TensorFlow suffixes its scopes ('dense' here and in the
    backbone, 'dense_1')."""
    backbone = keras.Sequential(
        [
            keras.Input((10, 10, 3)),
            L.Conv2D(8, 3, name="bconv"),
            L.BatchNormalization(name="bbn"),
            L.ReLU(name="brelu"),
            L.Conv2D(8, 3, padding="same", name="dense"),
            L.Activation("relu", name="dense_1"),
        ],
        name="backbone",
    )
    images = keras.Input((10, 10, 3), name="images")
    h = L.Conv2D(3, 1, name="pre")(images)
    h = backbone(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    h = L.Dense(6, activation="relu", name="dense")(h)
    return keras.Model(images, L.Dense(3, name="logits")(h), name="outer")


# -- metrics --------------------------------------------------------------------------


def test_metrics_follow_their_formulas():
    ref = np.array([[3.0, 4.0], [0.0, 2.0]])
    tflite = np.array([[3.0, 4.5], [1.0, 2.0]])
    metrics = fidelity_metrics(ref, tflite)
    # Signal 9 + 16 + 0 + 4 = 29, noise 0 + 0.25 + 1 + 0 = 1.25.
    assert metrics["snr_db"] == pytest.approx(10 * np.log10(29 / 1.25))
    assert metrics["relative_error"] == pytest.approx(np.sqrt(1.25 / 29))
    # <ref, tflite> = 9 + 18 + 0 + 4 = 31, ||tflite||^2 = 9 + 20.25 + 1 + 4.
    assert metrics["cosine"] == pytest.approx(31 / np.sqrt(29 * 34.25))
    assert metrics["max_abs_error"] == pytest.approx(1.0)
    # Channel 0: 9 over 1 (9.54 dB); channel 1: 20 over 0.25 (19.03 dB); median of two.
    assert metrics["channel_snr_db"] == pytest.approx((10 * np.log10(9) + 10 * np.log10(80)) / 2)

    exact = fidelity_metrics(ref, ref)
    assert (exact["snr_db"], exact["relative_error"], exact["cosine"]) == (MAX_SNR_DB, 0.0, 1.0)
    zeros = np.zeros((2, 3))
    assert fidelity_metrics(zeros, zeros)["channel_snr_db"] is None  # no channel carries signal
    wrong = fidelity_metrics(zeros, np.ones((2, 3)))
    assert (wrong["snr_db"], wrong["cosine"], wrong["relative_error"]) == (-MAX_SNR_DB, 0.0, np.inf)
    with pytest.raises(ValueError, match="shape"):
        fidelity_metrics(ref, tflite[:1])


def test_rows_measure_the_files_own_tensors(cnn):
    """A row's numbers, recomputed here from the intermediate tensor read
    straight from LiteRT and dequantized by hand, and from the Keras layer's
    output."""
    model, x, _, flatbuffer = cnn
    report = fidelity_report(model, flatbuffer, x[:16])
    row = report.row("conv_b")
    assert (row.status, row.tflite_ops, row.dtype, row.shape) == ("compared", ("CONV_2D",), "int8", (3, 3, 8))
    interpreter = Interpreter(
        model_content=flatbuffer,
        experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    details = {d["name"]: d for d in interpreter.get_tensor_details()}[row.tflite_tensor]
    scale, zero_point = details["quantization"]
    tflite = []
    for sample in x[:16]:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], sample[None])
        interpreter.invoke()
        tflite.append((interpreter.get_tensor(details["index"]).astype("float64") - zero_point) * scale)
    tflite = np.concatenate(tflite)
    ref = value(keras.Model(model.inputs[0], model.get_layer("conv_b").output)(x[:16])).astype("float64")
    noise = np.sum((ref - tflite) ** 2)
    assert row.snr_db == pytest.approx(10 * np.log10(np.sum(ref**2) / noise), rel=1e-6)
    assert row.cosine == pytest.approx(np.sum(ref * tflite) / np.sqrt(np.sum(ref**2) * np.sum(tflite**2)))
    assert row.max_abs_error == pytest.approx(np.abs(ref - tflite).max(), rel=1e-5)


# -- whole models -----------------------------------------------------------------------


def test_float_file_reproduces_every_layer(cnn):
    model, x, _, _ = cnn
    before = snapshot(model)
    report = fidelity_report(model, kc.to_tflite(model), x[:32])
    assert isinstance(report, FidelityReport)
    assert [(r.layer, r.status) for r in report.rows] == [(l.name, "compared") for l in model.layers]
    for row in report.rows:
        assert row.snr_db > 60 and row.cosine > 0.99999 and row.relative_error < 1e-3, row
        assert row.dtype == "float32"
    assert report.agreement == {"logits": 1.0}
    assert report.first_divergent_layer is None
    assert report.samples == 32
    assert_unchanged(model, before)


def test_healthy_int8_file_has_no_divergent_layer(cnn):
    model, x, _, flatbuffer = cnn
    report = fidelity_report(model, flatbuffer, x[:64])
    assert report.first_divergent_layer is None
    assert report.agreement["logits"] >= 0.9
    assert all(25 < r.snr_db < 60 and r.dtype == "int8" for r in report.compared)
    assert "no layer loses more than 10 dB" in str(report)
    # int8 inputs and outputs are quantized and dequantized with their own
    # scales: the same layers, the same errors.
    int8_io = fidelity_report(model, kc.to_tflite(model, quantization="int8", representative_data=x,
                                                  int8_io=True), x[:64])
    assert [r.layer for r in int8_io.compared] == [r.layer for r in report.compared]
    for a, b in zip(int8_io.compared, report.compared):
        assert a.snr_db == pytest.approx(b.snr_db, abs=1.0)


def test_outlier_activation_range_is_found_where_pooled_snr_hides_it(cnn):
    model, x, _, _ = cnn
    broken = with_outlier_channel(model, x)
    np.testing.assert_allclose(value(broken(x[:32])), value(model(x[:32])), rtol=1e-4, atol=1e-4)
    report = fidelity_report(broken, kc.to_tflite(broken, quantization="int8", representative_data=x), x[:64])
    assert report.first_divergent_layer == "conv_b"
    conv_b = report.row("conv_b")
    # The outlier channel dominates the pooled power, so pooled SNR looks
    # healthy; the median channel is crushed, and so is everything after.
    assert conv_b.snr_db > 30 and conv_b.channel_snr_db < 10
    assert report.row("dense_a").snr_db < 10
    assert report.row("conv_a").snr_drop_db < 10
    assert report.agreement["logits"] < 0.6
    assert "first divergent layer: 'conv_b'" in report.summary()

    # The crushed tensor is requantized wherever an int8 op reads it: with
    # conv_b float, the report moves the blame to the Flatten that does.
    float_conv = kc.to_tflite(broken, quantization="int8", representative_data=x, float_layers=["conv_b"])
    moved = fidelity_report(broken, float_conv, x[:64])
    assert moved.row("conv_b").dtype == "float32"
    assert moved.first_divergent_layer == "flatten"


def test_crushed_weights_are_found_and_keeping_the_layer_float_restores_agreement(cnn):
    model, x, _, _ = cnn
    broken = with_crushed_weights(model)
    report = fidelity_report(broken, kc.to_tflite(broken, quantization="int8", representative_data=x), x[:64])
    assert report.first_divergent_layer == "dense_a"
    assert report.row("flatten").snr_drop_db < 10
    assert report.agreement["logits"] < 0.6

    fixed = kc.to_tflite(broken, quantization="int8", representative_data=x, float_layers=["dense_a"])
    fixed_report = fidelity_report(broken, fixed, x[:64])
    assert fixed_report.row("dense_a").dtype == "float32"
    assert fixed_report.agreement["logits"] >= 0.9
    assert fixed_report.first_divergent_layer is None


def test_quantize_model_float_layers_leaves_the_divergent_layer_float(cnn):
    model, x, _, _ = cnn
    qat = quantization.quantize_model(with_crushed_weights(model), float_layers=["dense_a"])
    dense_a = [l for l in walk_layers(qat) if l.name == "dense_a"]
    assert len(dense_a) == 1 and type(dense_a[0]) is L.Dense
    assert not any(getattr(getattr(l, "layer", None), "name", None) == "dense_a" for l in walk_layers(qat))


def test_quantize_model_float_layers_keeps_the_layer_float_in_the_file(cnn):
    model, x, y, _ = cnn
    qat = quantization.quantize_model(with_crushed_weights(model), float_layers=["dense_a"])
    report = fidelity_report(qat, kc.to_tflite(qat, quantization="int8"), x[:32])
    row = report.row("dense_a")
    computed_by = row if row.status == "compared" else report.row(row.fused_into)
    assert computed_by.dtype == "float32"
    assert report.first_divergent_layer is None


def test_quantization_aware_model_matches_its_file_closely(cnn):
    model, x, y, _ = cnn
    qat = compile_for_test(quantization.quantize_model(model))
    qat.fit(x, y, epochs=1, verbose=0)
    flatbuffer = kc.to_tflite(qat, quantization="int8")
    before = snapshot(qat)  # activation ranges included: inference must not move them
    report = fidelity_report(qat, flatbuffer, x[:64])
    assert_unchanged(qat, before)
    # Each QuantizeWrapper's int8 op outputs what its activation quantizer
    # computes: the wrapper is fused into it, and the two agree to rounding.
    assert report.row("quant_conv_b").status == "fused"
    assert report.row("quant_conv_b").fused_into == "conv_b_quant"
    assert report.row("conv_b_quant").tflite_ops == ("CONV_2D",)
    # conv_a's range is learned after the max pooling that alone reads it
    # (the same int8 values, a quarter of the fake quantization): its CONV_2D
    # is compared with the wrapper's output, the pooling with the quantizer's.
    assert report.row("quant_conv_a").tflite_ops == ("CONV_2D",)
    assert report.row("pool").fused_into == "conv_a_quant"
    assert report.row("conv_a_quant").tflite_ops == ("MAX_POOL_2D",)
    assert all(r.snr_db > 40 and r.dtype == "int8" for r in report.compared), str(report)
    assert report.first_divergent_layer is None
    assert report.agreement == {"logits": 1.0}


def test_nested_model_with_fused_layers_and_colliding_names():
    keras.utils.set_random_seed(3)
    model = nested_model()
    x = np.random.default_rng(0).normal(size=(64, 10, 10, 3)).astype("float32")
    model(x, training=True)  # BatchNormalization statistics of their own
    report = fidelity_report(model, kc.to_tflite(model), x[:16])
    rows = {r.name: r for r in report.rows}
    assert list(rows) == ["pre", "backbone/bconv", "backbone/bbn", "backbone/brelu", "backbone/dense",
                          "backbone/dense_1", "gap", "dense", "logits"]
    # Conv2D + BatchNormalization + ReLU are one CONV_2D, reported under the ReLU.
    assert [(rows[n].status, rows[n].fused_into) for n in ("backbone/bconv", "backbone/bbn")] == [
        ("fused", "brelu"), ("fused", "brelu")]
    assert rows["backbone/brelu"].tflite_ops == ("CONV_2D",)
    assert (rows["backbone/dense"].status, rows["backbone/dense"].fused_into) == ("fused", "dense_1")
    assert rows["dense"].tflite_ops == ("FULLY_CONNECTED",) and rows["dense"].shape == (6,)
    assert all(r.snr_db > 60 for r in report.compared)

    int8 = fidelity_report(model, kc.to_tflite(model, quantization="int8", representative_data=x), x)
    assert [r.name for r in int8.compared] == [r.name for r in report.compared]
    assert all(r.snr_db > 20 for r in int8.compared)
    assert int8.first_divergent_layer is None


def op_name(model, kind):
    """The name Keras gave the model's op of class `kind` (its counter depends
    on the ops created before in the process: "true_divide_3")."""
    return next(op.name for op in model.operations if type(op).__name__ == kind)


def test_transfer_model_maps_every_layer_of_its_backbone():
    """A frozen MobileNetV2 inside a Functional model, behind preprocess_input's
    raw Keras ops: every layer is compared or fused, none is lost."""
    keras.utils.set_random_seed(6)
    model = frozen_backbone()
    x, _ = synthetic_data(model, 8)
    report = fidelity_report(model, kc.to_tflite(model), x)
    assert not [r.name for r in report.rows if r.status == "unmapped"]
    assert all(r.snr_db > 60 for r in report.compared)
    # preprocess_input's x / 127.5 - 1 has no name in the file: found by value.
    divide, subtract = op_name(model, "TrueDivide"), op_name(model, "Subtract")
    assert [report.row(n).tflite_ops for n in (divide, subtract)] == [("MUL",), ("SUB",)]
    backbone = "mobilenetv2_0.35_32"
    assert report.row(f"{backbone}/bn_Conv1").fused_into == "Conv1_relu"
    assert report.row(f"{backbone}/block_1_project").fused_into == "block_1_project_BN"
    assert report.row(f"{backbone}/block_2_add").tflite_ops == ("ADD",)
    assert (report.row("dropout").status, report.row("dropout").fused_into) == ("fused", "logits")
    assert len(report.compared) == 66


def test_shared_layer_calls_and_keras_ops_are_compared_separately():
    keras.utils.set_random_seed(4)
    images = keras.Input((6, 6, 3), name="images")
    shared = L.Dense(4, name="dense")
    a = shared(L.Conv2D(4, 3, name="conv")(images))
    b = shared(keras.ops.relu(a) * 0.5)
    outputs = L.Dense(5, activation="softmax", name="dense_1")(L.Flatten(name="flat")(a + b))
    model = keras.Model(images, outputs, name="shared")
    x = np.random.default_rng(0).normal(size=(16, 6, 6, 3)).astype("float32")
    report = fidelity_report(model, kc.to_tflite(model), x)
    calls = [r for r in report.rows if r.layer == "dense"]
    assert [(r.call, r.status) for r in calls] == [(1, "compared"), (2, "compared")]
    assert calls[0].tflite_tensor != calls[1].tflite_tensor
    assert report.row("dense_1").tflite_ops == ("FULLY_CONNECTED", "SOFTMAX")
    assert all(r.snr_db > 60 for r in report.compared)
    # The ReLU TFLite fuses into the first call's op, the scaling into the second call's weights.
    assert report.row(op_name(model, "Multiply")).status == "fused"


def test_several_inputs_and_outputs_in_the_files_own_order():
    keras.utils.set_random_seed(5)
    model = two_in_two_out()
    rng = np.random.default_rng(0)
    numbers = rng.normal(size=(16, 8)).astype("float32")
    image = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    flatbuffer = kc.to_tflite(model)
    by_list = fidelity_report(model, flatbuffer, [numbers, image])
    by_name = fidelity_report(model, flatbuffer, {"image": image, "numbers": numbers})
    assert by_list.agreement == by_name.agreement == {"zeta_class": 1.0, "alpha_score": None}
    assert [r.snr_db for r in by_list.rows] == [r.snr_db for r in by_name.rows]
    assert all(r.snr_db > 60 for r in by_list.compared)


# -- outputs ---------------------------------------------------------------------------


def test_plot_json_and_model_explorer_files(cnn, tmp_path):
    model, x, _, _ = cnn
    broken = with_outlier_channel(model, x)
    flatbuffer = kc.to_tflite(broken, quantization="int8", representative_data=x)
    report = fidelity_report(broken, flatbuffer, x[:32])

    figure = report.plot(tmp_path / "fidelity.png")
    assert (tmp_path / "fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == [r.layer for r in report.compared]
    assert "first divergent: conv_b" in [t.get_text() for t in figure.axes[0].get_legend().get_texts()]

    document = json.loads(report.to_json(tmp_path / "fidelity.json"))
    assert json.loads((tmp_path / "fidelity.json").read_text()) == document
    assert document["first_divergent_layer"] == "conv_b"
    assert [d["layer"] for d in document["layers"]] == [r.layer for r in report.rows]
    assert document["layers"][2]["snr_db"] == report.rows[2].snr_db

    report.write_model_explorer(tmp_path / "node_data.json", metric="channel_snr_db")
    node_data = json.loads((tmp_path / "node_data.json").read_text())
    graph = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer)).subgraphs[0]
    op_outputs = {graph.tensors[t].name.decode() for op in graph.operators for t in op.outputs}
    assert set(node_data["results"]) == {r.tflite_tensor for r in report.compared}
    assert set(node_data["results"]) <= op_outputs
    conv_b = report.row("conv_b")
    shown = node_data["results"][conv_b.tflite_tensor]["value"]
    assert shown == pytest.approx(conv_b.channel_snr_db, abs=1e-3)
    assert [g["stop"] for g in node_data["gradient"]] == [0, 0.5, 1]


def test_plot_without_matplotlib_names_the_extra(cnn, monkeypatch):
    model, x, _, _ = cnn
    report = fidelity_report(model, kc.to_tflite(model), x[:4])
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"keras-compress\[plot\]"):
        report.plot()


# -- bad inputs -----------------------------------------------------------------------


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = L.Dense(3)

    def call(self, x):
        return self.dense(x)


def test_bad_arguments_are_refused_and_the_model_is_left_alone(cnn):
    model, x, _, flatbuffer = cnn
    before = snapshot(model)
    subclassed = Subclassed()
    subclassed(np.zeros((1, 4), "float32"))
    cases = [
        (TypeError, "keras.Model", lambda: fidelity_report("model", flatbuffer, x)),
        (ValueError, "subclassed", lambda: fidelity_report(subclassed, flatbuffer, x)),
        (TypeError, "bytes or a .tflite path", lambda: fidelity_report(model, 42, x)),
        (ValueError, "not a TFLite flatbuffer", lambda: fidelity_report(model, b"not a model at all", x)),
        (ValueError, "No TFLite file", lambda: fidelity_report(model, "/nonexistent/model.tflite", x)),
        (ValueError, r"shape \(4, 12, 12\)", lambda: fidelity_report(model, flatbuffer, x[:4, ..., 0])),
        (ValueError, "2 arrays", lambda: fidelity_report(model, flatbuffer, [x, x])),
        (ValueError, "keys", lambda: fidelity_report(model, flatbuffer, {"pixels": x})),
        (ValueError, "dtype", lambda: fidelity_report(model, flatbuffer, np.full((2, 12, 12, 1), "a"))),
        (TypeError, "numpy array", lambda: fidelity_report(model, flatbuffer, None)),
        (ValueError, "no samples", lambda: fidelity_report(model, flatbuffer, x[:0])),
        (ValueError, "max_samples", lambda: fidelity_report(model, flatbuffer, x, max_samples=0)),
        (ValueError, "num_threads", lambda: fidelity_report(model, flatbuffer, x, num_threads=0)),
        (ValueError, "threshold_db", lambda: fidelity_report(model, flatbuffer, x, threshold_db=-1)),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()
    assert_unchanged(model, before)


def test_a_file_of_another_model_is_refused(cnn):
    model, x, _, flatbuffer = cnn
    wider = keras.Sequential([keras.Input((14, 14, 1)), L.Conv2D(4, 3, name="conv_a"), L.Flatten(),
                              L.Dense(3, name="logits")], name="wider")
    with pytest.raises(ValueError, match=r"per-sample shape \(12, 12, 1\).*\(14, 14, 1\)"):
        fidelity_report(wider, flatbuffer, np.zeros((2, 14, 14, 1), "float32"))
    with pytest.raises(ValueError, match="2 input.*has 1"):
        fidelity_report(two_in_two_out(), flatbuffer, [np.zeros((2, 8)), np.zeros((2, 8, 8, 1))])
    four_classes = keras.Sequential([keras.Input((12, 12, 1)), L.Flatten(), L.Dense(4)], name="four")
    with pytest.raises(ValueError, match=r"outputs of per-sample shapes \(4,\).*\(3,\)"):
        fidelity_report(four_classes, flatbuffer, x[:2])
    stranger = keras.Sequential(
        [keras.Input((12, 12, 1)), L.Flatten(name="squash"), L.Dense(3, name="guess")], name="stranger"
    )
    with pytest.raises(ValueError, match="no layer of model 'stranger' is found"):
        fidelity_report(stranger, flatbuffer, x[:8])
    report = fidelity_report(model, flatbuffer, x[:4])
    with pytest.raises(ValueError, match="metric must be one of"):
        report.write_model_explorer("node_data.json", metric="psnr")
