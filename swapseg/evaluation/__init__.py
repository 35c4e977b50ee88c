"""swapseg.evaluation: scoring predictions, from anyone (imports only data and root modules).

- :mod:`~swapseg.evaluation.metrics`: Dice, sensitivity, specificity, HD95 per region;
- :mod:`~swapseg.evaluation.predictor`: the one predictor of a model's region logits (one
  pass / sliding windows / TTA), used by validation in training and by
  :mod:`swapseg.predict.inference`;
- :mod:`~swapseg.evaluation.evaluate`: score a prediction folder (``swapseg evaluate``);
- :mod:`~swapseg.evaluation.report`: CSV/JSON summaries, box plots, overlays.

Prediction from a trained run's checkpoint is :mod:`swapseg.predict`. Import from the
submodules; this package module stays light.
"""

__all__: list[str] = []
