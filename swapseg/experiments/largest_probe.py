"""One probe of ``swapseg bench largest``: a training step in a fresh process under a cap.

    python -m swapseg.experiments.largest_probe --side 128 --plan PLAN.json \
        --cap 8589934592 --out probe.json

The cap is set before torch is imported, so it bounds everything the process maps:

- on CPU, ``RLIMIT_DATA``: since Linux 4.7 it counts private writable mappings, which
  is where glibc's large allocations (``mmap``) and its heap (``brk``) live, so a tensor
  that would cross the cap fails to allocate (the library's data segments and thread
  stacks count too: the cap is the process's, not the tensors');
- on CUDA, ``torch.cuda.set_per_process_memory_fraction(cap / total)``.

A failed allocation (``MemoryError``, torch's "can't allocate memory", CUDA out of
memory) is a result, ``status: "oom"``, written like a success; nothing the step does
leaks into the next probe, which is another process. The JSON result holds the step
times, the process's peak RSS (``VmHWM``; on CUDA also ``max_memory_allocated``) and the
limit in force as read back from the kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

from swapseg.errors import InputError

__all__ = ["main", "is_oom", "set_cap", "OOM_MARKERS", "idle_process_bytes"]

#: Substrings of the messages an allocation failure raises with (torch CPU, CUDA, oneDNN,
#: errno ENOMEM, thread creation).
OOM_MARKERS = ("can't allocate memory", "cannot allocate memory", "out of memory",
               "not enough memory", "std::bad_alloc", "can't start new thread")


def is_oom(exc: BaseException) -> bool:
    """True when ``exc`` is an allocation failure (a "does not fit", not a bug)."""
    if isinstance(exc, MemoryError):
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(m in text for m in OOM_MARKERS)


def set_cap(cap_bytes: int) -> tuple[int, int]:
    """Set ``RLIMIT_DATA`` to ``cap_bytes`` (soft and hard); returns the limit read back."""
    resource.setrlimit(resource.RLIMIT_DATA, (cap_bytes, cap_bytes))
    return resource.getrlimit(resource.RLIMIT_DATA)


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _run(args: argparse.Namespace, out: dict[str, Any]) -> None:
    import torch

    from swapseg.experiments.methods_bench import dice_loss
    from swapseg.models.registry import build_model
    from swapseg.offload import MemoryPlan
    from swapseg.offload.engine import swap_activations
    from swapseg.offload.measure import train_step
    from swapseg.offload.recompute import recompute

    dev = torch.device(args.device)
    if dev.type == "cuda" and args.cap:
        total = torch.cuda.get_device_properties(dev).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap / total), dev)
        out["cap_enforced"] = f"torch.cuda.set_per_process_memory_fraction({args.cap / total:.4f})"
    with open(args.plan) as fh:
        plan = MemoryPlan.from_dict(json.load(fh))
    torch.manual_seed(args.seed)
    model = build_model(args.model, args.model_kwargs).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(1, args.channels, args.side, args.side, args.side, device=dev)
    dtype = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[args.precision]
    times = []
    # apply_plan, with the engine's events on: they time the tier's copies
    with swap_activations(model, plan.swap, trace=plan.swap is not None) as stats, \
            recompute(model, plan.recompute):
        for _ in range(args.steps):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            train_step(model, x, dice_loss, dtype, opt)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
            out["step_s_all"] = times
    out.update(status="fits", step_s=min(times), swapped_tensors=stats.swapped,
               bytes_out=stats.bytes_out, bytes_in=stats.bytes_in, wait_s=stats.wait_s,
               peak_saved_device_bytes=stats.peak_device_bytes)
    if stats.events:
        out["tier"] = copy_rates(stats.events)
    if dev.type == "cuda":
        out["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(dev))


def _busy(iv: list[tuple[float, float, int]]) -> float:
    """Seconds during which at least one of the intervals runs."""
    total, end = 0.0, float("-inf")
    for a, b, _ in sorted(iv):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def copy_rates(events: list[dict[str, Any]]) -> dict[str, float]:
    """The last step's copy traffic: bytes, busy seconds and bytes/s each way (what the
    tier achieved, against the machine's ``dd`` figure), forward and backward seconds."""
    from swapseg.offload.timeline import copy_intervals

    last = max(e["step"] for e in events)
    ev = [e for e in events if e["step"] == last]
    out: dict[str, float] = {}
    for d in ("out", "in"):
        iv = copy_intervals(ev, f"{d}_start", f"{d}_end")
        busy = _busy(iv)
        n = sum(b for _, _, b in iv)
        out.update({f"{d}_bytes": n, f"{d}_busy_s": busy,
                    f"{d}_bytes_per_s": n / busy if busy else 0.0})
    bwd = [e["t"] for e in ev if e["kind"] == "backward_start"]
    if bwd:
        out["forward_s"] = bwd[0] - min(e["t"] for e in ev)
        out["backward_s"] = max(e["t"] for e in ev) - bwd[0]
    return out


