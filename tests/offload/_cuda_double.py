"""A CUDA runtime double on CPU: streams, events, pinned buffers, non-blocking copies.

``FakeCuda`` implements ``swapseg.offload.transport.cuda_runtime.CudaRuntime`` on CPU
tensors, so the cuda transport's own code runs in CI:

- the compute stream is the host: every aten op the program runs (seen through a
  ``TorchDispatchMode``, ``FakeCuda.active()``) executes at once, as one op of that stream;
- side streams queue their copies, event records and waits; a seeded scheduler runs
  queued work late, at random moments and in random orders allowed by the recorded
  waits; a wait issued on the compute stream, ``synchronize`` and a host read of a
  pending buffer force what they need;
- device and pinned buffers are filled with a poison byte, so data read too early shows.

Every call checks the protocol with vector clocks (``_cuda_clock``): which stream's work
is ordered before which, through ``wait_event``/``wait_stream`` and what the host has
observed (``query``, ``synchronize``). It raises ``Race`` naming the buffer and the copy:

- a copy reads or writes a block whose last write (or read) on another stream is not
  ordered before it: a source read before compute wrote it, a reload buffer written
  while compute still used the block;
- compute reads or writes a block a copy may still write or read (a reload read before
  its copy is ordered before the read, a source overwritten under its copy-out);
- a device block is freed while a stream other than its allocation stream may still
  touch it, and that stream was neither waited on nor named by ``record_stream``;
- a host buffer is pooled or handed out again (``check_idle``) while a copy touching it
  is still queued;
- any op other than a copy, a record or a wait runs while a side stream is current
  (an allocation there would land in that stream's pool).
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections import deque
from typing import Any

import torch
from _cuda_clock import Block, BlockLog, Race, merge
from torch.utils._python_dispatch import TorchDispatchMode

from swapseg.offload.transport import BufferPool, CudaTransport

__all__ = ["FakeCuda", "FakeStream", "FakeEvent", "Race", "POISON", "CudaDoubleFactory"]

POISON = 0x5A
COPY_BYTES_PER_S = 10e9  # the fake device's copy rate, for event times


class _Op:
    __slots__ = ("epoch", "run", "wait", "desc", "blocks")

    def __init__(self, epoch: int, run: Any, wait: tuple | None, desc: str,
                 blocks: tuple = ()) -> None:
        self.epoch, self.run, self.wait, self.desc, self.blocks = epoch, run, wait, desc, blocks


class FakeStream:
    def __init__(self, rt: FakeCuda, name: str, eager: bool = False) -> None:
        self.rt, self.name, self.eager = rt, name, eager
        self.id = len(rt.streams)
        rt.streams.append(self)
        self.vc: dict[int, int] = {self.id: 0}
        self.queue: deque[_Op] = deque()
        self.done = 0  # epoch of the last op run

    @property
    def epoch(self) -> int:
        return self.vc[self.id]

    def wait_event(self, ev: FakeEvent) -> None:
        self.rt._wait(self, ev)

    def wait_stream(self, other: FakeStream) -> None:
        ev = self.rt.Event()
        ev.record(other)
        self.wait_event(ev)

    def synchronize(self) -> None:
        with self.rt._lock:
            self.rt._scan()
            self.rt._run_until(self, self.epoch)
            merge(self.rt.host_vc, self.vc)

    def query(self) -> bool:
        with self.rt._lock:
            self.rt._tick()
            if self.done >= self.epoch:
                merge(self.rt.host_vc, self.vc)
                return True
            return False

    def __repr__(self) -> str:
        return f"stream {self.name}"


class FakeEvent:
    def __init__(self, rt: FakeCuda, enable_timing: bool = False) -> None:
        self.rt, self.timing = rt, enable_timing
        self.stream: FakeStream | None = None
        self.epoch = 0
        self.vc: dict[int, int] = {}
        self.t: float | None = None

    def record(self, stream: FakeStream | None = None) -> None:
        rt = self.rt
        stream = stream if stream is not None else rt.current
        with rt._lock:
            rt._scan()

            def run() -> None:
                self.t = rt.device_t
            self.t = None
            rt._issue(stream, run, None, f"record on {stream.name}")
            self.stream, self.epoch, self.vc = stream, stream.epoch, dict(stream.vc)
            rt._tick()

    def _complete(self) -> bool:
        return self.stream is None or self.stream.done >= self.epoch

    def query(self) -> bool:
        with self.rt._lock:
            self.rt._tick()
            if self._complete():
                merge(self.rt.host_vc, self.vc)
                return True
            return False

    def synchronize(self) -> None:
        with self.rt._lock:
            self.rt._scan()
            if self.stream is not None:
                self.rt._run_until(self.stream, self.epoch)
            merge(self.rt.host_vc, self.vc)

    def elapsed_time(self, end: FakeEvent) -> float:
        if not (self.timing and end.timing):
            raise RuntimeError("elapsed_time needs two events made with enable_timing=True")
        if self.t is None or end.t is None:
            raise RuntimeError("elapsed_time on an event that has not completed")
        return (end.t - self.t) * 1e3


class _Mode(TorchDispatchMode):
    """Every aten op the program runs: one op of the current (compute) stream."""

    def __init__(self, rt: FakeCuda) -> None:
        super().__init__()
        self.rt = rt

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.rt._compute_op(func, args, kwargs)
        return func(*args, **kwargs)


class FakeCuda:
    """The runtime double. ``seed`` picks the completion order; ``lazy`` in [0, 1] is how
    reluctant the scheduler is to run queued work at each call."""

    def __init__(self, seed: int = 0, lazy: float = 0.7, pin_fails: bool = False) -> None:
        self.rng = random.Random(seed)
        self.lazy = lazy
        self.pin_fails = pin_fails
        self._lock = threading.RLock()
        self.streams: list[FakeStream] = []
        self.compute = FakeStream(self, "compute", eager=True)
        self.compute.vc[self.compute.id] = 1
        self.current = self.compute
        self.host_vc: dict[int, int] = {}
        self.device_t = 0.0
        self.log = BlockLog(self)
        self.ran: list[str] = []  # side-stream copies, in the order they ran
        self.issued: list[str] = []  # the same, in the order they were queued
        self.schedule: list[tuple[str, int]] = []  # (copy, compute ops run before it)
        self._busy = False
        self.races: list[str] = []  # every Race raised, also those swallowed by callers

    # ------------------------------------------------------------ the runtime's calls
    def Stream(self, device: torch.device) -> FakeStream:
        return FakeStream(self, f"side{len(self.streams)}")

    def Event(self, enable_timing: bool = False) -> FakeEvent:
        return FakeEvent(self, enable_timing)

    def current_stream(self, device: torch.device) -> FakeStream:
        return self.current

    @contextlib.contextmanager
    def stream(self, s: FakeStream):
        prev, self.current = self.current, s
        try:
            yield s
        finally:
            self.current = prev

    def empty(self, nbytes: int, device: torch.device) -> torch.Tensor:
        with self._lock, self._quiet():
            t = torch.full((nbytes,), POISON, dtype=torch.uint8)
        self.log.allocated(t, self.current, f"device buffer of {nbytes} B")
        return t

    def pinned(self, nbytes: int) -> torch.Tensor:
        if self.pin_fails:
            raise RuntimeError("CUDA error: out of memory (cudaHostAlloc)\nmore")
        with self._lock, self._quiet():
            t = torch.full((nbytes,), POISON, dtype=torch.uint8)
        self.log.allocated(t, None, f"pinned buffer of {nbytes} B")
        return t

    def copy(self, dest: torch.Tensor, src: torch.Tensor) -> None:
        s = self.current
        with self._lock:
            self._scan()
            merge(s.vc, self.host_vc)
            desc = f"copy #{len(self.issued)} of {src.numel()} B"
            self.issued.append(desc)
            epoch = s.epoch + 1
            bs = self.log.block(src, s), self.log.block(dest, s)
            self.log.access(bs[0], s, epoch, "r", desc)
            self.log.access(bs[1], s, epoch, "w", desc)
            with self._quiet():
                d, c = dest.detach(), src.detach()  # the double's own references

            def run() -> None:
                with self._quiet():
                    d.copy_(c)
                self.device_t += 1e-6 + c.numel() / COPY_BYTES_PER_S
                self.ran.append(desc)
                self.schedule.append((desc, self.compute.epoch))
            self._issue(s, run, None, desc, bs)
            self._tick()

    def record_stream(self, t: torch.Tensor, s: FakeStream) -> None:
        with self._lock:
            self._scan()
            self.log.block(t, s).recorded.add(s.id)

    def check_idle(self, buf: torch.Tensor, what: str) -> None:
        with self._lock:
            self._scan()
            b = self.log.find(buf)
            if b is not None and b.pending:
                msg = f"{b.name} {what} while {b.pending[0]} is still queued"
                self.races.append(msg)
                raise Race(msg)

    # ------------------------------------------------------------ for the tests
    @contextlib.contextmanager
    def active(self):
        """Watch every aten op run in the block as compute-stream work."""
        with _Mode(self):
            yield self

    def synchronize(self) -> None:
        """Run every queued op (``torch.cuda.synchronize``)."""
        for s in list(self.streams):
            s.synchronize()

    def pending(self) -> int:
        return sum(len(s.queue) for s in self.streams)

    def out_of_order(self) -> bool:
        """True if some copy ran before one queued earlier."""
        order = [self.issued.index(d) for d in self.ran]
        return order != sorted(order)

    # ------------------------------------------------------------ the machinery
    @contextlib.contextmanager
    def _quiet(self):
        prev, self._busy = self._busy, True
        try:
            yield
        finally:
            self._busy = prev

    def _issue(self, s: FakeStream, run: Any, wait: tuple | None, desc: str,
               blocks: tuple[Block, ...] = ()) -> None:
        merge(s.vc, self.host_vc)  # work queued after the host saw X complete follows X
        s.vc[s.id] += 1
        op = _Op(s.vc[s.id], run, wait, desc, blocks)
        for b in blocks:
            b.pending.append(desc)
        if s.eager:
            if wait is not None:
                self._run_until(*wait)
            self._run(s, op)
        else:
            s.queue.append(op)

    def _wait(self, s: FakeStream, ev: FakeEvent) -> None:
        with self._lock:
            self._scan()
            target = (ev.stream, ev.epoch) if ev.stream is not None else None
            self._issue(s, lambda: None, target, f"wait on {s.name}")
            merge(s.vc, ev.vc)
            self._tick()

    def _run(self, s: FakeStream, op: _Op) -> None:
        op.run()
        for b in op.blocks:
            b.pending.remove(op.desc)
        s.done = op.epoch

    def _ready(self, s: FakeStream) -> bool:
        if not s.queue:
            return False
        w = s.queue[0].wait
        return w is None or w[0].done >= w[1]

    def _run_until(self, s: FakeStream, epoch: int) -> None:
        while s.done < epoch:
            op = s.queue[0]
            if op.wait is not None:
                self._run_until(*op.wait)
            s.queue.popleft()
            self._run(s, op)

    def _tick(self) -> None:
        """Run a random few of the queued ops whose waits are met."""
        self._scan()
        while self.rng.random() > self.lazy:
            ready = [s for s in self.streams if self._ready(s)]
            if not ready:
                return
            s = self.rng.choice(ready)
            self._run(s, s.queue.popleft())

    def _scan(self) -> None:
        self.log.scan_frees()

    def _compute_op(self, func: Any, args: tuple, kwargs: dict) -> None:
        if self._busy:
            return
        with self._lock:
            self._scan()
            s = self.current
            if not s.eager:
                msg = (f"{func} ran while {s.name} was current: an allocation there "
                       f"lands in that stream's pool")
                self.races.append(msg)
                raise Race(msg)
            merge(s.vc, self.host_vc)
            s.vc[s.id] += 1
            s.done = s.vc[s.id]
            self.log.compute(func, args, kwargs, s)
            self._tick()


class CudaDoubleFactory:
    """``swap_activations(..., transport=CudaDoubleFactory(rt))``: the real cuda transport
    on ``rt``, with a pool of its own (pinned, as the double allocates it)."""

    def __init__(self, rt: FakeCuda, pin: bool = True) -> None:
        self.rt, self.pin = rt, pin
        self.made: list[CudaTransport] = []

    def __call__(self, device: torch.device) -> CudaTransport:
        tr = CudaTransport(device, pool=BufferPool(self.pin), runtime=self.rt, pin=self.pin)
        self.made.append(tr)
        return tr
