"""What `auto_compress` returns: every candidate it measured, the budget,
and the chosen model with its `.tflite` file."""

import dataclasses
import json


@dataclasses.dataclass
class Candidate:
    """One model the search (or a baseline) converted and measured.

    Attributes:
        name: a short label ("float", "int8", "round 1", "uniform structured 50%").
        kind: "reference" (the original model, float or int8), "search" (a
            plan of the search, after recovery) or "uniform-structured" /
            "uniform-sparsity" (a uniform baseline, recovered the same way).
        plan: per dependency group (named by its producers joined by "+") or
            layer, `(action, amount)`: `("shrink", fraction removed)` or
            `("prune", sparsity)`.
        quantization: the `to_tflite` mode of its file.
        bytes: the file's size in bytes; `gzip_bytes` its gzip-compressed size.
        latency_ms: p50 invoke latency in the LiteRT interpreter at the
            search's thread count, with `latency_spread_ms` from
            the same runs (min, p90); None when no latency was measured.
        macs: multiply-accumulates of one inference (Conv, Dense, their
            relatives), from the Keras model's shapes.
        params: the Keras model's parameter count.
        metric: the held-out metric of the `.tflite` file.
        drop: the reference model's held-out metric minus `metric`.
        predicted: what the cost models and the sensitivities predicted for it
            before recovery (`bytes`, `latency_ms`, `macs`, `drop`), or {}.
        feasible: whether it meets every budget (resources and `max_drop`).
        note: why it was tried, or why it failed.
    """

    name: str
    kind: str
    plan: dict
    quantization: str
    bytes: int
    gzip_bytes: int
    latency_ms: float | None
    latency_spread_ms: tuple | None
    macs: int
    params: int
    metric: float
    drop: float
    predicted: dict = dataclasses.field(default_factory=dict)
    feasible: bool = False
    note: str = ""

    def to_dict(self):
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclasses.dataclass
class AutoResult:
    """The outcome of `auto_compress`.

    Attributes:
        model: the chosen compressed Keras model (a new model; the input
            model is not modified).
        tflite: the chosen model's `.tflite` file (bytes).
        best: the chosen `Candidate`: the feasible one with the best metric
            (of equals, the smallest or fastest); when none is feasible, the
            best metric within the resource budgets, else the closest.
        met: whether `best` meets every budget.
        reason: a sentence saying what was met, or why not and what the
            closest reachable point is.
        budget: the budget as given (`max_bytes`, `size_by`,
            `max_latency_ms`, `threads`, `max_macs`, `max_drop`, `metric`).
        reference: the original model's measurements (float file).
        candidates: every candidate measured, in order (references, search
            rounds, baselines).
        sensitivity: the `SensitivityReport` the search allocated from.
        cost_models: per resource, the validation of its cost model
            (`{"bytes": {"points": n, "max_relative_error": e}, ...}`).
        seconds: wall time per stage (`sensitivity`, `cost_model`, `search`,
            `baselines`, `total`).
        files: every candidate's `.tflite` file by candidate name.
    """

    model: object
    tflite: bytes
    best: Candidate
    met: bool
    reason: str
    budget: dict
    reference: Candidate
    candidates: list
    sensitivity: object
    cost_models: dict
    seconds: dict
    files: dict = dataclasses.field(default_factory=dict)

    def to_dict(self):
        """Everything but the model and the file, as JSON-ready values."""
        return {
            "best": self.best.to_dict(),
            "met": self.met,
            "reason": self.reason,
            "budget": _plain(self.budget),
            "reference": self.reference.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "sensitivity": json.loads(self.sensitivity.to_json()) if self.sensitivity is not None else None,
            "cost_models": _plain(self.cost_models),
            "seconds": _plain(self.seconds),
        }

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2)

    def save(self, out):
        """Writes the folder `out`: model.keras, model.tflite, report.json,
        pareto.png (with matplotlib) and report.md; returns their paths."""
        from keras_compress.auto import report

        return report.save_report(self, out)

    def summary(self):
        """A few lines: budget met or not, the best's size, latency and
        metric beside the reference's, and the wall time."""
        best, ref = self.best, self.reference
        chosen = (self.budget or {}).get("metric")
        if chosen is None or isinstance(chosen, str):
            metric = chosen or "accuracy"
        else:
            metric = getattr(chosen, "__name__", str(chosen))
        accuracy = metric == "accuracy"
        lines = [f"auto_compress: budget {'met' if self.met else 'NOT met'}. {self.reason}".rstrip(),
                 f"  best: {best.name} ({best.kind}, {best.quantization})",
                 f"  size: {best.bytes:,} bytes (gzip {best.gzip_bytes:,})"
                 + (f", {best.bytes / ref.bytes:.3g}× the reference's {ref.bytes:,}" if ref.bytes else "")]
        if best.latency_ms is not None:
            lines.append(f"  p50 latency: {best.latency_ms:.3f} ms"
                         + (f", {best.latency_ms / ref.latency_ms:.3g}× the reference's {ref.latency_ms:.3f} ms"
                            if ref.latency_ms else ""))
        if accuracy:
            lines.append(f"  {metric}: {100 * best.metric:.2f}% (drop {100 * best.drop:+.2f} points)")
        else:
            lines.append(f"  {metric}: {best.metric:.4f} (drop {best.drop:+.4f})")
        total = self.seconds.get("total", sum(self.seconds.values())) if self.seconds else None
        if total is not None:
            lines.append(f"  wall time: {total:.1f} s")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()


def _plain(value):
    """JSON-ready copies of tuples, numpy scalars and nested containers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
