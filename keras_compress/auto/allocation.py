"""Per-layer allocation under a file-size budget, from a sensitivity report.

Each layer (or dependency group) takes at most one of its measured
candidates (pruned to a sparsity, or a fraction of its units removed), or
stays as it is. `plan_for_bytes` chooses the combination whose predicted
file (`SensitivityReport.predict_bytes`: the measured size changes added,
per sparse encoding) fits `max_bytes` with the smallest predicted metric
drop (the measured drops added): a multiple-choice knapsack, solved exactly
by dynamic programming over the bytes saved (in `resolution`-byte steps),
once per encoding. `greedy_plan_for_bytes` is the usual heuristic beside it
(take the candidate that saves the most bytes per point of drop until the
budget is met), kept to show what the exact solution gains. `apply_plan`
makes the planned model: the structured removals by `shrink`, then the
magnitude pruning, on a copy.

The predictions assume that candidates add up, which the measurements of
single layers cannot guarantee (two pruned layers can cost more together
than apart); `apply_plan` gives the model to convert and measure for real.
"""

import dataclasses
import math

import keras
import numpy as np

from keras_compress.pruning.criteria import magnitude
from keras_compress.pruning.structured import shrink
from keras_compress.pruning.wrapper import prunable_weights
from tflite_bench.checks import check_int, describe


@dataclasses.dataclass(frozen=True)
class Plan:
    """A choice per layer: `choices` maps layer names (as in the report's
    rows) to `(action, amount)`; layers not named stay as they are."""

    choices: dict
    predicted_bytes: int
    predicted_drop: float
    max_bytes: int

    @property
    def feasible(self):
        """Whether the predicted file fits the budget."""
        return self.predicted_bytes <= self.max_bytes


def _options(report):
    """Per key (layer or group), its candidates as rows; a group named after
    one layer shares that layer's key, so a layer is pruned or shrunk, not both."""
    options = {}
    for row in report.rows:
        if row.bytes_by_encoding is None:
            raise ValueError("plan_for_bytes needs a report made with measure_bytes=True.")
        options.setdefault(row.layer, []).append(row)
    return options


def _check(report, max_bytes, resolution):
    if not hasattr(report, "predict_bytes") or not hasattr(report, "rows"):
        raise TypeError(f"plan_for_bytes: report must be a SensitivityReport, got {describe(report)}.")
    check_int("plan_for_bytes", "max_bytes", max_bytes, minimum=1)
    check_int("plan_for_bytes", "resolution", resolution, minimum=1)


def plan_for_bytes(report, max_bytes, *, resolution=64):
    """The combination of candidates with the smallest predicted drop whose
    predicted file fits `max_bytes`; if none fits, the smallest predicted
    file (its `feasible` is False).

    Args:
        report: a `SensitivityReport` made with `measure_bytes=True`.
        max_bytes: the budget, in bytes of the `.tflite` file.
        resolution: bytes per step of the dynamic programme (savings are
            rounded down to it, so a plan never saves less than it claims).
    """
    _check(report, max_bytes, resolution)
    options = _options(report)
    best = None
    for encoding, base in report.base_bytes_by_encoding.items():
        need = base - max_bytes  # bytes to save under this encoding
        plan = _knapsack(options, encoding, base, need, resolution)
        candidate = _plan(report, plan, max_bytes)
        if best is None or _better(candidate, best):
            best = candidate
    return best


def _better(a, b):
    if a.feasible != b.feasible:
        return a.feasible
    if a.feasible:
        return (a.predicted_drop, a.predicted_bytes) < (b.predicted_drop, b.predicted_bytes)
    return (a.predicted_bytes, a.predicted_drop) < (b.predicted_bytes, b.predicted_drop)


def _knapsack(options, encoding, base, need, resolution):
    """Minimum total drop with savings >= `need` bytes under `encoding`;
    when unreachable, the largest saving. Returns `{key: row}`. Savings are
    counted in whole `resolution` steps, rounded down, so a plan never saves
    less than it claims; candidates that do not shrink the file are skipped."""
    if need <= 0:
        return {}
    steps = math.ceil(need / resolution)
    states = {0: (0.0, {})}  # saved steps, capped at `steps` -> (drop, choices)
    for key, rows in options.items():
        new = dict(states)
        for saved, (drop, chosen) in states.items():
            for row in rows:
                gained = (base - row.bytes_by_encoding[encoding]) // resolution
                if gained <= 0:
                    continue
                total = min(steps, saved + gained)
                value = drop + row.drop
                if total not in new or value < new[total][0]:
                    new[total] = (value, {**chosen, key: row})
        states = new
    return states[steps][1] if steps in states else states[max(states)][1]


def greedy_plan_for_bytes(report, max_bytes):
    """The common heuristic, for comparison: from the unchanged model, switch
    one layer at a time to the candidate with the most predicted bytes saved
    per point of predicted drop, until the budget is met or nothing saves."""
    _check(report, max_bytes, 1)
    options = _options(report)
    chosen = {}
    current = report.predict_bytes({})
    while current > max_bytes:
        best, best_rate, best_bytes = None, -math.inf, None
        for key, rows in options.items():
            for row in rows:
                trial = {**chosen, key: row}
                size = report.predict_bytes(_choices(trial))
                if size >= current:
                    continue
                # drop added (replacing the layer's earlier choice, if any)
                cost = max(row.drop - (chosen[key].drop if key in chosen else 0.0), 1e-6)
                if (current - size) / cost > best_rate:
                    best, best_rate, best_bytes = (key, row), (current - size) / cost, size
        if best is None:
            break
        chosen[best[0]] = best[1]
        current = best_bytes
    return _plan(report, chosen, max_bytes)


def _choices(rows):
    """`{key: (action, amount)}` of `{key: row}`."""
    return {key: (row.action, row.amount) for key, row in rows.items()}


def _plan(report, rows, max_bytes):
    choices = _choices(rows)
    return Plan(choices, report.predict_bytes(choices), float(sum(r.drop for r in rows.values())), max_bytes)


def apply_plan(model, plan):
    """A copy of `model` with `plan` applied: the structured removals first
    (`kc.pruning.shrink` with the planned fraction per group, L1 norm), then
    each planned layer's weights of smallest magnitude set to zero. `model`
    is not modified."""
    if not isinstance(plan, Plan):
        raise TypeError(f"apply_plan: plan must be a Plan, got {describe(plan)}.")
    shrunk = {key.split("+")[0]: amount for key, (action, amount) in plan.choices.items() if action == "shrink"}
    if shrunk:
        result = shrink(model, shrunk, criterion="l1")
    else:
        result = keras.models.clone_model(model)
        result.set_weights(model.get_weights())
    for key, (action, amount) in plan.choices.items():
        if action == "prune":
            zero_smallest(result.get_layer(key), amount)
    return result


def zero_smallest(layer, sparsity):
    """Sets the `sparsity` fraction of smallest-magnitude values of each of
    `layer`'s prunable weights to zero, in place."""
    for w in prunable_weights(layer):
        value = np.asarray(keras.ops.convert_to_numpy(w))
        w.assign(value * np.asarray(keras.ops.convert_to_numpy(magnitude(value, sparsity))))
