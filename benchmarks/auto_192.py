"""``--swap auto``'s plan at 192^3 on the disk tier against the tuned one (issue 21).

Plans the Isensee U-Net (batch 1, 4 channels) at ``--side`` under ``--budget`` on the
``local`` profile, then measures side by side in one process: no swapping, the planner's
choice, and swap-all at prefetch 8 with a 2 GiB in-flight bound (the configuration that
measured 0.93x in ``2026-12-01-disk-tier-cpu.md``). Each variant runs under one
``OffloadEngine`` (one warm-up step, then ``--steps`` timed steps); prints the medians
and their ratios to no swapping, and writes a JSON.

    python benchmarks/auto_192.py --side 192 --budget 8GiB --steps 2 --out ...json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from swapseg.envinfo import environment
from swapseg.io import write_json
from swapseg.models.registry import build_model
from swapseg.offload import OffloadEngine
from swapseg.offload.policy import MemoryPlan, SwapPolicy
from swapseg.planner import plan_memory
from swapseg.training.losses import soft_dice_loss


def run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, plan: MemoryPlan | None,
        steps: int) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    with OffloadEngine(model, plan) as engine:
        for i in range(steps + 1):
            opt.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            with engine.step():
                soft_dice_loss(model(x), y).backward()
            if i:
                times.append(time.perf_counter() - t0)
            opt.step()
            print(f"  {plan.name if plan else 'none'} step {i}: "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=192)
    ap.add_argument("--budget", default="8GiB")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/auto-192.json")
    a = ap.parse_args()
    torch.manual_seed(0)
    model = build_model("isensee", {"in_channels": 4})
    shape = (1, 4, a.side, a.side, a.side)
    x, y = torch.randn(shape), torch.zeros(1, 3, a.side, a.side, a.side)
    found = plan_memory(model, shape, "local", budget_bytes=a.budget, tier="disk",
                        loss_fn=lambda out: soft_dice_loss(out, torch.zeros_like(out)))
    tuned = MemoryPlan(SwapPolicy(tier="disk", prefetch=8, max_inflight_bytes=2 * 2**30),
                       name="swap-all-pf8-inflight2048MiB")
    rows = {}
    for plan in (None, found.plan, tuned):
        rows[plan.name if plan else "none"] = run(model, x, y, plan, a.steps)
    base = statistics.median(rows["none"])
    out = {"environment": environment(), "shape": list(shape), "budget": a.budget,
           "chosen": found.plan.to_dict(), "predicted_ratio":
           found.predicted.step_s / found.keep_all.step_s, "steps_s": rows,
           "ratios": {k: statistics.median(v) / base for k, v in rows.items()}}
    for k, r in out["ratios"].items():
        print(f"{k}: median {statistics.median(rows[k]):.1f} s, {r:.3f}x no swapping")
    write_json(a.out, out)


if __name__ == "__main__":
    main()
