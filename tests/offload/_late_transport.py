"""A CPU transport double whose copies finish late and out of order.

Every copy runs on a pool of threads after a delay drawn from a seeded RNG, so copies
complete in an order unrelated to the order they were started. Destinations are
filled with a poison byte before the copy is queued, so an engine that reads a copy
before waiting for its ticket sees garbage, and the bitwise tests fail.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from swapseg.offload.transport import BufferPool, Ticket

POISON = 0xA5


class LateTransport:
    """Host-tier double: pooled host buffers, copies delayed at random, completed shuffled."""

    kind = "late"

    def __init__(self, seed: int = 0, workers: int = 4, max_delay_s: float = 0.003) -> None:
        self._rng = random.Random(seed)
        self._max_delay = max_delay_s
        self._ex: ThreadPoolExecutor | None = ThreadPoolExecutor(
            workers, thread_name_prefix="late")
        self.pool = BufferPool()
        self.started = 0
        self.completed: list[int] = []  # start numbers, in completion order
        self._lock = threading.Lock()

    def _submit(self, dest: torch.Tensor, src: torch.Tensor) -> Ticket:
        dest.fill_(POISON)
        n, delay = self.started, self._rng.uniform(0, self._max_delay)
        self.started += 1
        ticket = Ticket()

        def job() -> torch.Tensor:
            time.sleep(delay)
            ticket.start_t = time.perf_counter()
            dest.copy_(src)
            ticket.end_t = time.perf_counter()
            with self._lock:
                self.completed.append(n)
            return dest
        if self._ex is None:  # after go_inline: inline, no delay
            ticket.start_t = time.perf_counter()
            ticket._value = dest.copy_(src)
            ticket.end_t = time.perf_counter()
        else:
            ticket._future = self._ex.submit(job)
        return ticket

    def start_out(self, src: torch.Tensor) -> Ticket:
        return self._submit(self.pool.acquire(src.numel()), src)

    def start_in(self, stored: torch.Tensor, device: torch.device) -> Ticket:
        return self._submit(torch.empty(stored.numel(), dtype=torch.uint8, device=device),
                            stored)

    def free(self, stored: torch.Tensor) -> None:
        self.pool.release(stored)

    def recycle(self, dest: torch.Tensor) -> None:
        """Never reused: a fresh destination per copy-in."""

    def go_inline(self) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True)
            self._ex = None

    def close(self) -> None:
        self.go_inline()

    def out_of_order(self) -> bool:
        """True if some copy completed before one started earlier."""
        return self.completed != sorted(self.completed)


class LateFactory:
    """``swap_activations(..., transport=LateFactory(seed))``; keeps the transports made."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.made: list[LateTransport] = []

    def __call__(self, device: torch.device) -> LateTransport:
        tr = LateTransport(seed=self.seed + len(self.made))
        self.made.append(tr)
        return tr
