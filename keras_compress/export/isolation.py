"""Running the TFLite converter in a child process.

TensorFlow's calibrator runs the model in TFLite's interpreter, and on some
control flow (a Keras 3 LSTM traced to a WHILE loop) it crashes the process
with a segmentation fault. A crash in a child process becomes an exception
in the caller's instead.
"""

import os
import signal
import subprocess
import sys
import tempfile

from keras_compress.export import conversion
from keras_compress.export.converter_output import show_converter_output

ISOLATE_MODES = ("auto", True, False)

# The child loads conversion.py by path rather than running it as a script:
# a script's directory goes first on sys.path, where this package's
# inspect.py would shadow the standard library's for TensorFlow. Importing
# it as keras_compress.export.conversion would import Keras and the whole
# package for nothing.
_LAUNCHER = (
    "import importlib.util, sys; "
    "spec = importlib.util.spec_from_file_location('keras_compress_conversion', sys.argv[1]); "
    "module = importlib.util.module_from_spec(spec); "
    "spec.loader.exec_module(module); "
    "module.run_job(sys.argv[2])"
)
# How much of the child's error output a failure quotes.
_ERROR_TAIL_LINES = 12


class ChildConversionError(RuntimeError):
    """The child process converting a model failed.

    Attributes:
        signal_name: the signal that killed it (`"SIGSEGV"`...), or `None`
            when it exited with an error.
        output: the end of its error output.
    """

    def __init__(self, signal_name, returncode, output):
        self.signal_name = signal_name
        self.returncode = returncode
        self.output = output
        cause = f"was killed by {signal_name}" if signal_name else f"exited with status {returncode}"
        super().__init__(f"the conversion process {cause}: {output}")


def convert_in_child(saved_model, options, calibration):
    """`conversion.convert(saved_model, options, calibration)`, run in a child
    Python process.

    Returns:
        The flatbuffer `bytes`.

    Raises:
        ChildConversionError: the child crashed or failed.
    """
    with tempfile.TemporaryDirectory() as job:
        conversion.write_job(job, saved_model, options, calibration)
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        done = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, conversion.__file__, job],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        flatbuffer = conversion.read_result(job) if done.returncode == 0 else None
    if show_converter_output():
        sys.stderr.write(done.stdout + done.stderr)
    if flatbuffer is None:
        tail = "\n".join(done.stderr.strip().splitlines()[-_ERROR_TAIL_LINES:])
        raise ChildConversionError(_signal_name(done.returncode), done.returncode, tail)
    return flatbuffer


def _signal_name(returncode):
    # subprocess reports death by signal N as return code -N.
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
