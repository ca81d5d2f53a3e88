"""A progress line that is only redrawn on a terminal.

On a TTY `Progress` redraws one line in place (carriage return); into a pipe
or a file it writes one plain line per step, with no carriage returns and no
escape codes, so logs stay readable. Standard library only.
"""

import sys
import time


class Progress:
    """Counts `total` steps of `unit` on `stream` (default: `sys.stdout`).

    Args:
        total: the number of steps.
        unit: what one step is ("measurement", "variant").
        stream: a text stream; `None` for `sys.stdout` at each write.
        width: the bar's width in characters, on a terminal.

    Example:

    ```python
    progress = Progress(len(paths), "measurement")
    for i, path in enumerate(paths, 1):
        measure(path)
        progress.update(i, path)
    ```
    """

    def __init__(self, total, unit="step", stream=None, width=20):
        self.total, self.unit, self.width = int(total), unit, width
        self._stream = stream
        self._started = time.perf_counter()
        self._drawn = 0  # the length of the line last drawn on a terminal

    @property
    def stream(self):
        return sys.stdout if self._stream is None else self._stream

    def interactive(self):
        """Whether the stream is a terminal (then the line is redrawn in place)."""
        isatty = getattr(self.stream, "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:  # a closed stream
            return False

    def update(self, done, label=""):
        """Reports `done` of `total` steps finished; `label` names the last one."""
        seconds = time.perf_counter() - self._started
        units = self.unit if self.total == 1 else self.unit + "s"
        text = f"{done}/{self.total} {units} ({seconds:.0f} s)" + (f": {label}" if label else "")
        if self.interactive():
            filled = self.width * done // max(self.total, 1)
            bar = "=" * filled + "." * (self.width - filled)
            line = f"[{bar}] {text}"
            end = "\n" if done >= self.total else ""
            self.stream.write("\r" + line.ljust(self._drawn) + end)
            self._drawn = 0 if end else len(line)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
