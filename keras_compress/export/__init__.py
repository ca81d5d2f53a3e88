"""Keras -> TFLite conversion, inspection of the converted model, and its
evaluation in LiteRT."""

from keras_compress.export.converter import to_tflite
from keras_compress.export.inspect import OpInfo, TensorInfo, TFLiteInfo, inspect_tflite
from keras_compress.export.interpreter import (
    evaluate_tflite,
    load_interpreter,
    predict_tflite,
    read_flatbuffer,
)

__all__ = [
    "OpInfo",
    "TFLiteInfo",
    "TensorInfo",
    "evaluate_tflite",
    "inspect_tflite",
    "load_interpreter",
    "predict_tflite",
    "read_flatbuffer",
    "to_tflite",
]
