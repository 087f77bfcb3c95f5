"""The worker's RDMA state: its open device, its registered segments and the queue pairs of
the clients that connected through RdmaConnect.

One-sided READ/WRITE never reach this process: once a client's queue pair is connected to
one of ours, the adapters move bytes between the client's buffers and our registered
segments. What the worker decides is who may connect: a client with a valid grant from the
master for this worker (DESIGN.md sections 4 and 5).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time

from mooncake_native import rdma
from mooncake_proto.daemon import kv
from mooncake_proto.errors import (MooncakeError, PermissionDeniedError, RdmaUnavailableError,
                                   UnavailableError)
from mooncake_proto.grants import GrantError, verify

log = logging.getLogger("mooncake.worker")

# queue pairs kept for clients; past this the oldest goes (its client reconnects on error)
MAX_CONNECTIONS = 256
SEGMENT_ACCESS = rdma.LOCAL_WRITE | rdma.REMOTE_READ | rdma.REMOTE_WRITE


@dataclasses.dataclass(frozen=True, slots=True)
class RegisteredSegment:
    segment_id: int
    addr: int
    rkey: int
    size_bytes: int


class WorkerRdma:
    """Serving (an open device, segments registered) or not, with the reason why not."""

    def __init__(self, context: rdma.Context | None, segments: list[RegisteredSegment],
                 reason: str = ""):
        self._context = context
        self.segments = segments
        self.reason = reason
        self._lock = threading.Lock()
        self._connections: collections.OrderedDict[int, rdma.QueuePair] = \
            collections.OrderedDict()

    @property
    def serving(self) -> bool:
        return self._context is not None

    @classmethod
    def open(cls, segments: dict[int, memoryview], device: str = "") -> "WorkerRdma":
        """Opens `device` (or the first active one) and registers the segments; without a
        device, one `rdma_unavailable` log line and a WorkerRdma that refuses connections."""
        try:
            context = rdma.Context(device)
        except (MooncakeError, OSError) as exc:
            return cls._unavailable(str(exc))
        try:
            registered = [cls._register(context, segment_id, view)
                          for segment_id, view in sorted(segments.items())]
        except (MooncakeError, OSError) as exc:
            context.close()
            return cls._unavailable(f"registering segments on {context.port.name}: {exc}")
        port = context.port
        log.info(kv("rdma_serving", device=port.name, port=port.port, link=port.link_layer,
                    mtu=port.active_mtu, segments=len(registered)))
        return cls(context, registered)

    @classmethod
    def _unavailable(cls, reason: str) -> "WorkerRdma":
        log.info(kv("rdma_unavailable", reason=reason))
        return cls(None, [], reason)

    @staticmethod
    def _register(context: rdma.Context, segment_id: int, view: memoryview) -> RegisteredSegment:
        region = context.register(view, SEGMENT_ACCESS)
        return RegisteredSegment(segment_id, region.addr, region.rkey, region.length)

    def authorize(self, grant_key: bytes | None, token: bytes, worker_id: str) -> None:
        """A connection needs what a TCP request needs: a valid, unexpired grant from the
        master for this worker. Raises the refusal. The grant is checked first, device or
        not: a caller the master did not admit learns nothing about this worker's hardware."""
        if grant_key is None:
            raise UnavailableError("worker not registered yet")
        try:
            verify(grant_key, token, worker_id, int(time.time() * 1000))
        except GrantError as exc:
            raise PermissionDeniedError(f"RDMA connect refused: {exc}") from exc
        if not self.serving:
            raise RdmaUnavailableError(f"worker {worker_id} serves no RDMA: {self.reason}")

    def connect(self, client_endpoint: bytes) -> bytes:
        """A queue pair connected to the client's; returns our endpoint, packed."""
        if not self.serving:
            raise RdmaUnavailableError(f"serves no RDMA: {self.reason}")
        remote = rdma.Endpoint.unpack(client_endpoint)  # InvalidArgumentError when malformed
        # the worker never posts: one send slot is what verbs requires
        qp = self._context.queue_pair(max_batch=1)
        try:
            qp.connect(remote)
        except BaseException:
            self._context.release(qp)
            raise
        with self._lock:
            self._connections[qp.local.qpn] = qp
            evicted = self._connections.popitem(last=False)[1] \
                if len(self._connections) > MAX_CONNECTIONS else None
        if evicted is not None:
            self._context.release(evicted)
        return qp.local.pack()

    def close(self) -> None:
        """Destroys the queue pairs, then the registrations: call before unmapping segments."""
        with self._lock:
            self._connections.clear()
        if self._context is not None:
            context, self._context = self._context, None
            context.close()
