"""Swap overhead on the Isensee 3D U-Net: every method side by side, as ratios to no swapping.

For each cube side (default 64 and 96, batch 1) and each method below, trains the
Isensee U-Net (base 16, depth 5, 4 channels in) for ``--warmup`` + ``--steps`` steps
(forward, loss, backward, Adam step) and reports, as ratios to no swapping:

- the median step time;
- the device-resident saved bytes at peak, by the swap engine's accounting (SwapStats:
  unique saved storages the engine holds on the device); for no swapping and full
  checkpointing they are counted by the same hooks with a policy that moves nothing
  (``SwapPolicy(n_tensors=0)``), for save_on_cpu by the same rules (measure.save_on_cpu);
- bytes copied (out + in) per step, absolute and over the saved bytes of no swapping.

Methods: ``none``; ``save_on_cpu`` (torch's, pin_memory=True semantics, counted);
``swap-all`` (paper config 1: all, prefetch 1; host tier on CPU, cuda tier on GPU);
``config-2`` (first 500/843 of the unique saved storages); ``config-3`` (exclude decoder);
``config-4`` (exclude decoder, prefetch 20); ``checkpoint`` (torch.utils.checkpoint,
non-reentrant, per encoder and decoder level); ``disk`` (disk tier).

Peak process RSS of the disk tier and of no swapping are measured, each in a fresh
subprocess (``--rss-sides``, default the largest side), since RSS is a process-wide
high-water mark; once with glibc's default allocator settings and once with
``MALLOC_MMAP_THRESHOLD_=1048576`` (both methods alike), see ``ALLOCATORS``.

    python benchmarks/swap_overhead.py --out benchmarks/results/swap_overhead.json
    python benchmarks/swap_overhead.py --quick        # 32^3 and 48^3, 2 steps: a smoke run
    python benchmarks/swap_overhead.py --device cuda --sides 128 192 --methods none \\
        save_on_cpu swap-all config-4
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import time
from typing import Any

import torch

from swapseg.envinfo import environment
from swapseg.experiments.paper_configs import PAPER_FRACTION_CONFIG2
from swapseg.io import write_json
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload.measure import keep_all, measure_steps, no_swap, save_on_cpu, swap
from swapseg.offload.policy import SwapPolicy

METHODS = ("none", "save_on_cpu", "swap-all", "config-2", "config-3", "config-4",
           "checkpoint", "disk")
DECODER = ("decoder.*",)


def _checkpoint_levels(model: torch.nn.Module) -> Any:
    """torch.utils.checkpoint (non-reentrant) around each encoder and decoder level."""
    from swapseg.offload.recompute import RecomputePolicy, recompute
    return recompute(model, RecomputePolicy(scopes=("encoder.*", "decoder.*"), mode="full"))


def _factory(method: str, tier: str, n_unique: int, disk_dir: str | None,
             account: bool = False) -> Any:
    """``factory(model) -> context`` for ``method``; ``account`` counts resident bytes."""
    if method == "none":
        return keep_all if account else no_swap
    if method == "save_on_cpu":
        return save_on_cpu
    if method == "checkpoint":
        inner = keep_all if account else no_swap

        @contextlib.contextmanager
        def ctx(model: torch.nn.Module) -> Any:
            with inner(model) as stats, _checkpoint_levels(model):
                yield stats
        return ctx
    policies = {
        "swap-all": SwapPolicy(tier=tier),
        "config-2": SwapPolicy(tier=tier, n_tensors=round(PAPER_FRACTION_CONFIG2 * n_unique)),
        "config-3": SwapPolicy(tier=tier, exclude=DECODER),
        "config-4": SwapPolicy(tier=tier, exclude=DECODER, prefetch=20),
        "disk": SwapPolicy(tier="disk", disk_dir=disk_dir),
    }
    return swap(policies[method])


def _model(base: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return Isensee3DUNet(in_channels=4, out_channels=3, base_filters=base, depth=5)


def _count_unique(model: torch.nn.Module, shape: tuple[int, ...], device: str) -> dict:
    """One accounted step with a policy that moves nothing: no-swap saved bytes."""
    return measure_steps(copy.deepcopy(model), shape, keep_all, steps=1, warmup=0,
                         device=device)


def run_side(side: int, args: argparse.Namespace) -> dict[str, Any]:
    shape = (1, 4, side, side, side)
    model = _model(args.base_filters).to(args.device)
    tier = "cuda" if args.device.startswith("cuda") else "host"
    kept = _count_unique(model, shape, args.device)
    n_unique = int(kept["storages"])
    saved = kept["peak_saved_bytes"]
    rows: dict[str, Any] = {}
    for method in args.methods:
        fac = _factory(method, tier, n_unique, args.disk_dir)
        r = measure_steps(copy.deepcopy(model), shape, fac, steps=args.steps,
                          warmup=args.warmup, device=args.device)
        if method in ("none", "checkpoint"):
            acc = measure_steps(copy.deepcopy(model), shape,
                                _factory(method, tier, n_unique, None, account=True),
                                steps=1, warmup=0, device=args.device)
            r["peak_saved_bytes"] = acc["peak_saved_bytes"]
        r["bytes_copied"] = r["bytes_out"] + r["bytes_in"]
        rows[method] = r
        print(f"  {side}^3 {method:<12} {r['step_s']:.3f} s/step", file=sys.stderr, flush=True)
    base = rows.get("none")
    for r in rows.values():
        if base:
            r["step_ratio"] = r["step_s"] / base["step_s"]
            r["peak_device_ratio"] = (r["peak_saved_bytes"] / base["peak_saved_bytes"]
                                      if base["peak_saved_bytes"] else None)
        r["copied_per_saved"] = r["bytes_copied"] / saved if saved else None
    return {"side": side, "shape": list(shape), "saved_bytes_no_swap": saved,
            "unique_saved_storages": n_unique, "methods": rows}


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: one method at one side; reports peak RSS."""
    from swapseg.offload.measure import peak_rss_bytes
    torch.set_num_threads(spec["threads"])
    model = _model(spec["base_filters"])
    rss_model = peak_rss_bytes()
    fac = _factory(spec["method"], "host", 0, spec.get("disk_dir"))
    r = measure_steps(model, spec["shape"], fac, steps=spec["steps"], warmup=1)
    r["rss_before_bytes"] = rss_model
    return r


