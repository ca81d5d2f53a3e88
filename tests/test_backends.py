"""Keras backends other than TensorFlow.

The test process runs Keras on TensorFlow; the JAX side runs in child
processes with KERAS_BACKEND=jax (`benchmarks/backend_parity.py` workers,
from the same `.keras` weights and data), and its figures are compared
with the TensorFlow worker's. The conversion bridge (a model of another
backend converted by a TensorFlow-backend child) is also checked from here,
where its file must equal the in-process one byte for byte.
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import small_cnn, toy_data
from keras_compress import to_tflite
from keras_compress.export import backend_bridge, inspect_tflite

BENCHMARKS = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")
HAS_JAX = importlib.util.find_spec("jax") is not None


def test_the_bridge_gives_the_in_process_file_byte_for_byte():
    model = small_cnn()
    x, _ = toy_data(64)
    options = {"quantization": "int8", "calibration_steps": 64, "int8_io": False, "sparse": "auto",
               "size_by": "raw", "batch_size": 1, "float_layers": None, "strict": False, "isolate": "auto",
               "strip_names": False}
    direct = to_tflite(model, representative_data=x, **{k: v for k, v in options.items()})
    bridged = backend_bridge.to_tflite_on_tensorflow(model, options, [x[:64]])
    assert bridged == direct
    assert [op.type for op in inspect_tflite(bridged).ops] == [op.type for op in inspect_tflite(direct).ops]


def test_the_bridge_raises_the_childs_errors_and_warnings_with_their_types():
    model = small_cnn()
    x, _ = toy_data(32)
    options = {"quantization": "int8", "calibration_steps": 32, "int8_io": False, "sparse": "auto",
               "size_by": "raw", "batch_size": 1, "float_layers": ["no_such_layer"], "strict": False,
               "isolate": "auto", "strip_names": False}
    with pytest.raises(ValueError, match="no_such_layer"):
        backend_bridge.to_tflite_on_tensorflow(model, options, [x])
    # A warning of the child's to_tflite reaches the caller with its category.
    from keras_compress.export import DenseZerosWarning

    tokens = keras.Input((10,), dtype="int32")
    x = keras.layers.Flatten()(keras.layers.Embedding(300, 16, name="table")(tokens))
    sparse_table = keras.Model(tokens, keras.layers.Dense(4, name="head")(x))
    table = sparse_table.get_layer("table")
    weights = table.get_weights()
    weights[0][np.random.default_rng(0).permutation(weights[0].size).reshape(weights[0].shape) < 0.8 * 4800] = 0
    table.set_weights(weights)
    with pytest.warns(DenseZerosWarning, match=r"'table': 80% of 4,800 values"):
        flatbuffer = backend_bridge.to_tflite_on_tensorflow(sparse_table, dict(options, quantization=None,
                                                                              float_layers=None), None)
    assert flatbuffer == to_tflite(sparse_table)


def test_a_model_keras_files_cannot_hold_is_refused_naming_the_backend_and_the_way_out():
    class Unserializable(keras.layers.Layer):
        def __init__(self, table, **kwargs):  # a required argument get_config does not return
            super().__init__(**kwargs)
            self.table = table

        def call(self, x):
            return x * 2.0

    inputs = keras.Input((3,))
    model = keras.Model(inputs, Unserializable(object())(inputs))
    options = {"quantization": None, "calibration_steps": 1, "int8_io": False, "sparse": "auto",
               "size_by": "raw", "batch_size": 1, "float_layers": None, "strict": False, "isolate": "auto",
               "strip_names": False}
    with pytest.raises((ValueError, RuntimeError), match="tensorflow|TensorFlow"):
        backend_bridge.to_tflite_on_tensorflow(model, options, None)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_JAX, reason="needs the [jax] extra")
def test_jax_backend_trains_and_converts_like_tensorflow(tmp_path):
    """Pruning, L1 + threshold, shrink, QAT and the Distiller on JAX and on
    TensorFlow from the same weights and data: the same masks, exact zeros,
    the same files, the same losses."""
    out = tmp_path / "parity.json"
    done = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "backend_parity.py"), "--samples", "256", "--epochs", "2",
         "--frequency", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=1200, cwd=BENCHMARKS)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"tensorflow", "jax"}, done.stdout
    tf_row, jax_row = rows["tensorflow"], rows["jax"]
    for row in (tf_row, jax_row):
        assert "error" not in row, row
        assert row["pruning"]["sparsity"] == pytest.approx(0.75, abs=2e-3)
        assert row["pruning"]["zeros_exact"] is True
        assert row["qat"]["float_ops"] == 0
    p = jax_row["pruning"]
    assert p["mask_agreement"] >= 0.999 and p["same_ops"] and abs(p["bytes_diff"]) <= 16
    assert p["top1_agreement"] >= 0.98
    assert jax_row["l1_threshold"]["mask_agreement"] >= 0.999
    assert jax_row["structured"]["max_weight_diff"] == 0.0  # shrink copies weights: no arithmetic
    q = jax_row["qat"]
    assert q["same_ops"] and abs(q["bytes_diff"]) <= 16 and q["top1_agreement"] >= 0.97
    assert q["agrees_with_keras"] >= 0.97
    assert jax_row["distillation"]["max_loss_diff"] < 1e-3


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_an_unsupported_backend_is_refused_before_any_work(monkeypatch, backend):
    import keras_compress as kc
    from conftest import assert_unchanged, snapshot

    model = small_cnn()
    x, y = toy_data(16)
    before = snapshot(model)
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    calls = {
        "prune_low_magnitude": lambda: kc.pruning.prune_low_magnitude(model),
        "PruneWrapper": lambda: kc.pruning.PruneWrapper(keras.layers.Dense(3)),
        "shrink": lambda: kc.pruning.shrink(model, {model.layers[0].name: 0.5}),
        "quantize_model": lambda: kc.quantization.quantize_model(model),
        "Distiller": lambda: kc.distillation.Distiller(student=model, teacher=model),
        "to_tflite": lambda: kc.to_tflite(model),
        "sensitivity_analysis": lambda: kc.auto.sensitivity_analysis(model, (x, y)),
        "auto_compress": lambda: kc.auto.auto_compress(model, (x, y), max_bytes=1000),
    }
    for api, call in calls.items():
        with pytest.raises(RuntimeError, match=rf"{api}: Keras runs on the '{backend}' backend.*'tensorflow' and 'jax'"):
            call()
    monkeypatch.undo()
    assert_unchanged(model, before)


def test_features_that_need_tensorflow_say_so_on_jax_before_any_work(monkeypatch):
    """Gradient-based proxies and the search differentiate with TensorFlow:
    on JAX they refuse up front, naming the backend and the alternative."""
    import keras_compress as kc
    from conftest import assert_unchanged, snapshot

    model = small_cnn()
    x, y = toy_data(16)
    before = snapshot(model)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match=r"auto_compress: .*GradientTape.*'jax'.*KERAS_BACKEND=tensorflow"):
        kc.auto.auto_compress(model, (x, y), max_bytes=1000)
    with pytest.raises(RuntimeError, match=r"sensitivity_analysis: .*'jax'.*sparsities=\(\)"):
        kc.auto.sensitivity_analysis(model, (x, y))
    with pytest.raises(ValueError, match=r"criterion='taylor' needs the TensorFlow backend.*'jax'.*'l1'"):
        kc.pruning.shrink(model, {model.layers[0].name: 0.5}, criterion="taylor", data=(x, y))
    monkeypatch.undo()
    assert_unchanged(model, before)
