"""The ``local`` profile: this machine measured, for any model.

FLOP rate from a matrix-multiply probe, memory bandwidth from a large element-wise op,
copy bandwidth from copies into a reused buffer (host tier) or a file (disk tier); with a
calibration shape, one real training step of the model itself, timed per op by the
profiler, sets the conv rates and the bandwidth of everything else. A probe that cannot
measure raises; no figure is made up.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from typing import Any

import torch
from torch import nn

from swapseg.errors import InputError
from swapseg.planner.calibrate import calibrate_step
from swapseg.planner.diskprobe import disk_rates, page_cache_bytes, tier_rates
from swapseg.planner.profiles import PROFILES, DeviceProfile

__all__ = ["get_profile", "measure_local", "calibration_shape"]

CPU = torch.device("cpu")


def get_profile(name: str, model: nn.Module | None = None, tier: str = "auto",
                calibrate_shape: tuple[int, ...] | None = None, **calib: Any) -> DeviceProfile:
    """A named profile; ``local`` is measured now (probes only, or with ``model`` and
    ``calibrate_shape`` one real step of the model; ``calib`` goes to ``calibrate_step``)."""
    if name == "local":
        if calibrate_shape is not None and model is None:
            raise InputError("calibrating the local profile runs the model; pass it")
        return measure_local(model, tier=tier, calibrate_shape=calibrate_shape, **calib)
    if name not in PROFILES:
        raise InputError(f"unknown device profile {name!r}; choose one of "
                         f"{', '.join([*PROFILES, 'local'])}")
    return PROFILES[name]


def calibration_shape(shape: tuple[int, ...], cap: int = 64) -> tuple[int, ...]:
    """A small input like ``shape`` (B, C, *spatial) for the local profile's real step.

    Each side shrinks to at most ``cap`` but keeps the largest power of two that divides
    all the sides, so a model that accepts ``shape`` (a U-Net needing multiples of 16,
    say) accepts the small one too.
    """
    sides = shape[2:]
    g = 1
    while all(s % (2 * g) == 0 for s in sides) and 2 * g <= cap:
        g *= 2
    return (*shape[:2], *(min(s, max(g, cap // g * g)) for s in sides))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _median_time(fn: Any, repeats: int = 3, dev: torch.device = CPU) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    t = sorted(times)[len(times) // 2]
    if not t > 0:
        raise InputError(f"timing probe measured {t} s on {dev}: the clock cannot time it")
    return t


def _matmul_rate(n: int, dev: torch.device = CPU) -> float:
    """FLOP/s of an n x n fp32 matrix product (2 n^3 FLOPs), the generic compute probe."""
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    return 2 * n**3 / _median_time(lambda: torch.mm(a, b), dev=dev)


def _mem_rate(nbytes: int, dev: torch.device = CPU) -> float:
    x = torch.randn(nbytes // 4, device=dev)
    t = _median_time(lambda: torch.nn.functional.leaky_relu(x, 0.01), dev=dev)
    return 2 * nbytes / t  # read + write


def _cuda_copy_rates(nbytes: int, dev: torch.device) -> tuple[float, float]:
    """Pinned host <-> device copy bandwidth (d2h, h2d), as the cuda tier copies."""
    host = torch.empty(nbytes // 4, pin_memory=True)
    gpu = torch.randn(nbytes // 4, device=dev)
    d2h = nbytes / _median_time(lambda: host.copy_(gpu, non_blocking=True), dev=dev)
    h2d = nbytes / _median_time(lambda: gpu.copy_(host, non_blocking=True), dev=dev)
    return d2h, h2d


def _copy_rate(nbytes: int) -> float:
    """Host memory copy bandwidth into a reused buffer (the host tier's copy)."""
    src = torch.randn(nbytes // 4)
    dst = torch.empty_like(src)
    return nbytes / _median_time(lambda: dst.copy_(src))


def measure_local(model: nn.Module | None = None, tier: str = "auto",
                  probe_bytes: int = 64 * 2**20, calibrate_shape: tuple[int, ...] | None = None,
                  loss_fn: Any = None, autocast_dtype: torch.dtype | None = None,
                  matmul_n: int = 512, fallback_shape: tuple[int, ...] | None = None
                  ) -> DeviceProfile:
    """Measure this machine: the CPU ('device' memory is host memory), or with
    ``tier="cuda"`` the current CUDA GPU and its pinned-memory link.

    With ``calibrate_shape`` (CPU only), one real step of ``model`` at that shape sets
    the conv forward and backward FLOP/s and the bandwidth of everything else
    (``calibrate_step``); CPU conv speed depends on the shape, so calibrate near the
    shape to predict. ``fallback_shape`` (the shape to predict): where the model rejects
    ``calibrate_shape`` (a network built for one input size), the step runs at it
    instead, with a warning that says so. ``loss_fn`` runs for real on real tensors.
    """
    # the probes draw random numbers; a training run that plans first must not see its
    # dropout masks and initial data order shift
    with torch.random.fork_rng(devices=[]):
        if tier == "cuda":
            return _measure_cuda(probe_bytes, matmul_n)
        shapes = [] if calibrate_shape is None else \
            [s for s in (calibrate_shape, fallback_shape) if s is not None]
        return _measure_cpu(model, tier, probe_bytes, shapes, loss_fn,
                            autocast_dtype, matmul_n, disk_probe_bytes=8 * probe_bytes)


def _measure_cpu(model: nn.Module | None, tier: str, probe_bytes: int,
                 calibrate_shapes: list[tuple[int, ...]], loss_fn: Any,
                 autocast_dtype: torch.dtype | None, matmul_n: int,
                 disk_probe_bytes: int = 512 * 2**20,
                 disk_dir: str | None = None) -> DeviceProfile:
    with torch.no_grad():
        overhead = _median_time(lambda: torch.add(torch.ones(1), 1), repeats=50)
        mem = _mem_rate(probe_bytes)
        copy = _copy_rate(probe_bytes)
        flops = _matmul_rate(matmul_n)
    disk = tier in ("disk", "auto")  # on a CPU, auto means the disk tier
    tier = tier_rates(disk_probe_bytes, disk_dir) if disk else {}
    if tier.get("direct"):  # no page cache in the way: the tier's own rates are the disk's
        disk_w, disk_r, cache = tier["write"], tier["read"], 0
    else:
        disk_w, disk_r = disk_rates(disk_probe_bytes, disk_dir) if disk else (0.0, 0.0)
        cache = page_cache_bytes() if disk else 0
    conv_rates: dict[str, float] = {}
    calib = ""
    if calibrate_shapes:
        assert model is not None
        c, shape = _calibrate(model, calibrate_shapes, loss_fn, autocast_dtype)
        conv_rates = {k: c[k] for k in ("fwd", "bwd") if k in c}
        mem = c["mem"]
        overhead = 0.0  # dispatch is inside the measured "everything else" bandwidth
        calib = f"one profiled step of the model at {'x'.join(map(str, shape))}"
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    how = f"measured {time.strftime('%Y-%m-%d %H:%M:%S')} with {torch.get_num_threads()} threads"
    return DeviceProfile(
        name="local", memory_bytes=int(total), flops_per_s=flops, mem_bytes_per_s=mem,
        d2h_bytes_per_s=copy, h2d_bytes_per_s=copy, op_overhead_s=overhead,
        cpu_conv_workspace=True, conv_flops_per_s=conv_rates, copies_share_compute=True,
        unified_memory=True, disk_write_bytes_per_s=disk_w, disk_read_bytes_per_s=disk_r,
        disk_cache_bytes=cache, disk_write_cpu_bytes_per_s=tier.get("write_cpu", 0.0),
        disk_read_cpu_bytes_per_s=tier.get("read_cpu", 0.0),
        sources={"flops_per_s": f"{how}: fp32 matrix product {matmul_n}x{matmul_n}",
                 "mem_bytes_per_s": f"{how}: leaky_relu over {probe_bytes >> 20} MiB",
                 "copy": f"{how}: host memory copy of {probe_bytes >> 20} MiB into a "
                         "reused buffer",
                 "disk": f"{how}: {disk_probe_bytes >> 20} MiB file in "
                         f"{disk_dir or tempfile.gettempdir()} through the disk tier's "
                         "transport, its thread's CPU time too; "
                         + ("direct I/O" if tier.get("direct") else "buffered I/O: the "
                            "device's rates from pwrite + fdatasync, then a read after "
                            "POSIX_FADV_DONTNEED") if disk_w else "not measured",
                 "disk_cache_bytes": "vm.dirty_ratio x MemAvailable" if cache else "none",
                 "memory_bytes": "physical memory (sysconf)",
                 "calibration": calib or "none (probes only)"})


def _calibrate(model: nn.Module, shapes: list[tuple[int, ...]], loss_fn: Any,
               autocast_dtype: torch.dtype | None) -> tuple[dict[str, Any], tuple[int, ...]]:
    """``calibrate_step`` at the first shape the model accepts, and that shape."""
    first, rest = tuple(shapes[0]), [tuple(s) for s in shapes[1:] if tuple(s) != tuple(shapes[0])]
    try:
        return calibrate_step(model, first, loss_fn, autocast_dtype), first
    except InputError as exc:
        if not rest:
            raise
        warnings.warn(f"{exc}; calibrating at {'x'.join(map(str, rest[0]))} instead "
                      "(the shape to predict: slower, but the model takes it)", stacklevel=3)
    return calibrate_step(model, rest[0], loss_fn, autocast_dtype), rest[0]


def _measure_cuda(probe_bytes: int, matmul_n: int) -> DeviceProfile:
    if not torch.cuda.is_available():
        raise InputError("the local cuda profile needs a CUDA GPU; none is available")
    dev = torch.device("cuda", torch.cuda.current_device())
    with torch.no_grad():
        overhead = _median_time(lambda: torch.add(torch.ones(1, device=dev), 1), 50, dev)
        mem = _mem_rate(probe_bytes, dev)
        d2h, h2d = _cuda_copy_rates(probe_bytes, dev)
        flops = _matmul_rate(max(matmul_n, 4096), dev)
    props = torch.cuda.get_device_properties(dev)
    how = f"measured {time.strftime('%Y-%m-%d %H:%M:%S')} on {props.name}"
    return DeviceProfile(
        name="local", memory_bytes=int(props.total_memory), flops_per_s=flops,
        mem_bytes_per_s=mem, d2h_bytes_per_s=d2h, h2d_bytes_per_s=h2d,
        op_overhead_s=overhead,
        sources={"flops_per_s": f"{how}: fp32 matrix product {max(matmul_n, 4096)}^2",
                 "mem_bytes_per_s": f"{how}: leaky_relu over {probe_bytes >> 20} MiB",
                 "copy": f"{how}: pinned copies of {probe_bytes >> 20} MiB each way",
                 "memory_bytes": "torch.cuda.get_device_properties().total_memory"})
