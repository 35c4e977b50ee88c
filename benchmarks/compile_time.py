"""``--compile`` on the Isensee 3D U-Net: compile time, and step time against eager, with and
without swap-all.

For each mode (eager, compiled) x (none, swap-all), in its own fresh subprocess (a fresh
compile cache and a clean RSS), times the first training step (for compiled: tracing,
AOTAutograd and inductor code generation included) and the median of ``--steps`` later steps
(forward, loss, backward, Adam; ``measure_steps`` with warm-up 0 and the first step
reported apart). Also reports the swap engine's bytes out per step and saved tensors per
step, which differ under compile (the partitioner saves other tensors than eager does).

    OMP_NUM_THREADS=1 python benchmarks/compile_time.py --side 32 --out compile.json
    python benchmarks/compile_time.py --device cuda --side 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import torch

MODES = (("eager", "none"), ("eager", "swap-all"), ("compiled", "none"),
         ("compiled", "swap-all"))


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    from swapseg.models.unet3d import Isensee3DUNet
    from swapseg.offload.measure import measure_steps, no_swap, swap
    from swapseg.offload.policy import SwapPolicy
    from swapseg.training.compiling import compile_model

    torch.manual_seed(0)
    model = Isensee3DUNet(in_channels=4, out_channels=3, base_filters=spec["base_filters"],
                          depth=5)
    compiled = compile_model(model, spec["mode"] == "compiled", spec["backend"])
    tier = "cuda" if spec["device"].startswith("cuda") else "host"
    inner = swap(SwapPolicy(tier=tier)) if spec["swap"] == "swap-all" else no_swap

    class _Forward(torch.nn.Module):
        """``measure_steps`` trains ``model``; its forward goes through ``compiled``."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return compiled(x)

    def factory(_: torch.nn.Module) -> Any:
        return inner(model)  # the engine's scope hooks on the bare model

    r = measure_steps(_Forward(), spec["shape"], factory, steps=spec["steps"] + 1, warmup=0,
                      device=spec["device"])
    times = r["step_s_all"]
    return {"first_step_s": times[0], "step_s": sorted(times[1:])[len(times[1:]) // 2],
            "step_s_all": times, "bytes_out": r["bytes_out"], "swapped": r["swapped"],
            "packed": r["packed"], "peak_rss_bytes": r["peak_rss_bytes"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="steps after the first (median)")
    p.add_argument("--base-filters", type=int, default=16)
    p.add_argument("--backend", default="inductor")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    from swapseg.envinfo import environment
    from swapseg.io import write_json

    t0 = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "compile_time", "environment": environment(),
                              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                              "config": {k: v for k, v in vars(args).items() if k != "child"},
                              "modes": {}}
    for mode, swap in MODES:
        spec = {"mode": mode, "swap": swap, "backend": args.backend, "steps": args.steps,
                "device": args.device,
                "base_filters": args.base_filters, "shape": [1, 4] + [args.side] * 3}
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{mode}/{swap} failed: {proc.stderr[-2000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        result["modes"][f"{mode}/{swap}"] = r
        print(f"  {mode}/{swap}: first step {r['first_step_s']:.1f} s, then "
              f"{r['step_s']:.3f} s/step, {r['swapped']} swapped, "
              f"{r['bytes_out'] / 2**20:.1f} MiB out", file=sys.stderr, flush=True)
    base = result["modes"]["eager/none"]["step_s"]
    for r in result["modes"].values():
        r["step_ratio"] = r["step_s"] / base
    result["total_s"] = time.perf_counter() - t0
    print(json.dumps({k: {"first_step_s": round(v["first_step_s"], 2),
                          "step_ratio": round(v["step_ratio"], 3)}
                      for k, v in result["modes"].items()}))
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
