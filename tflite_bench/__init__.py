"""tflite_bench: measure .tflite models as an edge engineer does.

```python
import tflite_bench
tflite_bench.measure_latency("model.tflite", threads=1)["p50_ms"]
```
"""

from tflite_bench.latency import measure_latency

__all__ = ["measure_latency"]
