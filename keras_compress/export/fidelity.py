"""`fidelity_report`: where a TFLite file departs from its Keras model, layer by layer.

A converted model that disagrees with its Keras model (an int8 file at 67%
argmax agreement) says nothing about where the error comes from. This module
runs both on the same data, reads every intermediate tensor of the file,
matches the tensors to the Keras layers the user knows by name, and measures
the error of each layer, so that the first layer where the error jumps can be
kept float, re-ranged or retrained.

Unlike `tf.lite.experimental.QuantizationDebugger`, it needs neither the
converter nor a debug model with NumericVerify ops, and it reports Keras
layer names rather than TFLite tensor names; unlike LiteRT Quantizer's
per-tensor validation, which compares two `.tflite` files tensor by tensor, its
reference is the Keras model itself, nested models and shared layers included.
"""

import dataclasses
import json
import math
import os
import re

import keras
import numpy as np
from keras.src.models.functional import Functional  # Keras has no public name for it.

from keras_compress._models import graph_of, run_graph
from keras_compress.export.naming import scope_matches
from tflite_bench.checks import check_int, check_number
from tflite_bench.interpreter import quantize_io, read_flatbuffer

# An exact match has an infinite signal-to-noise ratio; SNRs are clipped to
# +-MAX_SNR_DB so that every value is a finite number in tables, JSON and
# plots. Float32 rounding alone stays near 140 dB, far below the cap.
MAX_SNR_DB = 200.0

# What a fresh int8 requantization of a well-ranged activation costs: 8 bits
# give about 50 dB over a full-scale uniform signal, and a +-4 sigma range
# leaves about 41 dB for a Gaussian one. A layer is never called divergent for
# staying within `threshold_db` of this, however exact its inputs were.
INT8_REFERENCE_DB = 40.0

# A tensor found by value alone (no layer name in the file) must be this close
# to the Keras output (relative L2 error) to be taken as that layer's output.
VALUE_MATCH_MAX_ERROR = 0.5

# Relative errors within this factor of each other count as the same: int8
# rounding cannot tell x from round(x) (a QuantizeWrapper's output from its
# activation quantizer's). Ties go to the later op or layer, as TFLite fuses
# an op with the elementwise layers after it (activation, normalization, fake
# quantization) and names a layer's output after its last op.
SAME_ERROR_RATIO = 1.5

# Activations of every mapped layer are read in chunks of at most this many
# bytes (Keras and TFLite together), so that large models and many samples fit
# in memory.
CHUNK_BYTES = 256 * 2**20

# Which tensor is which layer's output is decided on this many samples, the
# first chunk, for which every tensor of the file is read.
MAPPING_SAMPLES = 8

ROW_METRICS = ("snr_db", "channel_snr_db", "relative_error", "cosine", "max_abs_error")


@dataclasses.dataclass(frozen=True)
class LayerFidelity:
    """How closely a TFLite file reproduces one Keras layer call.

    Metrics compare the file's tensor (dequantized with its scale and zero
    point) with the Keras layer's output `ref`, pooled over all samples:

    - `snr_db`: `10 * log10(sum(ref**2) / sum((ref - tflite)**2))`, clipped to
      +-`MAX_SNR_DB` (an exact match reads 200).
    - `channel_snr_db`: the same SNR computed per channel (the last axis) and
      the median taken over the channels that carry signal. Pooled SNR is
      dominated by the strongest channels; this one drops when a per-tensor
      int8 range, stretched by a few large channels, crushes the others.
    - `relative_error`: `||ref - tflite|| / ||ref||`.
    - `cosine`: `<ref, tflite> / (||ref|| * ||tflite||)` (1.0 if both are zero).
    - `max_abs_error`: `max |ref - tflite|`.

    Attributes:
        layer: the Keras layer (or Keras op) name.
        layer_type: its class name, such as `"Conv2D"` or `"Relu"` for a raw op.
        path: the nested models that hold it, outermost first, joined by "/"
            (`""` for a layer of the top-level model).
        call: 1, or 2, 3, ... for the further calls of a shared layer.
        output: which output of the layer call (0 but for multi-output layers).
        status: `"compared"` (the file has a tensor for it), `"fused"`
            (computed inside the TFLite op of the later layer `fused_into`:
            Conv + BatchNormalization + ReLU become one CONV_2D, Dropout
            disappears) or `"unmapped"` (no tensor found).
        fused_into: for `"fused"` rows, the layer whose tensor holds this one.
        tflite_ops: the TFLite op types that compute it, in order.
        tflite_tensor: the name of the TFLite tensor compared.
        tflite_op_index: the index of the op producing it (Model Explorer's
            node id).
        dtype: the TFLite tensor's dtype, such as `"int8"`.
        shape: the shape of one sample.
        snr_db, channel_snr_db, relative_error, cosine, max_abs_error: as above
            (`None` unless compared; `channel_snr_db` is also `None` when no
            channel carries signal).
        input_snr_db: the channel SNR its inputs arrive with: the lowest of
            the compared layers feeding it, or of the model inputs as the file
            quantizes them.
    """

    layer: str
    layer_type: str
    path: str
    call: int
    output: int
    status: str
    fused_into: str | None = None
    tflite_ops: tuple = ()
    tflite_tensor: str | None = None
    tflite_op_index: int | None = None
    dtype: str | None = None
    shape: tuple | None = None
    snr_db: float | None = None
    channel_snr_db: float | None = None
    relative_error: float | None = None
    cosine: float | None = None
    max_abs_error: float | None = None
    input_snr_db: float | None = None

    @property
    def name(self):
        """The layer's name qualified by its nested models, such as
        "backbone/conv" (and "[i]" for output i > 0 of a multi-output layer)."""
        name = f"{self.path}/{self.layer}" if self.path else self.layer
        return name + (f"[{self.output}]" if self.output else "")

    @property
    def snr_drop_db(self):
        """How far its channel SNR falls below its inputs' (capped at
        `INT8_REFERENCE_DB`); `None` unless both are known."""
        if self.channel_snr_db is None or self.input_snr_db is None:
            return None
        return min(self.input_snr_db, INT8_REFERENCE_DB) - self.channel_snr_db


