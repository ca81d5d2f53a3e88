"""`auto_compress` against issue 15's bar: size and latency budgets on the
demo CNN, and a byte budget on a residual network.

Per seed, the demo CNN trains on 7,000 bundled MNIST images (3 epochs,
batch 32; that training is timed, the "baseline training" of the wall-time
bar). Then `kc.auto.auto_compress` runs with `max_drop=0.005`, validation
on images 7,000-8,000 and the uniform baselines:

(a) size: `max_bytes` = 4% of the float file's bytes;
(b) latency: `max_latency_ms` = 0.33 x and 0.5 x the float file's p50
    (LiteRT interpreter, 1 thread; `--latency-fractions`);
(c) residual: `examples.build_residual_cnn` (two residual Adds), trained the
    same way (5 epochs), `max_bytes` = 0.7 x its int8 file
    (`--residual-fraction`); the chosen plan
    must keep the Add-tied groups whole.

When `auto_compress` refuses a latency budget as unreachable, the latency
floor of this runtime is measured beside it: the fastest models that still
read the image with a full-resolution 3x3 convolution, with one conv block
removed, and a linear model (float and int8, paired with the float file).

Printed per run: budget met, chosen bytes and p50 as ratios to the float file
(p50s measured side by side, interleaved rounds, median), validation drop,
TEST accuracy drop on the 2,000 test images (float Keras model and float file
vs the chosen file), the uniform baselines at the same budget, search wall
time / baseline training time, and the proxies' Spearman correlations. Then
a summary over seeds: mean +- std (min..max).

    python benchmarks/auto_compress.py [--seeds 3] [--quick] [--only size|latency|residual]
"""

import statistics
import time

from _common import parser, pin_threads, write_results


def parse_args():
    p = parser(__doc__, out="auto_compress.json")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--quick", action="store_true",
                   help="1 seed, 1 training epoch (2 for the residual network), 1 recovery epoch: a smoke test")
    p.add_argument("--only", choices=("size", "latency", "residual"), default=None, help="run one part only")
    p.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds, float vs chosen file")
    p.add_argument("--latency-fractions", default="0.33,0.5",
                   help="latency budgets as fractions of the float file's p50, comma-separated")
    p.add_argument("--residual-fraction", type=float, default=0.7,
                   help="the residual network's byte budget as a fraction of its int8 file")
    args = p.parse_args()
    if args.quick:
        args.seeds = 1
    return args


ARGS = parse_args()
pin_threads(ARGS.threads)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress import examples  # noqa: E402
from keras_compress.auto.sensitivity import PROXIES  # noqa: E402
from keras_compress.pruning.structured import dependency_groups  # noqa: E402
from tflite_bench.latency import measure_latency  # noqa: E402

N_TRAIN = 7000
MAX_DROP = 0.005
SIZE_FRACTION = 0.04
LATENCY_FRACTIONS = tuple(float(f) for f in ARGS.latency_fractions.split(","))
RESIDUAL_FRACTION = ARGS.residual_fraction
EPOCHS = 1 if ARGS.quick else 3
RESIDUAL_EPOCHS = 2 if ARGS.quick else 5
# auto_compress's own recovery settings: its defaults, or a short run for --quick.
SEARCH_OPTIONS = {"epochs": 1, "max_rounds": 2} if ARGS.quick else {}


def train(build, seed, epochs, data):
    """A compiled, trained model and its training wall time in seconds."""
    (x, y) = data
    keras.utils.set_random_seed(seed)
    model = examples.compile_classifier(build())
    started = time.perf_counter()
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    return model, time.perf_counter() - started


def paired_p50(files, rounds):
    """Median over `rounds` interleaved rounds of each file's p50 (ms), 1 thread."""
    p50s = {name: [] for name in files}
    for _ in range(rounds):
        for name, flatbuffer in files.items():
            p50s[name].append(measure_latency(flatbuffer, threads=1, warmup=20, runs=200)["p50_ms"])
    return {name: statistics.median(values) for name, values in p50s.items()}


