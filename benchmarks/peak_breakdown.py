"""What is allocated at the profiled peak of one training step, by the op that allocated it.

    python benchmarks/peak_breakdown.py --shape 64 --out peak64.json

For each method, runs two warm-up steps of the Isensee U-Net, then one step under
``torch.profiler`` with memory events, and lists the allocations still outstanding at the
moment the running sum peaks: grouped by op chain, and the largest single blocks. The
methods are no swapping, swap-all to the host tier, and swap-all with the host tier's
reload-buffer recycling switched off.

This is the tool that explained why the profiled peak of the swapping methods on a CPU
runs above the planner's prediction (docs/planner.md): on a CPU the host tier keeps the
buffers of reloaded tensors for reuse in later steps (a fresh large allocation is
page-faulted in on every step otherwise). Buffers first allocated during the measured step
stay allocated, the profiler counts them, and the simulator, which frees a reloaded
tensor after its last use, does not. Without recycling the measured peak matches the
prediction.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from swapseg.envinfo import environment
from swapseg.experiments.methods_bench import _Runner, allocation_events
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload import transport
from swapseg.offload.policy import MemoryPlan, SwapPolicy

MiB = 2**20


@contextlib.contextmanager
def _no_recycling() -> Iterator[None]:
    """Reloaded CPU buffers are dropped (freed) instead of kept for reuse."""
    keep = transport.HostTransport.recycle
    transport.HostTransport.recycle = lambda self, dest: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        transport.HostTransport.recycle = keep  # type: ignore[method-assign]


def breakdown(runner: _Runner, top: int = 8) -> dict[str, Any]:
    runner.step()
    runner.step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        runner.step()
    events = allocation_events(prof)
    live: dict[int, tuple[int, str]] = {}
    cur = peak = t_peak = 0
    at_peak: dict[int, tuple[int, str]] = {}
    for t, size, ptr, chain in events:
        cur += size
        if size > 0:
            live[ptr] = (size, chain)
        else:
            live.pop(ptr, None)
        if cur > peak:
            peak, t_peak, at_peak = cur, t, dict(live)
    groups: collections.Counter[str] = collections.Counter()
    for size, chain in at_peak.values():
        groups[" < ".join(chain.split(" < ")[:3])] += size
    span = max(events[-1][0] - events[0][0], 1)
    return {"peak_mib": peak / MiB, "peak_at_fraction": (t_peak - events[0][0]) / span,
            "by_op_mib": {k: v / MiB for k, v in groups.most_common(top)},
            "largest_blocks": [{"mib": s / MiB, "op": " < ".join(c.split(" < ")[-2:])}
                               for s, c in sorted(at_peak.values(), key=lambda x: -x[0])[:4]]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, default=64, help="cube side")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = Isensee3DUNet(4, 3)
    shape = (1, 4) + (args.shape,) * 3
    persistent = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    methods = {"none": (MemoryPlan(name="none"), contextlib.nullcontext),
               "swap-all (host)": (MemoryPlan(SwapPolicy(), None, "swap-all"),
                                   contextlib.nullcontext),
               "swap-all (host), no recycling": (MemoryPlan(SwapPolicy(), None, "swap-all"),
                                                 _no_recycling)}
    result: dict[str, Any] = {"environment": environment(), "shape": args.shape,
                              "persistent_mib": persistent / MiB, "methods": {}}
    for name, (plan, ctx) in methods.items():
        with ctx():
            r = breakdown(_Runner(model, shape, plan))
        result["methods"][name] = r
        print(f"== {name}: transient peak {r['peak_mib']:.1f} MiB at "
              f"{r['peak_at_fraction']:.2f} of the step; with parameters and Adam state "
              f"{r['peak_mib'] + persistent / MiB:.1f} MiB")
        for op, mib in r["by_op_mib"].items():
            print(f"   {mib:8.1f} MiB  {op}")
        for b in r["largest_blocks"]:
            print(f"   block {b['mib']:7.1f} MiB  {b['op']}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