@dataclasses.dataclass(frozen=True)
class FidelityReport:
    """Per-layer agreement of a TFLite file with its Keras model; see `fidelity_report`.

    Attributes:
        model_name: the Keras model's name.
        rows: one `LayerFidelity` per layer call, in execution order (nested
            models expanded).
        agreement: `{output layer name: share of equal argmaxes}` per model
            output, over the last axis; `None` for an output of one unit.
        first_divergent_layer: the name of the first compared layer whose
            channel SNR falls more than `threshold_db` below the level its
            inputs arrive with (capped at `INT8_REFERENCE_DB`), or `None`.
        samples: how many samples were compared.
        threshold_db: the drop that counts as divergence.
    """

    model_name: str
    rows: tuple
    agreement: dict
    first_divergent_layer: str | None
    samples: int
    threshold_db: float

    @property
    def compared(self):
        """The rows with a TFLite tensor of their own, in execution order."""
        return [row for row in self.rows if row.status == "compared"]

    @property
    def first_divergent(self):
        """The `LayerFidelity` of `first_divergent_layer`, or `None`."""
        return next((row for row in self.rows if _is_divergent(row, self.threshold_db)), None)

    def row(self, layer):
        """The first row of the layer named `layer` (plain or "model/layer").

        Raises:
            KeyError: no row has that name.
        """
        for row in self.rows:
            if layer in (row.layer, row.name):
                return row
        raise KeyError(f"no layer named {layer!r} in the fidelity report of model '{self.model_name}'.")

    def summary(self):
        """A readable table of every layer, the output agreement and the verdict."""
        divergent = self.first_divergent
        lines = [
            f"Fidelity of the TFLite file to Keras model '{self.model_name}' "
            f"({self.samples} samples):"
        ]
        for name, share in self.agreement.items():
            text = "n/a (one unit)" if share is None else f"{share:.1%}"
            lines.append(f"  argmax agreement of output '{name}': {text}")
        if divergent is None:
            lines.append(f"  no layer loses more than {self.threshold_db:g} dB of SNR.")
        else:
            lines.append(
                f"  first divergent layer: '{divergent.name}' ({divergent.layer_type}): channel SNR "
                f"{divergent.channel_snr_db:.1f} dB, {divergent.snr_drop_db:.1f} dB below its "
                f"inputs' {min(divergent.input_snr_db, INT8_REFERENCE_DB):.1f} dB."
            )
        header = ("#", "layer", "type", "TFLite op(s)", "dtype", "shape", "SNR dB",
                  "ch SNR dB", "rel err", "cosine", "max |err|")
        cells = []
        for i, row in enumerate(self.rows):
            name = ("> " if row is divergent else "") + row.name
            name += f" (call {row.call})" if row.call > 1 else ""
            if row.status != "compared":
                note = f"fused into {row.fused_into}" if row.status == "fused" else "no tensor found"
                cells.append((str(i), name, row.layer_type, note))
                continue
            cells.append((
                str(i), name, row.layer_type, _ops_text(row.tflite_ops), row.dtype,
                "x".join(map(str, row.shape)) or "()", f"{row.snr_db:.1f}",
                "-" if row.channel_snr_db is None else f"{row.channel_snr_db:.1f}",
                f"{row.relative_error:.3g}", f"{row.cosine:.4f}", f"{row.max_abs_error:.3g}",
            ))
        # Fused rows put a note in the op column; only full rows size the columns after it.
        full = [header] + [c for c in cells if len(c) == len(header)]
        widths = [max(len(c[k]) for c in (full if k > 2 else [header] + cells)) for k in range(len(header))]
        for c in [header] + cells:
            padded = [cell.rjust(w) if k > 5 else cell.ljust(w) for k, (cell, w) in enumerate(zip(c, widths))]
            lines.append("  " + "  ".join(padded if len(c) == len(header) else padded[:3] + [c[3]]).rstrip())
        return "\n".join(lines)

    def __str__(self):
        return self.summary()

    def as_dicts(self):
        """The rows as plain dicts (one per layer call, execution order), with
        `name` and `snr_drop_db` added."""
        return [
            {**dataclasses.asdict(row), "name": row.name, "snr_drop_db": row.snr_drop_db}
            for row in self.rows
        ]

    def to_json(self, path=None):
        """The report as JSON: `model_name`, `samples`, `threshold_db`,
        `agreement`, `first_divergent_layer` and `layers` (`as_dicts()`).

        Infinite values (the relative error of a layer whose Keras output is
        all zeros) are written as `null`.

        Args:
            path: optional file path to write the JSON to.

        Returns:
            The JSON text.
        """
        document = {
            "model_name": self.model_name,
            "samples": self.samples,
            "threshold_db": self.threshold_db,
            "agreement": self.agreement,
            "first_divergent_layer": self.first_divergent_layer,
            "layers": self.as_dicts(),
        }
        text = json.dumps(_finite(document), indent=1)
        if path is not None:
            _check_path("FidelityReport.to_json", path)
            with open(path, "w") as f:
                f.write(text)
        return text

    def plot(self, path=None):
        """A chart of every compared layer's SNR, marking the first divergent layer.

        Needs matplotlib (`pip install "keras-compress[plot]"`).

        Args:
            path: optional image path (`.png`, `.svg`, `.pdf`) to save it to.

        Returns:
            The `matplotlib.figure.Figure` (shown inline in a notebook).

        Raises:
            ImportError: matplotlib is not installed.

        Example:

        ```python
        report = fidelity_report(model, "model_int8.tflite", x_test[:64])
        report.plot("fidelity.png")
        ```
        """
        if path is not None:
            _check_path("FidelityReport.plot", path)
        try:
            from matplotlib.figure import Figure
        except ImportError as error:
            raise ImportError(
                "FidelityReport.plot needs matplotlib, the optional extra [plot]: "
                'pip install "keras-compress[plot]".'
            ) from error
        rows = self.compared
        positions = np.arange(len(rows))
        # A Figure without pyplot neither needs a display nor changes the
        # user's matplotlib backend.
        figure = Figure(figsize=(min(16.0, max(6.0, 0.25 * len(rows) + 2)), 4.5))
        axes = figure.add_subplot()
        axes.plot(positions, [r.snr_db for r in rows], marker="o", markersize=4, label="SNR (pooled)")
        axes.plot(positions, [np.nan if r.channel_snr_db is None else r.channel_snr_db for r in rows],
                  marker="s", markersize=4, linestyle="--", label="SNR (median channel)")
        divergent = self.first_divergent
        if divergent is not None:
            where = next(i for i, row in enumerate(rows) if row is divergent)
            axes.axvline(where, color="tab:red", alpha=0.6, label=f"first divergent: {divergent.name}")
        # Beyond about 40 layers, every label would overlap its neighbours.
        every = max(1, math.ceil(len(rows) / 40))
        axes.set_xticks(positions[::every])
        axes.set_xticklabels([r.layer + (f" ({r.call})" if r.call > 1 else "") for r in rows[::every]],
                             rotation=90, fontsize=7)
        axes.set_ylabel("SNR vs Keras (dB)")
        agreement = ", ".join(f"{n}: {a:.0%}" for n, a in self.agreement.items() if a is not None)
        title = f"'{self.model_name}' per-layer fidelity"
        axes.set_title(title + (f" (agreement {agreement})" if agreement else ""), fontsize=9)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=100)
        return figure

    def write_model_explorer(self, path, metric="snr_db"):
        """Writes per-node data that Model Explorer overlays on the `.tflite` graph.

        Open the file with `model-explorer model.tflite --node_data_paths=PATH`
        (package `ai-edge-model-explorer`, the viewer LiteRT Quantizer reports
        into): each compared layer's TFLite op is colored from red (worst) to
        green (best) by `metric`.

        Args:
            path: the JSON file to write.
            metric: the row field to show, one of `"snr_db"` (default),
                `"channel_snr_db"`, `"relative_error"`, `"cosine"`,
                `"max_abs_error"`.

        Returns:
            `path`.

        Raises:
            ValueError: `metric` is not one of those.
        """
        _check_path("FidelityReport.write_model_explorer", path)
        if metric not in ROW_METRICS:
            raise ValueError(
                f"FidelityReport.write_model_explorer: metric must be one of {ROW_METRICS}, got {metric!r}."
            )
        # Model Explorer's node data format (google-ai-edge/model-explorer,
        # src/server/package/src/model_explorer/node_data_builder.py, class
        # GraphNodeData, as LiteRT Quantizer's model_validator writes it):
        # {"results": {key: {"value": number}}, "gradient": [{"stop", "bgColor"}]}.
        # A key is an op's output tensor name, which the viewer maps to the
        # node through its outputsMetadata "tensor_name" for a .tflite, or a
        # node id (the op index); a file without graph ids applies to the
        # graph shown (node_data_provider_extension_service.ts,
        # getNodeDataProviderData).
        results = {}
        for row in self.compared:
            value = getattr(row, metric)
            if value is not None and math.isfinite(value):
                results[row.tflite_tensor] = {"value": round(float(value), 4)}
        worst, best = "#d7191c", "#1a9641"
        higher_is_better = metric in ("snr_db", "channel_snr_db", "cosine")
        low, high = (worst, best) if higher_is_better else (best, worst)
        document = {
            "results": results,
            "gradient": [{"stop": 0, "bgColor": low}, {"stop": 0.5, "bgColor": "#ffffbf"},
                         {"stop": 1, "bgColor": high}],
        }
        with open(path, "w") as f:
            json.dump(document, f, indent=1)
        return path


