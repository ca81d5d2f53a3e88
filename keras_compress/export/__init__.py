"""Keras -> TFLite conversion and evaluation of the converted model in LiteRT."""

from keras_compress.export.converter import to_tflite
from keras_compress.export.interpreter import (
    evaluate_tflite,
    load_interpreter,
    predict_tflite,
    read_flatbuffer,
)

__all__ = ["evaluate_tflite", "load_interpreter", "predict_tflite", "read_flatbuffer", "to_tflite"]
