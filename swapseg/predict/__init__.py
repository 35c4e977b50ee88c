"""swapseg.predict: prediction from a trained run, above training and evaluation.

- :mod:`~swapseg.predict.inference`: a checkpoint over a dataset folder, label-blind,
  whole brain, NIfTI output (``swapseg predict``);
- :mod:`~swapseg.predict.runs`: a training run's fold (checkpoint, test cases).

It reads checkpoints, autocast and fold splits from :mod:`swapseg.training` and predicts
with :mod:`swapseg.evaluation.predictor`, so that :mod:`swapseg.evaluation` scores anyone's
predictions and imports no training code.
"""

__all__: list[str] = []