def fidelity_report(model, tflite, x, *, max_samples=128, num_threads=None, threshold_db=10.0):
    """Compares a Keras model with its TFLite file layer by layer, to find where they part.

    The file runs in LiteRT with every intermediate tensor kept (builtin
    kernels, no delegate, so that every tensor is computed by its own op);
    each tensor is dequantized with its scale and zero point (per channel
    where it has several). The Keras model runs node by node on the same
    samples, in inference mode, nested models expanded. Each Keras layer is
    matched to the ops of its name scope in the file's tensor names (the
    model's outputs by shape and value), the latest op of the scope being its
    output unless an earlier one of its shape is clearly closer in value;
    scope names carry unpredictable `_N` suffixes, so shapes and values decide
    between the candidates. Layers that TFLite fused into a later op (a
    Conv2D with its BatchNormalization and ReLU become one CONV_2D) are
    reported as fused into that layer instead of being compared with its
    tensor. Keras ops with no name in the file (`x * 0.5`) are matched by
    value when a tensor of their shape computes them.

    Errors accumulate through the file, so every layer carries the error of
    the layers before it; the one that matters is where the error jumps. The
    first divergent layer is the first compared layer whose median channel SNR
    falls more than `threshold_db` below the channel SNR of the inputs it
    reads (the compared layers feeding it, or the model inputs as the file
    quantizes them), that input level being capped at `INT8_REFERENCE_DB`
    (40 dB, what an int8 tensor of a well-ranged signal holds), so that the
    first int8 layer after float inputs does not count as a jump. The median
    channel catches a layer whose per-tensor activation range, stretched by a
    few large channels, crushes the rest, which pooled SNR hides until the
    next layer.

    Args:
        model: the Keras model the file was converted from (float, or
            quantization-aware), a built Sequential or Functional model.
        tflite: the TFLite flatbuffer `bytes`, or a path to a `.tflite` file.
        x: the samples to compare on: a numpy array (batch first) for a
            single-input model; a list in `model.inputs` order, or a dict keyed
            by input names, for several inputs.
        max_samples: compare on at most this many samples (default 128).
        num_threads: LiteRT interpreter threads (`None`: LiteRT's default).
        threshold_db: the SNR drop, in dB, that makes a layer divergent
            (default 10).

    Returns:
        A `FidelityReport`; `print` it for the table, `.plot()` it, or
        `.write_model_explorer(path)` to see it on the graph.

    Raises:
        TypeError: `model` is not a Keras model, `tflite` is neither bytes nor
            a path, or `x` is not an array, list or dict.
        ValueError: the file is not a TFLite flatbuffer; `x` does not fit the
            model's inputs; the model and the file differ in their inputs or
            outputs, or no layer of the model is found in the file; or an
            option is out of range.

    Example:

    ```python
    flatbuffer = kc.to_tflite(model, quantization="int8", representative_data=x_train)
    report = fidelity_report(model, flatbuffer, x_test[:64])
    print(report)                        # per-layer SNR, cosine, errors
    report.first_divergent_layer         # e.g. "block_3_depthwise"
    kc.to_tflite(model, quantization="int8", representative_data=x_train,
                 float_layers=[report.first_divergent_layer])
    ```
    """
    _check_model(model)
    content = read_flatbuffer(tflite)
    _check_options(max_samples, num_threads, threshold_db)
    xs = _input_arrays(model, x, max_samples)
    runner = _TFLiteRunner(content, num_threads)
    feed = _match_inputs(model, runner)
    _check_outputs(model, runner)

    trace = _KerasTrace(model)
    first = min(len(xs[0]), MAPPING_SAMPLES)
    chunk_x = [a[:first] for a in xs]
    keras_values = trace.run(chunk_x)
    every = sorted(set(runner.op_tensors) | {d["index"] for d in runner.input_details})
    tflite_values = runner.run([chunk_x[k] for k in feed], every)
    plan = _Mapping(model, trace, runner, feed, keras_values, tflite_values).solve()

    stats = {i: _Stats() for i in plan.tensor_of}
    input_stats = {k: _Stats() for k in plan.input_tensors}
    agreements = [_Agreement() for _ in trace.outputs]
    wanted = sorted(
        set(plan.tensor_of.values()) | set(plan.output_tensors) | set(plan.input_tensors.values())
    )
    # The mapping samples are measured too; the rest go in chunks of bounded memory.
    per_sample = sum(v[0].nbytes for v in keras_values) + sum(tflite_values[t][0].nbytes for t in wanted)
    step = max(1, min(64, CHUNK_BYTES // max(per_sample, 1)))
    count = len(xs[0])
    for start, stop in [(0, first)] + [(s, min(count, s + step)) for s in range(first, count, step)]:
        if start:
            chunk_x = [a[start:stop] for a in xs]
            keras_values = trace.run(chunk_x)
            tflite_values = runner.run([chunk_x[k] for k in feed], wanted)
        for item, tensor in plan.tensor_of.items():
            stats[item].update(keras_values[item], tflite_values[tensor])
        for k, tensor in plan.input_tensors.items():
            input_stats[k].update(chunk_x[k], tflite_values[tensor])
        for agreement, output, tensor in zip(agreements, trace.outputs, plan.output_tensors):
            if isinstance(output, int):
                agreement.update(keras_values[output], tflite_values[tensor])

    input_levels = {k: input_stats[k].channel_snr_db() for k in input_stats}
    rows = _rows(trace, runner, plan, stats, input_levels)
    divergent = next((row for row in rows if _is_divergent(row, threshold_db)), None)
    names = [trace.items[o].layer.name if isinstance(o, int) else f"input_{o[1]}" for o in trace.outputs]
    return FidelityReport(
        model_name=model.name,
        rows=tuple(rows),
        agreement={name: a.share() for name, a in zip(names, agreements)},
        first_divergent_layer=None if divergent is None else divergent.layer,
        samples=int(count),
        threshold_db=float(threshold_db),
    )


# -- arguments ------------------------------------------------------------------


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"fidelity_report expects the keras.Model the file was converted from, got "
            f"{type(model).__name__}: {model!r}."
        )
    if not isinstance(model, (keras.Sequential, Functional)):
        raise ValueError(
            f"fidelity_report runs a model layer by layer, which needs a Sequential or Functional "
            f"model; model '{model.name}' is a subclassed {type(model).__name__}, whose call() "
            "hides its layers. Compare its outputs with kc.predict_tflite instead."
        )
    if not model.built or not model.inputs:
        raise ValueError(
            f"fidelity_report needs a built model with known inputs; model '{model.name}' is "
            "not built. Give it a keras.Input or call it on data first."
        )


def _check_options(max_samples, num_threads, threshold_db):
    check_int("fidelity_report", "max_samples", max_samples, minimum=1)
    check_int("fidelity_report", "num_threads", num_threads, minimum=1, allow_none=True)
    check_number("fidelity_report", "threshold_db", threshold_db, minimum=0, inclusive=(False, True))


def _check_path(api, path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{api}: path must be a file path, got {type(path).__name__}: {path!r}.")


def _input_name(tensor):
    # The InputLayer's name, as the user wrote it in keras.Input(name=...).
    history = getattr(tensor, "_keras_history", None)
    return history.operation.name if history is not None else tensor.name


def _input_arrays(model, x, max_samples):
    """`x` as one array per model input, in `model.inputs` order, checked
    against the inputs' shapes and cast to their dtypes."""
    tensors = list(model.inputs)
    names = [_input_name(t) for t in tensors]
    if isinstance(x, dict):
        if set(x) != set(names):
            raise ValueError(
                f"fidelity_report: x is a dict with keys {sorted(map(str, x))}, but model "
                f"'{model.name}' has the inputs {names}; give exactly one array per input name."
            )
        arrays = [x[name] for name in names]
    elif isinstance(x, (list, tuple)):
        if len(x) != len(tensors):
            raise ValueError(
                f"fidelity_report: x is a {type(x).__name__} of {len(x)} arrays, but model "
                f"'{model.name}' has {len(tensors)} input(s) {names}; give one array per input, "
                "in model.inputs order."
            )
        arrays = list(x)
    elif isinstance(x, np.ndarray) or hasattr(x, "__array__"):
        if len(tensors) != 1:
            raise ValueError(
                f"fidelity_report: x is one array, but model '{model.name}' has {len(tensors)} "
                f"inputs {names}; give a list in model.inputs order or a dict keyed by input name."
            )
        arrays = [x]
    else:
        raise TypeError(
            "fidelity_report: x must be a numpy array of samples (batch first), a list of "
            f"arrays in model.inputs order or a dict keyed by input name; got {type(x).__name__}."
        )
    result = []
    for name, tensor, array in zip(names, tensors, arrays):
        try:
            array = np.asarray(array)
        except Exception as error:  # ragged lists and other objects numpy refuses
            raise TypeError(f"fidelity_report: x for input '{name}' is not an array: {error}.") from error
        expected = tuple(tensor.shape[1:])
        wanted = f"(batch, {', '.join(map(str, expected))})"
        if array.ndim != len(expected) + 1 or any(
            e is not None and e != s for e, s in zip(expected, array.shape[1:])
        ):
            raise ValueError(
                f"fidelity_report: x for input '{name}' has shape {array.shape}, but model "
                f"'{model.name}' expects {wanted}."
            )
        if array.dtype.kind not in "biuf":
            raise ValueError(
                f"fidelity_report: x for input '{name}' has dtype {array.dtype}; model "
                f"'{model.name}' expects numbers of dtype {tensor.dtype}."
            )
        if len(array) == 0:
            raise ValueError(f"fidelity_report: x for input '{name}' has no samples.")
        result.append(array[:max_samples].astype(keras.backend.standardize_dtype(tensor.dtype)))
    if len({len(a) for a in result}) > 1:
        raise ValueError(
            "fidelity_report: the arrays of x have different numbers of samples: "
            + ", ".join(f"'{n}': {len(a)}" for n, a in zip(names, result))
            + "."
        )
    return result


def _per_sample(shape):
    return tuple(None if d is None or d < 0 else int(d) for d in shape[1:])


def _compatible(a, b):
    return len(a) == len(b) and all(p is None or q is None or p == q for p, q in zip(a, b))


def _match_inputs(model, runner):
    """For each TFLite input, the index of the Keras input that feeds it."""
    tensors = list(model.inputs)
    details = runner.input_details
    if len(details) != len(tensors):
        raise ValueError(
            f"fidelity_report: model '{model.name}' has {len(tensors)} input(s) but the TFLite file "
            f"has {len(details)}; is it the file of this model?"
        )
    keras_shapes = [_per_sample(t.shape) for t in tensors]
    # The converter names each input "serving_default_<name>:0" after the
    # Keras input tensor; names first, then the one input of a shape, then order.
    names = [re.sub(r"[^0-9A-Za-z_.-]", "_", t.name) for t in tensors]
    layer_names = [_input_name(t) for t in tensors]
    feed = [None] * len(details)
    for i, detail in enumerate(details):
        name = re.sub(r":\d+$", "", detail["name"]).removeprefix("serving_default_")
        hits = [k for k in range(len(tensors)) if name in (names[k], layer_names[k])]
        if len(hits) == 1:
            feed[i] = hits[0]
    for i, detail in enumerate(details):
        if feed[i] is None:
            free = [k for k in range(len(tensors)) if k not in feed]
            shape = _per_sample(detail["shape_signature"])
            fits = [k for k in free if _compatible(keras_shapes[k], shape)]
            feed[i] = fits[0] if len(fits) == 1 else free[0]
    for i, detail in enumerate(details):
        shape = _per_sample(detail["shape_signature"])
        if not _compatible(keras_shapes[feed[i]], shape):
            raise ValueError(
                f"fidelity_report: the TFLite input '{detail['name']}' has per-sample shape "
                f"{shape}, but model '{model.name}''s input '{layer_names[feed[i]]}' has "
                f"{keras_shapes[feed[i]]}; is it the file of this model?"
            )
    return feed


def _check_outputs(model, runner):
    keras_shapes = sorted(str(_per_sample(t.shape)) for t in keras.tree.flatten(model.outputs))
    tflite_shapes = sorted(str(_per_sample(d["shape_signature"])) for d in runner.output_details)
    if len(keras_shapes) != len(tflite_shapes):
        raise ValueError(
            f"fidelity_report: model '{model.name}' has {len(keras_shapes)} output(s) but the "
            f"TFLite file has {len(tflite_shapes)}; is it the file of this model?"
        )
    keras_left = [_per_sample(t.shape) for t in keras.tree.flatten(model.outputs)]
    for detail in runner.output_details:
        shape = _per_sample(detail["shape_signature"])
        fits = [k for k, s in enumerate(keras_left) if _compatible(s, shape)]
        if not fits:
            raise ValueError(
                f"fidelity_report: model '{model.name}' has outputs of per-sample shapes "
                f"{', '.join(keras_shapes)}, but the TFLite file has {', '.join(tflite_shapes)}; "
                "is it the file of this model?"
            )
        keras_left.pop(fits[0])


# -- running both models ----------------------------------------------------------


@dataclasses.dataclass
class _Item:
    """One output of one call node of the Keras graph, nested models expanded."""

    layer: object
    path: tuple  # the models around the layer, top-level model first
    call: int
    output: int
    parents: list  # item indices, or ("input", k) for model input k
    consumers: list = dataclasses.field(default_factory=list)


class _KerasTrace:
    """Runs a Keras model node by node, keeping every layer's output."""

    def __init__(self, model):
        self.model = model
        self.items = []
        self.outputs = []  # per model output: an item index, or ("input", k)
        self._cursor = None

    def run(self, xs):
        """The output of every item on the samples `xs` (one array per model input)."""
        self._cursor = 0
        self._calls = {}
        self._values = [None] * len(self.items)
        refs = [("input", k) for k in range(len(xs))]
        building = not self.items
        _, outputs = self._run(self.model, list(xs), refs, (self.model.name,))
        if building:
            self.outputs = outputs
            for index, item in enumerate(self.items):
                for parent in item.parents:
                    if isinstance(parent, int) and index not in self.items[parent].consumers:
                        self.items[parent].consumers.append(index)
        return self._values

    def _run(self, model, inputs, refs, path):
        graph = graph_of(model)
        ref_of = {id(t): r for t, r in zip(graph.inputs, refs)}

        def call_node(node, args, kwargs):
            op = node.operation
            parents = [ref_of[id(t)] for t in node.input_tensors]
            if isinstance(op, (keras.Sequential, Functional)):
                outputs, out_refs = self._run(op, keras.tree.flatten(args[0]), parents, path + (op.name,))
            else:
                if isinstance(op, keras.layers.Layer):
                    kwargs = {**kwargs, "training": False}
                outputs = op(*args, **kwargs)
                call = self._calls[id(op)] = self._calls.get(id(op), 0) + 1
                out_refs = [self._record(op, path, call, i, parents, v)
                            for i, v in enumerate(keras.tree.flatten(outputs))]
            for tensor, ref in zip(node.outputs, out_refs):
                ref_of[id(tensor)] = ref
            return outputs

        outputs = run_graph(model, inputs, call_node)
        return outputs, [ref_of[id(t)] for t in keras.tree.flatten(graph.outputs)]

    def _record(self, op, path, call, output, parents, value):
        index = self._cursor
        self._cursor += 1
        if index == len(self.items):
            self.items.append(_Item(op, path, call, output, parents))
            self._values.append(None)
        self._values[index] = np.asarray(keras.ops.convert_to_numpy(value))
        return index


class _TFLiteRunner:
    """A LiteRT interpreter that keeps every intermediate tensor."""

    def __init__(self, content, num_threads):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        # Delegates (XNNPACK, applied by default) compute whole subgraphs
        # inside themselves and leave the intermediate tensors unwritten; the
        # builtin kernels compute and, preserved, keep every one.
        try:
            self.interpreter = Interpreter(
                model_content=content,
                num_threads=num_threads,
                experimental_preserve_all_tensors=True,
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            )
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"fidelity_report: LiteRT cannot load the TFLite file: {error}") from error
        self.input_details = self.interpreter.get_input_details()
        self.output_details = self.interpreter.get_output_details()
        self.outputs = [d["index"] for d in self.output_details]
        self.tensors = {d["index"]: d for d in self.interpreter.get_tensor_details()}
        # _get_ops_details is how LiteRT exposes the op graph to Python (TF's
        # QuantizationDebugger reads it the same way); op indices are the
        # flatbuffer's operator order, Model Explorer's node ids.
        self.ops = [op for op in self.interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
        self.producer = {int(t): op["index"] for op in self.ops for t in op["outputs"] if t >= 0}
        self.op_tensors = sorted(self.producer)
        self._batch = None

    def run(self, xs, wanted):
        """`{tensor index: float array (samples, ...)}` for the `wanted` tensors,
        `xs` being one array per TFLite input, in the file's input order."""
        n = len(xs[0])
        dynamic = all(d["shape_signature"][0] == -1 for d in self.input_details)
        batch = n if dynamic else int(self.input_details[0]["shape"][0])
        if dynamic and self._batch != n:
            for detail, x in zip(self.input_details, xs):
                self.interpreter.resize_tensor_input(detail["index"], [n, *x.shape[1:]])
            self.interpreter.allocate_tensors()
            self._batch = n
        results = {t: [] for t in wanted}
        for start in range(0, n, batch):
            count = min(batch, n - start)
            for detail, x in zip(self.input_details, xs):
                chunk = x[start : start + count]
                if count < batch:  # the last partial batch of a fixed-batch file
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - count, 0)])
                scale, zero_point = detail["quantization"]
                chunk = quantize_io(chunk, scale, zero_point, detail["dtype"])
                self.interpreter.set_tensor(detail["index"], chunk)
            self.interpreter.invoke()
            for t in wanted:
                values = self.interpreter.get_tensor(t)
                # Tensors without a batch axis (a loop counter, a shape) hold
                # nothing per sample to compare.
                if values.ndim and values.shape[0] == batch:
                    results[t].append(_dequantize(values, self.tensors[t])[:count])
        return {t: np.concatenate(v) for t, v in results.items() if v}

    def name(self, tensor):
        return self.tensors[tensor]["name"]

    def dtype(self, tensor):
        return np.dtype(self.tensors[tensor]["dtype"]).name


