"""Byte transports behind one interface, chosen per replica: `shm` (same node) and `tcp`.

A transport executes a list of `Transfer`s: each moves one replica's bytes between a user
buffer (or a fresh bytes object, for plain `get`) and a worker's segment. Failures raise a
TransferError naming the worker; the caller decides whether another replica can serve.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import threading

from mooncake_native import SegmentMapping, copy_into
from mooncake_proto import dataplane as wire
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.errors import MooncakeError, TransferError, error_for_code

PIPELINE_WINDOW = 32  # requests in flight per connection: enough to hide latency, never deadlocks


@dataclasses.dataclass(slots=True)
class Transfer:
    replica: pb.ReplicaDescriptor
    view: memoryview | None = None  # source for writes; target for reads (None: return bytes)
    result: bytes | None = None     # filled by reads whose view is None


class ShmTransport:
    """Copies straight between the user's buffer and the worker's mapped segment file."""

    name = "shm"

    def __init__(self, node_id: str):
        self.node_id = node_id
        self._mappings: dict[str, SegmentMapping | None] = {}
        self._lock = threading.Lock()

    def usable(self, replica: pb.ReplicaDescriptor) -> bool:
        return replica.node_id == self.node_id and self._segment(replica) is not None

    def _segment(self, replica: pb.ReplicaDescriptor) -> SegmentMapping | None:
        mapping = self._mappings.get(replica.path, False)
        if mapping is False:
            with self._lock:
                mapping = self._mappings.get(replica.path, False)
                if mapping is False:
                    mapping = None
                    if os.access(replica.path, os.R_OK | os.W_OK):
                        try:
                            mapping = SegmentMapping(replica.path, replica.segment_size)
                        except (OSError, ValueError):
                            mapping = None  # not ours to map (other user, other mount): use tcp
                    self._mappings[replica.path] = mapping
        return mapping

    def write(self, transfers: list[Transfer]) -> None:
        for t in transfers:
            r = t.replica
            copy_into(self._segment(r).view[r.offset:r.offset + r.length], t.view)

    def read(self, transfers: list[Transfer]) -> None:
        for t in transfers:
            r = t.replica
            source = self._segment(r).view[r.offset:r.offset + r.length]
            if t.view is None:
                t.result = bytes(source)
            else:
                copy_into(t.view, source)

    def close(self) -> None:
        with self._lock:
            for mapping in self._mappings.values():
                if mapping is not None:
                    mapping.close()
            self._mappings.clear()


class TcpTransport:
    """Persistent, pooled connections to workers' data ports; pipelined requests per worker."""

    name = "tcp"

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._idle: dict[str, list[socket.socket]] = {}
        self._lock = threading.Lock()

    def usable(self, replica: pb.ReplicaDescriptor) -> bool:
        return bool(replica.data_addr)

    def write(self, transfers: list[Transfer]) -> None:
        self._run(transfers, wire.OP_WRITE)

    def read(self, transfers: list[Transfer]) -> None:
        self._run(transfers, wire.OP_READ)

    def close(self) -> None:
        with self._lock:
            for conns in self._idle.values():
                for conn in conns:
                    conn.close()
            self._idle.clear()

    def _run(self, transfers: list[Transfer], op: int) -> None:
        by_addr: dict[str, list[Transfer]] = {}
        for t in transfers:
            by_addr.setdefault(t.replica.data_addr, []).append(t)
        for addr, group in by_addr.items():
            conn = self._checkout(addr, group[0].replica.worker_id)
            try:
                for start in range(0, len(group), PIPELINE_WINDOW):
                    window = group[start:start + PIPELINE_WINDOW]
                    for t in window:
                        self._send_request(conn, t, op)
                    for t in window:
                        self._receive_response(conn, t, op)
            except OSError as exc:
                conn.close()
                raise TransferError(f"{_describe(group[0].replica)}: {_reason(exc)}") from exc
            except MooncakeError:
                conn.close()  # the worker closes after refusing a request
                raise
            self._checkin(addr, conn)

    @staticmethod
    def _send_request(conn: socket.socket, t: Transfer, op: int) -> None:
        r = t.replica
        header = wire.encode_request(op, r.segment_id, r.offset, r.length, r.grant)
        wire.send_parts(conn, [header, t.view] if op == wire.OP_WRITE else [header])

    @staticmethod
    def _receive_response(conn: socket.socket, t: Transfer, op: int) -> None:
        head = bytearray(wire.RESPONSE.size)
        wire.recv_exact_into(conn, memoryview(head))
        status, length = wire.RESPONSE.unpack(head)
        if status != 0:
            verb = "write" if op == wire.OP_WRITE else "read"
            raise error_for_code(status, f"{_describe(t.replica)} refused the {verb}")
        if op == wire.OP_READ:
            if length != t.replica.length:
                raise TransferError(f"{_describe(t.replica)}: sent {length} bytes, "
                                    f"expected {t.replica.length}")
            if t.view is None:
                t.result = _recv_bytes(conn, length)
            else:
                wire.recv_exact_into(conn, t.view)

    def _checkout(self, addr: str, worker_id: str) -> socket.socket:
        with self._lock:
            idle = self._idle.get(addr)
            if idle:
                return idle.pop()
        host, _, port = addr.rpartition(":")
        try:
            conn = socket.create_connection((host, int(port)), timeout=self.timeout_s)
        except OSError as exc:
            raise TransferError(f"worker {worker_id} at {addr}: cannot connect: {_reason(exc)}") from exc
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _checkin(self, addr: str, conn: socket.socket) -> None:
        with self._lock:
            self._idle.setdefault(addr, []).append(conn)


def _recv_bytes(conn: socket.socket, length: int) -> bytes:
    """Receives exactly `length` bytes as one bytes object (MSG_WAITALL: no copy after recv)."""
    data = conn.recv(length, socket.MSG_WAITALL)
    if len(data) == length:
        return data
    rest = bytearray(length - len(data))  # interrupted short read: rare, finish into a buffer
    wire.recv_exact_into(conn, memoryview(rest))
    return data + rest


def _describe(replica: pb.ReplicaDescriptor) -> str:
    return f"worker {replica.worker_id} at {replica.data_addr}"


def _reason(exc: OSError) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__
