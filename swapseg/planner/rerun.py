"""What a recomputed region holds while its rerun runs in backward, beyond the saved
tensors it makes again: the outputs no op saves and the ops' own buffers (the
simulator adds their forward peak at the rerun)."""

from __future__ import annotations

import numpy as np

from swapseg.planner.trace import StepTrace

__all__ = ["rerun_transients"]


def rerun_transients(trace: StepTrace, ops: list[int], saved: set[int],
                     workspace: bool) -> int:
    """The peak of what a region's forward holds beyond its saved tensors (outputs no
    one saves, op buffers), which its rerun in backward holds again."""
    if not ops:
        return 0
    lo, hi = min(ops), max(ops)
    live = np.zeros(hi - lo + 2)
    for s in trace.storages.values():
        if lo <= s.produced_at <= hi and s.uid not in saved:
            end = hi if s.freed_at is None else min(hi, s.freed_at)
            live[s.produced_at - lo] += s.nbytes
            live[max(end, s.produced_at) - lo + 1] -= s.nbytes
    cur = np.cumsum(live)[:hi - lo + 1]
    if workspace:
        cur += np.array([trace.ops[j].cpu_workspace_bytes for j in range(lo, hi + 1)])
    return int(cur.max()) if len(cur) else 0
