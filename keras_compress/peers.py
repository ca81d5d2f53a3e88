"""Runs the tf_keras peer scripts: tfmot, side by side with this package.

tfmot works only with the legacy tf_keras, and importing it sets
`TF_USE_LEGACY_KERAS=1` for the whole process, so its side of a comparison
runs as a script in a child process. The scripts live in
`keras_compress/peer-scripts/`: a folder whose name is not a Python
identifier, so nothing can import them by accident; they ship with the
package (the demo's `--with-tfmot` runs one) and never import
`keras_compress` (only `tflite_bench`, which needs neither Keras nor
TensorFlow).

A peer script takes `--data split.npz` (arrays `x_train`, `y_train`,
`x_test`, `y_test`) and its own options, writes progress to stderr and ends
with one `RESULT {json}` line on stdout.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer-scripts")
TFMOT_PEER = os.path.join(SCRIPTS, "tfmot_peer.py")


def check_tfmot_installed():
    """Raises unless the `[tfmot]` extra (tfmot and tf-keras) is installed."""
    missing = [name for name in ("tensorflow_model_optimization", "tf_keras")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"with_tfmot needs {' and '.join(missing)}: install the [tfmot] extra, "
                         "pip install 'keras-compress[tfmot]'.")


def run_peer_script(script, data, arguments, show_progress=False):
    """Runs a peer script in its own process (with `TF_USE_LEGACY_KERAS=1`) on
    `data`, `((x, y), (x, y))` arrays handed over as an .npz (`--data`), with
    extra command-line `arguments`; returns the JSON of its last `RESULT ` line.

    With `show_progress`, the script's stderr (its progress lines) passes
    through; otherwise it is kept for the error message.
    """
    if not os.path.isfile(script):
        raise ValueError(f"run_peer_script: script must be an existing file, got {script!r}.")
    (x_train, y_train), (x_test, y_test) = data
    with tempfile.TemporaryDirectory() as tmp:
        split = os.path.join(tmp, "split.npz")
        np.savez(split, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        done = subprocess.run(
            [sys.executable, script, "--data", split, *map(str, arguments)],
            stdout=subprocess.PIPE, stderr=None if show_progress else subprocess.PIPE, text=True,
            env={**os.environ, "TF_USE_LEGACY_KERAS": "1"},
        )
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not results:
        messages = "its messages are above." if show_progress else f"its last messages:\n{done.stderr[-3000:]}"
        raise RuntimeError(f"{os.path.basename(script)} failed (exit code {done.returncode}); {messages}")
    return json.loads(results[-1][len("RESULT "):])


def run_tfmot_peer(out, data, epochs, seed):
    """Runs the demo's tfmot peer (`peer-scripts/tfmot_peer.py`), showing its
    progress; returns its RESULT (file names and sparsities)."""
    arguments = ["--out", out, "--epochs", epochs, "--seed", seed]
    return run_peer_script(TFMOT_PEER, data, arguments, show_progress=True)