def _dequantize(values, detail):
    """A tensor's stored values as real numbers, per tensor or per channel."""
    params = detail["quantization_parameters"]
    scales, zero_points = params["scales"], params["zero_points"]
    if values.dtype.kind in "iu" and len(scales):
        if len(scales) > 1:
            shape = [1] * values.ndim
            shape[params["quantized_dimension"]] = -1
            scales, zero_points = scales.reshape(shape), zero_points.reshape(shape)
        return ((values.astype(np.float64) - zero_points) * scales).astype(np.float32)
    return values.astype(np.float32)


# -- matching tensors to layers ---------------------------------------------------------


def _loose(name):
    """A TensorFlow op name ("Relu_1") or Keras op name ("relu") in the form
    both share ("relu"): no `_N` suffixes, no underscores, lower case."""
    return re.sub(r"(_\d+)+$", "", name).replace("_", "").lower()


def _squeezed(shape):
    return tuple(d for d in shape if d != 1)


def _error(ref, values):
    """Relative L2 error of `values` against `ref`."""
    ref = ref.astype(np.float64).ravel()
    diff = values.astype(np.float64).ravel() - ref
    norm = np.linalg.norm(ref)
    if norm == 0:
        return 0.0 if not diff.any() else math.inf
    return float(np.linalg.norm(diff) / norm)


