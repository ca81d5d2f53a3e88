"""Distribution: every technique trains under `tf.distribute.MirroredStrategy`
over two logical CPUs and ends where one device ends.

The runs happen in a subprocess (tests/distribute_scenarios.py), because the
CPU must be split into two logical devices before TensorFlow initializes, and
one subprocess trains every scenario twice from the same initial weights and
on the same batches: once on one device, once under the strategy with the
same global batch (64, so 32 per replica), 2 epochs of 2,048 bundled MNIST
images, accuracy on 1,000 held-out images.

Tolerances, and why:
- Sparsity within 0.01. Magnitude pruning prunes a scheduled count, so it is
  exact; threshold pruning depends on the trained weights, which differ only
  by the order in which two replicas' gradients are summed.
- Accuracy within 3 points (30 of 1,000 images). Pruning, L1 and distillation
  come out equal to float noise. Quantization-aware training does not: fake
  quantization rounds, and a rounding that flips on float noise sends the two
  runs down slightly different paths (about 1 point apart here).
- Learned activation ranges within 5% after training for the same reason;
  after one step, where no path has diverged yet, they are exact.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import assert_same_ranges

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distribute_scenarios.py")

pytestmark = pytest.mark.slow  # one subprocess trains every scenario twice (about 80 s)


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, SCRIPT], capture_output=True, text=True, env=env, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_and_two(results, scenario):
    one, two = results[scenario]["one"], results[scenario]["two"]
    for run, where in ((one, "one device"), (two, "MirroredStrategy")):
        assert "error" not in run, f"{scenario} on {where} failed:\n{run.get('error')}"
    return one, two


def test_magnitude_pruning_under_mirrored_strategy(results):
    one, two = one_and_two(results, "pruning")
    # PolynomialDecay reaches 0.8 at its end step: the pruned count is exact.
    assert one["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert two["sparsity"] == pytest.approx(one["sparsity"], abs=0.01)
    # Each wrapper counted every global step once (64), not once per replica.
    assert one["steps"] == two["steps"] == [64]
    assert two["mask_dtypes"] == ["float32"]
    assert two["accuracy"] == pytest.approx(one["accuracy"], abs=0.03)
    assert one["accuracy"] > 0.5  # it learned something, so the comparison means something


def test_l1_and_threshold_pruning_under_mirrored_strategy(results):
    one, two = one_and_two(results, "l1_threshold")
    assert one["l1_strength"] == two["l1_strength"] == [pytest.approx(1e-4), 0.0]
    assert 0.05 < one["sparsity"] < 0.95
    assert two["sparsity"] == pytest.approx(one["sparsity"], abs=0.01)
    assert one["steps"] == two["steps"] == [64]
    assert two["accuracy"] == pytest.approx(one["accuracy"], abs=0.03)


def test_quantization_aware_training_under_mirrored_strategy(results):
    one, two = one_and_two(results, "qat")
    assert one["updates"] == two["updates"] == [64]
    assert two["accuracy"] == pytest.approx(one["accuracy"], abs=0.03)
    assert_same_ranges(one["ranges"], two["ranges"])


def test_activation_ranges_are_taken_over_the_global_batch(results):
    """Each replica sees half the batch; the range is the whole batch's
    extremes, as on one device, not the mean of the halves' extremes."""
    one, two = one_and_two(results, "first_batch_range")
    assert one["ranges"][0] == one["input_range"] == [-3.0, 5.0]
    assert two["ranges"][0] == one["input_range"]
    assert two["ranges"][1] == pytest.approx(one["ranges"][1], rel=1e-6)


def test_distiller_under_mirrored_strategy(results):
    one, two = one_and_two(results, "distillation")
    assert two["accuracy"] == pytest.approx(one["accuracy"], abs=0.03)
    # The logged losses are per-sample means, as on one device; each part is
    # weighted as on one device (neither counted once per replica).
    for key in ("loss", "student_loss", "distillation_loss"):
        assert two[key] == pytest.approx(one[key], rel=0.02), key
