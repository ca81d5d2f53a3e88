"""Low-rank factorization for Keras 3.

A Dense or Conv2D layer becomes two smaller plain layers from a truncated
SVD of its kernel (a Conv2D: k x k to `rank` channels, then 1 x 1), with
the rank given per layer or chosen by the energy it keeps. Fine-tune the
result like any model; it converts with `to_tflite` as it is.

```python
print(kc.factorization.factorization_report(model, energy=0.9))
small = kc.factorization.factorize(model, energy=0.9)
```
"""

from keras_compress.factorization.factorize import (
    factorization_report,
    factorize,
    factorize_layer,
    singular_values,
)
from keras_compress.factorization.report import FactorizationReport, LayerFactorization

__all__ = [
    "FactorizationReport",
    "LayerFactorization",
    "factorization_report",
    "factorize",
    "factorize_layer",
    "singular_values",
]
