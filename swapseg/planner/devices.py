"""Device profiles for the simulator: memory, compute and link speeds, with sources.

Figures are vendor peak numbers; ``*_efficiency`` turns them into what a conv network
step achieves (assumptions, stated per profile). ``local`` is measured on this machine,
for any model: FLOP rate from a matrix-multiply probe, memory bandwidth from a large
element-wise op, copy bandwidth from copies into a reused buffer (host tier) or a file
(disk tier); with a calibration shape, one real training step of the model itself,
timed per op by the profiler, sets the conv rates and the bandwidth of everything else.
A probe that cannot measure raises; no figure is made up.
"""

from __future__ import annotations

import bisect
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from swapseg.errors import InputError
from swapseg.offload.record import Record
from swapseg.planner.diskprobe import disk_rates, page_cache_bytes, tier_rates

__all__ = ["DeviceProfile", "PROFILES", "get_profile", "measure_local", "calibration_shape",
           "layer_key"]

GB = 1e9
CPU = torch.device("cpu")


@dataclass(frozen=True)
class DeviceProfile(Record):
    what = "device profile"

    name: str
    """Profile name, e.g. ``p100-nvlink``."""
    memory_bytes: int
    """Device memory."""
    flops_per_s: float
    """Achieved fp32 FLOP/s of conv-like ops (peak x efficiency)."""
    mem_bytes_per_s: float
    """Achieved device-memory bandwidth, which bounds element-wise ops and norms."""
    d2h_bytes_per_s: float
    """Achieved copy bandwidth device -> host (swap-out)."""
    h2d_bytes_per_s: float
    """Achieved copy bandwidth host -> device (swap-in)."""
    op_overhead_s: float = 10e-6
    """Fixed cost per op (kernel launch, dispatcher)."""
    conv_flops_per_s: dict[str, float] = field(default_factory=dict)
    """Measured FLOP/s of conv ops per phase (``"fwd"``, ``"bwd"``); conv ops of a phase
    not in it, and all other ops, use ``flops_per_s``."""
    copies_share_compute: bool = False
    """Copies run on the same cores as compute (a CPU host or disk tier): each copy
    also delays the compute lane by its duration."""
    cpu_conv_workspace: bool = False
    """Count the column buffers of PyTorch's native CPU conv path as op working set."""
    unified_memory: bool = False
    """Device memory is host memory (a CPU): a host-tier copy stays in the same memory
    (the pool's buffer next to the reloaded tensor), so it frees nothing; only the disk
    tier does. ``tier="auto"`` then means the disk tier."""
    disk_write_bytes_per_s: float = 0.0
    """Sustained write bandwidth of the disk tier's folder (to the device, not the page
    cache); 0: the disk tier is not modelled."""
    disk_read_bytes_per_s: float = 0.0
    """Read bandwidth of the disk tier's folder for data no longer in the page cache."""
    disk_cache_bytes: int = 0
    """Swap bytes the page cache takes at memory-copy speed: writes up to this many bytes
    per step cost a copy at ``d2h_bytes_per_s``, and reads of the last this-many bytes
    written cost one at ``h2d_bytes_per_s``; the rest run at the disk's bandwidth."""
    disk_write_cpu_bytes_per_s: float = 0.0
    """Bytes a disk-tier write moves per second of its thread's CPU time: what it takes
    from the cores compute runs on (a kernel copy into the page cache; little with
    direct I/O). 0: a memory copy at ``d2h_bytes_per_s``."""
    disk_read_cpu_bytes_per_s: float = 0.0
    """The same for a disk-tier read (0: ``h2d_bytes_per_s``)."""
    disk_copy_overhead_s: float = 0.0
    """Cores' time per disk-tier copy (either way) beyond the probes: file creation, the
    copy thread's hand-offs, the engine's hooks. Fitted by ``calibrate_tier``."""
    disk_copy_s_per_byte: float = 0.0
    """Cores' time per byte copied beyond the copying thread's own CPU time (kernel work
    in other threads, memory-bandwidth contention). Fitted by ``calibrate_tier``."""
    conv_rate_curve: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    """Per phase (``"fwd"``, ``"bwd"``): (FLOPs of one conv op, measured FLOP/s) points,
    ascending; a conv op's rate is interpolated in log FLOPs between them (constant past
    the ends). Overrides ``conv_flops_per_s`` for the phases it has."""
    conv_layer_rates: dict[str, tuple[tuple[float, float], ...]] = field(
        default_factory=dict)
    """Per conv layer shape (``layer_key``: phase, in and out channels, kernel, stride):
    (FLOPs of one op, measured FLOP/s) points, ascending. The same FLOPs run at other
    speeds in layers of other channel counts, so a conv op of a measured layer shape
    takes its rate from these (interpolated in log FLOPs, constant past the ends), and
    its time is its FLOPs at that rate alone. Other conv ops use ``conv_rate_curve``."""
    mem_rate_curve: tuple[tuple[float, float], ...] = ()
    """(bytes an op reads and writes, achieved bytes/s) points, ascending, for the ops
    that are not convolutions: small tensors stay in the caches and run faster. Empty:
    ``mem_bytes_per_s`` for every size."""
    sources: dict[str, str] = field(default_factory=dict)
    """Where each figure comes from."""

    def op_seconds(self, flops: float, io_bytes: int, key: str = "", layer: str = ""
                   ) -> float:
        """Seconds of one op; ``key``: a conv op's phase; ``layer``: its ``layer_key``."""
        layer_curve = self.conv_layer_rates.get(layer) if layer else None
        if layer_curve and flops > 0:
            return flops / _interp_rate(layer_curve, flops) + self.op_overhead_s
        rate = self.conv_flops_per_s.get(key, self.flops_per_s) if key else self.flops_per_s
        curve = self.conv_rate_curve.get(key) if key else None
        if curve and flops > 0:
            rate = _interp_rate(curve, flops)
        bw = self.mem_bytes_per_s
        if self.mem_rate_curve and io_bytes > 0:
            bw = _interp_rate(self.mem_rate_curve, io_bytes)
        return max(flops / rate, io_bytes / bw) + self.op_overhead_s

    @property
    def models_disk(self) -> bool:
        return self.disk_write_bytes_per_s > 0 and self.disk_read_bytes_per_s > 0

    @classmethod
    def _decode(cls, d: dict[str, Any]) -> dict[str, Any]:
        for name in ("conv_rate_curve", "conv_layer_rates"):  # JSON lists back to tuples
            if name in d:
                d[name] = {k: tuple(tuple(p) for p in v) for k, v in d[name].items()}
        if "mem_rate_curve" in d:
            d["mem_rate_curve"] = tuple(tuple(p) for p in d["mem_rate_curve"])
        return d


