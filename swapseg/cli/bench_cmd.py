"""`swapseg bench`: swapping, recomputation and hybrids side by side, as ratios."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from swapseg.cli import grammar as g
from swapseg.cli.largest_cmd import add_largest_flags, run_largest_cmd
from swapseg.devices import resolve_device
from swapseg.errors import InputError
from swapseg.experiments import methods_bench
from swapseg.io import write_json, write_text
from swapseg.planner.local import get_profile
from swapseg.progress import cli_progress, line_printer

EXAMPLES = """examples:
  swapseg bench --quick --out bench-quick          # 32^3, 2 steps each: a smoke test
  swapseg bench --shape 64 --out bench64           # 1x4x64^3, 3 steps after warm-up
  swapseg bench --shape 4x96x96x96 --memory-budget 1.5GiB --out bench96
  swapseg bench --shape 64 --precision bf16-mixed --out bench64-bf16

Methods: none, save_on_cpu, paper-config-1..4, auto (planner, --memory-budget), recompute-full,
recompute-speed, hybrid. Writes OUT/bench.json and OUT/bench.md.

The largest volume each method trains under a hard cap (one probe process per side):
  swapseg bench largest --cap 3GiB --sides 128 --methods none,swap-disk --out big3
  swapseg bench largest --cap 8GiB --methods none,recompute-full,swap-disk,auto --out big8
  swapseg bench largest --cap 16GiB --device cuda --range 128:256 --out big-gpu
  swapseg bench largest --cap 3GiB --sides 128 --no-progress --out big3q  # no progress lines
Largest methods: none, recompute-speed, recompute-full, swap-disk, swap-host, hybrid, auto.
Writes OUT/largest.json and OUT/largest.md after every probe.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = g.add_command(
        subparsers, "bench", "measure swapping/recompute/hybrid methods side by side",
        "Train the Isensee U-Net a few steps with each method; report median step time, "
        "peak memory and bytes copied as ratios to no swapping, next to the planner's "
        "predictions.", EXAMPLES)
    p.add_argument("what", nargs="?", choices=("methods", "largest"), default="methods",
                   help="methods (default): side by side at one shape; largest: the "
                        "largest cube side per method under --cap")
    p.add_argument("--shape", default="64", type=g.volume_shape,
                   help="N (a cube, 4 channels), DxHxW or CxDxHxW (default 64)")
    p.add_argument("--steps", type=int, default=3, help="measured steps per method")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--memory-budget", type=g.byte_size, metavar="SIZE",
                   help="planning budget of the auto plan (default: halfway between the "
                        f"lowest predicted peak and no swapping); {g.SIZE_HELP}")
    p.add_argument("--cap", default="16GiB", type=g.byte_size, metavar="SIZE",
                   help="hard memory limit of the largest-side search (default 16GiB)")
    p.add_argument("--profile", default=None,
                   help="hardware profile of the largest-side prediction (default "
                        "p100-nvlink; for `largest`: local, measured now, or a "
                        "DeviceProfile JSON file)")
    p.add_argument("--device", default="cpu",
                   help="torch device to train on: cpu, cuda, cuda:N (cuda: peaks from "
                        "max_memory_allocated and the largest side measured under the cap)")
    p.add_argument("--precision", default="32", type=g.precision, choices=g.PRECISIONS,
                   help="32 (default), bf16-mixed or 16-mixed autocast for every method")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--quick", action="store_true",
                   help="32^3, 2 steps, no profiler, coarse side search")
    p.add_argument("--out", type=g.output_dir, required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress lines (a step, a probe) on stderr")
    add_largest_flags(p)
    p.set_defaults(func=run)


def _shape(vol) -> tuple[int, ...]:  # a grammar.Volume
    bad = [x for x in vol.spatial if x < 32 or x % 16]
    if bad:
        raise InputError(f"--shape {'x'.join(map(str, vol.spatial))}: sides must be multiples "
                         "of 16 and at least 32 (instance norm needs more than one voxel at "
                         "the coarsest level)")
    return vol.input_shape(1, 4)


def _markdown(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = [f"# swapseg bench at {'x'.join(map(str, res['shape']))}", "",
             f"{env['cpu']}, {env['torch_threads']} threads, torch {env['torch']}; "
             f"{res['steps']} steps after {res['warmup']} warm-up; precision "
             f"{res.get('precision', '32')}{', compiled' if res.get('compile') else ''}; "
             "ratios to no swapping.", "",
             "| method | step s | ratio | predicted s | saved resident MiB | ratio | "
             "peak alloc MiB | predicted peak MiB | copied MiB | largest side |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    sides = res["largest_side"]["sides"]
    measured = res["largest_side"].get("measured_sides", {})

    def mib(v: Any) -> str:
        return "" if v is None else f"{v / 2**20:.0f}"

    for name, r in res["methods"].items():
        lines.append(
            f"| {name} | {r['step_s']:.3f} | {r.get('step_ratio', 0):.2f} | "
            f"{r['predicted_step_s']:.3f} | {mib(r.get('peak_saved_device_bytes'))} | "
            f"{r.get('peak_saved_device_ratio', float('nan')):.2f} | "
            f"{mib(r.get('peak_alloc_bytes'))} | {mib(r['predicted_peak_bytes'])} | "
            f"{mib(r.get('bytes_copied', 0))} | {sides.get(name)}"
            f"{' / ' + str(measured.get(name)) + ' measured' if measured else ''} |")
    ls = res["largest_side"]
    how = ls["how"] + ("; " + ls["measured_how"] if measured else "")
    lines += ["", f"Largest side: {how}; cap {ls['cap_bytes'] / 2**30:.1f} GiB on "
              f"{ls['device']}. Saved resident = the swap engine's accounting. Peak alloc = "
              "profiler allocation peak during a step plus parameters and Adam state (on a "
              "CPU, device and host memory are one). The CPU was shared with other jobs "
              "unless stated otherwise, so times are noisy.", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.what == "largest":
        return run_largest_cmd(args)
    return run_methods(args)


def run_methods(args: argparse.Namespace) -> int:
    shape = (1, 4, 32, 32, 32) if args.quick else _shape(args.shape)
    steps, warmup = (2, 1) if args.quick else (args.steps, args.warmup)
    if steps < 1 or warmup < 0:
        raise InputError(f"--steps must be >= 1 and --warmup >= 0, got {steps}, {warmup}")
    device = resolve_device(args.device)
    args.profile = args.profile or "p100-nvlink"
    get_profile(args.profile)  # an unknown profile fails before anything runs
    step = 64 if args.quick else (32 if device.type == "cuda" else 16)
    sides = range(128, 321, step)
    res = methods_bench.run_bench(  # through the module: tests put a fake in its place
        shape, args.memory_budget, steps, warmup, not args.quick, args.cap, args.profile,
        sides, progress=line_printer("bench", cli_progress(args.no_progress)),
        torch_device=str(device), autocast_dtype=g.autocast_dtype(args.precision),
        compile=args.compile)
    res.update(precision=args.precision, compile=bool(args.compile))
    res["quick"] = bool(args.quick)
    out = Path(args.out)
    md = _markdown(res)
    write_json(out / "bench.json", res)
    write_text(out / "bench.md", md)
    print(md)
    return 0
