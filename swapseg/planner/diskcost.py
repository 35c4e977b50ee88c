"""What a swap costs on the disk tier beyond its bandwidth: the page cache's share, and
the cores' time the copies take (the simulator's disk lane)."""

from __future__ import annotations

from swapseg.planner.profiles import DeviceProfile
from swapseg.planner.trace import StepTrace

__all__ = ["cached_storages", "cpu_rates", "copy_extra", "DISK_COPY_SLACK"]

#: A write past the page cache's share takes a time that varies from run to run
#: (writeback, the other jobs on the cores), and whether a storage has left the device by
#: a peak op can turn on it: such a storage counts as resident until this many times its
#: predicted write time has passed (or forward waited for it), so a plan that fits does
#: not depend on the disk being fast that day.
DISK_COPY_SLACK = 2.0


def cached_storages(trace: StepTrace, swapped: list[int], out_at: dict[int, int],
                    cache_bytes: int) -> set[int]:
    """Swapped storages the page cache still holds in backward: the last written ones."""
    kept: set[int] = set()
    total = 0
    for u in sorted(swapped, key=lambda u: out_at[u], reverse=True):
        total += trace.storages[u].nbytes
        if total > cache_bytes:
            break
        kept.add(u)
    return kept


def cpu_rates(dev: DeviceProfile, disk: bool) -> tuple[float, float]:
    """(out, in) bytes per second of the cores' time a copy takes: a memory copy, or for
    the disk tier its probed CPU rates where measured."""
    out_rate = dev.disk_write_cpu_bytes_per_s if disk else 0.0
    in_rate = dev.disk_read_cpu_bytes_per_s if disk else 0.0
    return out_rate or dev.d2h_bytes_per_s, in_rate or dev.h2d_bytes_per_s


def copy_extra(dev: DeviceProfile, nbytes: int, disk: bool) -> float:
    """The cores' time a disk-tier copy takes beyond its probed CPU rate (0 otherwise)."""
    return dev.disk_copy_overhead_s + nbytes * dev.disk_copy_s_per_byte if disk else 0.0
