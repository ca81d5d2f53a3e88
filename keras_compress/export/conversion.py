"""Runs TensorFlow's TFLite converter on a SavedModel.

This module imports numpy and TensorFlow only, never Keras or the rest of
this package, so that `to_tflite` can run it in a child process (see
`isolation.py`): TensorFlow's calibrator can crash the process that runs it
(a segmentation fault on a Keras 3 LSTM's WHILE loop), and such a crash must
not take the caller's process down. Run as a script, it converts the job
that `write_job` put in a directory.
"""

import contextlib
import gc
import gzip
import json
import os
import sys
import warnings

import numpy as np

# TensorFlow ops that carry control flow; their bodies become TFLite subgraphs.
CONTROL_FLOW_OPS = ("While", "StatelessWhile", "If", "StatelessIf", "Case", "StatelessCase")

_JOB_FILE = "job.json"
_CALIBRATION_FILE = "calibration.npz"
_RESULT_FILE = "result.tflite"


def convert(saved_model, options, calibration=None):
    """Converts a SavedModel's `serving_default` signature to a flatbuffer.

    Args:
        saved_model: the SavedModel directory.
        options: a dict with `quantization` (None, "dynamic", "float16",
            "int8" or "int16x8"), `input_keys` (the signature's input names,
            in the order of `calibration`), `batch_size` (int or None),
            `int8_io` (bool), `encodings` (a list of booleans: convert with
            and/or without the sparse weight encoding, keeping the smaller
            file) and `calibrate_only` (bool: return the float model with
            the calibration statistics, for `quantize_calibrated`).
        calibration: for the calibrated modes, one array of samples per input.

    Returns:
        The flatbuffer `bytes`.
    """
    encodings = [False] if options["calibrate_only"] else options["encodings"]
    with warnings.catch_warnings():
        # TensorFlow's calibrator uses its own deprecated tf.lite.Interpreter
        # and warns about it: nothing the caller can act on.
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        files = (_convert_once(saved_model, options, calibration, e) for e in encodings)
        return smallest(files, options.get("size_by", "raw"))


SIZE_MEASURES = ("raw", "gzip")


def file_size(flatbuffer, size_by="raw"):
    """The size that decides between encodings: `"raw"` bytes, or `"gzip"`
    bytes (level 9, as `tflite_bench` reports them)."""
    return len(gzip.compress(flatbuffer, compresslevel=9)) if size_by == "gzip" else len(flatbuffer)


def smallest(flatbuffers, size_by="raw"):
    """The smallest of `flatbuffers` by `file_size(..., size_by)`."""
    return min(flatbuffers, key=lambda flatbuffer: file_size(flatbuffer, size_by))


def _convert_once(saved_model, options, calibration, sparse):
    import tensorflow as tf

    quantization = options["quantization"]
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    optimizations = []
    if quantization is not None:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if not options.get("per_channel", True):
        # One scale per weight tensor (no public switch; the converter's own).
        converter._experimental_disable_per_channel = True  # noqa: SLF001
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    # An uncalibrated (quantization-aware) int8 model keeps the default op set:
    # the converter refuses TFLITE_BUILTINS_INT8 without a representative_dataset
    # before it looks for fake-quant ops. Ops the fake-quant covers still come
    # out int8; to_tflite reports any that do not.
    elif quantization == "int8" and calibration is not None:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif quantization == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    if calibration is not None:
        converter.representative_dataset = _representative_dataset(
            calibration, options["input_keys"], options["batch_size"]
        )
    if options["calibrate_only"]:
        # What tf.lite.experimental.QuantizationDebugger does: stop after
        # calibration, so that quantize_calibrated can keep chosen ops float.
        converter._experimental_calibrate_only = True  # noqa: SLF001 (no public switch)
    elif options["int8_io"]:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with frozen_heap():
        return converter.convert()


@contextlib.contextmanager
def frozen_heap():
    """Runs the block with the objects that exist now out of the garbage
    collector's reach (`gc.freeze`), then gives them back (`gc.unfreeze`).

    TensorFlow's SavedModel converter calls `gc.collect()` once per
    conversion, to free the model it loaded. In a process holding Keras and
    TensorFlow (~400,000 tracked objects) that full collection costs ~0.2 s,
    about 40% of converting a small model. Frozen, it scans only what the
    conversion created, which still includes the loaded model. Skipped when
    the process already froze objects (`gc.get_freeze_count()`), whose
    freeze is not ours to undo.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def quantize_calibrated(calibrated, *, int8_io, float_nodes, sparse, per_channel=True):
    """Quantizes a calibrated float model to int8, keeping the ops that write
    `float_nodes` (tensor names) float.

    The second half of the converter's own post-training quantization,
    through the MLIR quantizer's `denylisted_nodes`, as
    `tf.lite.experimental.QuantizationDebugger` uses it.

    Args:
        calibrated: the flatbuffer `convert` returned with `calibrate_only`.
        int8_io: int8 model inputs and outputs.
        float_nodes: the names of the tensors whose ops stay float.
        sparse: apply the sparse weight encoding afterwards.
        per_channel: one weight scale per output channel (else per tensor).

    Returns:
        The quantized flatbuffer `bytes`.
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert as tf_convert
    from tensorflow.lite.python import lite
    from tensorflow.lite.tools import flatbuffer_utils

    io_type = tf.int8 if int8_io else tf.float32
    model = tf_convert.mlir_quantize(
        calibrated,
        input_data_type=io_type,
        output_data_type=io_type,
        denylisted_nodes=list(float_nodes),
        disable_per_channel=not per_channel,
    )
    if sparse:
        model = tf_convert.mlir_sparsify(model)
    # The converter ends every conversion by merging identical weight buffers.
    model = lite._deduplicate_readonly_buffers(model)  # noqa: SLF001
    content = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    # The metadata still describes the calibrated float model.
    refresh_model_hash(content)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(content))