def layer_key(phase: str, conv: str) -> str:
    """``"fwd|Cin,Cout,k,stride"`` from a trace op's phase and its ``conv`` description
    (``"Cin,Cout,k,stride,D,H,W"``); "" for an op that is no convolution."""
    return f"{phase}|{','.join(conv.split(',')[:4])}" if conv else ""


def _interp_rate(curve: tuple[tuple[float, float], ...], flops: float) -> float:
    xs = [math.log(f) for f, _ in curve]
    ys = [math.log(r) for _, r in curve]
    x = math.log(flops)
    if x <= xs[0]:
        return curve[0][1]
    if x >= xs[-1]:
        return curve[-1][1]
    i = bisect.bisect_right(xs, x)
    w = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    return math.exp(ys[i - 1] + w * (ys[i] - ys[i - 1]))


_GPU_EFF = ("Assumed efficiencies: 50% of peak FLOP/s for cuDNN 3D convolutions, 70% of peak "
            "memory bandwidth, 80% of the link's per-direction bandwidth for pinned copies.")


def _gpu(name: str, mem_gb: float, tflops: float, hbm_gbs: float, link_gbs: float,
         sources: dict[str, str]) -> DeviceProfile:
    return DeviceProfile(
        name=name, memory_bytes=int(mem_gb * 2**30), flops_per_s=0.5 * tflops * 1e12,
        mem_bytes_per_s=0.7 * hbm_gbs * GB, d2h_bytes_per_s=0.8 * link_gbs * GB,
        h2d_bytes_per_s=0.8 * link_gbs * GB, op_overhead_s=10e-6,
        sources={**sources, "efficiency": _GPU_EFF})