@dataclasses.dataclass
class _Plan:
    tensor_of: dict  # item -> tensor index
    owner_of: dict  # fused item -> the item whose tensor holds it
    ops_of: dict  # item -> op indices that compute it
    output_tensors: list  # per Keras model output, the TFLite output tensor
    shapes: dict  # item -> the shape of one sample of its output
    input_tensors: dict  # Keras input k -> the tensor holding it as the file quantized it


class _Mapping:
    """Decides which TFLite tensor holds which Keras layer's output, on a few samples."""

    def __init__(self, model, trace, runner, feed, keras_values, tflite_values):
        self.model, self.trace, self.runner, self.feed = model, trace, runner, feed
        self.keras_values, self.tflite_values = keras_values, tflite_values
        self.tensor_of, self.ops_of, self.how = {}, {}, {}
        self.scopes = self._scopes()

    def solve(self):
        output_tensors = self._match_outputs()
        self._match_names()
        if not any(h == "name" for h in self.how.values()) and not any(
            _error(self.keras_values[i], self.tflite_values[t]) < VALUE_MATCH_MAX_ERROR
            for i, t in self.tensor_of.items() if self.how[i] == "output"
        ):
            raise ValueError(
                f"fidelity_report: no layer of model '{self.model.name}' is found in the TFLite "
                "file: none of its layer names appears in the file's tensor names and its outputs "
                "do not compute the model's; is it the file of this model?"
            )
        self._match_values()
        self._take_over()
        owner_of = self._fuse()
        shapes = {item: tuple(int(d) for d in self._per_sample_shape(item)) for item in self.tensor_of}
        return _Plan(self.tensor_of, owner_of, self.ops_of, output_tensors, shapes, self._input_tensors())

    def _per_sample_shape(self, item):
        return self.keras_values[item].shape[1:]

    def _fits(self, item, tensor):
        """Whether `tensor` holds one value per element of `item`'s output in
        its order: the same shape but for axes of size 1 (a Conv1D runs as a
        CONV_2D on a (batch, 1, steps, channels) tensor)."""
        values = self.tflite_values.get(tensor)
        return values is not None and _squeezed(values.shape[1:]) == _squeezed(self._per_sample_shape(item))

    def _err(self, item, tensor):
        return _error(self.keras_values[item], self.tflite_values[tensor])

    def _scopes(self):
        """An index of the name-scope components of every op output tensor's
        name (each ';'-separated part): `{key: [(components, position, op)]}`,
        under the component itself, the component without its `_N` suffix,
        and, prefixed with "~", its `_loose` form."""
        index = {}
        for op in self.runner.ops:
            for t in op["outputs"]:
                if t < 0:
                    continue
                for part in self.runner.name(int(t)).split(";"):
                    components = part.split("/")
                    for j, component in enumerate(components):
                        entry = (components, j, op["index"])
                        keys = {component, re.sub(r"_\d+$", "", component), "~" + _loose(component)}
                        for key in keys:
                            index.setdefault(key, []).append(entry)
        return index

    def _match_outputs(self):
        """Keras outputs to TFLite outputs by shape, then value (the file's
        output order and names need not follow the model's)."""
        tensors = []
        free = list(self.runner.outputs)
        for ref in self.trace.outputs:
            values = self.keras_values[ref] if isinstance(ref, int) else None
            fits = [t for t in free if values is not None and self._fits(ref, t)]
            fits = fits or free[:1]
            best = min(fits, key=lambda t: _error(values, self.tflite_values[t]) if values is not None else 0)
            free.remove(best)
            tensors.append(best)
            if isinstance(ref, int) and ref not in self.tensor_of:
                tensor = best
                op = self.runner.ops[self.runner.producer[best]] if best in self.runner.producer else None
                # An int8 file's float output comes from a DEQUANTIZE of the
                # layer's own int8 tensor, which is the one to report.
                if op is not None and op["op_name"] == "DEQUANTIZE":
                    tensor = int(op["inputs"][0])
                self._assign(ref, tensor, "output")
        return tensors

    def _assign(self, item, tensor, how, ops=()):
        self.tensor_of[item] = tensor
        self.how[item] = how
        producer = self.runner.producer.get(tensor)
        self.ops_of[item] = sorted({o for o in ops if producer is None or o <= producer}
                                   | ({producer} if producer is not None else set()))

    def _candidate_scopes(self, item):
        """`{scope key: op indices}` of the name scopes that may be `item`'s:
        a component naming the layer (a Keras op, loosely) under components
        naming the models around it, the top-level model's optional."""
        entry = self.trace.items[item]
        name = entry.layer.name
        if isinstance(entry.layer, keras.layers.Layer):
            hits = [h for h in self.scopes.get(name, ()) if scope_matches(h[0][h[1]], name)]
        else:
            hits = self.scopes.get("~" + _loose(name), [])
        paths = [entry.path, entry.path[1:]]
        scopes = {}
        for components, j, op in hits:
            prefix = components[:j]
            if any(len(p) == j and all(scope_matches(c, m) for c, m in zip(prefix, p)) for p in paths):
                scopes.setdefault("/".join(components[: j + 1]), set()).add(op)
        return scopes

    def _latest_close(self, item, tensors):
        """`(error, tensor)` of the latest of `tensors` (in op order) whose
        error is within `SAME_ERROR_RATIO` of the smallest."""
        scored = [(self._err(item, t), t) for t in tensors]
        lowest = min(error for error, _ in scored)
        return next((e, t) for e, t in reversed(scored) if e <= SAME_ERROR_RATIO * lowest)

    def _match_names(self):
        """Each layer to one op of one of its name scopes: the latest op of
        the scope, unless an earlier one of its shape is clearly closer to it
        in value (the converter may compute a layer twice, fused with
        different consumers); among scopes, the closest."""
        claimed = set()
        for item in range(len(self.trace.items)):
            if item in self.tensor_of:
                # An output layer's tensor is the file's output, renamed; its
                # own scope still names the ops before (a Dense's FULLY_CONNECTED
                # ahead of the SOFTMAX that makes the output).
                producer = self.runner.producer.get(self.tensor_of[item], -1)
                before = {k: ops for k, ops in self._candidate_scopes(item).items()
                          if k not in claimed and max(ops) < producer}
                if before:
                    key = max(before, key=lambda k: max(before[k]))
                    claimed.add(key)
                    self.ops_of[item] = sorted(set(self.ops_of[item]) | before[key])
                continue
            options = []
            output = self.trace.items[item].output
            for key, ops in self._candidate_scopes(item).items():
                if key in claimed:
                    continue
                tensors = [int(self.runner.ops[o]["outputs"][output]) for o in sorted(ops)
                           if len(self.runner.ops[o]["outputs"]) > output]
                tensors = [t for t in tensors if t >= 0 and self._fits(item, t)]
                if tensors:
                    options.append((*self._latest_close(item, tensors), key, ops))
            if options:
                _, tensor, key, ops = min(options, key=lambda o: o[0])
                claimed.add(key)
                self._assign(item, tensor, "name", ops)

    def _ancestor_ops(self, item):
        """The highest op index among the tensors of `item`'s mapped ancestors (-1: inputs only)."""
        highest, stack, seen = -1, list(self.trace.items[item].parents), set()
        while stack:
            ref = stack.pop()
            if not isinstance(ref, int) or ref in seen:
                continue
            seen.add(ref)
            if ref in self.tensor_of:
                highest = max(highest, self.runner.producer.get(self.tensor_of[ref], -1))
            else:
                stack.extend(self.trace.items[ref].parents)
        return highest

    def _descendant_ops(self, item):
        lowest, stack, seen = len(self.runner.ops), list(self.trace.items[item].consumers), set()
        while stack:
            ref = stack.pop()
            if ref in seen:
                continue
            seen.add(ref)
            if ref in self.tensor_of:
                lowest = min(lowest, self.runner.producer.get(self.tensor_of[ref], lowest))
            else:
                stack.extend(self.trace.items[ref].consumers)
        return lowest

    def _match_values(self):
        """Layers and ops whose names the file lost, to the closest unclaimed
        tensor of their shape between their mapped ancestors and descendants."""
        for item in range(len(self.trace.items)):
            if item in self.tensor_of:
                continue
            taken = set(self.tensor_of.values())
            low, high = self._ancestor_ops(item), self._descendant_ops(item)
            options = [
                (self._err(item, t), t) for t in self.runner.op_tensors
                if t not in taken and low < self.runner.producer[t] < high and self._fits(item, t)
            ]
            if options:
                error, tensor = min(options)
                if error < VALUE_MATCH_MAX_ERROR and not self._computed_by_parent(item, error):
                    self._assign(item, tensor, "value")

    def _computed_by_parent(self, item, error):
        """Whether the tensor of `item`'s only parent holds `item` at least as
        well as `error`: an activation quantizer whose rounding the producing
        op already does has no op of its own, and a nearby op of the same
        shape (the SUB of a LayerNormalization reading it) only looks alike.
        `_take_over` then gives it its parent's tensor."""
        parents = self.trace.items[item].parents
        if len(parents) != 1 or parents[0] not in self.tensor_of:
            return False
        tensor = self.tensor_of[parents[0]]
        return self._fits(item, tensor) and self._err(item, tensor) <= SAME_ERROR_RATIO * error

    def _single_consumer(self, item):
        consumers = self.trace.items[item].consumers
        if len(consumers) != 1 or item in self.trace.outputs:
            return None
        consumer = consumers[0]
        return consumer if self.trace.items[consumer].parents == [item] else None

    def _take_over(self):
        """Moves a tensor down a chain of unmapped layers to the last one it
        computes: a Conv2D's tensor that holds the BatchNormalization after
        it, a QuantizeWrapper's that holds its activation quantizer."""
        for item in sorted(self.tensor_of):
            tensor = self.tensor_of[item]
            best, lowest = item, self._err(item, tensor)
            previous, current = item, self._single_consumer(item)
            while current is not None and current not in self.tensor_of and self._fits(current, tensor):
                # A layer that passes its input on unchanged (Dropout) computes nothing to own.
                if not np.array_equal(self.keras_values[current], self.keras_values[previous]):
                    error = self._err(current, tensor)
                    if error <= SAME_ERROR_RATIO * lowest:
                        best = current
                    lowest = min(lowest, error)
                previous, current = current, self._single_consumer(current)
            if best != item:
                self.tensor_of[best] = self.tensor_of.pop(item)
                self.ops_of[best] = self.ops_of.pop(item)
                self.how[best] = self.how.pop(item)

    def _fuse(self):
        """`{item: owner}` for the layers computed inside a later layer's op:
        several layers on one tensor (the last owns it), and layers with no
        tensor on a single-consumer chain into a compared one."""
        owner_of = {}
        holders = {}
        for item, tensor in self.tensor_of.items():
            holders.setdefault(tensor, []).append(item)
        for items in holders.values():
            owner = max(items)
            for item in items:
                if item != owner:
                    owner_of[item] = owner
                    self.ops_of[owner] = sorted(set(self.ops_of[owner]) | set(self.ops_of.pop(item)))
                    del self.tensor_of[item]
        for item in range(len(self.trace.items)):
            if item in self.tensor_of or item in owner_of:
                continue
            current = item
            while current is not None and current not in self.tensor_of:
                consumers = self.trace.items[current].consumers
                current = consumers[0] if len(consumers) == 1 and current not in self.trace.outputs else None
            if current is not None:
                owner_of[item] = current
        return owner_of

    def _input_tensors(self):
        """Per model input, the tensor of the file's quantized copy of it (the
        input itself, or its QUANTIZE op's output) when that is not float."""
        result = {}
        for detail, k in zip(self.runner.input_details, self.feed):
            tensor = detail["index"]
            for op in self.runner.ops:
                if op["op_name"] == "QUANTIZE" and int(op["inputs"][0]) == tensor:
                    tensor = int(op["outputs"][0])
                    break
            if len(self.runner.tensors[tensor]["quantization_parameters"]["scales"]):
                result[k] = tensor
        return result


