"""Where swapped bytes go, and the tickets the engine waits on.

One ``Transport`` protocol (``base``), three tiers:

- ``host``: pooled host buffers (``pool``), copies on a small thread pool or inline;
- ``disk``: one unnamed file per storage, reclaimed by the kernel however the process ends;
- ``cuda``: pinned pooled buffers, a side stream per direction, timing events.

``TransportSet`` holds the transports of one engine (``tiers``).
"""

from swapseg.offload.transport.base import CopyRunner, Ticket, Transport
from swapseg.offload.transport.cuda import CudaTransport
from swapseg.offload.transport.disk import DiskFullError, DiskTransport, SwapFile
from swapseg.offload.transport.host import HostTransport
from swapseg.offload.transport.pool import BufferPool, clear_pools, get_pool
from swapseg.offload.transport.tiers import TransportFactory, TransportSet, make_transport

__all__ = ["Transport", "Ticket", "CopyRunner", "BufferPool", "get_pool", "clear_pools",
           "HostTransport", "DiskTransport", "DiskFullError", "SwapFile", "CudaTransport",
           "make_transport", "TransportSet", "TransportFactory"]

