"""`auto_compress`: the smallest or fastest model within a metric budget,
measured on its `.tflite` file.

The search, in the order it runs:

1. **Reference.** The model is converted to float and int8 files; their
   bytes, p50 latency (LiteRT interpreter, `threads`) and held-out metric are
   measured.
2. **Sensitivity.** `sensitivity_analysis` measures, on the held-out data,
   the metric drop of removing each fraction of each dependency group's units
   (and of each unstructured sparsity per layer, with the proxies' rank
   correlations).
3. **Cost models.** Parameters and MACs of any plan are counted exactly from
   the shapes (`StructureCosts`). File bytes and latency are fitted on
   uniformly narrowed models that are converted and measured (`LinearCost`,
   validated leave-one-out); MACs need no fit.
4. **Allocation.** Per group, a removal fraction, chosen to minimise the sum
   of measured drops under the predicted costs: exhaustively when the
   combinations are few (at most `EXHAUSTIVE_LIMIT`), else greedily (the
   fraction step with the most budget saved per point of drop, repeated).
   Both are computed when exhaustive search runs, and the report compares
   them.
5. **Recovery and verification.** The plan is built (`shrink`, L1), trained
   by distillation from the original model (`Distiller`, teacher outputs
   cached) for `epochs`, converted to int8 and measured. When the file
   misses a resource budget, the targets are scaled by the measured error and
   the allocation runs again; when it misses `max_drop`, the student trains
   `epochs` more, up to `MAX_EXTRA_TRAINING` times while its metric improves;
   for a byte budget the last resort moves part of the saving
   to unstructured sparsity (a `plan_for_bytes` knapsack on measured sparse
   files, trained with `prune_low_magnitude` and the distillation). At most
   `max_rounds` models are trained.
6. **Baselines** (`baselines=True`): uniform allocation at the same budget,
   recovered the same way: every group narrowed by the same fraction, and
   (for a byte budget) every layer pruned to the same sparsity.

The model passed in is never modified.
"""

import functools
import gzip
import itertools
import logging
import math
import time

import keras
import numpy as np

from keras_compress._backend import check_backend, require_tensorflow
from keras_compress import _data, _models
from keras_compress.auto.allocation import plan_for_bytes, zero_smallest
from keras_compress.auto.costs import StructureCosts, fit_linear, model_counts
from keras_compress.auto.result import AutoResult, Candidate
from keras_compress.auto.sensitivity import _accuracy, sensitivity_analysis
from keras_compress.distillation import Distiller
from keras_compress.export import to_tflite
from keras_compress.export.interpreter import predict_tflite
from keras_compress.pruning import ConstantSparsity, UpdatePruningStep, prune_low_magnitude, strip_pruning
from keras_compress.pruning.structured import shrink
from tflite_bench.checks import check_bool, check_choice, check_int, check_number, describe
from tflite_bench.latency import measure_latency
from tflite_bench.runtime import RUNTIMES

logger = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
CALIBRATION_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 0.875)
EXHAUSTIVE_LIMIT = 20000
LATENCY_SECONDS = 0.3  # invoke time per latency measurement (a quarter without a latency budget)
LATENCY_REPEATS = 3
QUANTIZATIONS = ("int8", "int16x8", "float16", "dynamic", "float")
STEPS_PER_EXECUTION = 16  # training steps per call of the distillation's train function
MAX_EXTRA_TRAINING = 2  # rounds of `epochs` more training of a plan that misses max_drop, while it improves
SPARSE_RELAX = 1.4  # the structured target of the sparsity round, times the byte budget
UNIFORM_SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
# Targets are aimed this far inside a budget: latency is noisy, bytes are not.
MARGIN = {"bytes": 0.99, "latency_ms": 0.92, "macs": 1.0}


