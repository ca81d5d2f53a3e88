"""Auto-compression (issue 15, in progress): the measurements a search for
the smallest or fastest model within an accuracy budget is built on.

Available so far:

- `sensitivity_analysis`: for each prunable layer and each sparsity level,
  the held-out metric drop measured by pruning that layer alone, beside three
  cheap proxies of it (weight magnitude, the Fisher / OBD diagonal, first-order
  Taylor) and each proxy's rank correlation with the measured drops; and for
  each dependency group and removal fraction, the drop measured after
  removing that fraction of its units (structured), with the weights each
  candidate removes, and its measured `.tflite` bytes;
- `plan_for_bytes`: the per-layer choice of candidates with the smallest
  predicted drop whose predicted file fits a byte budget (an exact
  multiple-choice knapsack; `greedy_plan_for_bytes` beside it), and
  `apply_plan` to make that model.
"""

from keras_compress.auto.allocation import Plan, apply_plan, greedy_plan_for_bytes, plan_for_bytes
from keras_compress.auto.sensitivity import (
    ACTIONS,
    PROXIES,
    SensitivityReport,
    SensitivityRow,
    sensitivity_analysis,
    spearman,
)

__all__ = ["ACTIONS", "PROXIES", "Plan", "apply_plan", "greedy_plan_for_bytes", "plan_for_bytes", "SensitivityReport", "SensitivityRow", "sensitivity_analysis", "spearman"]