#: Allocator settings the RSS runs are made under (both methods alike). glibc raises its
#: mmap threshold as large blocks are freed, after which freed activations stay in the
#: heap and in the RSS; a fixed 1 MiB threshold hands them back to the OS at once.
ALLOCATORS = {"glibc_default": {}, "mmap_threshold_1MiB": {"MALLOC_MMAP_THRESHOLD_": "1048576"}}


def _rss_child(method: str, side: int, args: argparse.Namespace,
               env_extra: dict[str, str]) -> dict[str, Any]:
    spec = {"method": method, "shape": [1, 4, side, side, side], "steps": args.rss_steps,
            "base_filters": args.base_filters, "disk_dir": args.disk_dir,
            "threads": torch.get_num_threads()}
    env = {**os.environ, **env_extra}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"child {method} at {side}^3 failed: {proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: r[k] for k in ("peak_rss_bytes", "rss_before_bytes", "step_s", "step_s_all",
                              "bytes_out", "peak_saved_bytes", "wait_s")}


def run_rss(side: int, args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of no swapping and of the disk tier, each in a fresh process."""
    out: dict[str, Any] = {"side": side}
    for name, env_extra in ALLOCATORS.items():
        res: dict[str, Any] = {"env": env_extra}
        for method in ("none", "disk"):
            res[method] = _rss_child(method, side, args, env_extra)
            print(f"  {side}^3 rss {name} {method:<5} "
                  f"{res[method]['peak_rss_bytes'] / 2**20:.0f} MiB", file=sys.stderr,
                  flush=True)
        none, disk = res["none"], res["disk"]
        res["rss_ratio"] = disk["peak_rss_bytes"] / none["peak_rss_bytes"]
        grow = [r["peak_rss_bytes"] - r["rss_before_bytes"] for r in (none, disk)]
        res["rss_growth_ratio"] = grow[1] / grow[0] if grow[0] > 0 else None
        res["step_ratio"] = disk["step_s"] / none["step_s"]
        out[name] = res
    return out


def _table(result: dict[str, Any]) -> str:
    lines = [f"{'side':>5} {'method':<12} {'step s':>8} {'x time':>7} {'peak saved MiB':>15} "
             f"{'x saved':>8} {'copied MiB':>11}"]
    for s in result["sides"]:
        for m, r in s["methods"].items():
            ratio = r.get("peak_device_ratio")
            lines.append(
                f"{s['side']:>5} {m:<12} {r['step_s']:>8.3f} {r.get('step_ratio', 0):>7.2f} "
                f"{r['peak_saved_bytes'] / 2**20:>15.1f} "
                f"{(f'{ratio:.3f}' if ratio is not None else '-'):>8} "
                f"{r['bytes_copied'] / 2**20:>11.1f}")
    for r in result["rss"]:
        for name in ALLOCATORS:
            a = r[name]
            lines.append(f"{r['side']:>5} disk tier peak RSS "
                         f"{a['disk']['peak_rss_bytes'] / 2**20:.0f} MiB vs "
                         f"{a['none']['peak_rss_bytes'] / 2**20:.0f} MiB without swapping "
                         f"(x{a['rss_ratio']:.2f}; step x{a['step_ratio']:.2f}; {name})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", type=int, nargs="+", default=[64, 96])
    p.add_argument("--rss-sides", type=int, nargs="*", default=None,
                   help="sides for the subprocess RSS runs (default: the largest side)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rss-steps", type=int, default=2)
    p.add_argument("--base-filters", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--disk-dir", default=None)
    p.add_argument("--quick", action="store_true", help="32^3 and 48^3, 2 steps")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    if args.quick:
        args.sides, args.steps, args.rss_steps = [32, 48], 2, 1
    if args.rss_sides is None:
        args.rss_sides = [max(args.sides)] if args.device == "cpu" else []
    t0 = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "swap_overhead", "environment": environment(),
                              "config": {k: v for k, v in vars(args).items() if k != "child"},
                              "sides": [], "rss": []}
    for side in args.sides:
        result["sides"].append(run_side(side, args))
        if args.out:  # partial results survive a timeout
            write_json(args.out, result)
    for side in args.rss_sides:
        result["rss"].append(run_rss(side, args))
    result["total_s"] = time.perf_counter() - t0
    print(_table(result))
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
