import json
import os
import subprocess
import sys

import keras
import pytest

from keras_compress.pruning import ConstantSparsity, PolynomialDecay


def test_polynomial_decay_formula_at_chosen_steps():
    s = PolynomialDecay(0.1, 0.9, begin_step=100, end_step=500, power=3, frequency=100)
    # s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** power
    assert s(100) == (True, pytest.approx(0.1))
    assert s(300) == (True, pytest.approx(0.9 - 0.8 * 0.5**3))  # 0.8
    assert s(400) == (True, pytest.approx(0.9 - 0.8 * 0.25**3))
    assert s(500) == (True, pytest.approx(0.9))
    assert s(50) == (False, pytest.approx(0.1))  # before begin: initial
    assert s(250)[0] is False  # not a multiple of frequency after begin
    assert s(600) == (False, pytest.approx(0.9))  # after end: never again


def test_polynomial_decay_power_one_is_linear():
    s = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=10, power=1, frequency=1)
    assert [round(s.sparsity(t), 6) for t in (0, 2, 5, 10, 20)] == [0.0, 0.1, 0.25, 0.5, 0.5]


def test_constant_sparsity_steps():
    s = ConstantSparsity(0.7, begin_step=10, end_step=50, frequency=20)
    assert [t for t in range(0, 80) if s.should_prune(t)] == [10, 30, 50]
    assert s.sparsity(0) == 0.7
    forever = ConstantSparsity(0.5, begin_step=0, frequency=100)
    assert [t for t in range(0, 1000, 50) if forever.should_prune(t)] == list(range(0, 1000, 100))


def test_pruning_steps_lists_the_update_steps_in_a_range():
    s = PolynomialDecay(0.0, 0.8, begin_step=5, end_step=305, frequency=100)
    assert list(s.pruning_steps(0, 1000)) == [5, 105, 205, 305]
    assert list(s.pruning_steps(106, 250)) == [205]
    assert list(ConstantSparsity(0.5, 0, frequency=10).pruning_steps(0, 35)) == [0, 10, 20, 30]


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: ConstantSparsity(1.0), ValueError, r"target_sparsity must be a number in \[0, 1\)"),
        (lambda: ConstantSparsity(-0.1), ValueError, r"target_sparsity must be a number in \[0, 1\)"),
        (lambda: ConstantSparsity("0.5"), TypeError, "target_sparsity must be a number in \\[0, 1\\)"),
        (lambda: PolynomialDecay(0.0, 1.2, 0, 100), ValueError, "final_sparsity"),
        (lambda: PolynomialDecay(0.0, 0.5, 100, 100), ValueError, "end_step must be greater than begin_step"),
        (lambda: PolynomialDecay(0.0, 0.5, 100, 50), ValueError, "begin_step=100, end_step=50"),
        (lambda: ConstantSparsity(0.5, 10, 5), ValueError, "-1 \\(forever\\) or greater"),
        (lambda: PolynomialDecay(0.0, 0.5, -1, 50), ValueError, "begin_step must be an int >= 0"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, 50, frequency=0), ValueError, "frequency must be an int >= 1"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, 50, power=0), ValueError, "power must be a number > 0"),
    ],
)
def test_invalid_schedules(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    "schedule",
    [PolynomialDecay(0.2, 0.8, 10, 1000, power=2, frequency=7), ConstantSparsity(0.3, 5, 90, 4)],
)
def test_config_and_serialization_round_trip(schedule):
    assert type(schedule).from_config(schedule.get_config()) == schedule
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert restored == schedule and restored is not schedule


TFMOT_SCRIPT = """
import json, os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow_model_optimization as tfmot
sk = tfmot.sparsity.keras
out = []
for kind, args in json.loads(sys.argv[1]):
    s = getattr(sk, kind)(**args)
    row = []
    for step in range(0, 1300, 13):
        should, sparsity = s(step)
        row.append([bool(should), float(sparsity)])
    out.append(row)
print(json.dumps(out))
"""


@pytest.mark.tfmot
def test_same_steps_and_sparsity_as_tfmot():
    """tfmot's own schedules, run in a tf_keras subprocess, are the reference."""
    pytest.importorskip("tensorflow_model_optimization")
    cases = [
        ("PolynomialDecay", dict(initial_sparsity=0.1, final_sparsity=0.85, begin_step=39, end_step=1040, power=3, frequency=26)),
        ("PolynomialDecay", dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=650, power=1, frequency=13)),
        ("ConstantSparsity", dict(target_sparsity=0.6, begin_step=13, end_step=-1, frequency=39)),
        ("ConstantSparsity", dict(target_sparsity=0.6, begin_step=0, end_step=520, frequency=52)),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", TFMOT_SCRIPT, json.dumps(cases)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    reference = json.loads(result.stdout.strip().splitlines()[-1])
    ours = {"PolynomialDecay": PolynomialDecay, "ConstantSparsity": ConstantSparsity}
    for (kind, args), expected in zip(cases, reference):
        schedule = ours[kind](**args)
        for step, (should, sparsity) in zip(range(0, 1300, 13), expected):
            assert schedule.should_prune(step) == should, (kind, args, step)
            assert schedule.sparsity(step) == pytest.approx(sparsity, abs=1e-6), (kind, step)
