"""The backend-independent test modules, run again with KERAS_BACKEND=jax.

A subprocess, because the backend is chosen when Keras is imported. The
modules below hold on JAX except the tests marked `tf_only` (each says why);
`slow` tests are left to the TensorFlow run. The other modules test
TensorFlow-specific behaviour (conversion internals, tf.distribute, raw
variables after every optimizer step) or are covered on JAX by
tests/test_backends.py and tests/test_multiworker.py.
"""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = ["test_schedules.py", "test_criteria.py", "test_properties.py", "test_determinism.py",
           "test_bad_inputs.py", "test_callbacks.py", "test_distillation.py", "test_wrapper.py", "test_qat.py",
           "test_clustering.py"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs the [jax] extra")
def test_backend_independent_modules_pass_on_jax():
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not tf_only and not slow",
         *(os.path.join(HERE, m) for m in MODULES)],
        capture_output=True, text=True, env=env, cwd=os.path.dirname(HERE), timeout=1500, check=False)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 250, summary  # the modules' tests ran, not a handful
