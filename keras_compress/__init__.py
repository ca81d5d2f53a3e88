"""keras-compress: pruning, quantization, clustering, distillation and low-rank factorization
for Keras 3, measured on the converted TFLite model.

```python
import keras_compress as kc
pruned = kc.pruning.prune_low_magnitude(model, kc.pruning.PolynomialDecay(0, 0.8, 0, 1000))
qat = kc.quantization.quantize_model(model)
small = kc.factorization.factorize(model, energy=0.9)
clustered = kc.clustering.cluster_weights(model, number_of_clusters=16)
kc.to_tflite(qat, "model_int8.tflite", quantization="int8")
```
"""

__version__ = "0.1.0"

from keras_compress import auto, clustering, datasets, distillation, export, factorization, pruning, quantization
from keras_compress.export import (
    evaluate_tflite,
    fidelity_report,
    inspect_tflite,
    predict_tflite,
    to_tflite,
)

__all__ = [
    "auto",
    "clustering",
    "datasets",
    "distillation",
    "evaluate_tflite",
    "export",
    "factorization",
    "fidelity_report",
    "inspect_tflite",
    "predict_tflite",
    "pruning",
    "quantization",
    "to_tflite",
]