def fmt(value, spec):
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else format(value, spec)


def correlations(result):
    report = result.sensitivity
    values = dict(getattr(report, "correlations", None) or {})
    return {p: (None if values.get(p) is None or not np.isfinite(values[p]) else float(values[p])) for p in PROXIES}


def _over(result, candidate):
    budget = result.budget
    size = candidate.gzip_bytes if budget["size_by"] == "gzip" else candidate.bytes
    return any([budget["max_bytes"] is not None and size > budget["max_bytes"],
                budget["max_latency_ms"] is not None and candidate.latency_ms > budget["max_latency_ms"],
                budget["max_macs"] is not None and candidate.macs > budget["max_macs"]])


def describe_run(result, float_file, float_keras_acc, float_file_acc, test, train_seconds, reference_p50):
    """The figures of one `auto_compress` result, measured again here."""
    xs, ys = test
    best = result.best
    chosen_acc = kc.export.evaluate_tflite(result.tflite, xs, ys)["accuracy"]
    p50 = paired_p50({"float": float_file, "chosen": result.tflite}, ARGS.rounds)
    ref = result.reference
    baselines = []
    for c in result.candidates:
        if c.kind in ("uniform-structured", "uniform-sparsity"):
            test_acc = kc.export.evaluate_tflite(result.files[c.name], xs, ys)["accuracy"]
            baselines.append({
                "name": c.name, "kind": c.kind, "bytes": c.bytes, "bytes_ratio": c.bytes / len(float_file),
                "latency_ms": c.latency_ms,
                "latency_ratio": None if c.latency_ms is None or not ref.latency_ms else c.latency_ms / ref.latency_ms,
                "valid_accuracy": c.metric, "valid_drop": c.drop, "feasible": c.feasible,
                "test_accuracy": test_acc, "test_drop_vs_keras": float_keras_acc - test_acc,
            })
    # The search's own pick (a baseline may have won the run): its best plan within the resources.
    own = [c for c in result.candidates if c.kind in ("search", "screening")]
    within = [c for c in own if c.feasible] or [c for c in own if not _over(result, c)] or own
    search_best = max(within, key=lambda c: c.metric) if within else None
    search_test = (kc.export.evaluate_tflite(result.files[search_best.name], xs, ys)["accuracy"]
                   if search_best is not None else None)
    return {
        "met": bool(result.met),
        "reason": result.reason,
        "budget": result.budget,
        "chosen": {"name": best.name, "kind": best.kind, "quantization": best.quantization, "plan": best.plan,
                   "params": best.params},
        "float_bytes": len(float_file),
        "bytes": best.bytes,
        "bytes_ratio": best.bytes / len(float_file),
        "float_p50_ms": p50["float"],
        "chosen_p50_ms": p50["chosen"],
        "p50_ratio": p50["chosen"] / p50["float"],
        "search_p50_ratio": (best.latency_ms / ref.latency_ms) if best.latency_ms and ref.latency_ms else None,
        "reference_p50_for_budget_ms": reference_p50,
        "valid_drop": best.drop,
        "test_float_keras": float_keras_acc,
        "test_float_file": float_file_acc,
        "test_chosen": chosen_acc,
        "test_drop_vs_keras": float_keras_acc - chosen_acc,
        "test_drop_vs_float_file": float_file_acc - chosen_acc,
        "baselines": baselines,
        "search_pick": None if search_best is None else {
            "name": search_best.name, "bytes": search_best.bytes, "bytes_ratio": search_best.bytes / len(float_file),
            "latency_ratio": (search_best.latency_ms / ref.latency_ms) if ref.latency_ms else None,
            "valid_drop": search_best.drop, "feasible": search_best.feasible, "test_accuracy": search_test,
            "test_drop_vs_keras": float_keras_acc - search_test},
        "search_seconds": result.seconds["search_total"],
        "total_seconds": result.seconds["total"],
        "train_seconds": train_seconds,
        "search_over_training": result.seconds["search_total"] / train_seconds,
        "correlations": correlations(result),
        "candidates": [c.to_dict() for c in result.candidates],
        "seconds": result.seconds,
    }