# -- metrics ----------------------------------------------------------------------------


def _snr_db(signal, noise):
    if noise == 0:
        return MAX_SNR_DB
    if signal == 0:
        return -MAX_SNR_DB
    return float(np.clip(10 * math.log10(signal / noise), -MAX_SNR_DB, MAX_SNR_DB))


class _Stats:
    """Running sums for the metrics of one layer, pooled over samples."""

    def __init__(self):
        self.signal = self.noise = None  # per channel
        self.tflite_power = self.dot = self.max_abs = 0.0

    def update(self, ref, values):
        ref = ref.astype(np.float64)
        values = values.astype(np.float64).reshape(ref.shape)
        channels = ref.shape[-1] if ref.ndim > 1 else 1
        ref, values = ref.reshape(-1, channels), values.reshape(-1, channels)
        diff = values - ref
        if self.signal is None:
            self.signal, self.noise = np.zeros(channels), np.zeros(channels)
        self.signal += np.sum(ref**2, axis=0)
        self.noise += np.sum(diff**2, axis=0)
        self.tflite_power += float(np.sum(values**2))
        self.dot += float(np.sum(ref * values))
        if diff.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))))

    def metrics(self):
        signal, noise = float(self.signal.sum()), float(self.noise.sum())
        if signal == 0:
            relative = 0.0 if noise == 0 else math.inf
        else:
            relative = math.sqrt(noise / signal)
        if signal == 0 or self.tflite_power == 0:
            cosine = 1.0 if signal == self.tflite_power else 0.0
        else:
            cosine = self.dot / math.sqrt(signal * self.tflite_power)
        return {
            "snr_db": _snr_db(signal, noise),
            "channel_snr_db": self.channel_snr_db(),
            "relative_error": relative,
            "cosine": float(np.clip(cosine, -1.0, 1.0)),
            "max_abs_error": self.max_abs,
        }

    def channel_snr_db(self):
        """The median over the channels that carry signal of their SNR."""
        live = self.signal > 0
        if not live.any():
            return None
        return float(np.median([_snr_db(s, n) for s, n in zip(self.signal[live], self.noise[live])]))


