"""The disk tier's speed: its step time against no swapping, side by side in one process.

At each ``--sides`` cube (Isensee U-Net, base 16, batch 1, soft-Dice loss, Adam), one
warm-up step and then ``--steps`` steps of every variant in turn (round robin, so a drift
in the machine's load hits all variants alike). Per variant: the median step time and its
ratio to no swapping's median; the engine's stall on copies (``wait_s``), bytes moved,
its resident saved bytes at peak (engine accounting), and the rates the tier achieved
(bytes over busy copy seconds, from the engine's events). Next to them, the machine's own
disk figures: ``dd`` (2 GiB, ``conv=fdatasync``) and ``planner.diskprobe.disk_rates``.

Variants are the disk tier (swap all, prefetch 4) with the copy-thread count, the
in-flight bound (how many copy-out bytes forward may run ahead of the disk), the
prefetch depth (default 4), direct or
buffered I/O (``DiskTransport(direct=)``) and the reuse of read buffers
(``DiskTransport(reuse_buffers=)``) varied.

    python benchmarks/disk_tier.py --sides 128 192 --out benchmarks/results/disk-tier.json
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import tempfile
import time
from functools import partial
from typing import Any

import torch

from swapseg.envinfo import environment
from swapseg.experiments.largest_probe import copy_rates
from swapseg.experiments.methods_bench import dice_loss
from swapseg.io import write_json
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload.engine import swap_activations
from swapseg.offload.measure import train_step
from swapseg.offload.policy import SwapPolicy
from swapseg.offload.transport import DiskTransport
from swapseg.planner.diskprobe import disk_rates

#: name -> keyword arguments of ``swap_activations`` (None: no swapping)
VARIANTS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "disk (direct I/O, 1 thread, 256 MiB in flight)": {"workers": 1},
    "disk, buffered I/O": {"workers": 1, "direct": False},
    "disk, buffered I/O, fresh read buffers": {"workers": 1, "direct": False,
                                               "reuse_buffers": False},
    "disk, 2 threads": {"workers": 2},
    "disk, 1 GiB in flight": {"workers": 1, "max_inflight_bytes": 2**30},
    "disk, 2 threads, 1 GiB in flight": {"workers": 2, "max_inflight_bytes": 2**30},
    "disk, 2 GiB in flight": {"workers": 1, "max_inflight_bytes": 2 * 2**30},
    "disk, 2 GiB in flight, prefetch 8": {"workers": 1, "max_inflight_bytes": 2 * 2**30,
                                          "prefetch": 8},
}


def dd_write(folder: str) -> str:
    """``dd``'s own summary line for 2 GiB of zeros written with ``conv=fdatasync``."""
    path = os.path.join(folder, f"swapseg-dd-{os.getpid()}")
    try:
        r = subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=2048",
                            "conv=fdatasync"], capture_output=True, text=True, check=True)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return r.stderr.strip().splitlines()[-1]


def _transport(disk_dir: str, workers: int, reuse: bool, direct: bool,
               device: torch.device) -> DiskTransport:
    return DiskTransport(disk_dir, workers=workers, reuse_buffers=reuse, direct=direct)


def one_side(side: int, names: list[str], steps: int, disk_dir: str) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    base = Isensee3DUNet()
    runs = {n: copy.deepcopy(base) for n in names}
    opts = {n: torch.optim.Adam(m.parameters()) for n, m in runs.items()}
    x = torch.randn(1, 4, side, side, side)
    times: dict[str, list[float]] = {n: [] for n in names}
    last: dict[str, dict[str, Any]] = {}
    for i in range(1 + steps):
        for n in names:
            kw: dict[str, Any] = dict(VARIANTS[n] or {})
            reuse, direct = kw.pop("reuse_buffers", True), kw.pop("direct", True)
            prefetch = kw.pop("prefetch", 4)
            policy_on = VARIANTS[n] is not None
            if policy_on:
                # every disk variant builds its transport: read-buffer reuse on unless a
                # variant says otherwise (as in the runs recorded on 2026-12-01)
                kw["transport"] = partial(_transport, disk_dir, kw["workers"], reuse, direct)
            policy = None if not policy_on else SwapPolicy(
                tier="disk", prefetch=prefetch, disk_dir=disk_dir)
            t0 = time.perf_counter()
            with swap_activations(runs[n], policy, trace=policy is not None,
                                  **kw) as st:
                train_step(runs[n], x, dice_loss, opt=opts[n])
            dt = time.perf_counter() - t0
            if i:
                times[n].append(dt)
            last[n] = {"wait_s": st.wait_s, "bytes_out": st.bytes_out,
                       "peak_saved_device_bytes": st.peak_device_bytes,
                       **(copy_rates(st.events) if st.events else {})}
            print(f"{side:>4} step {i} {n:<48} {dt:8.1f} s  wait {st.wait_s:6.1f} s  "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    ref = statistics.median(times[names[0]])
    return [{"side": side, "variant": n, "median_s": statistics.median(times[n]),
             "ratio_to_none": statistics.median(times[n]) / ref, "all_s": times[n],
             "kwargs": VARIANTS[n], **last[n]} for n in names]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", type=int, nargs="+", default=[128])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--disk-dir", default=tempfile.gettempdir())
    ap.add_argument("--out", default="benchmarks/results/disk-tier.json")
    a = ap.parse_args()
    names = ["none"] + [n for n in a.variants if n != "none"]
    machine = {"dd_write": dd_write(a.disk_dir)}
    w, r = disk_rates(2**30, a.disk_dir)
    machine.update(probe_write_bytes_per_s=w, probe_read_bytes_per_s=r)
    print(f"disk: dd {machine['dd_write']}; probe write {w / 1e6:.0f} MB/s, "
          f"read {r / 1e6:.0f} MB/s", flush=True)
    rows: list[dict[str, Any]] = []
    load0 = os.getloadavg()
    for side in a.sides:
        rows += one_side(side, names, a.steps, a.disk_dir)
        write_json(a.out, {"environment": environment(), "machine_disk": machine,
                           "threads": torch.get_num_threads(), "load_before": load0,
                           "load_after": os.getloadavg(), "rows": rows})
    for row in rows:
        print(f"{row['side']:>4} {row['variant']:<48} median {row['median_s']:8.1f} s "
              f"x{row['ratio_to_none']:.3f}  wait {row['wait_s']:6.1f} s  out "
              f"{row.get('out_bytes_per_s', 0) / 1e6:6.0f} MB/s  in "
              f"{row.get('in_bytes_per_s', 0) / 1e6:6.0f} MB/s")


if __name__ == "__main__":
    main()
