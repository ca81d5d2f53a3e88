"""Running a tfmot peer script in its own process (tfmot needs
TF_USE_LEGACY_KERAS for its whole process) and reading its RESULT line."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def run_peer(script, data, arguments):
    """Runs `benchmarks/<script>` on `data` ((x, y), (x, y) arrays) with
    extra command-line `arguments`; returns its RESULT JSON."""
    (x_train, y_train), (x_test, y_test) = data
    with tempfile.TemporaryDirectory() as tmp:
        split = os.path.join(tmp, "split.npz")
        np.savez(split, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        command = [sys.executable, os.path.join(HERE, script), "--data", split, *map(str, arguments)]
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{done.stderr[-3000:]}")
    line = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])
