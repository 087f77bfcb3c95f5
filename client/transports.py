"""Byte transports behind one interface, chosen per replica: `shm` (same node) and `tcp`.

A transport executes a list of `Transfer`s: each moves one replica's bytes between a user
buffer (or a fresh bytes object, for plain `get`) and a worker's segment. A transport never
raises for one transfer's failure: it records it in `Transfer.error` (naming the worker), so
the caller can fall back to another replica or revoke exactly the keys that failed.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time

from mooncake_native import SegmentMapping, copy_into
from mooncake_native.segment import SEGMENT_FILE_PREFIX
from mooncake_proto import dataplane as wire
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.errors import MooncakeError, TransferError, error_for_code

PIPELINE_WINDOW = 32  # requests in flight per connection: enough to hide latency, never deadlocks


@dataclasses.dataclass(slots=True)
class Transfer:
    replica: pb.ReplicaDescriptor
    view: memoryview | None = None  # source for writes; target for reads (None: return bytes)
    deadline: float = float("inf")  # monotonic time after which a write must not start
    result: bytes | None = None     # filled by reads whose view is None
    done: bool = False
    error: MooncakeError | None = None

    def reset(self, replica: pb.ReplicaDescriptor) -> None:
        self.replica, self.result, self.done, self.error = replica, None, False, None


class ShmTransport:
    """Copies straight between the user's buffer and the worker's mapped segment file."""

    name = "shm"

    def __init__(self, node_id: str):
        self.node_id = node_id
        self._mappings: dict[str, SegmentMapping] = {}
        self._lock = threading.Lock()

    def usable(self, replica: pb.ReplicaDescriptor) -> bool:
        if replica.node_id != self.node_id or \
                not os.path.basename(replica.path).startswith(SEGMENT_FILE_PREFIX):
            return False
        try:
            self._segment(replica)
            return True
        except (OSError, ValueError):
            return False  # not ours to map (other user, other mount namespace): use tcp

    def _segment(self, replica: pb.ReplicaDescriptor) -> SegmentMapping:
        """The mapping of the replica's segment file, remapped when the file was replaced
        (a restarted worker with a new file or size must not be written through a stale map)."""
        st = os.stat(replica.path)
        identity = (st.st_dev, st.st_ino, replica.segment_size)
        mapping = self._mappings.get(replica.path)
        if mapping is None or mapping.identity != identity:
            with self._lock:
                mapping = self._mappings.get(replica.path)
                if mapping is None or mapping.identity != identity:
                    if mapping is not None:
                        mapping.close()
                    mapping = SegmentMapping(replica.path, replica.segment_size)
                    self._mappings[replica.path] = mapping
        return mapping

    def write(self, transfers: list[Transfer]) -> None:
        for t in transfers:
            r = t.replica
            if time.monotonic() > t.deadline:
                t.error = TransferError(f"{_describe(r)}: put timeout passed before the shm copy")
                continue
            self._copy(t, lambda view: copy_into(view[r.offset:r.offset + r.length], t.view))

    def read(self, transfers: list[Transfer]) -> None:
        for t in transfers:
            r = t.replica

            def copy_out(view, t=t, r=r):
                source = view[r.offset:r.offset + r.length]
                if t.view is None:
                    t.result = bytes(source)
                else:
                    copy_into(t.view, source)
            self._copy(t, copy_out)

    def _copy(self, t: Transfer, copy) -> None:
        try:
            copy(self._segment(t.replica).view)
            t.done = True
        except (OSError, ValueError) as exc:
            t.error = TransferError(f"{_describe(t.replica)}: shm segment {t.replica.path}: {exc}")

    def close(self) -> None:
        with self._lock:
            for mapping in self._mappings.values():
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
            self._run_on_address(addr, group, op)

    def _run_on_address(self, addr: str, group: list[Transfer], op: int) -> None:
        """Runs group on one worker. A connection-level failure fails every unfinished transfer
        at once (one timeout, not one per key); a refusal fails only its own request."""
        retried_stale = False
        while group:
            try:
                conn, reused = self._checkout(addr)
            except OSError as exc:
                self._fail(group, f"cannot connect: {_reason(exc)}")
                return
            try:
                group = self._exchange(conn, group, op)
            except OSError as exc:
                conn.close()
                group = [t for t in group if not t.done and t.error is None]
                if reused and not retried_stale and not isinstance(exc, TimeoutError):
                    # the worker closed this idle connection (it restarted): retry once, fresh
                    self._drop_idle(addr)
                    retried_stale = True
                    continue
                self._fail(group, _reason(exc))
                return
            if group:
                conn.close()  # the worker closes after a refusal; the rest go on a new connection
            else:
                self._checkin(addr, conn)

    def _exchange(self, conn: socket.socket, group: list[Transfer], op: int) -> list[Transfer]:
        """Pipelines group over conn; returns the transfers left undone after a refusal."""
        for start in range(0, len(group), PIPELINE_WINDOW):
            window = group[start:start + PIPELINE_WINDOW]
            for t in window:
                r = t.replica
                header = wire.encode_request(op, r.segment_id, r.offset, r.length, r.grant)
                wire.send_parts(conn, [header, t.view] if op == wire.OP_WRITE else [header])
            for i, t in enumerate(window):
                if not self._receive_response(conn, t, op):
                    return group[start + i + 1:]
        return []

    @staticmethod
    def _receive_response(conn: socket.socket, t: Transfer, op: int) -> bool:
        """Completes t from its response; False (and t.error) when the worker refused it."""
        head = bytearray(wire.RESPONSE.size)
        wire.recv_exact_into(conn, memoryview(head))
        status, length = wire.RESPONSE.unpack(head)
        if status != 0:
            verb = "write" if op == wire.OP_WRITE else "read"
            t.error = error_for_code(status, f"{_describe(t.replica)} refused the {verb}")
            return False
        if op == wire.OP_READ:
            if length != t.replica.length:
                raise ConnectionError(f"worker sent {length} bytes, expected {t.replica.length}")
            if t.view is None:
                t.result = _recv_bytes(conn, length)
            else:
                wire.recv_exact_into(conn, t.view)
        t.done = True
        return True

    @staticmethod
    def _fail(group: list[Transfer], reason: str) -> None:
        for t in group:
            t.error = TransferError(f"{_describe(t.replica)}: {reason}")

    def _checkout(self, addr: str) -> tuple[socket.socket, bool]:
        with self._lock:
            idle = self._idle.get(addr)
            if idle:
                return idle.pop(), True
        host, _, port = addr.rpartition(":")
        conn = socket.create_connection((host, int(port)), timeout=self.timeout_s)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    def _checkin(self, addr: str, conn: socket.socket) -> None:
        with self._lock:
            self._idle.setdefault(addr, []).append(conn)

    def _drop_idle(self, addr: str) -> None:
        with self._lock:
            for conn in self._idle.pop(addr, []):
                conn.close()


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
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__
