"""Largest cube side that trains under a device-memory cap, with and without swapping.

    python benchmarks/_util.py --cap-gib 16 --out largest.json

Caps the CUDA caching allocator with ``torch.cuda.set_per_process_memory_fraction`` and
bisects over cube sides (multiples of 16) for one full training step (forward, loss,
backward, Adam step) of the Isensee U-Net (base 16, depth 5, batch 1). A side "trains"
when the step completes without ``torch.cuda.OutOfMemoryError``. Host memory is not
capped: the swapped bytes go to pinned host memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload.policy import SwapPolicy

POLICIES: dict[str, SwapPolicy | None] = {
    "none": None,
    "swap-all": SwapPolicy(tier="cuda"),
    "config-4": SwapPolicy(tier="cuda", exclude=("decoder.*",), prefetch=20),
}


def trains(side: int, policy: SwapPolicy | None, base: int) -> tuple[bool, float]:
    """One training step at ``side``^3; (fits, seconds)."""
    from swapseg.offload import clear_pools, swap_activations
    from swapseg.offload.measure import train_step
    torch.cuda.empty_cache()
    model = opt = x = None
    t0 = time.perf_counter()
    try:
        torch.manual_seed(0)
        model = Isensee3DUNet(base_filters=base).cuda()
        opt = torch.optim.Adam(model.parameters(), lr=5e-4)
        x = torch.randn(1, 4, side, side, side, device="cuda")
        with swap_activations(model, policy):
            train_step(model, x, opt=opt)
        torch.cuda.synchronize()
        return True, time.perf_counter() - t0
    except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
        # pinned host memory running out shows as a RuntimeError
        if not isinstance(exc, torch.cuda.OutOfMemoryError) and "memory" not in str(exc):
            raise
        return False, time.perf_counter() - t0
    finally:
        del model, opt, x
        clear_pools()  # pinned buffers of this side would never be reused by another
        torch.cuda.empty_cache()


def largest_side(policy: SwapPolicy | None, lo: int, hi: int, base: int,
                 deadline: float) -> dict[str, Any]:
    """Bisect multiples of 16 in [lo, hi]; stops early (and says so) at ``deadline``."""
    tried: dict[int, Any] = {}
    best, a, b = None, lo // 16, hi // 16
    while a <= b:
        if time.monotonic() > deadline:
            return {"largest_side": best, "tried": tried, "complete": False}
        mid = (a + b) // 2
        ok, dt = trains(mid * 16, policy, base)
        tried[mid * 16] = {"fits": ok, "step_s": round(dt, 3)}
        print(f"  side {mid * 16}: {'fits' if ok else 'OOM'} ({dt:.1f} s)", file=sys.stderr,
              flush=True)
        if ok:
            best, a = mid * 16, mid + 1
        else:
            b = mid - 1
    return {"largest_side": best, "tried": tried, "complete": True}


def saved_bytes_per_voxel(base: int, side: int = 64) -> float:
    """Saved bytes per input voxel of one step, counted by the engine (nothing moved)."""
    from swapseg.offload.measure import keep_all, measure_steps
    torch.manual_seed(0)
    model = Isensee3DUNet(base_filters=base).cuda()
    r = measure_steps(model, (1, 4, side, side, side), keep_all, steps=1, warmup=0)
    del model
    torch.cuda.empty_cache()
    return r["peak_saved_bytes"] / side**3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cap-gib", type=float, default=16.0)
    p.add_argument("--lo", type=int, default=128)
    p.add_argument("--hi", type=int, default=384)
    p.add_argument("--base-filters", type=int, default=16)
    p.add_argument("--methods", nargs="+", default=["none", "swap-all"],
                   choices=list(POLICIES))
    p.add_argument("--budget-s", type=float, default=200.0, help="total time allowed")
    p.add_argument("--host-fraction", type=float, default=0.5,
                   help="largest share of host memory the swapped bytes may take")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from swapseg.envinfo import environment
    from swapseg.io import write_json
    total = torch.cuda.get_device_properties(0).total_memory
    frac = min(1.0, args.cap_gib * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(frac)
    deadline = time.monotonic() + args.budget_s
    result: dict[str, Any] = {"cap_bytes": int(frac * total), "memory_fraction": frac,
                              "environment": environment(), "methods": {}}
    per_voxel = saved_bytes_per_voxel(args.base_filters)
    host = environment().get("memory_bytes", 0)
    # swapped bytes live in pinned host memory: stay well inside it (the OOM killer
    # would take the whole run down)
    hi_host = int((args.host_fraction * host / per_voxel) ** (1 / 3)) // 16 * 16 if host else 0
    result.update(saved_bytes_per_voxel=per_voxel, host_memory_bytes=host,
                  host_fraction=args.host_fraction)
    for i, name in enumerate(args.methods):
        share = (deadline - time.monotonic()) / (len(args.methods) - i)
        hi = args.hi if POLICIES[name] is None or not hi_host else min(args.hi, hi_host)
        print(f"{name} (sides {args.lo}..{hi}):", file=sys.stderr, flush=True)
        result["methods"][name] = largest_side(POLICIES[name], args.lo, hi,
                                               args.base_filters, time.monotonic() + share)
        result["methods"][name]["searched"] = [args.lo, hi]
        write_json(args.out, result)  # partial results survive a timeout
    print(json.dumps({k: v["largest_side"] for k, v in result["methods"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
