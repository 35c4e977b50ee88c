"""A 1,000-step soak of the swap engine: do RSS, open files, threads or swap files grow?

    OMP_NUM_THREADS=1 python benchmarks/soak.py --out benchmarks/results/2026-12-01-soak.json
    python benchmarks/soak.py --base-filters 16                  # the reference width
    python benchmarks/soak.py --steps 100 --every 25 --warmup 25   # a smoke run

Each tier (``host``, ``disk``) runs in a fresh process of its own (RSS is per process; the
tiers run side by side unless ``--sequential``). A process trains the Isensee U-Net
(``--base-filters``, depth 5, batch 1, 4 channels) on a fixed random ``--side``^3 input
with ``SwapPolicy(tier=...)``, in swap contexts of ``--every`` steps each, the way the
training loop holds one context per epoch, through the one step harness
(``swapseg.offload.measure.measure_steps``: forward, loss, backward, Adam step). After
each context it samples:

- ``rss_bytes``: VmRSS of /proc/self/status;
- ``open_files``: entries of /proc/self/fd;
- ``threads``: ``Threads`` of /proc/self/status (native threads, the engine's included);
- ``disk_files`` / ``disk_bytes``: files under the disk tier's folder (0 on the host tier);
- ``step_s``: the median step time of the context.

Growth is the last sample minus the sample at ``--warmup`` steps (the pools and caches
fill in the first steps). Targets: RSS growth <= 64 MiB, open files, threads and files 0;
``flat`` says whether a tier met them. The JSON holds every sample and the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TIERS = ("host", "disk")
RSS_LIMIT_BYTES = 64 * 2**20


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise KeyError(field)


def _files(folder: Path | None) -> tuple[int, int]:
    if folder is None:
        return 0, 0
    n = size = 0
    for root, _, names in os.walk(folder):
        for name in names:
            n += 1
            try:
                size += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return n, size


def sample(step: int, disk_dir: Path | None, step_s: float) -> dict[str, Any]:
    files, nbytes = _files(disk_dir)
    return {"step": step, "rss_bytes": _status("VmRSS") * 1024,
            "open_files": len(os.listdir("/proc/self/fd")), "threads": _status("Threads"),
            "disk_files": files, "disk_bytes": nbytes, "step_s": round(step_s, 4)}


def soak_tier(tier: str, steps: int, every: int, side: int, base: int) -> list[dict[str, Any]]:
    """Run ``steps`` steps in contexts of ``every``; one sample after each context."""
    import torch

    from swapseg.models.unet3d import Isensee3DUNet
    from swapseg.offload.measure import measure_steps, swap
    from swapseg.offload.policy import SwapPolicy

    torch.manual_seed(0)
    model = Isensee3DUNet(base_filters=base)
    disk_dir = Path(tempfile.mkdtemp(prefix="swapseg-soak-")) if tier == "disk" else None
    policy = SwapPolicy(tier=tier, disk_dir=None if disk_dir is None else str(disk_dir))
    samples = [sample(0, disk_dir, 0.0)]
    for done in range(every, steps + 1, every):
        r = measure_steps(model, (1, 4, side, side, side), swap(policy), steps=every,
                          warmup=0, seed=done)
        samples.append(sample(done, disk_dir, r["step_s"]))
        print(f"{tier} {json.dumps(samples[-1])}", file=sys.stderr, flush=True)
    if disk_dir is not None:
        os.rmdir(disk_dir)  # fails, and says so, if a swap file was left behind
    return samples


def growth(samples: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    base = next(s for s in samples if s["step"] >= warmup)
    last = samples[-1]
    after = [s for s in samples if s["step"] >= warmup]
    out = {"rss_growth_bytes": last["rss_bytes"] - base["rss_bytes"],
           "rss_max_growth_bytes": max(s["rss_bytes"] for s in after) - base["rss_bytes"],
           "open_files_growth": last["open_files"] - base["open_files"],
           "threads_growth": last["threads"] - base["threads"],
           "disk_files_growth": last["disk_files"] - base["disk_files"],
           "disk_files_max": max(s["disk_files"] for s in samples),
           "rss_slope_bytes_per_1000_steps": int(_slope(after) * 1000),
           "warmup_steps": base["step"]}
    out["flat"] = (out["rss_growth_bytes"] <= RSS_LIMIT_BYTES and out["open_files_growth"] == 0
                   and out["threads_growth"] == 0 and out["disk_files_growth"] == 0)
    return out


def _slope(samples: list[dict[str, Any]]) -> float:
    """Least-squares RSS bytes per step: a trend, where the last-minus-first is noisy."""
    xs = [s["step"] for s in samples]
    ys = [s["rss_bytes"] for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def _child(args: argparse.Namespace, tier: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, __file__, "--tier", tier, "--steps", str(args.steps), "--every",
           str(args.every), "--side", str(args.side), "--base-filters", str(args.base_filters)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": os.environ.get(
                                "OMP_NUM_THREADS", "1")})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=50, help="steps per context and sample")
    p.add_argument("--warmup", type=int, default=100, help="steps before the baseline sample")
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--base-filters", type=int, default=2,
                   help="U-Net width (default 2: the reference's 16 has the same graph, "
                        "171 swapped tensors a step, and is ~4x slower on a 2-core CPU)")
    p.add_argument("--tiers", nargs="+", default=list(TIERS), choices=TIERS)
    p.add_argument("--sequential", action="store_true", help="one tier after the other")
    p.add_argument("--tier", choices=TIERS, help=argparse.SUPPRESS)  # a child process
    p.add_argument("--out", help="JSON result path")
    args = p.parse_args(argv)
    if args.tier:
        import torch
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(soak_tier(args.tier, args.steps, args.every, args.side,
                                   args.base_filters)))
        return 0
    t0 = time.time()
    results: dict[str, Any] = {}
    procs = {}
    for tier in args.tiers:
        procs[tier] = _child(args, tier)
        if args.sequential:
            results[tier] = procs[tier].communicate()[0]
    for tier, proc in procs.items():
        out = results.get(tier) or proc.communicate()[0]
        if proc.returncode != 0:
            print(f"soak: the {tier} tier failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        samples = json.loads(out)
        results[tier] = {**growth(samples, args.warmup), "samples": samples}
    from swapseg.envinfo import environment

    doc = {"steps": args.steps, "sample_every_steps": args.every, "side": args.side,
           "model": {"name": "Isensee3DUNet", "base_filters": args.base_filters, "depth": 5},
           "rss_limit_bytes": RSS_LIMIT_BYTES, "wall_s": round(time.time() - t0, 1),
           "parallel_tiers": not args.sequential, "load_average": os.getloadavg(),
           "environment": environment(), "tiers": results}
    for tier, r in results.items():
        print(f"{tier}: rss +{r['rss_growth_bytes'] / 2**20:.1f} MiB (max "
              f"+{r['rss_max_growth_bytes'] / 2**20:.1f}), fds {r['open_files_growth']:+d}, "
              f"threads {r['threads_growth']:+d}, disk files {r['disk_files_growth']:+d} "
              f"-> {'flat' if r['flat'] else 'GROWS'}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if all(r["flat"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
