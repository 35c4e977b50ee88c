"""What is allocated at the profiled peak of one training step, by the op that allocated it.

    python benchmarks/peak_breakdown.py --shape 64 --out peak64.json

For each method (no swapping, swap-all to the host tier), runs two warm-up steps of the
Isensee U-Net, then one step under ``torch.profiler`` with memory events, and lists the
allocations still outstanding at the moment the running sum peaks: grouped by op chain,
and the largest single blocks. This is the tool that explained why the profiled peak of
the swapping methods on a CPU runs above the planner's prediction (docs/planner.md): the
largest block at the swap-all peak is the im2col workspace of the first convolution's
backward, which the FakeTensorMode trace cannot see.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from typing import Any

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from swapseg.envinfo import environment
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload.hybrid import MemoryPlan
from swapseg.offload.plan.bench import _Runner
from swapseg.offload.policy import SwapPolicy

MiB = 2**20


def _allocations(prof: Any) -> list[tuple[int, int, int, str]]:
    """(time ns, bytes (negative: a free), address, op chain) of every memory event."""
    out = []
    stack = [(n, "") for n in prof.profiler.kineto_results.experimental_event_tree()]
    while stack:
        node, chain = stack.pop()
        if node.tag == _EventType.Allocation:
            f = node.extra_fields
            out.append((node.start_time_ns, f.alloc_size, f.ptr, chain))
            continue
        here = f"{chain} < {node.name}" if chain else node.name
        stack.extend((c, here) for c in node.children)
    return sorted(out)


def breakdown(runner: _Runner, top: int = 8) -> dict[str, Any]:
    runner.step()
    runner.step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        runner.step()
    events = _allocations(prof)
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
    plans = {"none": MemoryPlan(name="none"),
             "swap-all (host)": MemoryPlan(SwapPolicy(), None, "swap-all")}
    result: dict[str, Any] = {"environment": environment(), "shape": args.shape, "methods": {}}
    for name, plan in plans.items():
        r = breakdown(_Runner(model, (1, 4) + (args.shape,) * 3, plan))
        result["methods"][name] = r
        print(f"== {name}: transient peak {r['peak_mib']:.1f} MiB at "
              f"{r['peak_at_fraction']:.2f} of the step")
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
