"""What `to_tflite`'s safety and rewrites cost and buy.

(a) Child-process conversion (`isolate=True`, what `isolate="auto"` does for a
    calibrated graph with control flow) against in-process, interleaved pairs,
    on the test suite's small CNN and on MobileNetV2 96x96, int8 with 16
    calibration samples: the median extra seconds and the ratio.
(b) The post-processing every conversion now runs (reordering and renaming
    the file's inputs and outputs; for int8, the SPLIT pass and the float-op
    report) timed inside `to_tflite` on MobileNetV2 96x96, float and int8.
(c) The integer-mode rewrites (recurrent layers unrolled, LayerNormalization
    without NEG) switched off and on: Keras-vs-TFLite argmax agreement of
    post-training int8 on the transformer block, the LSTM and the GRU of
    tests/architectures.py (trained briefly, 1,000 held-out samples); "crash"
    when the conversion died in its child process.

Usage:

    python benchmarks/conversion_overhead.py [--pairs 3] [--seeds 3]
"""

import argparse
import os
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))  # the model builders


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=3, help="interleaved pairs of (a)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of (c)")
    return p.parse_args()


def child_overhead(models, pairs):
    import keras_compress as kc

    for name, (model, x) in models.items():
        kc.to_tflite(model, quantization="int8", representative_data=x, calibration_steps=16)  # warm-up
        extra, ratios, base = [], [], []
        for _ in range(pairs):
            seconds = {}
            for isolate in (False, True):
                start = time.perf_counter()
                kc.to_tflite(model, quantization="int8", representative_data=x, calibration_steps=16,
                             isolate=isolate)
                seconds[isolate] = time.perf_counter() - start
            extra.append(seconds[True] - seconds[False])
            ratios.append(seconds[True] / seconds[False])
            base.append(seconds[False])
        print(f"(a) {name}: in-process {statistics.median(base):.2f} s; child process "
              f"+{statistics.median(extra):.2f} s (min {min(extra):.2f}, max {max(extra):.2f}), "
              f"ratio {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}), "
              f"{pairs} interleaved pairs", flush=True)


def post_processing(model, x, rounds):
    import keras_compress as kc
    from keras_compress.export import converter

    spent = {}
    originals = {}
    for name in ("order_and_name_io", "integer_splits", "_report_float_ops"):
        originals[name] = getattr(converter, name)

        def timed(*args, _name=name, **kwargs):
            start = time.perf_counter()
            result = originals[_name](*args, **kwargs)
            spent.setdefault(_name, []).append(time.perf_counter() - start)
            return result

        setattr(converter, name, timed)
    totals = {"float": [], "int8": []}
    try:
        for _ in range(rounds):
            for mode in totals:
                start = time.perf_counter()
                if mode == "float":
                    size = len(kc.to_tflite(model))
                else:
                    kc.to_tflite(model, quantization="int8", representative_data=x, calibration_steps=16)
                totals[mode].append(time.perf_counter() - start)
    finally:
        for name, function in originals.items():
            setattr(converter, name, function)
    io = spent["order_and_name_io"]
    io_float, io_int8 = io[0::2], io[1::2]
    ms = lambda values: 1000 * statistics.median(values)  # noqa: E731
    print(f"(b) MobileNetV2 96x96 float ({size:,} bytes): inputs/outputs ordered and named in "
          f"{ms(io_float):.0f} ms of a {statistics.median(totals['float']):.2f} s conversion")
    print(f"(b) MobileNetV2 96x96 int8: inputs/outputs {ms(io_int8):.0f} ms, SPLIT pass "
          f"{ms(spent['integer_splits']):.0f} ms, float-op report {ms(spent['_report_float_ops']):.0f} ms "
          f"of a {statistics.median(totals['int8']):.2f} s conversion (median of {rounds})", flush=True)


def rewrites(seeds):
    import keras

    import keras_compress as kc
    from architectures import FAMILIES, argmax_agreement, synthetic_data, train_briefly
    from keras_compress.export import converter

    original = converter.conversion_model
    for family in ("transformer", "lstm", "gru"):
        cells = {}
        for rewrite in (False, True):
            converter.conversion_model = original if rewrite else (lambda model, *_: (model, []))
            scores = []
            for seed in range(seeds):
                keras.utils.set_random_seed(seed)
                model = FAMILIES[family]()
                x, y = synthetic_data(model, n=256, seed=seed)
                train_briefly(model, x, y)
                x_test, _ = synthetic_data(model, n=1000, seed=100 + seed)
                try:
                    flatbuffer = kc.to_tflite(model, quantization="int8", representative_data=x)
                except RuntimeError:
                    scores.append(None)
                    continue
                scores.append(argmax_agreement(model.predict(x_test, verbose=0), kc.predict_tflite(flatbuffer, x_test)))
            converter.conversion_model = original
            known = [s for s in scores if s is not None]
            cells[rewrite] = (
                "crash" if not known else
                f"{100 * statistics.mean(known):.1f} ({100 * min(known):.1f}-{100 * max(known):.1f})"
                + (f", {len(scores) - len(known)} crash(es)" if len(known) < len(scores) else "")
            )
        print(f"(c) {family}: agreement % without rewrites {cells[False]}; with {cells[True]}", flush=True)


def main():
    args = parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.simplefilter("ignore")
    import keras
    import numpy as np
    from conftest import small_cnn, toy_data

    keras.utils.set_random_seed(0)
    mobilenet = keras.applications.MobileNetV2(input_shape=(96, 96, 3), weights=None, classes=10)
    images = np.random.default_rng(0).uniform(-1, 1, (16, 96, 96, 3)).astype("float32")
    child_overhead({"small CNN": (small_cnn(), toy_data(64)[0]), "MobileNetV2 96x96": (mobilenet, images)},
                   args.pairs)
    post_processing(mobilenet, images, args.pairs)
    rewrites(args.seeds)


if __name__ == "__main__":
    main()