PROFILES: dict[str, DeviceProfile] = {
    "p100-nvlink": _gpu("p100-nvlink", 16, 10.6, 732, 40, {
        "memory, FLOP/s, HBM2": "NVIDIA Tesla P100 datasheet (SXM2/NVLink module: 16 GB, "
                                "10.6 TFLOP/s fp32, 732 GB/s); the PCIe card is 9.3 TFLOP/s",
        "link": "Imai et al. 2019 and IBM S822LC (Minsky) redbook: NVLink 1.0 CPU-GPU, "
                "2 links x 20 GB/s = 40 GB/s each way (80 GB/s bidirectional)"}),
    "v100-pcie3": _gpu("v100-pcie3", 16, 14.0, 900, 15.75, {
        "memory, FLOP/s, HBM2": "NVIDIA V100 PCIe datasheet: 16 GB, 14 TFLOP/s fp32, 900 GB/s",
        "link": "PCIe 3.0 x16: 15.75 GB/s each way (PCI-SIG spec)"}),
    "a100-pcie4": _gpu("a100-pcie4", 40, 19.5, 1555, 31.5, {
        "memory, FLOP/s, HBM2": "NVIDIA A100 datasheet (PCIe 40 GB): 19.5 TFLOP/s fp32 "
                                "(non-tensor-core), 1,555 GB/s",
        "link": "PCIe 4.0 x16: 31.5 GB/s each way (PCI-SIG spec)"}),
    "h100-pcie5": _gpu("h100-pcie5", 80, 51.0, 2000, 63.0, {
        "memory, FLOP/s, HBM": "NVIDIA H100 datasheet (PCIe 80 GB): 51 TFLOP/s fp32, 2.0 TB/s",
        "link": "PCIe 5.0 x16: 63 GB/s each way (PCI-SIG spec)"}),
    "h200": _gpu("h200", 141, 67.0, 4800, 63.0, {
        "memory, FLOP/s, HBM3e": "NVIDIA H200 datasheet (SXM): 141 GB, 67 TFLOP/s fp32, "
                                 "4.8 TB/s",
        "link": "host link PCIe 5.0 x16: 63 GB/s each way (H200 SXM boards reach the CPU "
                "over PCIe 5.0)"}),
}


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
                  matmul_n: int = 512) -> DeviceProfile:
    """Measure this machine: the CPU ('device' memory is host memory), or with
    ``tier="cuda"`` the current CUDA GPU and its pinned-memory link.

    With ``calibrate_shape`` (CPU only), one real step of ``model`` at that shape sets
    the conv forward and backward FLOP/s and the bandwidth of everything else
    (``calibrate_step``); CPU conv speed depends on the shape, so calibrate near the
    shape to predict.
    """
    # the probes draw random numbers; a training run that plans first must not see its
    # dropout masks and initial data order shift
    with torch.random.fork_rng(devices=[]):
        if tier == "cuda":
            return _measure_cuda(probe_bytes, matmul_n)
        return _measure_cpu(model, tier, probe_bytes, calibrate_shape, loss_fn,
                            autocast_dtype, matmul_n, disk_probe_bytes=8 * probe_bytes)


def _measure_cpu(model: nn.Module | None, tier: str, probe_bytes: int,
                 calibrate_shape: tuple[int, ...] | None, loss_fn: Any,
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
    if calibrate_shape is not None:
        assert model is not None
        from swapseg.planner.calibrate import calibrate_step

        c = calibrate_step(model, calibrate_shape, loss_fn, autocast_dtype)
        conv_rates = {k: c[k] for k in ("fwd", "bwd") if k in c}
        mem = c["mem"]
        overhead = 0.0  # dispatch is inside the measured "everything else" bandwidth
        calib = f"one profiled step of the model at {'x'.join(map(str, calibrate_shape))}"
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