def print_run(label, row):
    print(f"\n-- {label}: budget {'MET' if row['met'] else 'NOT met'}: {row['reason']}")
    print(f"   chosen: {row['chosen']['name']} ({row['chosen']['kind']}), plan {row['chosen']['plan']}")
    print(f"   bytes {row['bytes']:,} = {row['bytes_ratio']:.4f} x float ({row['float_bytes']:,})")
    print(f"   p50 {row['chosen_p50_ms']:.4f} ms vs float {row['float_p50_ms']:.4f} ms: ratio {row['p50_ratio']:.3f} "
          f"(median of {ARGS.rounds} interleaved rounds; the search's own ratio "
          f"{fmt(row['search_p50_ratio'], '.3f')})")
    print(f"   validation drop {100 * row['valid_drop']:+.2f} points; TEST accuracy: float Keras "
          f"{100 * row['test_float_keras']:.2f}%, float file {100 * row['test_float_file']:.2f}%, chosen "
          f"{100 * row['test_chosen']:.2f}% -> drop {100 * row['test_drop_vs_keras']:+.2f} (vs Keras), "
          f"{100 * row['test_drop_vs_float_file']:+.2f} (vs float file) points")
    for b in row["baselines"]:
        print(f"   baseline {b['name']}: {b['bytes']:,} bytes ({b['bytes_ratio']:.4f} x float), p50 ratio "
              f"{fmt(b['latency_ratio'], '.3f')} (search's measurement), validation accuracy "
              f"{100 * b['valid_accuracy']:.2f}% (drop {100 * b['valid_drop']:+.2f}), TEST drop "
              f"{100 * b['test_drop_vs_keras']:+.2f}, {'feasible' if b['feasible'] else 'not feasible'}")
    pick = row.get("search_pick")
    if pick is not None:
        print(f"   the search's own pick {pick['name']}: {pick['bytes']:,} bytes ({pick['bytes_ratio']:.4f} x float), "
              f"p50 ratio {fmt(pick['latency_ratio'], '.3f')}, validation drop {100 * pick['valid_drop']:+.2f}, "
              f"TEST drop {100 * pick['test_drop_vs_keras']:+.2f}, {'feasible' if pick['feasible'] else 'not feasible'}")
    if not row["baselines"]:
        print("   baselines: none measured")
    print(f"   search wall time {row['search_seconds']:.1f} s / baseline training {row['train_seconds']:.1f} s = "
          f"{row['search_over_training']:.2f}x (total with baselines {row['total_seconds']:.1f} s)")
    print("   proxy Spearman correlations: "
          + ", ".join(f"{p} {fmt(v, '+.3f')}" for p, v in row["correlations"].items()))


def latency_floor(float_file, calibration):
    """p50 of the fastest models that still read the image with a 3x3
    convolution at full resolution (and of a linear model, which does not),
    float and int8, each against the float demo CNN's file in interleaved
    rounds: how far narrowing and removing layers can go on this runtime."""
    layers = keras.layers

    def build(*stack):
        inputs = keras.Input((28, 28, 1))
        x = inputs
        for layer in stack:
            x = layer(x)
        return keras.Model(inputs, x)

    shapes = {
        "conv(2)+pool+conv(4)+pool+fc(8)+fc(10)": lambda: build(
            layers.Conv2D(2, 3, activation="relu"), layers.MaxPooling2D(), layers.Conv2D(4, 3, activation="relu"),
            layers.MaxPooling2D(), layers.Flatten(), layers.Dense(8, activation="relu"), layers.Dense(10)),
        "conv(2)+pool+fc(8)+fc(10) (a conv block removed)": lambda: build(
            layers.Conv2D(2, 3, activation="relu"), layers.MaxPooling2D(), layers.Flatten(),
            layers.Dense(8, activation="relu"), layers.Dense(10)),
        "fc(10) (linear: no convolution)": lambda: build(layers.Flatten(), layers.Dense(10)),
    }
    files = {"float demo CNN": float_file}
    for name, make in shapes.items():
        model = make()
        files[f"{name}, float"] = kc.export.to_tflite(model, quantization=None)
        files[f"{name}, int8"] = kc.export.to_tflite(model, quantization="int8", representative_data=calibration)
    p50 = paired_p50(files, ARGS.rounds)
    print("   latency floor on this runtime (1 thread, untrained weights; p50 / float demo CNN's p50):")
    for name, value in p50.items():
        if name != "float demo CNN":
            print(f"     {name:<58} {1000 * value:6.2f} us = {value / p50['float demo CNN']:.3f}x")
    return {name: value / p50["float demo CNN"] for name, value in p50.items()}


