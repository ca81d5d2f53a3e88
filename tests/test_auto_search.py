"""keras_compress.auto.auto_compress and its cost models: exact counts
against the models shrink builds and hand-computed MACs, the linear fit
against known lines, the allocation against brute force, refusals that
leave the model untouched, and one search end to end on a real file."""

import itertools
import math

import keras
import numpy as np
import pytest

from conftest import assert_unchanged, compile_for_test, snapshot, toy_data, trained_small_cnn
from keras_compress import examples
from keras_compress.auto import StructureCosts, auto_compress
from keras_compress.auto.costs import fit_linear, model_counts
from keras_compress.auto.search import _Allocator
from keras_compress.export import evaluate_tflite, predict_tflite, to_tflite
from keras_compress.pruning.structured import shrink


def residual_model():
    """Stem conv, two convs tied to it by Adds, a pooled dense head."""
    inputs = keras.Input((8, 8, 3))
    stem = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    a = keras.layers.Conv2D(8, 3, padding="same", name="res_a")(stem)
    x = keras.layers.Add(name="add_a")([stem, a])
    d = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    b = keras.layers.Conv2D(8, 1, name="res_b")(d)
    x = keras.layers.Add(name="add_b")([x, b])
    x = keras.layers.Conv2D(12, 1, activation="relu", name="expand")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(16, activation="relu", name="fc")(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs, name="residual")


@pytest.mark.parametrize("build", [examples.build_cnn, residual_model])
def test_counts_equal_the_models_shrink_builds(build):
    model = build()
    costs = StructureCosts(model)
    rng = np.random.default_rng(0)
    for _ in range(4):
        removed = [int(rng.integers(0, g.size)) for g in costs.groups]
        small = shrink(model, {g.producers[0].name: n / g.size for g, n in zip(costs.groups, removed) if n})
        counts = costs.counts(removed)
        assert counts["params"] == small.count_params()
        assert counts["macs"] == model_counts(small)["macs"]


def test_residual_groups_tie_the_adds():
    costs = StructureCosts(residual_model())
    keys = [costs.key(g) for g in costs.groups]
    tied = [k for k in keys if "stem" in k]
    assert tied == ["stem+res_a+res_b"], keys


def test_macs_of_the_demo_cnn_by_hand():
    # conv 26x26 outputs x 3x3x1 x 16; conv 11x11 x 3x3x16 x 32; dense 800x64; dense 64x10
    expected = 26 * 26 * 9 * 16 + 11 * 11 * 144 * 32 + 800 * 64 + 64 * 10
    costs = StructureCosts(examples.build_cnn())
    assert costs.base["macs"] == expected
    # Half of conv2d_1's 32 filters: its own MACs halve, and so do the dense's inputs.
    half = costs.counts([0, 16, 0])
    assert half["macs"] == 26 * 26 * 9 * 16 + 11 * 11 * 144 * 16 + 400 * 64 + 64 * 10


def test_linear_fit_recovers_a_line_and_validates_it():
    points = [({"a": a, "b": b}, 100 + 2 * a + 5 * b) for a, b in [(1, 1), (2, 5), (7, 3), (4, 4), (9, 9)]]
    fit = fit_linear("bytes", ("a", "b"), points)
    np.testing.assert_allclose(fit.coefficients, (100, 2, 5), atol=1e-9)
    assert fit.max_relative_error < 1e-9
    assert fit.predict({"a": 10, "b": 1}) == pytest.approx(125)
    # A feature that only adds noise with a negative slope is dropped.
    noisy = [({"a": a, "b": b}, 10 + 3 * a - 0.5 * b) for a, b in [(1, 2), (2, 1), (3, 5), (4, 3), (5, 4)]]
    fit = fit_linear("bytes", ("a", "b"), noisy)
    assert fit.coefficients[2] == 0.0


class _FakeCosts:
    """Two groups of 8 units; bytes = 100 + 10 * units kept overall (a linear fit)."""

    class _Group:
        def __init__(self, name):
            self.size, self.producers = 8, (type("L", (), {"name": name})(),)

    groups = [_Group("a"), _Group("b")]

    def counts(self, removed):
        kept = sum(8 - n for n in removed)
        return {"params": kept, "units": 0, "macs": kept * 3, "activations": 0}