def fidelity_metrics(ref, values):
    """The metrics of `LayerFidelity` for one pair of arrays.

    Args:
        ref: the reference (Keras) values, batch first.
        values: the values to judge, of the same shape.

    Returns:
        A dict with `snr_db`, `channel_snr_db`, `relative_error`, `cosine` and
        `max_abs_error`, computed as `LayerFidelity` documents.

    Raises:
        ValueError: the shapes differ.

    Example:

    ```python
    fidelity_metrics(np.array([[3.0, 4.0]]), np.array([[3.0, 4.5]]))["snr_db"]  # 20.0
    ```
    """
    ref, values = np.asarray(ref), np.asarray(values)
    if ref.shape != values.shape:
        raise ValueError(f"fidelity_metrics: ref has shape {ref.shape} but values have {values.shape}.")
    stats = _Stats()
    stats.update(ref, values)
    return stats.metrics()


class _Agreement:
    def __init__(self):
        self.equal = self.total = 0
        self.single_unit = False

    def update(self, ref, values):
        if ref.ndim < 2 or ref.shape[-1] == 1:
            self.single_unit = True
            return
        values = values.reshape(ref.shape)
        self.equal += int(np.sum(ref.argmax(-1) == values.argmax(-1)))
        self.total += int(ref[..., 0].size)

    def share(self):
        return None if self.single_unit or not self.total else self.equal / self.total