def search(label, row, model, *args, **kwargs):
    """`auto_compress(model, *args, **kwargs)`, or None when it refuses the
    budget as unreachable (its ValueError, printed and kept in `row`)."""
    try:
        return kc.auto.auto_compress(model, *args, **kwargs)
    except ValueError as error:
        row.update(met=False, error=str(error))
        print(f"\n-- {label}: budget NOT met: auto_compress refused it: {error}")
        return None


def check_ties(model, result):
    """Whether every shrink entry of the chosen plan names a whole dependency
    group (producers joined by "+"), and tied layers kept equal widths."""
    groups = {"+".join(g.producers): g for g in dependency_groups(model)}
    tied = [g for g in groups.values() if len(g.producers) > 1]
    entries = {k: v for k, v in result.best.plan.items() if v[0] == "shrink"}
    whole = all(key in groups for key in entries)
    split = [key for key in entries if key not in groups]
    widths = {}
    for g in tied:
        found = []
        for name in g.producers:
            try:
                layer = result.model.get_layer(name)
            except ValueError:
                continue
            found.append(getattr(layer, "filters", getattr(layer, "units", None)))
        widths["+".join(g.producers)] = found
    equal = all(len(set(w)) == 1 for w in widths.values())
    return {"tied_groups": list(widths), "plan_keys_are_groups": whole, "split_keys": split,
            "tied_widths": widths, "tied_widths_equal": equal,
            "tied_group_shrunk": {k: entries.get(k) for k in widths}}


def summarize(label, rows, key, scale=1.0, spec=".3f"):
    values = [r[key] * scale for r in rows if r.get(key) is not None]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    print(f"  {label:<48} {statistics.mean(values):{spec}} +- {std:{spec.lstrip('+')}} "
          f"({min(values):{spec}}..{max(values):{spec}})")
    return {"mean": statistics.mean(values), "std": std, "min": min(values), "max": max(values), "n": len(values)}