def test_exhaustive_allocation_is_the_brute_force_optimum_and_greedy_is_not_better():
    rng = np.random.default_rng(1)
    fits = {"int8": {"bytes": fit_linear("bytes", ("params", "units"),
                                         [({"params": p, "units": 0}, 100 + 10 * p) for p in (16, 12, 8, 4)])}}
    for _ in range(5):
        options = [[(0, 0.0, 0.0)] + [(n, n / 8, float(d)) for n, d in zip((2, 4, 6), np.sort(rng.random(3)))]
                   for _ in range(2)]
        allocator = _Allocator(_FakeCosts(), options, fits, {"resources": ("bytes",)})
        targets = {"bytes": 100 + 10 * 9}  # at most 9 of the 16 units may stay
        _, counts, predicted = allocator.allocate(targets, "exhaustive")
        best = min(
            (sum(options[i][j][2] for i, j in enumerate(c)), c)
            for c in itertools.product(range(4), range(4))
            if 100 + 10 * sum(8 - options[i][j][0] for i, j in enumerate(c)) <= targets["bytes"]
        )
        assert predicted["drop"] == pytest.approx(best[0])
        assert predicted["bytes"] <= targets["bytes"] + 1e-9
        _, _, greedy = allocator.allocate(targets, "greedy")
        assert greedy["drop"] >= predicted["drop"] - 1e-12


# -- refusals -----------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    return trained_small_cnn(seed=0, samples=96, epochs=1)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({}, ValueError, "give a budget"),
        ({"max_bytes": 0}, ValueError, "max_bytes"),
        ({"max_bytes": 5000, "size_by": "zip"}, ValueError, "size_by"),
        ({"max_bytes": 5000, "max_drop": -0.1}, ValueError, "max_drop"),
        ({"max_bytes": 5000, "metric": "f1"}, TypeError, "metric"),
        ({"max_bytes": 5000, "fractions": ()}, ValueError, "fractions"),
        ({"max_bytes": 5000, "fractions": (0.5, 1.0)}, ValueError, "fractions"),
        ({"max_bytes": 5000, "search": "random"}, ValueError, "search"),
        ({"max_bytes": 5000, "quantization": "int4"}, ValueError, "quantization"),
        ({"max_bytes": 5000, "quantization": ("int8", "int8")}, ValueError, "twice"),
        ({"max_bytes": 5000, "quantization": 8}, TypeError, "quantization"),
        ({"max_latency_ms": -1.0}, ValueError, "max_latency_ms"),
        ({"max_latency_ms": 1.0, "runtime": "gpu"}, ValueError, "runtime"),
        ({"max_latency_ms": 1.0, "latency_fn": 3}, TypeError, "latency_fn"),
    ],
)
def test_bad_arguments_are_refused_and_nothing_changes(trained, kwargs, error, words):
    model, x, y = trained
    before = snapshot(model)
    with pytest.raises(error, match=words):
        auto_compress(model, (x, y), verbose=False, **kwargs)
    assert_unchanged(model, before)


def test_data_without_labels_or_of_the_wrong_shape_is_refused(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="labels"):
        auto_compress(model, x, max_bytes=5000, verbose=False)
    with pytest.raises(ValueError, match="data"):
        auto_compress(model, (np.zeros((10, 5, 5, 1), "float32"), y[:10]), max_bytes=5000, verbose=False)


def test_uncompiled_model_needs_a_loss_and_multi_output_is_refused():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(2)])
    x, y = np.zeros((20, 4), "float32"), np.zeros(20, int)
    with pytest.raises(ValueError, match="loss"):
        auto_compress(model, (x, y), max_bytes=5000, verbose=False)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8)(inputs)
    two = keras.Model(inputs, [keras.layers.Dense(2)(hidden), keras.layers.Dense(2)(hidden)])
    with pytest.raises(ValueError, match="2 outputs"):
        auto_compress(two, (x, y), max_bytes=5000, loss="mse", verbose=False)


def test_impossible_budget_names_the_smallest_reachable_file(trained):
    model, x, y = trained
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"cannot be reached: max_bytes=100\b.*smallest model.*measures int8: [\d,]+ bytes"):
        auto_compress(model, (x, y), max_bytes=100, verbose=False)
    assert_unchanged(model, before)


# -- end to end ---------------------------------------------------------------


