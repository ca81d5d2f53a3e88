"""Auto-compression: give a budget, get the smallest or fastest model that
keeps its accuracy, measured on the `.tflite` file.

```python
result = kc.auto.auto_compress(model, (x_train, y_train), (x_val, y_val),
                               max_bytes=9_000, max_drop=0.005)
result.save("auto")          # model.keras, model.tflite, report.md/.json, pareto.png
```

- `auto_compress`: the search (sensitivity, measured cost models,
  allocation with screening, distillation recovery, verification on the
  file, uniform baselines); returns an `AutoResult`.
- `sensitivity_analysis`: for each prunable layer and sparsity, and each
  dependency group and removal fraction, the measured held-out drop, beside
  the magnitude / Fisher (OBD) / Taylor proxies and their rank correlations.
- `StructureCosts`, `LinearCost`: exact parameter and MAC counts of a plan,
  and the bytes / latency models fitted on converted files.
- `plan_for_bytes` / `greedy_plan_for_bytes` / `apply_plan`: per-layer
  allocation of measured candidates to a byte budget (exact knapsack).
"""


from keras_compress.auto.search import auto_compress
from keras_compress.auto.result import AutoResult, Candidate
from keras_compress.auto.costs import LinearCost, StructureCosts
from keras_compress.auto.allocation import Plan, apply_plan, greedy_plan_for_bytes, plan_for_bytes
from keras_compress.auto.sensitivity import (
    ACTIONS,
    PROXIES,
    SensitivityReport,
    SensitivityRow,
    sensitivity_analysis,
    spearman,
)

__all__ = ["AutoResult", "Candidate", "LinearCost", "StructureCosts", "auto_compress", "ACTIONS", "PROXIES", "Plan", "apply_plan", "greedy_plan_for_bytes", "plan_for_bytes", "SensitivityReport", "SensitivityRow", "sensitivity_analysis", "spearman"]