# -- rows ----------------------------------------------------------------------------


def _rows(trace, runner, plan, stats, input_levels):
    metrics = {item: s.metrics() for item, s in stats.items()}

    def level(item):
        """The lowest channel SNR among what flows into `item`."""
        levels, stack, seen = [], list(trace.items[item].parents), set()
        while stack:
            ref = stack.pop()
            if not isinstance(ref, int):
                levels.append(input_levels.get(ref[1], MAX_SNR_DB))
            elif ref not in seen:
                seen.add(ref)
                value = metrics[ref]["channel_snr_db"] if ref in metrics else None
                if value is not None and plan.tensor_of.get(ref) != plan.tensor_of.get(item):
                    levels.append(value)
                else:
                    stack.extend(trace.items[ref].parents)
        return min(levels) if levels else None

    rows = []
    for index, item in enumerate(trace.items):
        layer = item.layer
        common = dict(
            layer=layer.name,
            layer_type=type(layer).__name__,
            path="/".join(item.path[1:]),
            call=item.call,
            output=item.output,
        )
        if index in plan.tensor_of:
            tensor = plan.tensor_of[index]
            rows.append(LayerFidelity(
                **common,
                status="compared",
                tflite_ops=tuple(runner.ops[o]["op_name"] for o in plan.ops_of[index]),
                tflite_tensor=runner.name(tensor),
                tflite_op_index=runner.producer.get(tensor),
                dtype=runner.dtype(tensor),
                shape=plan.shapes[index],
                input_snr_db=level(index),
                **metrics[index],
            ))
        elif index in plan.owner_of:
            owner = trace.items[plan.owner_of[index]].layer.name
            rows.append(LayerFidelity(**common, status="fused", fused_into=owner))
        else:
            rows.append(LayerFidelity(**common, status="unmapped"))
    return rows


def _ops_text(ops, width=40):
    """Op types for the table: each type once, in order, cut at `width` characters."""
    text = "+".join(dict.fromkeys(ops))
    return text if len(text) <= width else text[: width - 3].rsplit("+", 1)[0] + "+..."


def _is_divergent(row, threshold_db):
    return row.status == "compared" and row.snr_drop_db is not None and row.snr_drop_db > threshold_db


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
