"""keras_compress.examples (the shared example models) and keras_compress.peers
(the runner of the tf_keras peer scripts)."""

import ast
import glob
import importlib
import os

import keras
import numpy as np
import pytest

from keras_compress import examples, peers
from keras_compress.pruning import structured


def test_example_models_have_the_documented_sizes():
    assert examples.build_cnn().count_params() == 56_714
    assert examples.build_student().count_params() == 25_450
    assert examples.build_small_cnn().count_params() == 5_738  # about 1/10 of build_cnn
    assert examples.build_residual_cnn().count_params() == 16_442


def test_residual_cnn_ties_the_stem_and_projections_through_its_adds_and_shrinks_consistently():
    model = examples.build_residual_cnn()
    adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert [layer.name for layer in adds] == ["block1_add", "block2_add"]
    tied = ("stem", "block1_project", "block2_project")  # both Adds sum these three layers' channels
    groups = {g.producers: g for g in structured.dependency_groups(model)}
    assert tied in groups and groups[tied].prunable and groups[tied].size == 16
    assert "block1_expand" in groups[tied].layers  # consumers of the shared channels change too

    small = structured.shrink(model, 0.5)
    units = {name: small.get_layer(name).filters for name in tied}
    assert set(units.values()) == {8}, units
    for add in ("block1_add", "block2_add"):
        shapes = [tuple(t.shape) for t in small.get_layer(add).input]
        assert shapes == [(None, 14, 14, 8)] * 2, (add, shapes)
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    assert small.predict(x, verbose=0).shape == (4, 10)


def test_magnitude_schedule_reaches_the_final_sparsity_at_sixty_percent_of_the_steps():
    schedule = examples.magnitude_schedule(1000)
    # frequency min(100, 1000 // 10) = 100; end_step = (600 // 100) * 100 = 600
    assert (schedule.frequency, schedule.end_step) == (100, 600)
    assert schedule.sparsity(600) == pytest.approx(examples.FINAL_SPARSITY)
    assert len(schedule.pruning_steps(0, 999)) == 7  # 0, 100, ..., 600
    short = examples.magnitude_schedule(5)  # frequency 1, end_step 3
    assert short.sparsity(short.end_step) == pytest.approx(examples.FINAL_SPARSITY)
    with pytest.raises(ValueError, match="magnitude_schedule: steps must be an int >= 1, got 0."):
        examples.magnitude_schedule(0)


def test_peer_scripts_ship_beside_the_package_and_cannot_be_imported():
    assert os.path.isfile(peers.TFMOT_PEER)
    folder = os.path.basename(peers.SCRIPTS)
    assert not folder.isidentifier()  # so no import statement can name it
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("keras_compress.peer_scripts.tfmot_peer")


def test_peer_scripts_never_import_keras_compress():
    """A peer runs with TF_USE_LEGACY_KERAS=1: loading Keras 3 there would break it."""
    scripts = glob.glob(os.path.join(peers.SCRIPTS, "*.py"))
    scripts += glob.glob(os.path.join(os.path.dirname(__file__), "..", "benchmarks", "tfmot*_peer.py"))
    assert len(scripts) >= 3
    for script in scripts:
        tree = ast.parse(open(script).read())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {name for name in imported if name.split(".")[0] in ("keras_compress", "keras")}, script


def test_run_peer_script_refuses_a_missing_script():
    with pytest.raises(ValueError, match="run_peer_script: script must be an existing file"):
        peers.run_peer_script("no_such_peer.py", None, [])
