"""Running converted models in the LiteRT interpreter: predictions and accuracy.

The code lives in `tflite_bench.interpreter`, which needs neither Keras nor
TensorFlow; this module keeps the `keras_compress.export.interpreter` path.
"""

from tflite_bench.interpreter import (  # noqa: F401
    _checked_labels,
    _input_arrays,
    _labels_by_output,
    _run,
    _signature_keys,
    class_labels,
    dequantize_io,
    evaluate_tflite,
    key_problems,
    load_interpreter,
    predict_tflite,
    quantize_io,
    read_flatbuffer,
)

__all__ = ["class_labels", "dequantize_io", "evaluate_tflite", "key_problems", "load_interpreter",
           "predict_tflite", "quantize_io", "read_flatbuffer"]
