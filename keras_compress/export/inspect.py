"""`inspect_tflite`: what a converted model holds, op by op and dtype by dtype.

The code lives in `tflite_bench.inspect`, which needs neither Keras nor
TensorFlow; this module keeps the `keras_compress.export.inspect` path.
"""

from tflite_bench.inspect import (  # noqa: F401
    CONVERSION_OPS,
    FLOAT_DTYPES,
    OpInfo,
    TensorInfo,
    TFLiteInfo,
    _dtype_name,
    _indices,
    _op_name,
    inspect_tflite,
)

__all__ = ["CONVERSION_OPS", "FLOAT_DTYPES", "OpInfo", "TFLiteInfo", "TensorInfo", "inspect_tflite"]
