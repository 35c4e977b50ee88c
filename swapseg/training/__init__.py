"""swapseg.training: the reference training protocol around the swap engine.

Modules: ``config`` (TrainConfig and presets), ``losses`` (soft Dice, Dice + BCE),
``crossval`` (seeded k-fold splits), ``datasets`` (a fold's datasets), ``loop`` (``train``,
``fit``), ``validation``, ``checkpoint``, ``runlog`` (log.csv), ``swaplog`` (swap statistics),
and ``distributed`` (DDP through torchrun). The demo, which composes training,
prediction and evaluation, is :mod:`swapseg.experiments.demo`. Import from the submodules;
this package module stays light.
"""
