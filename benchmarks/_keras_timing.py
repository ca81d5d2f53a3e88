"""Interleaved fit timing shared by the benchmark scripts (imports Keras)."""

import time

import keras
import numpy as np


class EpochTimer(keras.callbacks.Callback):
    """Wall and process CPU time of the epoch, without fit's setup."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start[0]
        self.cpu_seconds = time.process_time() - self.start[1]


def interleaved_ms_per_step(runs, x, y, batch_size, pairs):
    """Milliseconds per training step of each run, one epoch each in turn.

    Args:
        runs: `{name: (compiled model, callbacks)}`.
        pairs: timed rounds; one more untimed round first traces and compiles.

    Returns:
        `{name: [ms...], name + "_cpu": [ms...]}`, one value per round.
    """
    steps = int(np.ceil(len(x) / batch_size))
    ms = {key: [] for name in runs for key in (name, name + "_cpu")}
    timer = EpochTimer()
    for round_ in range(pairs + 1):
        for name, (model, callbacks) in runs.items():
            # The timer goes last so it includes the other callbacks' work.
            model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, callbacks=[*callbacks, timer])
            if round_:
                ms[name].append(timer.seconds / steps * 1e3)
                ms[name + "_cpu"].append(timer.cpu_seconds / steps * 1e3)
        if round_:
            line = ", ".join(f"{name} {ms[name][-1]:.2f}" for name in runs)
            print(f"  pair {round_}/{pairs}: {line} ms/step", flush=True)
    return ms
