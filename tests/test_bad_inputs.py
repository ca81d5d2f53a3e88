"""Every public function against the bad arguments it can get.

Each row: the API, a call with one bad argument, the exception type and the
words the message must hold (the thing that is wrong and what is accepted).
Where a model goes in, its weights and structure are compared before and
after: a refused call leaves the user's model untouched.
"""

import keras
import numpy as np
import pytest
from conftest import assert_unchanged, small_cnn, snapshot, toy_data

import keras_compress as kc
import tflite_bench
from keras_compress import datasets, distillation, pruning, quantization
from keras_compress.pruning import criteria

X, Y = toy_data(8)
SCHEDULE = pruning.PolynomialDecay(0.0, 0.5, 0, 10, frequency=1)


def _nan_model():
    model = small_cnn()
    kernel, bias = model.get_layer("dense_a").get_weights()
    kernel[0, 0] = np.nan
    model.get_layer("dense_a").set_weights([kernel, bias])
    return model


def _inf_model():
    model = small_cnn()
    kernel, bias = model.get_layer("conv_a").get_weights()
    bias[1] = np.inf
    model.get_layer("conv_a").set_weights([kernel, bias])
    return model


def _unbuilt():
    return keras.Sequential([keras.layers.Dense(3)])


def _empty_generator():
    return iter(())


@pytest.fixture(scope="module")
def tflite_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "m.tflite"
    kc.to_tflite(small_cnn(), path)
    return str(path)