def _quiet_retracing(function):
    """Keeps TensorFlow's "triggered tf.function retracing" warnings out of
    the search's output: every candidate is a new model with new traced
    functions, by design."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        tf_logger = logging.getLogger("tensorflow")
        level = tf_logger.level
        tf_logger.setLevel(max(level, logging.ERROR))
        try:
            return function(*args, **kwargs)
        finally:
            tf_logger.setLevel(level)

    return wrapper


@_quiet_retracing
def auto_compress(
    model,
    data,
    validation_data=None,
    *,
    max_bytes=None,
    size_by="raw",
    max_latency_ms=None,
    threads=1,
    runtime="interpreter",
    latency_fn=None,
    max_macs=None,
    max_drop=0.005,
    metric=None,
    loss=None,
    quantization="int8",
    strip_names=True,
    epochs=4,
    batch_size=32,
    learning_rate=1e-3,
    fractions=DEFAULT_FRACTIONS,
    search="auto",
    screen=4,
    baselines=True,
    max_rounds=4,
    out=None,
    seed=0,
    verbose=True,
):
    """Searches per-group compression of `model` to a budget, verified on its `.tflite`.

    Args:
        model: a trained, built Sequential or Functional model with logits
            (or scores) as its output; it is not modified.
        data: training samples with labels, `(x, y)` (a dict or list of
            arrays per input for `x`): recovery fine-tuning and int8
            calibration read them.
        validation_data: held-out `(x, y)` that every measurement reads
            (sensitivity, verification of each file); default the last 20%
            of `data` (then the rest trains).
        max_bytes: the largest file allowed, in bytes (`size_by`).
        size_by: `"raw"` (the file's bytes) or `"gzip"` (its gzip size, what
            an app download costs).
        max_latency_ms: the largest p50 invoke latency allowed, in
            milliseconds, in the LiteRT interpreter on this machine with
            `threads` threads.
        threads: interpreter threads for latency.
        runtime: the LiteRT runtime timed on this machine: "interpreter"
            or "compiled" (`tflite_bench.latency.measure_latency`).
        latency_fn: instead, a function `flatbuffer bytes -> p50 ms` that
            times a file where it will run, for example on a phone through
            `tflite_bench.android.run_on_device` (every latency of the search,
            calibration included, then comes from it).
        max_macs: the largest multiply-accumulate count of one inference.
        max_drop: the largest metric drop allowed against the original
            model's float file, in the metric's units (0.005 = half a point
            of accuracy).
        metric: `None` for top-1 accuracy, or a function
            `(y_true, y_pred) -> float`, larger is better.
        loss: the training loss: a Keras loss or its name; default the loss
            `model` was compiled with.
        quantization: the `to_tflite` mode of the files the search makes:
            "int8" (default; calibrated on `data`), "int16x8", "float16",
            "dynamic" or "float"; or a tuple of modes to choose from per
            plan, each with its own measured cost models (for a latency
            budget on a CPU where a small model runs faster in float, say
            `("int8", "float")`). Uniform baselines use the first.
        strip_names: make every file without its internal tensor names
            (`to_tflite(strip_names=True)`: debug information no runtime
            reads, a few hundred bytes; inputs, outputs and signatures keep
            theirs), the file a deployment ships; False keeps them (for
            `fidelity_report`).
        epochs: fine-tuning epochs of each recovery (and of each baseline).
        batch_size: fine-tuning batch size.
        learning_rate: Adam's learning rate for recovery.
        fractions: the removal fractions the search chooses from per group,
            each in (0, 1).
        search: `"exhaustive"`, `"greedy"` or `"auto"` (exhaustive when at
            most `EXHAUSTIVE_LIMIT` combinations).
        screen: how many plans that fit the budget each get one epoch of
            recovery before one of them trains `epochs` (1 turns this off):
            the one with the smallest predicted drop, runners-up, the one
            that keeps the most parameters and the most even one (a uniform
            removal, then each group grown back while the plan fits). The one that
            goes on has the most parameters among those whose held-out
            accuracy is within one standard error of the best (the best, for
            another metric).
        baselines: also make the uniform baselines at the same budget.
        max_rounds: the most models the search trains (>= 1).
        out: a folder to write the model, its file and the report to.
        seed: the random seed of fine-tuning.
        verbose: print the stages and progress.

    Returns:
        An `AutoResult`: the chosen model and file, whether the budget was
        met and why not, and every candidate measured.

    Raises:
        ValueError / TypeError: a bad argument, data that does not fit the
            model, or a budget below the smallest model the search can make
            (the message gives that model's measured size or latency).
    """
    check_backend("auto_compress")
    require_tensorflow("auto_compress", "its sensitivity proxies differentiate the loss with TensorFlow's "
                       "GradientTape, and it converts dozens of files (on another backend each one in a child "
                       "process)", "Save the model as a .keras file and run the search with "
                       "KERAS_BACKEND=tensorflow; the result loads on any backend.")
    api = "auto_compress"
    started = time.perf_counter()
    _models.check_graph_model(model, api, "auto_compress on a Functional model wrapping it")
    if len(model.outputs) != 1:
        raise ValueError(f"{api}: model '{model.name}' has {len(model.outputs)} outputs; the search trains and "
                         "scores one output (distillation of its logits). Compress a single-output model, or "
                         "use kc.pruning and kc.quantization by hand.")
    budget = _check_budget(api, max_bytes, size_by, max_latency_ms, threads, max_macs, max_drop)
    modes = _check_modes(api, quantization)
    check_choice(api, "runtime", runtime, RUNTIMES)
    check_bool(api, "strip_names", strip_names)
    if latency_fn is not None and not callable(latency_fn):
        raise TypeError(f"{api}: latency_fn must be None or a function (flatbuffer bytes) -> p50 ms, "
                        f"got {describe(latency_fn)}.")
    check_int(api, "epochs", epochs, minimum=1)
    check_int(api, "batch_size", batch_size, minimum=1)
    check_number(api, "learning_rate", learning_rate, minimum=0, inclusive=(False, True))
    check_choice(api, "search", search, ("auto", "exhaustive", "greedy"))
    check_int(api, "screen", screen, minimum=1)
    check_bool(api, "baselines", baselines)
    check_int(api, "max_rounds", max_rounds, minimum=1)
    check_int(api, "seed", seed, minimum=0)
    check_bool(api, "verbose", verbose)
    fractions = _check_fractions(api, fractions)
    if metric is not None and not callable(metric):
        raise TypeError(f"{api}: metric must be None (accuracy) or a function (y_true, y_pred) -> float, "
                        f"got {describe(metric)}.")
    loss_fn = _training_loss(api, model, loss)
    train, valid = _split(api, model, data, validation_data)
    costs = StructureCosts(model)
    if not costs.groups:
        raise ValueError(f"{api}: model '{model.name}' has no units the search can remove: "
                         + "; ".join(f"{'+'.join(p.name for p in g.producers)}: {g.reason}"
                                     for g in costs.analysis.groups)
                         + ". Use kc.quantization or kc.pruning by hand.")
    budget["metric"] = "accuracy" if metric is None else getattr(metric, "__name__", "metric")
    run = _Run(api, model, train, valid, budget, metric, loss_fn, epochs, batch_size, learning_rate, seed, verbose)
    run.quantization, run.runtime, run.latency_fn, run.strip_names = modes[0], runtime, latency_fn, strip_names
    seconds = {}

    # 1. Reference files.
    clock = time.perf_counter()
    run.say(f"measuring the reference files of '{model.name}'")
    reference = run.measure(model, "float", "reference", {}, quantization="float")
    run.reference_metric = reference.metric
    reference.drop = 0.0
    reference.feasible = run.meets(reference)
    run.candidates.append(reference)
    mode_drop = {"float": 0.0}
    for mode in modes:
        if mode != "float":
            quantized = run.measure(model, mode, "reference", {}, quantization=mode)
            quantized.feasible = run.meets(quantized)
            run.candidates.append(quantized)
            mode_drop[mode] = max(0.0, quantized.drop)
    seconds["reference"] = time.perf_counter() - clock

    # 2. Sensitivity.
    clock = time.perf_counter()
    run.say("sensitivity: one-shot drop of each group at each removal fraction")
    report = sensitivity_analysis(model, valid, sparsities=(0.5, 0.75, 0.9), fractions=fractions,
                                  loss=loss_fn, verbose=verbose)
    seconds["sensitivity"] = time.perf_counter() - clock

    # 3. Cost models.
    clock = time.perf_counter()
    run.say("cost models: converting and timing uniformly narrowed models")
    fits = {mode: run.calibrate(costs, mode) for mode in modes}
    seconds["cost_model"] = time.perf_counter() - clock
    run.check_reachable(costs, modes)

    # 4.-5. Allocation, screening, recovery, verification.
    clock = time.perf_counter()
    options = _options(costs, report, fractions)
    searcher = _Allocator(costs, options, fits, budget, mode_drop, modes)
    method = search
    if search == "auto":
        method = "exhaustive" if searcher.combinations() <= EXHAUSTIVE_LIMIT else "greedy"
    targets = {k: budget[k] * MARGIN[k] for k in budget["resources"]}
    comparison = {"method": method, "combinations": searcher.combinations()}
    if method == "exhaustive":
        comparison["exhaustive_predicted_drop"] = searcher.allocate(targets, "exhaustive")[2]["drop"]
        comparison["greedy_predicted_drop"] = searcher.allocate(targets, "greedy")[2]["drop"]
    trained = 0
    sparse_stage = False
    while trained < max_rounds:
        plans = searcher.screening_plans(targets, method, screen) if screen > 1 else [searcher.allocate(targets, method)]
        trained += 1
        label = f"round {trained}"
        if len(plans) > 1:
            run.say(f"{label}: screening {len(plans)} plans with 1 epoch of distillation each")
            screened = []
            for i, (mode, counts, predicted) in enumerate(plans, 1):
                run.say(f"  plan {i}: {_describe_plan(costs, counts)}, {mode} "
                        f"(predicted {_describe_predicted(predicted)})")
                student = run.recover(costs, counts, epochs=1)
                candidate = run.measure(student, f"{label} plan {i}", "screening", _plan_dict(costs, counts),
                                        quantization=mode, predicted=predicted, note="1 epoch")
                candidate.feasible = run.meets(candidate)
                run.candidates.append(candidate)
                screened.append((candidate, student, mode, counts, predicted))
            candidate, student, mode, counts, predicted = run.pick(screened)
            run.say(f"{label}: {candidate.name} goes on ({epochs - 1} more epoch(s)): the most parameters "
                    "among the best after 1 epoch, within the validation noise")
            if epochs > 1:
                student = run.fit(_copy(student), run.teacher_targets(), epochs - 1, pruning=False)
        else:
            mode, counts, predicted = plans[0]
            run.say(f"{label}: {_describe_plan(costs, counts)}, {mode} (predicted {_describe_predicted(predicted)})")
            student = run.recover(costs, counts)
        plan = _plan_dict(costs, counts)
        candidate = run.measure(student, label, "search", plan, quantization=mode, predicted=predicted,
                                note=f"{epochs} epochs")
        candidate.feasible = run.meets(candidate)
        run.candidates.append(candidate)
        if candidate.feasible:
            break
        over = run.over_budget(candidate)
        if over:
            for resource, ratio in over.items():
                targets[resource] *= min(0.97, 1.0 / ratio)
            candidate.note += "; over " + ", ".join(f"{r} by {100 * (q - 1):.1f}%" for r, q in over.items())
            continue
        # Within the resources, over max_drop: train longer while it helps,
        # then (bytes) trade structure for sparsity.
        total = epochs
        while trained < max_rounds and total < (1 + MAX_EXTRA_TRAINING) * epochs:
            trained += 1
            total += epochs
            label = f"round {trained}"
            run.say(f"{label}: {epochs} more epochs of distillation for {candidate.name}'s model")
            student = run.fit(_copy(student), run.teacher_targets(), epochs, pruning=False)
            again = run.measure(student, label, "search", plan, quantization=mode, predicted=predicted,
                                note=f"{total} epochs ({candidate.name}'s model, trained on)")
            again.feasible = run.meets(again)
            run.candidates.append(again)
            improved = again.metric > candidate.metric
            candidate = again
            if again.feasible or not improved:
                break
        if candidate.feasible:
            break
        if "bytes" in budget["resources"] and not sparse_stage and trained < max_rounds:
            sparse_stage = True
            trained += 1
            label = f"round {trained}"
            relaxed = {**targets, "bytes": budget["bytes"] * SPARSE_RELAX}
            _, counts, _ = searcher.allocate(relaxed, method, modes=(mode,))
            run.say(f"{label}: structure to {relaxed['bytes']:,.0f} bytes ({_describe_plan(costs, counts)}), "
                    "then unstructured sparsity to the budget")
            student, sparse_plan, predicted = run.recover_sparse(costs, counts, mode)
            cand = run.measure(student, label, "search", {**_plan_dict(costs, counts), **sparse_plan},
                               quantization=mode, predicted=predicted, note="structured + unstructured sparsity")
            cand.feasible = run.meets(cand)
            run.candidates.append(cand)
        break
    seconds["search"] = time.perf_counter() - clock

    # 6. Baselines.
    clock = time.perf_counter()
    if baselines:
        run.baselines(costs, fits, searcher)
    seconds["baselines"] = time.perf_counter() - clock
    seconds["total"] = time.perf_counter() - started
    seconds["search_total"] = seconds["total"] - seconds["baselines"]

    best, best_model, best_file = run.best()
    met = best.feasible
    reason = run.reason(best, met)
    cost_models = {(k if len(modes) == 1 else f"{k} ({mode})"): v.to_dict()
                   for mode in modes for k, v in fits[mode].items()}
    cost_models["search"] = comparison
    result = AutoResult(best_model, best_file, best, met, reason, _public_budget(budget), reference,
                        run.candidates, report, cost_models, seconds,
                        {name: flatbuffer for name, (_, flatbuffer) in run.models.items()})
    run.say(reason)
    if out is not None:
        result.save(out)
    return result


# --------------------------------------------------------------------------
# Arguments


def _check_budget(api, max_bytes, size_by, max_latency_ms, threads, max_macs, max_drop):
    check_int(api, "max_bytes", max_bytes, minimum=1, allow_none=True)
    check_choice(api, "size_by", size_by, ("raw", "gzip"))
    check_number(api, "max_latency_ms", max_latency_ms, minimum=0, inclusive=(False, True), allow_none=True)
    check_int(api, "threads", threads, minimum=1)
    check_int(api, "max_macs", max_macs, minimum=1, allow_none=True)
    check_number(api, "max_drop", max_drop, minimum=0)
    if max_bytes is None and max_latency_ms is None and max_macs is None:
        raise ValueError(f"{api}: give a budget: max_bytes, max_latency_ms and/or max_macs.")
    budget = {"bytes": max_bytes, "latency_ms": None if max_latency_ms is None else float(max_latency_ms),
              "macs": max_macs, "size_by": size_by, "threads": threads, "max_drop": float(max_drop)}
    budget["resources"] = tuple(k for k in ("bytes", "latency_ms", "macs") if budget[k] is not None)
    return budget


def _public_budget(budget):
    return {"max_bytes": budget["bytes"], "size_by": budget["size_by"], "max_latency_ms": budget["latency_ms"],
            "threads": budget["threads"], "max_macs": budget["macs"], "max_drop": budget["max_drop"],
            "metric": budget["metric"]}


def _check_fractions(api, fractions):
    if isinstance(fractions, (str, bytes)) or not hasattr(fractions, "__iter__"):
        raise TypeError(f"{api}: fractions must be a list of numbers in (0, 1), got {describe(fractions)}.")
    values = sorted({check_number(api, "fractions", f, minimum=0, maximum=1, inclusive=(False, False))
                     for f in fractions})
    if not values:
        raise ValueError(f"{api}: fractions is empty: the search needs at least one removal fraction.")
    return tuple(values)


def _training_loss(api, model, loss):
    if loss is not None:
        try:
            return keras.losses.get(loss)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{api}: loss {loss!r} is not a Keras loss: {error}") from None
    compiled = getattr(model, "loss", None)
    if compiled is None:
        raise ValueError(f"{api}: model '{model.name}' is not compiled and no loss was given: pass loss= "
                         "(for example keras.losses.SparseCategoricalCrossentropy(from_logits=True)).")
    return keras.losses.get(compiled) if isinstance(compiled, str) else compiled


def _split(api, model, data, validation_data):
    specs = _data.input_specs(model)
    arrays, y = _data.read_inputs(data, specs, api=api, argument="data", model_name=model.name, labels=True)
    if y is None:
        raise ValueError(f"{api}: data needs labels: give (x, y).")
    y = np.asarray(y)
    if validation_data is None:
        n = len(y)
        cut = n - max(1, n // 5)
        if cut < 1:
            raise ValueError(f"{api}: data has {n} samples: too few to hold out a validation part; "
                             "give validation_data.")
        return ([a[:cut] for a in arrays], y[:cut]), ([a[cut:] for a in arrays], y[cut:])
    v_arrays, v_y = _data.read_inputs(validation_data, specs, api=api, argument="validation_data",
                                      model_name=model.name, labels=True)
    if v_y is None:
        raise ValueError(f"{api}: validation_data needs labels: give (x, y).")
    return (arrays, y), (v_arrays, np.asarray(v_y))


def _x(arrays):
    return arrays[0] if len(arrays) == 1 else list(arrays)


def _check_modes(api, quantization):
    modes = (quantization,) if isinstance(quantization, str) else quantization
    if not isinstance(modes, (tuple, list)) or not modes:
        raise TypeError(f"{api}: quantization must be one of {', '.join(map(repr, QUANTIZATIONS))} or a tuple "
                        f"of them, got {describe(quantization)}.")
    for mode in modes:
        check_choice(api, "quantization", mode, QUANTIZATIONS)
    if len(set(modes)) != len(modes):
        raise ValueError(f"{api}: quantization names a mode twice: {quantization!r}.")
    return tuple(modes)


# --------------------------------------------------------------------------
# Plans


def _options(costs, report, fractions):
    """Per group: `[(removed units, fraction, measured one-shot drop)]`, the
    first option removing nothing."""
    drops = {(row.layer, row.amount): row.drop for row in report.rows if row.action == "shrink"}
    options = []
    for group in costs.groups:
        key = costs.key(group)
        seen = {0}
        choices = [(0, 0.0, 0.0)]
        for f in fractions:
            n = int(math.floor(f * group.size))
            if n in seen or n >= group.size:
                continue
            seen.add(n)
            drop = drops.get((key, f))
            if drop is None:
                continue
            choices.append((n, f, max(0.0, float(drop))))
        options.append(choices)
    return options


def _plan_dict(costs, counts):
    return {costs.key(g): ("shrink", round(n / g.size, 4)) for g, n in zip(costs.groups, counts) if n}


def _describe_plan(costs, counts):
    parts = [f"{costs.key(g)} {g.size}->{g.size - n}" for g, n in zip(costs.groups, counts) if n]
    return ", ".join(parts) or "no units removed"


def _describe_predicted(predicted):
    names = {"bytes": "{:,.0f} B", "latency_ms": "{:.4f} ms", "macs": "{:,.0f} MACs", "drop": "drop {:.4f}"}
    return ", ".join(names[k].format(v) for k, v in predicted.items() if k in names)


class _Allocator:
    """Chooses a quantization mode and a removal count per group under
    predicted resource targets. A plan is `(mode, counts)`; its predicted
    drop is the sum of its groups' measured drops plus the mode's own drop
    on the unchanged model."""

    def __init__(self, costs, options, fits, budget, mode_drop=None, modes=("int8",)):
        self.costs, self.options, self.fits = costs, options, fits
        self.resources = budget["resources"]
        self.modes = tuple(modes)
        self.mode_drop = mode_drop or {m: 0.0 for m in self.modes}
        self._drops = [{n: d for n, _, d in opts} for opts in options]

    def combinations(self):
        return math.prod(len(o) for o in self.options) * len(self.modes)

    def predict(self, counts, mode=None):
        mode = mode or self.modes[0]
        structure = self.costs.counts(list(counts))
        values = {}
        for resource in self.resources:
            values[resource] = structure["macs"] if resource == "macs" else self.fits[mode][resource].predict(structure)
        values["macs"] = structure["macs"]
        values["params"] = structure["params"]
        return values

    def predicted(self, mode, counts):
        values = self.predict(counts, mode)
        values["drop"] = self.mode_drop[mode] + float(sum(d.get(c, math.nan) for d, c in zip(self._drops, counts)))
        return values

    def _fits(self, values, targets):
        return all(values[r] <= targets[r] for r in self.resources)

    def _load(self, values, targets):
        return max(values[r] / targets[r] for r in self.resources)

    def _key(self, values, targets):
        """Plans that fit first, by drop; then the others by how far over."""
        load = self._load(values, targets)
        return (0, values["drop"], load) if self._fits(values, targets) else (1, load, values["drop"])

    def allocate(self, targets, method, modes=None):
        """`(mode, counts, predicted)`: the plan with the smallest predicted
        drop whose predicted resources fit `targets`; when none fits, the one
        closest (smallest largest resource/target ratio)."""
        plans = [(m, self._exhaustive(targets, m) if method == "exhaustive" else self._greedy(targets, m))
                 for m in (modes or self.modes)]
        mode, counts = min(plans, key=lambda p: self._key(self.predicted(p[0], p[1]), targets))
        return mode, counts, self.predicted(mode, counts)

    def _all(self, mode):
        for choice in itertools.product(*[range(len(o)) for o in self.options]):
            counts = [self.options[i][j][0] for i, j in enumerate(choice)]
            yield counts, self.predicted(mode, counts)

    def _exhaustive(self, targets, mode):
        return min(self._all(mode), key=lambda p: self._key(p[1], targets))[0]

    def screening_plans(self, targets, method, count):
        """Up to `count` distinct plans that fit `targets`, to screen by a
        short recovery: per mode, the best by predicted drop (`method`) and
        (exhaustive) its runners-up, the plan that keeps the most parameters
        (the most capacity to recover) and the most even plan that fits
        (`even`); ordered so that every mode's best comes first."""
        per_mode = []
        for mode in self.modes:
            plans = []

            def add(counts):
                if counts is not None and list(counts) not in plans:
                    plans.append(list(counts))

            if method == "exhaustive":
                ranked = sorted(((v["drop"], -v["params"], c) for c, v in self._all(mode) if self._fits(v, targets)),
                                key=lambda r: (r[0], r[1]))
                for _, _, counts in ranked[: max(1, count - 2)]:
                    add(counts)
                if ranked:
                    add(min(ranked, key=lambda r: (r[1], r[0]))[2])
            else:
                add(self._greedy(targets, mode))
            add(self.even(targets, mode))
            per_mode.append([(mode, c) for c in plans])
        ordered = [p for rank in itertools.zip_longest(*per_mode) for p in rank if p is not None]
        plans = [(m, c, self.predicted(m, c)) for m, c in ordered[:count]]
        return plans or [self.allocate(targets, method)]

    def even(self, targets, mode=None):
        """The most even plan that fits: the uniform one, then, group by
        group (the most sensitive first), one fraction step less removed
        while the plan still fits; None when no uniform plan fits."""
        counts = self.uniform(targets, mode)
        if counts is None:
            return None
        index = [next(j for j, o in enumerate(opts) if o[0] == c) for opts, c in zip(self.options, counts)]
        grown = True
        while grown:
            grown = False
            for i in sorted(range(len(index)), key=lambda i: -self.options[i][index[i]][2]):
                if index[i] == 0:
                    continue
                trial = list(index)
                trial[i] -= 1
                if self._fits(self.predict([self.options[k][j][0] for k, j in enumerate(trial)], mode), targets):
                    index, grown = trial, True
        return [self.options[k][j][0] for k, j in enumerate(index)]

    def uniform(self, targets, mode=None):
        """The removal counts of the smallest uniform fraction (one per group,
        from the grid) whose predicted resources fit `targets`, or None."""
        for fraction in sorted({f for opts in self.options for _, f, _ in opts}):
            counts = [min(int(math.floor(fraction * g.size)), g.size - 1) for g in self.costs.groups]
            if self._fits(self.predict(counts, mode), targets):
                return counts
        return None

    def _greedy(self, targets, mode):
        choice = [0] * len(self.options)

        def counts_of(c):
            return [self.options[k][j][0] for k, j in enumerate(c)]

        values = self.predict(counts_of(choice), mode)
        while not self._fits(values, targets):
            load = self._load(values, targets)
            best, best_rate, best_values = None, -math.inf, None
            for i, opts in enumerate(self.options):
                if choice[i] + 1 >= len(opts):
                    continue
                trial = list(choice)
                trial[i] += 1
                trial_values = self.predict(counts_of(trial), mode)
                saved = load - self._load(trial_values, targets)
                if saved <= 0:
                    continue
                cost = max(opts[trial[i]][2] - opts[choice[i]][2], 1e-4)
                if saved / cost > best_rate:
                    best, best_rate, best_values = trial, saved / cost, trial_values
            if best is None:
                break
            choice, values = best, best_values
        return counts_of(choice)


# --------------------------------------------------------------------------
# One run's state: measuring, training, choosing.


class _Run:
    def __init__(self, api, model, train, valid, budget, metric, loss, epochs, batch_size, lr, seed, verbose):
        self.api, self.model, self.budget = api, model, budget
        self.train, self.valid = train, valid
        self.score = metric or _accuracy
        self.loss, self.epochs, self.batch_size, self.lr, self.seed = loss, epochs, batch_size, lr, seed
        self.verbose = verbose
        self.candidates = []
        self.models = {}  # candidate name -> (model, file)
        self.reference_metric = None
        self._teacher = None
        self._targets = None
        self.calibration = _x([a[:200] for a in train[0]])

    def say(self, message):
        if self.verbose:
            print(f"[auto] {message}", flush=True)

    # -- measuring
    def convert(self, model, quantization=None):
        quantization = quantization or self.quantization
        options = {"quantization": None if quantization == "float" else quantization,
                   "size_by": self.budget["size_by"], "strip_names": self.strip_names}
        if quantization in ("int8", "int16x8"):
            options.update(representative_data=self.calibration, calibration_steps=200)
        return to_tflite(model, **options)

    def measure(self, model, name, kind, plan, *, quantization=None, predicted=None, note=""):
        quantization = quantization or self.quantization
        flatbuffer = self.convert(model, quantization)
        predictions = predict_tflite(flatbuffer, _x(self.valid[0]))
        if isinstance(predictions, dict):
            predictions = next(iter(predictions.values()))
        elif isinstance(predictions, (list, tuple)):
            predictions = predictions[0]
        value = float(self.score(self.valid[1], predictions))
        if not math.isfinite(value):
            raise ValueError(f"{self.api}: metric returned {value} for {name}.")
        timing = self.latency(flatbuffer)
        counts = model_counts(model)
        candidate = Candidate(
            name=name, kind=kind, plan=dict(plan), quantization=quantization,
            bytes=len(flatbuffer), gzip_bytes=len(gzip.compress(flatbuffer, 9)),
            latency_ms=float(timing["p50_ms"]), latency_spread_ms=(float(timing["min_ms"]), float(timing["p90_ms"])),
            macs=counts["macs"], params=int(model.count_params()), metric=value,
            drop=(self.reference_metric - value) if self.reference_metric is not None else 0.0,
            predicted=dict(predicted or {}), note=note,
        )
        self.models[name] = (model, flatbuffer)
        return candidate

    def latency(self, flatbuffer):
        """p50, min and p90 over about `LATENCY_SECONDS` of invokes in
        `LATENCY_REPEATS` separate timings (the median of their p50s): a
        microsecond model gets thousands of runs, a large one at least 30."""
        if self.latency_fn is not None:
            value = self.latency_fn(flatbuffer)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
                    or not math.isfinite(float(value)) or value <= 0:
                raise ValueError(f"{self.api}: latency_fn must return a positive number of milliseconds, "
                                 f"got {describe(value)}.")
            return {"p50_ms": float(value), "min_ms": float(value), "p90_ms": float(value)}
        threads, runtime = self.budget["threads"], self.runtime
        probe = measure_latency(flatbuffer, threads=threads, warmup=5, runs=10, runtime=runtime)["p50_ms"]
        seconds = LATENCY_SECONDS if "latency_ms" in self.budget["resources"] else LATENCY_SECONDS / 4
        runs = int(min(5000, max(30, seconds / LATENCY_REPEATS / max(probe, 1e-6) * 1e3)))
        timings = [measure_latency(flatbuffer, threads=threads, warmup=max(10, runs // 10), runs=runs, runtime=runtime)
                   for _ in range(LATENCY_REPEATS)]
        return {"p50_ms": float(np.median([t["p50_ms"] for t in timings])),
                "min_ms": min(t["min_ms"] for t in timings), "p90_ms": float(np.median([t["p90_ms"] for t in timings]))}

    def size(self, candidate):
        return candidate.gzip_bytes if self.budget["size_by"] == "gzip" else candidate.bytes

    def resources(self, candidate):
        return {"bytes": self.size(candidate), "latency_ms": candidate.latency_ms, "macs": candidate.macs}

    def over_budget(self, candidate):
        have = self.resources(candidate)
        return {r: have[r] / self.budget[r] for r in self.budget["resources"] if have[r] > self.budget[r]}

    def meets(self, candidate):
        return not self.over_budget(candidate) and candidate.drop <= self.budget["max_drop"] + 1e-12

    # -- cost models
    def calibrate(self, costs, mode):
        points = {"bytes": [], "latency_ms": []}
        for fraction in CALIBRATION_FRACTIONS:
            counts = [int(math.floor(fraction * g.size)) if fraction else 0 for g in costs.groups]
            counts = [min(n, g.size - 1) for n, g in zip(counts, costs.groups)]
            narrow = self.narrow(costs, counts)
            flatbuffer = self.convert(narrow, mode)
            size = self.size_of(flatbuffer)
            structure = costs.counts(counts)
            points["bytes"].append((structure, size))
            if "latency_ms" in self.budget["resources"]:
                timing = self.latency(flatbuffer)
                points["latency_ms"].append((structure, timing["p50_ms"]))
        fits = {"bytes": fit_linear("bytes", ("params", "units"), points["bytes"])}
        if points["latency_ms"]:
            fits["latency_ms"] = fit_linear("latency_ms", ("macs", "activations"), points["latency_ms"])
        for resource, fit in fits.items():
            self.say(f"  {resource} model ({mode}): {len(fit.points)} measured files, leave-one-out error "
                     f"{100 * fit.max_relative_error:.1f}%")
        return fits

    def check_reachable(self, costs, modes):
        """Refuses a budget below the smallest model the search can make,
        measured in each mode: every group at its largest removal (and, for
        bytes, 90% unstructured sparsity)."""
        counts = [g.size - max(1, int(math.ceil((1 - max(DEFAULT_FRACTIONS)) * g.size))) for g in costs.groups]
        counts = [max(0, min(n, g.size - 1)) for n, g in zip(counts, costs.groups)]
        smallest = self.narrow(costs, counts)
        sparse = None
        if "bytes" in self.budget["resources"]:
            sparse = _copy(smallest)
            _zero_smallest(sparse, 0.9)
        reached = {}
        for mode in modes:
            values = {"macs": costs.counts(counts)["macs"]}
            if "latency_ms" in self.budget["resources"]:
                values["latency_ms"] = self.latency(self.convert(smallest, mode))["p50_ms"]
            if sparse is not None:
                values["bytes"] = self.size_of(self.convert(sparse, mode))
            reached[mode] = values
            if all(values[r] <= self.budget[r] for r in self.budget["resources"]):
                return
        missed = sorted({r for v in reached.values() for r in self.budget["resources"] if v[r] > self.budget[r]})
        shown = {"bytes": lambda v: f"{v['bytes']:,} bytes ({self.budget['size_by']})",
                 "latency_ms": lambda v: f"p50 {v['latency_ms']:.4f} ms at {self.budget['threads']} thread(s)",
                 "macs": lambda v: f"{v['macs']:,} MACs"}
        raise ValueError(
            f"{self.api}: the budget cannot be reached: "
            + "; ".join(f"max_{r}={self.budget[r]:,}" if isinstance(self.budget[r], int)
                        else f"max_{r}={self.budget[r]:.6g}" for r in missed)
            + ". The smallest model the search can make (every group down to "
            + ", ".join(f"{costs.key(g)} {g.size - n}" for g, n in zip(costs.groups, counts))
            + " units" + (", 90% unstructured sparsity" if sparse is not None else "") + ") measures "
            + "; ".join(f"{mode}: " + ", ".join(shown[r](v) for r in self.budget["resources"])
                        for mode, v in reached.items())
            + ". Raise the budget to at least that."
        )

    # -- training
    def teacher(self):
        if self._teacher is None:
            self._teacher = keras.models.clone_model(self.model)
            self._teacher.set_weights(self.model.get_weights())
            self._teacher.trainable = False
        return self._teacher

    def teacher_targets(self):
        if self._targets is None:
            distiller = self._distiller(_copy(self.model))
            self._targets = distiller.cache_teacher(_x(self.train[0]), self.train[1])
        return self._targets

    def _distiller(self, student, pruning=False):
        # Several steps per execution save a fifth of an epoch of a small
        # model; pruning needs one, because UpdatePruningStep counts the
        # steps by its per-batch callback.
        distiller = Distiller(student=student, teacher=self.teacher())
        distiller.compile(optimizer=keras.optimizers.Adam(self.lr), student_loss_fn=self.loss,
                          distillation_loss_fn=keras.losses.KLDivergence(), alpha=0.1, temperature=4,
                          steps_per_execution=1 if pruning else STEPS_PER_EXECUTION)
        return distiller

    def fit(self, student, targets, epochs, pruning):
        keras.utils.set_random_seed(self.seed)
        distiller = self._distiller(student, pruning)
        callbacks = [UpdatePruningStep()] if pruning else []
        distiller.fit(*targets, batch_size=self.batch_size, epochs=epochs, verbose=2 if self.verbose else 0,
                      callbacks=callbacks, shuffle=True)
        return student

    def narrow(self, costs, counts):
        """A copy of the model without `counts[i]` units of group `i` (`shrink`, L1 norm)."""
        if not any(counts):
            return _copy(self.model)
        return shrink(self.model, {g.producers[0].name: n / g.size for g, n in zip(costs.groups, counts) if n},
                      criterion="l1")

    def recover(self, costs, counts, epochs=None):
        student = self.narrow(costs, counts)
        return self.fit(student, self.teacher_targets(), epochs or self.epochs, pruning=False)

    def pick(self, screened):
        """The screened `(candidate, ...)` to train on: among those within the
        resource budgets, the one with the most parameters whose metric is
        within `tie` of the best (one epoch cannot tell apart plans closer than
        the validation set's noise, and the larger one has more to recover
        with); else the one closest to the budgets."""
        within = [s for s in screened if not self.over_budget(s[0])]
        if not within:
            return min(screened, key=lambda s: self._load(s[0]))
        best = max(s[0].metric for s in within)
        tied = [s for s in within if s[0].metric >= best - self.tie(best)]
        return max(tied, key=lambda s: (s[0].params, s[0].metric))

    def tie(self, metric):
        """For accuracy, one standard error of an accuracy `metric` on the
        validation samples, sqrt(p (1 - p) / n); 0 for another metric."""
        if self.score is not _accuracy:
            return 0.0
        p = min(max(metric, 0.0), 1.0)
        return math.sqrt(p * (1 - p) / len(self.valid[1]))

    def recover_sparse(self, costs, counts, mode):
        """Structured removals by `counts`, recovered; then per-layer
        sparsity to the byte budget (knapsack on measured sparse files), trained with the masks."""
        student = self.recover(costs, counts)
        self.say("  measuring sparse files per layer of the narrowed model")
        report = sensitivity_analysis(student, self.valid, sparsities=(0.5, 0.75, 0.9), fractions=(),
                                      loss=self.loss, measure_bytes=True, quantization=mode,
                                      verbose=self.verbose)
        plan = plan_for_bytes(report, int(self.budget["bytes"] * MARGIN["bytes"]))
        sparsities = {k: amount for k, (action, amount) in plan.choices.items() if action == "prune"}
        if not sparsities:
            return student, {}, {"bytes": plan.predicted_bytes, "drop": plan.predicted_drop}
        wrapped = _prune_layers(student, sparsities)
        self.fit(wrapped, self.teacher_targets(), self.epochs, pruning=True)
        final = strip_pruning(wrapped)
        return final, {k: ("prune", v) for k, v in sparsities.items()}, {
            "bytes": plan.predicted_bytes, "drop": plan.predicted_drop}

    # -- baselines
    def baselines(self, costs, fits, searcher):
        """Uniform allocation at the same budget, recovered the same way."""
        targets = {k: self.budget[k] * MARGIN[k] for k in self.budget["resources"]}
        chosen = None
        for fraction in (0.0,) + tuple(sorted(set(DEFAULT_FRACTIONS) | {0.9375})):
            counts = [min(int(math.floor(fraction * g.size)), g.size - 1) for g in costs.groups]
            values = searcher.predict(counts)
            chosen = (fraction, counts, values)
            if all(values[r] <= targets[r] for r in self.budget["resources"]):
                break
        fraction, counts, values = chosen
        self.say(f"baseline: every group narrowed by {fraction:.1%}")
        student = self.recover(costs, counts)
        name = f"uniform structured {fraction:.1%}"
        candidate = self.measure(student, name, "uniform-structured", _plan_dict(costs, counts), predicted=values)
        candidate.feasible = self.meets(candidate)
        self.candidates.append(candidate)
        if "bytes" not in self.budget["resources"]:
            return
        # Uniform unstructured sparsity: the lowest level whose file fits.
        level = None
        for sparsity in UNIFORM_SPARSITIES:
            trial = _copy(self.model)
            _zero_smallest(trial, sparsity)
            if self.size_of(self.convert(trial)) <= self.budget["bytes"]:
                level = sparsity
                break
        names = [layer.name for layer in _prunable_layers(self.model)]
        if level is None:
            level = UNIFORM_SPARSITIES[-1]
            trial = _copy(self.model)
            _zero_smallest(trial, level)
            candidate = self.measure(trial, f"uniform sparsity {level:.0%}", "uniform-sparsity",
                                     {n: ("prune", level) for n in names},
                                     note=f"no uniform sparsity up to {level:.0%} fits the budget: not trained")
            candidate.feasible = self.meets(candidate)
            self.candidates.append(candidate)
            return
        self.say(f"baseline: every layer pruned to {level:.0%} sparsity")
        wrapped = _prune_layers(_copy(self.model), {n: level for n in names})
        self.fit(wrapped, self.teacher_targets(), self.epochs, pruning=True)
        final = strip_pruning(wrapped)
        candidate = self.measure(final, f"uniform sparsity {level:.0%}", "uniform-sparsity",
                                 {n: ("prune", level) for n in names})
        candidate.feasible = self.meets(candidate)
        self.candidates.append(candidate)

    def size_of(self, flatbuffer):
        return len(gzip.compress(flatbuffer, 9)) if self.budget["size_by"] == "gzip" else len(flatbuffer)

    # -- choosing
    def best(self):
        """The feasible candidate (a uniform baseline too) with the best
        metric, the smallest or fastest of equals; else the best metric
        within the resource budgets (the metric budget missed); else the one
        closest to the resource budgets. (Preferring the smallest of those
        within one standard error of the best picked, on one seed of the
        benchmark, a file at the limit of `max_drop` on the held-out data
        and a point over it on the test data.)"""
        searched = self.candidates
        feasible = [c for c in searched if c.feasible]
        within = [c for c in searched if not self.over_budget(c)]
        if feasible:
            best = max(feasible, key=lambda c: (c.metric, -self._load(c)))
        elif within:
            best = max(within, key=lambda c: (c.metric, -self._load(c)))
        else:
            best = min(searched, key=lambda c: (self._load(c), c.drop))
        model, flatbuffer = self.models[best.name]
        return best, model, flatbuffer

    def _load(self, candidate):
        have = self.resources(candidate)
        return max(have[r] / self.budget[r] for r in self.budget["resources"])

    def reason(self, best, met):
        have = self.resources(best)
        limits = {"bytes": f"{have['bytes']:,} of {self.budget['bytes'] or 0:,} bytes ({self.budget['size_by']})",
                  "latency_ms": f"p50 {have['latency_ms']:.4f} of {self.budget['latency_ms'] or 0:.4f} ms",
                  "macs": f"{have['macs']:,} of {self.budget['macs'] or 0:,} MACs"}
        used = "; ".join(limits[r] for r in self.budget["resources"])
        drop = f"drop {best.drop:.4f} of at most {self.budget['max_drop']:.4f} ({self.budget['metric']})"
        if met:
            return f"Budget met by '{best.name}': {used}; {drop}."
        over = self.over_budget(best)
        why = []
        if over:
            why.append("over " + ", ".join(f"{r} by {100 * (q - 1):.1f}%" for r, q in over.items()))
        if best.drop > self.budget["max_drop"]:
            why.append(f"its metric dropped {best.drop:.4f}, more than max_drop")
        return (f"Budget not met. Closest point: '{best.name}': {used}; {drop} ({'; '.join(why)}). "
                "Raise the budget or max_drop, or give more epochs or max_rounds.")


def _copy(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _prunable_layers(model):
    from keras_compress.pruning.wrapper import prunable_weights

    return [layer for layer in _models.walk_layers(model) if layer.trainable and _safe_prunable(layer, prunable_weights)]


def _safe_prunable(layer, prunable_weights):
    try:
        return bool(prunable_weights(layer))
    except (ValueError, TypeError):
        return False


def _zero_smallest(model, sparsity):
    for layer in _prunable_layers(model):
        zero_smallest(layer, sparsity)


def _prune_layers(model, sparsities):
    """A copy of `model` whose named layers are wrapped to prune to their
    sparsity at once (`ConstantSparsity`, mask updated every 50 steps)."""
    levels = {}
    for name, value in sparsities.items():
        levels.setdefault(value, []).append(name)
    result = model
    for value, names in levels.items():
        result = prune_low_magnitude(result, ConstantSparsity(value, 0, frequency=50), layers=names)
    return result
