"""The preamble and the results writer every benchmark script shares.

A script builds its parser with `parser(__doc__, out=...)` (which adds the
common `--threads`, `--data` and `--out` options), parses it, calls
`pin_threads(args.threads)` *before* importing Keras or TensorFlow (thread
pools are sized when TensorFlow loads), and ends with
`write_results(args.out, {...})`. No Keras import here, so the tf_keras peer
processes can use it too.
"""

import argparse
import datetime
import json
import os
import platform
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def parser(doc, out=None, threads=1):
    """An ArgumentParser described by the first paragraph of `doc`, with
    `--threads` (TF intra-op threads, inter-op 1), `--data` (MNIST IDX folder
    or mnist.npz; default the bundled split) and `--out` (JSON results;
    default `out`, a file name under benchmarks/results/, or None: no file)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=threads, help=f"TF intra-op threads, inter-op 1 (default {threads})")
    p.add_argument("--data", default=None, help="MNIST IDX folder or mnist.npz (default: the bundled split)")
    default = os.path.join(HERE, "results", out) if out else None
    p.add_argument("--out", default=default, help=f"JSON file for the figures (default {default})")
    return p


def pin_threads(threads):
    """Pins TensorFlow's thread pools (intra-op `threads`, inter-op 1) and
    quiets its C++ logs; must run before TensorFlow is imported."""
    if "tensorflow" in sys.modules:
        raise RuntimeError("pin_threads must run before TensorFlow is imported")
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def copy_model(model):
    """A clone of a Keras `model` with its weights (Keras imported here, not
    at import time: the tf_keras peers import this module too)."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def mean_std(values):
    """`(mean, sample std)` of `values`; the std of one value is 0."""
    import statistics

    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_results(path, results, args=None):
    """Writes `results` (a dict) as JSON to `path` with the run's settings
    (the arguments, date, Python, platform) and prints where; does nothing
    when `path` is None."""
    if path is None:
        return
    record = {
        "settings": {
            "args": vars(args) if args is not None else None,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
        },
        **results,
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1, default=str)
    print(f"results: {path}")
