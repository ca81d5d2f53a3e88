"""Keras -> TFLite conversion, inspection of the converted model, its
evaluation in LiteRT, and a per-layer comparison of the two."""

from keras_compress.export.converter import to_tflite
from keras_compress.export.dense_zeros import DenseZerosWarning
from keras_compress.export.fidelity import (
    FidelityReport,
    LayerFidelity,
    fidelity_metrics,
    fidelity_report,
)
from keras_compress.export.float_ops import FloatOpsWarning
from tflite_bench.inspect import OpInfo, TensorInfo, TFLiteInfo, inspect_tflite
from tflite_bench.interpreter import (
    evaluate_tflite,
    load_interpreter,
    predict_tflite,
    read_flatbuffer,
)
from keras_compress.export.naming import layer_candidates

__all__ = [
    "DenseZerosWarning",
    "FidelityReport",
    "FloatOpsWarning",
    "LayerFidelity",
    "OpInfo",
    "TFLiteInfo",
    "TensorInfo",
    "evaluate_tflite",
    "fidelity_metrics",
    "fidelity_report",
    "inspect_tflite",
    "layer_candidates",
    "load_interpreter",
    "predict_tflite",
    "read_flatbuffer",
    "to_tflite",
]