def main():
    (xt, yt), (xs, ys) = kc.datasets.load_mnist(ARGS.data)
    train_data = (xt[:N_TRAIN], yt[:N_TRAIN])
    valid_data = (xt[N_TRAIN:8000], yt[N_TRAIN:8000])
    parts = [ARGS.only] if ARGS.only else ["size", "latency", "residual"]
    runs = {part: [] for part in parts if part != "latency"}
    started_all = time.perf_counter()
    for seed in range(ARGS.seeds):
        print(f"\n== seed {seed}")
        if "size" in parts or "latency" in parts:
            base, train_seconds = train(examples.build_cnn, seed, EPOCHS, train_data)
            float_file = kc.export.to_tflite(base, quantization=None)
            keras_acc = float(base.evaluate(xs, ys, verbose=0, batch_size=256)[1])
            file_acc = kc.export.evaluate_tflite(float_file, xs, ys)["accuracy"]
            print(f"demo CNN: {EPOCHS} epochs on {N_TRAIN:,} images in {train_seconds:.1f} s (baseline training); "
                  f"float file {len(float_file):,} bytes; test accuracy Keras {100 * keras_acc:.2f}%, "
                  f"float file {100 * file_acc:.2f}%")
            if "size" in parts:
                max_bytes = int(SIZE_FRACTION * len(float_file))
                print(f"(a) size budget: max_bytes = {SIZE_FRACTION} x {len(float_file):,} = {max_bytes:,}, "
                      f"max_drop {MAX_DROP}")
                row = {"seed": seed, "max_bytes": max_bytes, "float_bytes": len(float_file),
                       "train_seconds": train_seconds}
                r = search(f"seed {seed}, size", row, base, train_data, valid_data, max_bytes=max_bytes,
                           max_drop=MAX_DROP, baselines=True, verbose=False, seed=seed, **SEARCH_OPTIONS)
                if r is not None:
                    row.update(describe_run(r, float_file, keras_acc, file_acc, (xs, ys), train_seconds, None))
                    print_run(f"seed {seed}, size", row)
                runs["size"].append(row)
            if "latency" in parts:
                float_p50 = measure_latency(float_file, threads=1, warmup=20, runs=200)["p50_ms"]
                for fraction in LATENCY_FRACTIONS:
                    max_latency = fraction * float_p50
                    part = f"latency {fraction}"
                    print(f"\n(b) latency budget: max_latency_ms = {fraction} x {float_p50:.4f} = "
                          f"{max_latency:.4f} ms (1 thread), max_drop {MAX_DROP}")
                    row = {"seed": seed, "max_latency_ms": max_latency, "float_p50_for_budget_ms": float_p50,
                           "train_seconds": train_seconds}
                    r = search(f"seed {seed}, {part}", row, base, train_data, valid_data,
                               max_latency_ms=max_latency, threads=1, max_drop=MAX_DROP, baselines=True,
                               verbose=False, seed=seed, **SEARCH_OPTIONS)
                    if r is None:
                        row["floor"] = latency_floor(float_file, xt[:200])
                    if r is not None:
                        row.update(describe_run(r, float_file, keras_acc, file_acc, (xs, ys), train_seconds,
                                                float_p50))
                        print_run(f"seed {seed}, {part}", row)
                    runs.setdefault(part, []).append(row)
        if "residual" in parts:
            model, train_seconds = train(examples.build_residual_cnn, seed, RESIDUAL_EPOCHS, train_data)
            float_file = kc.export.to_tflite(model, quantization=None)
            int8_file = kc.export.to_tflite(model, quantization="int8", representative_data=xt[:N_TRAIN],
                                            calibration_steps=200)
            keras_acc = float(model.evaluate(xs, ys, verbose=0, batch_size=256)[1])
            file_acc = kc.export.evaluate_tflite(float_file, xs, ys)["accuracy"]
            max_bytes = int(RESIDUAL_FRACTION * len(int8_file))
            print(f"\n(c) residual network ({model.count_params():,} params, {RESIDUAL_EPOCHS} epochs in "
                  f"{train_seconds:.1f} s; test accuracy Keras {100 * keras_acc:.2f}%, float file "
                  f"{100 * file_acc:.2f}%): budget max_bytes = {RESIDUAL_FRACTION} x its int8 file "
                  f"{len(int8_file):,} = {max_bytes:,} (float file {len(float_file):,}), max_drop {MAX_DROP}")
            row = {"seed": seed, "max_bytes": max_bytes, "int8_bytes": len(int8_file), "train_seconds": train_seconds}
            runs["residual"].append(row)
            r = search(f"seed {seed}, residual", row, model, train_data, valid_data, max_bytes=max_bytes,
                       max_drop=MAX_DROP, baselines=True, verbose=False, seed=seed, **SEARCH_OPTIONS)
            if r is None:
                continue
            row.update(describe_run(r, float_file, keras_acc, file_acc, (xs, ys), train_seconds, None))
            row.update(bytes_ratio_int8=r.best.bytes / len(int8_file), ties=check_ties(model, r))
            print_run(f"seed {seed}, residual", row)
            t = row["ties"]
            print(f"   {row['bytes']:,} bytes = {row['bytes_ratio_int8']:.3f} x the int8 file; Add ties: plan keys "
                  f"are whole groups: {t['plan_keys_are_groups']}"
                  + (f" (split: {t['split_keys']})" if t["split_keys"] else "")
                  + f"; tied groups {t['tied_group_shrunk']}; tied widths in the chosen model {t['tied_widths']}"
                  f" (equal: {t['tied_widths_equal']})")

    wall = time.perf_counter() - started_all
    print(f"\n== summary over {ARGS.seeds} seed(s): mean +- std (min..max)")
    summary = {}
    for part, rows in runs.items():
        if not rows:
            continue
        met = sum(r["met"] for r in rows)
        refused = sum("error" in r for r in rows)
        print(f"{part}: budget met {met}/{len(rows)}"
              + (f" ({refused} refused by auto_compress as unreachable)" if refused else ""))
        s = {"met": met, "runs": len(rows), "refused": refused}
        s["bytes_ratio"] = summarize("chosen bytes / float file", rows, "bytes_ratio", spec=".4f")
        if part == "residual":
            s["bytes_ratio_int8"] = summarize("chosen bytes / int8 file", rows, "bytes_ratio_int8")
            ties = sum(r["ties"]["plan_keys_are_groups"] and r["ties"]["tied_widths_equal"]
                       for r in rows if "ties" in r)
            print(f"  {'plans respecting the Add ties':<48} {ties}/{len(rows)}")
            s["ties_respected"] = ties
        s["p50_ratio"] = summarize("chosen p50 / float p50 (paired)", rows, "p50_ratio")
        s["valid_drop"] = summarize("validation drop (points)", rows, "valid_drop", 100, ".2f")
        s["test_drop_vs_keras"] = summarize("TEST drop vs float Keras (points)", rows, "test_drop_vs_keras", 100,
                                            ".2f")
        s["test_drop_vs_float_file"] = summarize("TEST drop vs float file (points)", rows,
                                                 "test_drop_vs_float_file", 100, ".2f")
        s["search_over_training"] = summarize("search wall time / baseline training", rows,
                                              "search_over_training", spec=".2f")
        picks = [r["search_pick"] for r in rows if r.get("search_pick")]
        if picks:
            s["search_pick"] = {
                "test_drop": summarize("search's own pick: TEST drop (points)", picks, "test_drop_vs_keras", 100, ".2f"),
                "valid_drop": summarize("search's own pick: validation drop (points)", picks, "valid_drop", 100,
                                        ".2f"),
                "bytes_ratio": summarize("search's own pick: bytes / float file", picks, "bytes_ratio", spec=".4f"),
                "feasible": sum(p["feasible"] for p in picks),
            }
            print(f"  search's own pick: feasible {s['search_pick']['feasible']}/{len(picks)}")
        for kind in ("uniform-structured", "uniform-sparsity"):
            picked = [next((b for b in r.get("baselines", []) if b["kind"] == kind), None) for r in rows]
            picked = [b for b in picked if b is not None]
            if picked:
                s[kind] = {
                    "bytes_ratio": summarize(f"{kind}: bytes / float file", picked, "bytes_ratio", spec=".4f"),
                    "latency_ratio": summarize(f"{kind}: p50 / float p50 (search's)", picked, "latency_ratio"),
                    "valid_drop": summarize(f"{kind}: validation drop (points)", picked, "valid_drop", 100, ".2f"),
                    "test_drop": summarize(f"{kind}: TEST drop (points)", picked, "test_drop_vs_keras", 100, ".2f"),
                    "feasible": sum(b["feasible"] for b in picked),
                }
                print(f"  {kind}: feasible {s[kind]['feasible']}/{len(picked)}")
        for proxy in PROXIES:
            values = [{"v": r["correlations"][proxy]} for r in rows if "correlations" in r]
            s[f"spearman_{proxy}"] = summarize(f"Spearman {proxy}", values, "v", spec="+.3f")
        summary[part] = s
    print(f"benchmark wall time {wall:.0f} s")
    write_results(ARGS.out, {"runs": runs, "summary": summary, "wall_seconds": wall}, ARGS)


if __name__ == "__main__":
    main()
