"""Device profiles for the simulator: the record (memory, compute and link speeds, with
sources), the cost model of one op on it, and the named GPU profiles.

Figures are vendor peak numbers; ``*_efficiency`` turns them into what a conv network
step achieves (assumptions, stated per profile). The ``local`` profile, measured on this
machine, is made by ``swapseg.planner.local``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from swapseg.offload.record import Record

__all__ = ["DeviceProfile", "PROFILES", "layer_key", "GB"]

GB = 1e9


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