@pytest.fixture(scope="module")
def not_tflite(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "notes.tflite"
    path.write_bytes(b"these are not the bytes of a model")
    return str(path)


# (id, model factory or None, call(model, files), exception, regex the message matches)
CASES = [
    # pruning
    ("prune: schedule type", small_cnn, lambda m, f: pruning.prune_low_magnitude(m, "50%"),
     TypeError, r"pruning_schedule.*PruningSchedule"),
    ("prune: unknown layer", small_cnn, lambda m, f: pruning.prune_low_magnitude(m, SCHEDULE, layers=["nope"]),
     ValueError, r"'nope', which is not a layer of model 'cnn'. Its layers are: conv_a"),
    ("prune: unbuilt model", _unbuilt, lambda m, f: pruning.prune_low_magnitude(m, SCHEDULE),
     ValueError, r"needs a built model with known inputs; model 'sequential\w*'"),
    ("prune: not a model", None, lambda m, f: pruning.prune_low_magnitude("model", SCHEDULE),
     TypeError, r"expects a keras.Model \(Sequential or Functional\), got str"),
    ("prune: NaN weights", _nan_model, lambda m, f: pruning.prune_low_magnitude(m, SCHEDULE),
     ValueError, r"dense_a.*(NaN|non-finite)"),
    ("prune: Inf weights", _inf_model, lambda m, f: pruning.prune_low_magnitude(m, SCHEDULE),
     ValueError, r"conv_a.*(Inf|non-finite)"),
    ("schedule: sparsity > 1", None, lambda m, f: pruning.PolynomialDecay(0.0, 1.5, 0, 10),
     ValueError, r"PolynomialDecay: final_sparsity must be a number in \[0, 1\)"),
    ("schedule: sparsity < 0", None, lambda m, f: pruning.ConstantSparsity(-0.1, 0),
     ValueError, r"ConstantSparsity: target_sparsity must be a number in \[0, 1\)"),
    ("schedule: end before begin", None, lambda m, f: pruning.PolynomialDecay(0.0, 0.5, 10, 5),
     ValueError, r"PolynomialDecay: end_step must be greater than begin_step"),
    ("schedule: frequency type", None, lambda m, f: pruning.PolynomialDecay(0.0, 0.5, 0, 10, frequency=0.5),
     TypeError, r"PolynomialDecay: frequency must be an int >= 1, got 0.5"),
    ("L1: negative strength", None, lambda m, f: pruning.L1Regularization(-1.0),
     ValueError, r"strength|l1"),
    ("threshold: no threshold", None, lambda m, f: pruning.ThresholdPruning(),
     ValueError, r"threshold"),
    ("threshold: both thresholds", None, lambda m, f: pruning.ThresholdPruning(threshold=0.1, relative_threshold=0.1),
     ValueError, r"threshold"),
    ("strip: not a model", None, lambda m, f: pruning.strip_pruning(42),
     TypeError, r"strip_pruning expects a keras.Model \(Sequential or Functional\), got int"),
    ("report: not a model", None, lambda m, f: pruning.sparsity_report("x"),
     TypeError, r"sparsity_report expects a keras.Model, got str"),
    ("criteria: sparsity 1.5", None, lambda m, f: criteria.magnitude(np.ones(4), 1.5),
     ValueError, r"criteria.magnitude: sparsity must be in \[0, 1\]"),
    ("criteria: negative epsilon", None, lambda m, f: criteria.threshold(np.ones(4), -1.0),
     ValueError, r"criteria.threshold: epsilon must be a number >= 0"),
    # quantization
    ("qat: not a model", None, lambda m, f: quantization.quantize_model("model"),
     TypeError, r"quantize_model expects a keras.Model \(Sequential or Functional\)"),
    ("qat: unbuilt model", _unbuilt, lambda m, f: quantization.quantize_model(m),
     ValueError, r"needs a built model with known inputs; model 'sequential\w*'"),
    ("qat: NaN weights", _nan_model, lambda m, f: quantization.quantize_model(m),
     ValueError, r"dense_a.*(NaN|non-finite)"),
    ("qat: annotate a non-layer", None, lambda m, f: quantization.quantize_annotate_layer("dense"),
     TypeError, r"expects a keras layer"),
    ("qat: ema_decay 1.5", None, lambda m, f: quantization.ActivationQuantizer(ema_decay=1.5),
     ValueError, r"ema_decay"),
    ("qat: wrapper activation", None,
     lambda m, f: quantization.QuantizeWrapper(keras.layers.Dense(2), activation="gelu"),
     ValueError, r"activation.*relu"),
    # conversion
    ("to_tflite: mode", small_cnn, lambda m, f: kc.to_tflite(m, quantization="int4"),
     ValueError, r"quantization.*'int8'"),
    ("to_tflite: int8 without data", small_cnn, lambda m, f: kc.to_tflite(m, quantization="int8"),
     ValueError, r"representative_data"),
    ("to_tflite: data of the wrong shape", small_cnn,
     lambda m, f: kc.to_tflite(m, quantization="int8", representative_data=np.zeros((4, 28, 28, 1), "float32")),
     ValueError, r"\(batch, 12, 12, 1\)"),
    ("to_tflite: empty data", small_cnn,
     lambda m, f: kc.to_tflite(m, quantization="int8", representative_data=np.zeros((0, 12, 12, 1), "float32")),
     ValueError, r"representative_data is empty"),
    ("to_tflite: empty generator", small_cnn,
     lambda m, f: kc.to_tflite(m, quantization="int8", representative_data=_empty_generator()),
     ValueError, r"representative_data is empty"),
    ("to_tflite: int8_io without int8", small_cnn, lambda m, f: kc.to_tflite(m, int8_io=True),
     ValueError, r"int8_io"),
    ("to_tflite: calibration_steps 0", small_cnn,
     lambda m, f: kc.to_tflite(m, quantization="int8", representative_data=X, calibration_steps=0),
     ValueError, r"calibration_steps"),
    ("to_tflite: unbuilt model", _unbuilt, lambda m, f: kc.to_tflite(m),
     ValueError, r"needs a built model with known inputs; model 'sequential\w*'"),
    ("to_tflite: NaN weights", _nan_model, lambda m, f: kc.to_tflite(m),
     ValueError, r"dense_a.*(NaN|non-finite)"),
    ("inspect: not TFLite", None, lambda m, f: kc.inspect_tflite(f["not_tflite"]),
     ValueError, r"not a TFLite flatbuffer"),
    ("inspect: missing file", None, lambda m, f: kc.inspect_tflite("/nonexistent/m.tflite"),
     ValueError, r"No TFLite file at '/nonexistent/m.tflite'"),
    ("inspect: wrong type", None, lambda m, f: kc.inspect_tflite(3),
     TypeError, r"bytes or a .tflite path"),
    ("predict: wrong input shape", None, lambda m, f: kc.predict_tflite(f["tflite"], np.zeros((2, 28, 28, 1))),
     ValueError, r"expects \(batch, 12, 12, 1\)"),
    ("evaluate: x and y lengths", None, lambda m, f: kc.evaluate_tflite(f["tflite"], X, Y[:3]),
     ValueError, r"8 samples but y has 3"),
    ("evaluate: empty", None, lambda m, f: kc.evaluate_tflite(f["tflite"], X[:0], Y[:0]),
     ValueError, r"empty"),
    # distillation
    ("distiller: student type", small_cnn, lambda m, f: distillation.Distiller(student="s", teacher=m),
     TypeError, r"student must be a keras.Model, got str"),
    ("distiller: no teacher", small_cnn, lambda m, f: distillation.Distiller(student=m, teacher=None),
     TypeError, r"teacher must be a keras.Model, got NoneType"),
    ("distiller: NaN teacher", _nan_model, lambda m, f: distillation.Distiller(student=small_cnn("s"), teacher=m),
     ValueError, r"dense_a.*(NaN|non-finite)"),
    ("distiller: alpha 1.5", small_cnn,
     lambda m, f: distillation.Distiller(student=small_cnn("s"), teacher=m).compile(optimizer="adam", alpha=1.5),
     ValueError, r"alpha.*\[0, 1\]"),
    ("distiller: temperature 0", small_cnn,
     lambda m, f: distillation.Distiller(student=small_cnn("s"), teacher=m).compile(optimizer="adam", temperature=0),
     ValueError, r"temperature"),
    ("distiller: mode", small_cnn,
     lambda m, f: distillation.Distiller(student=small_cnn("s"), teacher=m).compile(optimizer="adam", mode="warm"),
     ValueError, r"mode.*'soft'.*'hard'"),
    ("distiller: cache empty x", small_cnn,
     lambda m, f: distillation.Distiller(student=small_cnn("s"), teacher=m).cache_teacher(X[:0], Y[:0]),
     ValueError, r"empty"),
    # factorization
    ("factorize: rank 0", small_cnn, lambda m, f: kc.factorization.factorize(m, rank=0),
     ValueError, r"factorize: rank must be an int >= 1, got 0"),
    ("factorize: rank above the layer's size", small_cnn,
     lambda m, f: kc.factorization.factorize(m, rank={"logits": 4}),
     ValueError, r"rank\['logits'\] must be an int in \[1, 3\] for layer 'logits'"),
    ("factorize: energy 1.5", small_cnn, lambda m, f: kc.factorization.factorize(m, energy=1.5),
     ValueError, r"energy must be a number in \(0, 1\], got 1.5"),
    ("factorize: unknown layer", small_cnn, lambda m, f: kc.factorization.factorize(m, rank=2, layers=["nope"]),
     ValueError, r"'nope' is not a layer of model 'cnn'. Layers that factorize: conv_a"),
    ("factorize: not Dense or Conv2D", small_cnn,
     lambda m, f: kc.factorization.factorize(m, rank=2, layers=["pool"]),
     ValueError, r"layer 'pool': it is a MaxPooling2D; factorize rewrites Dense, Conv2D"),
    ("factorize: NaN weights", _nan_model, lambda m, f: kc.factorization.factorize(m, rank=2),
     ValueError, r"dense_a.*(NaN|non-finite)"),
    ("factorize: unbuilt model", _unbuilt, lambda m, f: kc.factorization.factorize(m, rank=2),
     ValueError, r"needs a built model with known inputs"),
    # tflite_bench
    ("bench: threads 0", None, lambda m, f: tflite_bench.benchmark_model(f["tflite"], threads=0),
     ValueError, r"threads must be an int >= 1"),
    ("bench: runtime", None, lambda m, f: tflite_bench.benchmark_model(f["tflite"], runtime="gpu"),
     ValueError, r"runtime must be one of 'interpreter', 'compiled'"),
    ("bench: data shape", None,
     lambda m, f: tflite_bench.benchmark_model(f["tflite"], runs=1, data=(np.zeros((2, 5, 5, 1)), [0, 1])),
     ValueError, r"expects \(batch, 12, 12, 1\)"),
    ("bench: not TFLite", None, lambda m, f: tflite_bench.benchmark_model(f["not_tflite"]),
     ValueError, r"not a TFLite flatbuffer"),
    # data
    ("datasets: missing path", None, lambda m, f: datasets.load_mnist("/nonexistent/mnist"),
     (ValueError, FileNotFoundError), r"/nonexistent/mnist"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error_and_the_model_is_untouched(case, tflite_file, not_tflite):
    _, make_model, call, error, pattern = case
    model = make_model() if make_model else None
    before = snapshot(model) if model is not None and model.built else None
    with pytest.raises(error, match=pattern):
        call(model, {"tflite": tflite_file, "not_tflite": not_tflite})
    if before is not None:
        assert_unchanged(model, before)