def refresh_model_hash(model):
    """Recomputes the structure hash that the converter records in a file's
    conversion metadata, as the converter computes it, after the file changed.

    Args:
        model: the file as `flatbuffer_utils` reads it (`ModelT`), changed in place.
    """
    from tensorflow.lite.python import conversion_metadata_schema_py_generated as metadata_schema
    from tensorflow.lite.python import util

    for entry in model.metadata or []:
        if entry.name == util.CONVERSION_METADATA_FIELD_NAME.encode():
            data = bytes(model.buffers[entry.buffer].data)
            metadata = metadata_schema.ConversionMetadataT.InitFromPackedBuf(data, 0)
            metadata.environment.modelHash = util.get_model_hash(model)
            util.populate_conversion_metadata(model, metadata)


def _representative_dataset(calibration, keys, batch_size):
    """The converter's `representative_dataset`: dicts keyed by the
    signature's input names, of batches of the converted inputs' fixed
    size, as the calibrator cannot resize a fixed batch."""
    size = batch_size or 1
    count = len(calibration[0])

    def batches():
        for start in range(0, count, size):
            # Padding with repeated samples leaves the calibrated min/max as is.
            yield {
                key: np.resize(x[start : start + size], (size, *x.shape[1:]))
                for key, x in zip(keys, calibration)
            }

    return batches


def control_flow_ops(saved_model):
    """The control-flow ops of a SavedModel's functions.

    Args:
        saved_model: the SavedModel directory.

    Returns:
        A sorted list of `(op type, node name)`, such as
        `("While", "lstm_classifier_1/lstm_1/while")`; the node name carries
        the Keras name scopes of the layer that made it.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    found = set()
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        nodes = [*graph.node, *(n for function in graph.library.function for n in function.node_def)]
        found.update((n.op, n.name) for n in nodes if n.op in CONTROL_FLOW_OPS)
    return sorted(found)


def write_job(directory, saved_model, options, calibration):
    """Writes a conversion job for a child process into `directory`."""
    with open(os.path.join(directory, _JOB_FILE), "w") as f:
        json.dump({"saved_model": saved_model, "options": options}, f)
    if calibration is not None:
        np.savez(os.path.join(directory, _CALIBRATION_FILE), *calibration)


def read_result(directory):
    """The flatbuffer a child process wrote, `None` if it wrote none."""
    path = os.path.join(directory, _RESULT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return f.read()


def run_job(directory):
    """Runs the job in `directory` (see `write_job`) and writes the result."""
    with open(os.path.join(directory, _JOB_FILE)) as f:
        job = json.load(f)
    calibration = None
    path = os.path.join(directory, _CALIBRATION_FILE)
    if os.path.isfile(path):
        with np.load(path) as arrays:
            calibration = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    flatbuffer = convert(job["saved_model"], job["options"], calibration)
    # Written under another name, then renamed: a crash never leaves half a file.
    partial = os.path.join(directory, _RESULT_FILE + ".partial")
    with open(partial, "wb") as f:
        f.write(flatbuffer)
    os.replace(partial, os.path.join(directory, _RESULT_FILE))


if __name__ == "__main__":
    run_job(sys.argv[1])


def strip_names(flatbuffer):
    """`flatbuffer` without the names of its internal tensors.

    A converted file names every tensor after the ops that made it
    ("model/conv2d_1/Relu;model/conv2d_1/convolution"): debug information
    that no runtime reads, a few hundred bytes of a small model. The inputs,
    the outputs and the signatures keep their names, so `predict_tflite`,
    the signature runner and `inspect_tflite` work as before; the tensors'
    data and the ops are untouched (the file computes the same outputs).
    Tools that map tensors back to layers by name (`fidelity_report`) need
    the unstripped file.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    content = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    for subgraph in content.subgraphs:
        keep = set(subgraph.inputs) | set(subgraph.outputs)
        for signature in content.signatureDefs or []:
            if signature.subgraphIndex == content.subgraphs.index(subgraph):
                keep |= {t.tensorIndex for t in (signature.inputs or []) + (signature.outputs or [])}
        for index, tensor in enumerate(subgraph.tensors):
            if index not in keep:
                tensor.name = b""
    return bytes(flatbuffer_utils.convert_object_to_bytearray(content))
