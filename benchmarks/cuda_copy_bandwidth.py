"""Host<->device copy bandwidth through the cuda transport, pinned and pageable, and the
host bytes the pinned allocator reserves.

Each direction is timed by the transport's own events (a ticket's ``start_t``/``end_t``),
median of ``--repeats`` copies of ``--mib`` MiB, once with pinned buffers and once with
pageable ones (``pin=False``, as ``SWAPSEG_PIN_MEMORY=0``). Also reports, for a few odd
sizes, the pool's reserved bytes next to the tensor bytes, and PyTorch's own host
allocator figure where this torch has ``torch.cuda.host_memory_stats``.

``--dry-run`` runs the same code on CPU under the CUDA runtime double
(tests/offload/_cuda_double.py), with small sizes: it checks the plumbing, not speed.

    python benchmarks/cuda_copy_bandwidth.py --out bw.json
    python benchmarks/cuda_copy_bandwidth.py --dry-run --out bw.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings
from typing import Any

import torch

from swapseg.offload.transport import BufferPool, CudaTransport


def _runtime(dry_run: bool) -> tuple[Any, torch.device]:
    if not dry_run:
        return None, torch.device("cuda")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "offload"))
    from _cuda_double import FakeCuda  # the double lives with the tests
    return FakeCuda(seed=0, lazy=0.5), torch.device("cpu")


def _bandwidth(rt: Any, device: torch.device, pin: bool, nbytes: int,
               repeats: int) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pageable run warns by design
        tr = CudaTransport(device, pool=BufferPool(pin), runtime=rt, pin=pin)
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    out_s, in_s = [], []
    for _ in range(repeats):
        out = tr.start_out(src)
        out.sync()
        stored = out.result()
        back = tr.start_in(stored, device)
        back.sync()
        assert out.timed() and back.timed()
        if not torch.equal(back.result(), src):
            raise SystemExit("copy mismatch: the round trip changed the bytes")
        out_s.append(out.end_t - out.start_t)
        in_s.append(back.end_t - back.start_t)
        tr.free(stored)
    tr.close()
    gb = nbytes / 1e9
    return {"pinned": tr.pin, "bytes": nbytes,
            "device_to_host_gb_s": gb / max(statistics.median(out_s), 1e-12),
            "host_to_device_gb_s": gb / max(statistics.median(in_s), 1e-12)}


def _reserved(rt: Any, device: torch.device, sizes: list[int]) -> dict[str, Any]:
    pool = BufferPool(True)
    tr = CudaTransport(device, pool=pool, runtime=rt, pin=True)
    before = _host_stats()
    srcs = [torch.zeros(n, dtype=torch.uint8, device=device) for n in sizes]
    tickets = [tr.start_out(s) for s in srcs]
    for t in tickets:
        t.sync()
    after = _host_stats()
    res = {"sizes": sizes, "tensor_bytes": pool.allocated_bytes,
           "counted_reserved_bytes": pool.reserved_bytes, "pinned": tr.pin,
           "torch_host_stats_before": before, "torch_host_stats_after": after}
    for t in tickets:
        tr.free(t.result())
    tr.close()
    return res


def _host_stats() -> dict[str, int] | None:
    fn = getattr(torch.cuda, "host_memory_stats", None)
    if fn is None or not torch.cuda.is_available():
        return None
    stats = fn()
    return {k: int(v) for k, v in stats.items()
            if isinstance(v, int) and ("reserved" in k or "allocated" in k)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    rt, device = _runtime(a.dry_run)
    nbytes = (1 << 16 if a.dry_run else a.mib << 20) + 7  # odd: no alignment luck
    sizes = [3 << 10, 5 << 10] if a.dry_run else [(3 << 28) + 1, (9 << 27) + 1]
    res = {"device": "cuda-double (CPU)" if a.dry_run else torch.cuda.get_device_name(),
           "pinned": _bandwidth(rt, device, True, nbytes, a.repeats),
           "pageable": _bandwidth(rt, device, False, nbytes, a.repeats),
           "reserved": _reserved(rt, device, sizes)}
    if rt is not None and rt.races:
        raise SystemExit(f"the double saw races: {rt.races}")
    print(json.dumps(res, indent=2))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
