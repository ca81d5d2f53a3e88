"""tflite_bench: measure .tflite models as an edge engineer does.

```python
import tflite_bench
record = tflite_bench.benchmark_model("model.tflite", threads=1, data=(x_test, y_test))
record.p50_ms, record.bytes, record.gzip_bytes, record.accuracy
```

It needs numpy and `ai_edge_litert`, never Keras or TensorFlow: its LiteRT
code (`predict_tflite`, `evaluate_tflite`, `inspect_tflite`...) is the one
that `keras_compress` re-exports.
"""

from tflite_bench import report
from tflite_bench.android import device_record, parse_benchmark_model_output, run_on_device
from tflite_bench.inspect import TFLiteInfo, inspect_tflite
from tflite_bench.interpreter import evaluate_tflite, load_interpreter, predict_tflite
from tflite_bench.latency import measure_latency
from tflite_bench.micro import ArenaEstimate, arena_estimate, to_c_source
from tflite_bench.op_profile import OpProfile, OpTime, profile_ops
from tflite_bench.record import BenchmarkRecord, benchmark_model
from tflite_bench.runtime import RUNTIMES

__all__ = [
    "ArenaEstimate",
    "BenchmarkRecord",
    "OpProfile",
    "OpTime",
    "RUNTIMES",
    "TFLiteInfo",
    "arena_estimate",
    "benchmark_model",
    "device_record",
    "evaluate_tflite",
    "inspect_tflite",
    "load_interpreter",
    "measure_latency",
    "parse_benchmark_model_output",
    "predict_tflite",
    "profile_ops",
    "report",
    "run_on_device",
    "to_c_source",
]
