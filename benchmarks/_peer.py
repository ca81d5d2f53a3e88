"""Running a tfmot peer script of benchmarks/ in its own process (tfmot needs
TF_USE_LEGACY_KERAS for its whole process) and reading its RESULT line."""

import os

from keras_compress.peers import run_peer_script

HERE = os.path.dirname(os.path.abspath(__file__))


def run_peer(script, data, arguments):
    """Runs `benchmarks/<script>` on `data` ((x, y), (x, y) arrays) with
    extra command-line `arguments`; returns its RESULT JSON."""
    return run_peer_script(os.path.join(HERE, script), data, arguments)
