"""Mixed precision and swapping on the Isensee 3D U-Net: fp32 vs bf16-mixed, each with and
without swap-all, side by side.

For each cube side (default 64 and 96, batch 1) and each of the four configurations
``{32, bf16-mixed} x {none, swap-all}``, trains the Isensee U-Net (base 16, depth 5,
4 channels in) for ``--warmup`` + ``--steps`` steps (forward, loss, backward, Adam step;
the step harness ``swapseg.offload.measure.measure_steps``) with forward and loss under
``swapseg.training.precision.autocast``, and reports:

- the median step time, and its ratio to fp32 without swapping at the same side;
- the resident saved bytes at peak by the swap engine's accounting (SwapStats); without
  swapping they are counted by one more step with a policy that moves nothing
  (``SwapPolicy(n_tensors=0)``, ``measure.keep_all``) after the timed steps;
- the bytes swapped out per step;
- the process's peak RSS (VmHWM): each configuration runs in its own fresh subprocess,
  since RSS is a process-wide high-water mark.

    OMP_NUM_THREADS=1 python benchmarks/precision.py --repeats 2 --out precision.json \
        --md precision.md
    python benchmarks/precision.py --quick                # 32^3, 1 step: a smoke run
    python benchmarks/precision.py --device cuda --sides 128 192
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

CONFIGS = (("32", "none"), ("32", "swap-all"), ("bf16-mixed", "none"),
           ("bf16-mixed", "swap-all"))


def _factory(precision: str, swap: str, device: str, account: bool = False) -> Any:
    """``factory(model) -> context``: the engine (or nothing) plus the precision's autocast."""
    from swapseg.offload.measure import keep_all, no_swap
    from swapseg.offload.measure import swap as swap_ctx
    from swapseg.offload.policy import SwapPolicy
    from swapseg.training.precision import autocast

    tier = "cuda" if device.startswith("cuda") else "host"
    inner = swap_ctx(SwapPolicy(tier=tier)) if swap == "swap-all" else \
        (keep_all if account else no_swap)

    @contextlib.contextmanager
    def ctx(model: torch.nn.Module) -> Any:
        with inner(model) as stats, autocast(precision, torch.device(device).type):
            yield stats
    return ctx


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: one configuration at one side."""
    from swapseg.models.unet3d import Isensee3DUNet
    from swapseg.offload.measure import measure_steps, peak_rss_bytes

    torch.manual_seed(0)
    model = Isensee3DUNet(in_channels=4, out_channels=3, base_filters=spec["base_filters"],
                          depth=5)
    rss_model = peak_rss_bytes()
    prec, swap, dev = spec["precision"], spec["swap"], spec["device"]
    r = measure_steps(model, spec["shape"], _factory(prec, swap, dev), steps=spec["steps"],
                      warmup=spec["warmup"], device=dev)
    r["rss_before_bytes"] = rss_model
    if swap == "none":  # count what stays resident, with hooks that move nothing
        acc = measure_steps(model, spec["shape"], _factory(prec, swap, dev, account=True),
                            steps=1, warmup=0, device=dev)
        r["peak_saved_bytes"] = acc["peak_saved_bytes"]
        r["peak_rss_bytes"] = max(r["peak_rss_bytes"], acc["peak_rss_bytes"])
    return r


def run_config(side: int, precision: str, swap: str, args: argparse.Namespace
               ) -> dict[str, Any]:
    spec = {"precision": precision, "swap": swap, "shape": [1, 4, side, side, side],
            "steps": args.steps, "warmup": args.warmup, "base_filters": args.base_filters,
            "device": args.device}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {precision}/{swap} at {side}^3 failed: "
                           f"{proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    keep = ("step_s", "step_s_all", "peak_saved_bytes", "bytes_out", "swapped", "wait_s",
            "peak_rss_bytes", "rss_before_bytes", "loss", "cuda_peak_bytes")
    return {k: r[k] for k in keep if k in r}


def run_side(side: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every configuration ``--repeats`` times, in rounds (A B C D A B C D ...), so that a
    slow spell of a shared machine hits all of them; medians over all measured steps."""
    runs: dict[str, list[dict[str, Any]]] = {f"{p}/{s}": [] for p, s in CONFIGS}
    for _ in range(args.repeats):
        for precision, swap in CONFIGS:
            name = f"{precision}/{swap}"
            r = run_config(side, precision, swap, args)
            runs[name].append(r)
            print(f"  {side}^3 {name:<20} {r['step_s']:.3f} s/step, peak saved "
                  f"{r['peak_saved_bytes'] / 2**20:.1f} MiB, RSS "
                  f"{r['peak_rss_bytes'] / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    rows = {name: _merge(rs) for name, rs in runs.items()}
    base = rows["32/none"]
    for r in rows.values():
        r["step_ratio"] = r["step_s"] / base["step_s"]
        r["peak_device_ratio"] = r["peak_saved_bytes"] / base["peak_saved_bytes"]
        r["peak_rss_ratio"] = r["peak_rss_bytes"] / base["peak_rss_bytes"]
    return {"side": side, "shape": [1, 4, side, side, side], "configs": rows}


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the repeats: median step over all their steps, largest peaks."""
    out = dict(runs[-1])
    out["step_s_all"] = [t for r in runs for t in r["step_s_all"]]
    out["step_s"] = statistics.median(out["step_s_all"])
    for k in ("peak_saved_bytes", "peak_rss_bytes", "cuda_peak_bytes"):
        if k in out:
            out[k] = max(r[k] for r in runs)
    out["peak_rss_bytes_all"] = [r["peak_rss_bytes"] for r in runs]
    return out


def table(result: dict[str, Any]) -> str:
    lines = ["| side | precision | swap | step s (median) | x time | resident saved MiB | "
             "x saved | swapped out MiB/step | peak RSS MiB | x RSS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in result["sides"]:
        for name, r in s["configs"].items():
            prec, swap = name.split("/")
            lines.append(
                f"| {s['side']} | {prec} | {swap} | {r['step_s']:.3f} | "
                f"{r['step_ratio']:.2f} | {r['peak_saved_bytes'] / 2**20:.1f} | "
                f"{r['peak_device_ratio']:.3f} | {r['bytes_out'] / 2**20:.1f} | "
                f"{r['peak_rss_bytes'] / 2**20:.0f} | {r['peak_rss_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", type=int, nargs="+", default=[64, 96])
    p.add_argument("--steps", type=int, default=3, help="measured steps (median of these)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1,
                   help="fresh processes per configuration, run in rounds")
    p.add_argument("--base-filters", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="32^3, 1 step")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--md", default=None, help="write the table as Markdown here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    from swapseg.envinfo import environment
    from swapseg.io import write_json, write_text

    if args.quick:
        args.sides, args.steps = [32], 1
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "precision", "environment": environment(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "config": {k: v for k, v in vars(args).items() if k != "child"}, "sides": []}
    for side in args.sides:
        result["sides"].append(run_side(side, args))
        if args.out:  # partial results survive a timeout
            write_json(args.out, result)
    result["total_s"] = time.perf_counter() - t0
    print(table(result))
    if args.out:
        write_json(args.out, result)
    if args.md:
        write_text(args.md, table(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