@pytest.mark.slow
def test_search_meets_a_byte_budget_on_the_real_file(trained, tmp_path):
    model, x, y = trained
    before = snapshot(model)
    xv, yv = toy_data(64, seed=1)
    # Below the int8 file of the model as it is: units must go.
    budget = int(0.8 * len(to_tflite(model, quantization="int8", representative_data=x)))
    result = auto_compress(model, (x, y), (xv, yv), max_bytes=budget, max_drop=1.0, epochs=1, max_rounds=2,
                           screen=2, verbose=False, out=str(tmp_path / "auto"))
    assert_unchanged(model, before)
    # What the result says is what its file measures.
    assert result.best.bytes == len(result.tflite)
    assert result.met and result.best.bytes <= budget
    truth = evaluate_tflite(result.tflite, xv, yv)["accuracy"]
    assert result.best.metric == pytest.approx(truth)
    reference = result.reference
    assert reference.kind == "reference" and reference.quantization == "float"
    assert result.best.drop == pytest.approx(reference.metric - truth)
    # The chosen Keras model is the one in the file: same predictions, within int8 error.
    keras_logits = result.model.predict(xv, verbose=0)
    file_logits = predict_tflite(result.tflite, xv)
    assert np.mean(keras_logits.argmax(-1) == file_logits.argmax(-1)) >= 0.9
    assert result.model.count_params() < model.count_params()
    kinds = {c.kind for c in result.candidates}
    assert {"reference", "screening", "search", "uniform-structured", "uniform-sparsity"} <= kinds
    # The bytes cost model was fitted on real files and validated.
    assert result.cost_models["bytes"]["points"] >= 5
    assert result.cost_models["bytes"]["max_relative_error"] < 0.05
    assert (tmp_path / "auto" / "report.json").exists() and (tmp_path / "auto" / "model.tflite").exists()
    loaded = keras.models.load_model(tmp_path / "auto" / "model.keras")
    np.testing.assert_allclose(loaded.predict(xv, verbose=0), keras_logits, atol=1e-5)
    assert math.isfinite(result.seconds["total"])


def test_latency_comes_from_latency_fn_when_given(trained):
    """A device timing function replaces this machine's: the impossible-budget
    message reports the latency it returned (here: 1 ms per 1,000 bytes)."""
    model, x, y = trained
    seen = []

    def device(flatbuffer):
        seen.append(len(flatbuffer))
        return len(flatbuffer) / 1000

    with pytest.raises(ValueError, match=r"measures int8: p50 (\d+\.\d+) ms") as error:
        auto_compress(model, (x, y), max_latency_ms=0.001, latency_fn=device, verbose=False)
    assert seen and f"p50 {seen[-1] / 1000:.4f} ms" in str(error.value)


def test_modes_are_chosen_by_their_own_cost_models():
    """With two modes, the allocator picks the one whose fitted bytes let the
    plan with the smallest drop fit; the mode's own drop counts."""
    options = [[(0, 0.0, 0.0), (4, 0.5, 0.10)], [(0, 0.0, 0.0), (4, 0.5, 0.20)]]
    line = lambda slope: {"bytes": fit_linear("bytes", ("params", "units"),  # noqa: E731
                                              [({"params": p, "units": 0}, slope * p) for p in (16, 12, 8, 4)])}
    fits = {"int8": line(1.0), "float": line(4.0)}
    allocator = _Allocator(_FakeCosts(), options, fits, {"resources": ("bytes",)}, {"int8": 0.01, "float": 0.0},
                           ("int8", "float"))
    # 16 units kept: int8 16 bytes, float 64 bytes. A 40-byte budget: int8 as it is (drop 0.01).
    assert allocator.allocate({"bytes": 40}, "exhaustive")[:2] == ("int8", [0, 0])
    # 100 bytes: float fits unchanged with no drop at all.
    mode, counts, predicted = allocator.allocate({"bytes": 100}, "exhaustive")
    assert (mode, counts, predicted["drop"]) == ("float", [0, 0], 0.0)
    # 50 bytes: float must drop 4 units of the cheaper group (0.10), int8 costs 0.01: int8.
    assert allocator.allocate({"bytes": 50}, "greedy")[0] == "int8"
    plans = allocator.screening_plans({"bytes": 50}, "exhaustive", 4)
    assert {m for m, _, _ in plans} == {"int8", "float"} and plans[0][0] == "int8"
