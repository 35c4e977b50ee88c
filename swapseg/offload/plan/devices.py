"""Device profiles for the simulator: memory, compute and link speeds, with sources.

Figures are vendor peak numbers; ``*_efficiency`` turns them into what a 3D U-Net step
achieves (assumptions, stated per profile). ``local`` is measured on this machine: compute
throughput from the model's own conv layers run forward and backward at a small shape,
memory bandwidth from a large element-wise op, copy bandwidth from copies into a reused
buffer (host tier) or a file (disk tier).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from swapseg.errors import InputError

__all__ = ["DeviceProfile", "PROFILES", "get_profile", "measure_local"]

GB = 1e9
CPU = torch.device("cpu")


@dataclass(frozen=True)
class DeviceProfile:
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
    sources: dict[str, str] = field(default_factory=dict)
    """Where each figure comes from."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def op_seconds(self, flops: float, io_bytes: int, key: str = "") -> float:
        rate = self.conv_flops_per_s.get(key, self.flops_per_s) if key else self.flops_per_s
        return max(flops / rate, io_bytes / self.mem_bytes_per_s) + self.op_overhead_s


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


def get_profile(name: str, model: nn.Module | None = None, tier: str = "host",
                calibrate_shape: tuple[int, ...] | None = None) -> DeviceProfile:
    """A named profile; ``local`` is measured now (needs ``model`` for its conv layers;
    with ``calibrate_shape``, also one real step at that shape)."""
    if name == "local":
        if model is None:
            raise InputError("the local device profile is measured on the model; pass it")
        return measure_local(model, tier=tier, calibrate_shape=calibrate_shape)
    if name not in PROFILES:
        raise InputError(f"unknown device {name!r}; choose one of "
                         f"{', '.join([*PROFILES, 'local'])}")
    return PROFILES[name]


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
    return sorted(times)[len(times) // 2]


def _conv_rate(model: nn.Module, side: int, target_flops: float = 5e8,
               dev: torch.device = CPU) -> float:
    """FLOP/s of the model's distinct 3x3x3 convs, forward + backward.

    Each conv runs at ``side``^3, or smaller for wide layers so that one run costs about
    ``target_flops`` (a 256-channel conv at 32^3 would take seconds on a laptop CPU).
    """
    seen = set()
    flops = secs = 0.0
    for m in model.modules():
        if not isinstance(m, nn.Conv3d) or m.kernel_size != (3, 3, 3):
            continue
        key = (m.in_channels, m.out_channels, m.stride)
        if key in seen:
            continue
        seen.add(key)
        st = m.stride[0]
        per_vox = 6 * m.in_channels * m.out_channels * 27
        s = side
        while s > 8 and (s // st) ** 3 * per_vox > target_flops:
            s -= 4
        conv = nn.Conv3d(m.in_channels, m.out_channels, 3, stride=m.stride, padding=1).to(dev)
        x = torch.randn(1, m.in_channels, s, s, s, device=dev, requires_grad=True)
        out_vox = (s // st) ** 3
        # 2 FLOPs per MAC; backward costs twice forward (grad input + grad weight)
        f = 3 * 2 * m.in_channels * m.out_channels * 27 * out_vox

        def run(conv: nn.Module = conv, x: torch.Tensor = x) -> None:
            conv(x).sum().backward()
        secs += _median_time(run, dev=dev)
        flops += f
    return flops / secs if secs else 1e10


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


def _copy_rate(nbytes: int, tier: str) -> float:
    src = torch.randn(nbytes // 4)
    if tier == "disk":
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "probe.bin")

            def run() -> None:
                src.numpy().tofile(path)
                torch.from_numpy(__import__("numpy").fromfile(path, dtype="float32"))
            return 2 * nbytes / _median_time(run)  # write and read back
    dst = torch.empty_like(src)
    return nbytes / _median_time(lambda: dst.copy_(src))


def calibrate_step(model: nn.Module, shape: tuple[int, ...]) -> dict[str, float]:
    """Rates from one real training step at ``shape``, timed per op by the profiler.

    The step is traced too, so its FLOPs and bytes are known: conv forward FLOP/s, conv
    backward FLOP/s, and an effective bandwidth for everything else (norms, activations,
    adds, copies, dispatch), which is what a CPU spends outside its convolutions.
    """
    from torch.profiler import ProfilerActivity, profile

    from swapseg.offload.plan.trace import default_loss, trace_step

    tr = trace_step(model, shape)
    x = torch.randn(shape)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        default_loss(model(x)).backward()

    step()  # warm-up: allocator, oneDNN primitive caches
    # conv times and the wall time come from the same step: on a shared machine the load
    # changes from one step to the next (the profiler's own overhead, ~20 us an op, is
    # small next to a step)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        step()
        wall = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    # top-level conv events only (oneDNN/native children are inside their parents' time)
    t = {"aten::convolution": 0.0, "aten::convolution_backward": 0.0}
    for e in prof.events():
        if e.name in t and (e.cpu_parent is None or e.cpu_parent.name not in t) and \
                not (e.cpu_parent is not None and e.cpu_parent.name == "aten::convolution"):
            t[e.name] += e.cpu_time_total / 1e6
    conv_s = t["aten::convolution"] + t["aten::convolution_backward"]
    f_fwd = sum(o.flops for o in tr.ops if o.conv and o.phase == "fwd")
    f_bwd = sum(o.flops for o in tr.ops if o.conv and o.phase == "bwd")
    io = sum(o.io_bytes for o in tr.ops if not o.conv)
    rest = max(wall - conv_s, 1e-6)
    return {"fwd": f_fwd / max(t["aten::convolution"], 1e-9),
            "bwd": f_bwd / max(t["aten::convolution_backward"], 1e-9),
            "mem": io / rest, "wall_s": wall}


def measure_local(model: nn.Module, tier: str = "host", side: int = 32,
                  probe_bytes: int = 64 * 2**20,
                  calibrate_shape: tuple[int, ...] | None = None) -> DeviceProfile:
    """Measure this machine: the CPU ('device' memory is host memory), or with
    ``tier="cuda"`` the current CUDA GPU and its pinned-memory link.

    With ``calibrate_shape`` (CPU only), one real step at that shape sets the conv forward
    and backward FLOP/s and the bandwidth of everything else (``calibrate_step``); CPU
    conv speed depends on the shape, so calibrate at a shape near the one to predict.
    """
    # the probes draw random numbers; a training run that plans first must not see its
    # dropout masks and initial data order shift
    with torch.random.fork_rng(devices=[]):
        if tier == "cuda":
            return _measure_cuda(model, side, probe_bytes)
        return _measure_cpu(model, tier, side, probe_bytes, calibrate_shape)


def _measure_cpu(model: nn.Module, tier: str, side: int, probe_bytes: int,
                 calibrate_shape: tuple[int, ...] | None) -> DeviceProfile:
    with torch.no_grad():
        overhead = _median_time(lambda: torch.add(torch.ones(1), 1), repeats=50)
        mem = _mem_rate(probe_bytes)
        copy = _copy_rate(probe_bytes, tier)
    flops = _conv_rate(model, side)
    conv_rates: dict[str, float] = {}
    calib = ""
    if calibrate_shape is not None:
        c = calibrate_step(model, calibrate_shape)
        conv_rates = {"fwd": c["fwd"], "bwd": c["bwd"]}
        mem = c["mem"]
        overhead = 0.0  # dispatch is inside the measured "everything else" bandwidth
        calib = f"one profiled step at {'x'.join(map(str, calibrate_shape))}"
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    how = f"measured {time.strftime('%Y-%m-%d %H:%M:%S')} with {torch.get_num_threads()} threads"
    return DeviceProfile(
        name="local", memory_bytes=int(total), flops_per_s=flops, mem_bytes_per_s=mem,
        d2h_bytes_per_s=copy, h2d_bytes_per_s=copy, op_overhead_s=overhead,
        cpu_conv_workspace=True, conv_flops_per_s=conv_rates, copies_share_compute=True,
        sources={"flops_per_s": f"{how}: the model's distinct 3x3x3 convs, fwd+bwd, "
                                f"at {side}^3",
                 "mem_bytes_per_s": f"{how}: leaky_relu over {probe_bytes >> 20} MiB",
                 "copy": f"{how}: {tier} tier copy of {probe_bytes >> 20} MiB",
                 "memory_bytes": "physical memory (sysconf)",
                 "calibration": calib or "none (probes only)"})


def _measure_cuda(model: nn.Module, side: int, probe_bytes: int) -> DeviceProfile:
    if not torch.cuda.is_available():
        raise InputError("the local cuda profile needs a CUDA GPU; none is available")
    dev = torch.device("cuda", torch.cuda.current_device())
    with torch.no_grad():
        overhead = _median_time(lambda: torch.add(torch.ones(1, device=dev), 1), 50, dev)
        mem = _mem_rate(probe_bytes, dev)
        d2h, h2d = _cuda_copy_rates(probe_bytes, dev)
    flops = _conv_rate(model, max(side, 64), target_flops=2e10, dev=dev)
    props = torch.cuda.get_device_properties(dev)
    how = f"measured {time.strftime('%Y-%m-%d %H:%M:%S')} on {props.name}"
    return DeviceProfile(
        name="local", memory_bytes=int(props.total_memory), flops_per_s=flops,
        mem_bytes_per_s=mem, d2h_bytes_per_s=d2h, h2d_bytes_per_s=h2d,
        op_overhead_s=overhead,
        sources={"flops_per_s": f"{how}: the model's distinct 3x3x3 convs, fwd+bwd",
                 "mem_bytes_per_s": f"{how}: leaky_relu over {probe_bytes >> 20} MiB",
                 "copy": f"{how}: pinned copies of {probe_bytes >> 20} MiB each way",
                 "memory_bytes": "torch.cuda.get_device_properties().total_memory"})
