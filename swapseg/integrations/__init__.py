"""Swapping inside other people's training loops.

- ``swapseg.integrations.nnunet``: nnU-Net v2 trainers (``swapseg[nnunet]``);
- ``swapseg.integrations.monai``: ``attach_swapping(trainer, plan)`` for MONAI engines
  (``swapseg[monai]``);
- ``swapseg.integrations.lightning``: ``SwapCallback(plan)`` (``swapseg[lightning]``).

Each imports its framework, so it imports only where that framework is installed.
"""