def idle_process_bytes(python: str = sys.executable) -> int:
    """Peak RSS of a probe process before its model (``largest_probe --idle``): what
    the interpreter, torch and the allocator hold of a CPU cap. Raises InputError when
    the idle probe fails."""
    with tempfile.TemporaryDirectory(prefix="swapseg-idle-") as d:
        out = os.path.join(d, "idle.json")
        proc = subprocess.run([python, "-m", "swapseg.experiments.largest_probe", "--idle",
                               "--out", out], capture_output=True, text=True)
        if proc.returncode or not os.path.exists(out):
            last = (proc.stderr or "").strip().splitlines()[-1:] or [""]
            raise InputError(f"the idle probe process failed (exit {proc.returncode}): "
                             f"{last[0][:200]}")
        with open(out) as fh:
            return int(json.load(fh)["peak_rss_bytes"])


def _idle(path: str) -> int:
    """The bytes a probe process holds before its model: interpreter, torch and the
    modules the probe imports, the allocator and oneDNN after a first tiny conv step."""
    import torch

    import swapseg.experiments.methods_bench
    import swapseg.offload.engine  # noqa: F401

    x = torch.randn(1, 2, 6, 6, 6, requires_grad=True)
    torch.nn.functional.conv3d(x, torch.randn(2, 2, 3, 3, 3)).square().mean().backward()
    out = {"status": "idle", "peak_rss_bytes": _status_bytes("VmHWM"),
           "vm_data_bytes": _status_bytes("VmData"), "threads": torch.get_num_threads()}
    with open(path, "w") as fh:
        json.dump(out, fh, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=0)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--model", default="isensee")
    p.add_argument("--model-kwargs", default=None)
    p.add_argument("--plan", default="", help="MemoryPlan JSON file")
    p.add_argument("--idle", action="store_true",
                   help="measure the process's own bytes instead: the probe's imports and "
                        "one tiny conv step, no model")
    p.add_argument("--cap", type=int, default=0, help="bytes; 0: no cap")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="32")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.idle:
        return _idle(args.out)
    if args.side <= 0 or not args.plan:
        p.error("--side and --plan are needed (or --idle)")
    out: dict[str, Any] = {"side": args.side, "status": "error", "cap_bytes": args.cap}
    if args.cap and not args.device.startswith("cuda"):
        out["rlimit_data_bytes"] = set_cap(args.cap)[0]
        out["cap_enforced"] = "RLIMIT_DATA"
    t0 = time.perf_counter()
    try:
        _run(args, out)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, an OOM as such
        out["status"] = "oom" if is_oom(exc) else "error"
        out["detail"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}" \
            if str(exc).strip() else type(exc).__name__
    out["wall_s"] = time.perf_counter() - t0
    out["peak_rss_bytes"] = _status_bytes("VmHWM")
    out["vm_peak_bytes"] = _status_bytes("VmPeak")
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(out, fh, indent=2)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
