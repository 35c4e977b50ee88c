"""swapseg.evaluation: metrics, inference and reports.

- :mod:`~swapseg.evaluation.metrics`: Dice, sensitivity, specificity, HD95 per region;
- :mod:`~swapseg.evaluation.predictor`: the one predictor (one pass / sliding windows / TTA);
- :mod:`~swapseg.evaluation.inference`: label-blind whole-brain prediction, NIfTI output;
- :mod:`~swapseg.evaluation.runs`: a training run's fold (checkpoint, test cases);
- :mod:`~swapseg.evaluation.evaluate`: score a prediction folder (``swapseg evaluate``);
- :mod:`~swapseg.evaluation.report`: CSV/JSON summaries, box plots, overlays.

Submodules are imported on use, so ``import swapseg.evaluation`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["region_metrics", "dice", "predict_logits", "predict_volume", "predict_cases",
           "evaluate_folders"]

_WHERE = {"region_metrics": "metrics", "dice": "metrics", "predict_logits": "predictor",
          "predict_volume": "inference",
          "predict_cases": "inference", "evaluate_folders": "evaluate"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"swapseg.evaluation.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'swapseg.evaluation' has no attribute {name!r}")
