"""Keeping the TFLite converter's C++ log lines off the user's terminal.

TensorFlow's converter writes straight to file descriptors 1 and 2 from C++
(`fully_quantize: 0, inference_type: 6, ...`, `I0000 ... loader.cc:...`),
past Python's `sys.stderr` and its logging settings. `captured_converter_output`
sends both descriptors to a temporary file while it runs: the lines are
dropped when the conversion succeeds and added to the exception's notes when
it fails. Set `KERAS_COMPRESS_CONVERTER_OUTPUT=1` to see them as they come.

Python warnings raised inside (ours or TensorFlow's) still reach the caller:
they are recorded and re-issued once the descriptors are back. The capture is
process-wide, so another thread's output during a conversion is captured too.
"""

import contextlib
import os
import sys
import tempfile
import warnings

ENV_VAR = "KERAS_COMPRESS_CONVERTER_OUTPUT"
# How many of the captured lines a failure quotes.
TAIL_LINES = 20


def show_converter_output():
    """Whether the user asked to see the converter's output (`KERAS_COMPRESS_CONVERTER_OUTPUT=1`)."""
    return os.environ.get(ENV_VAR, "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def captured_converter_output():
    """Captures file descriptors 1 and 2 for the `with` block (see the module
    docstring); a no-op when the user asked to see the output, or when the
    process has no such descriptors."""
    if show_converter_output():
        yield
        return
    _flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no stdout/stderr descriptors (pythonw): nothing can leak
        yield
        return
    with tempfile.TemporaryFile() as log, warnings.catch_warnings(record=True) as caught:
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield
        except BaseException as error:
            _restore(saved)
            saved = None
            lines = _read(log)[-TAIL_LINES:]
            if lines and hasattr(error, "add_note"):
                error.add_note("The TFLite converter's last output:\n" + "\n".join(lines))
            raise
        finally:
            if saved is not None:
                _restore(saved)
    for w in caught:  # after catch_warnings ends, through the caller's filters
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass


def _restore(saved):
    _flush()
    for fd, copy in zip((1, 2), saved):
        os.dup2(copy, fd)
        os.close(copy)


def _read(log):
    log.seek(0)
    return log.read().decode("utf-8", "replace").strip().splitlines()
