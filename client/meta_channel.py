"""The client side of the master's framed metadata port (proto/metaframe.py).

Pooled blocking connections, one call in flight on each. A call is never sent twice: one whose
connection could not be made, or that the master turned away unread or refused as a standby
(etcd HA: it answers UNAVAILABLE before touching anything), is `NotSent` (the caller uses
gRPC instead, which finds the leader); one whose answer was lost after the frame left is
`MaybeSent` (only an idempotent call may then be repeated, over gRPC). Idle connections are checked before reuse,
so a master that restarted is noticed before a frame is sent into a dead connection. With a
token, each new connection authenticates first (an auth frame, proto/metaframe.py).
"""
from __future__ import annotations

import select
import socket
import threading

from mooncake_native.binding import spin_readable
from mooncake_proto import metaframe
from mooncake_proto.dataplane import recv_exact_into
from mooncake_proto.errors import ErrorCode, error_for_code

MAX_IDLE = 8  # pooled connections kept per client; more are closed after use
FIRST_READ_BYTES = 64 << 10  # an answer's first read: most answers fit whole (one recv
# of a 2 KB answer: 2.7 us; header and body apart: 4.5 us)


class NotSent(Exception):
    """The framed port could not be reached or turned the call away; the call was not made."""


class MaybeSent(Exception):
    """The connection failed after the frame was sent: the master may have acted on it."""


class MetaChannel:
    def __init__(self, addr: str, connect_timeout_s: float, token: str = ""):
        host, _, port = addr.rpartition(":")
        self.addr, self._host, self._port = addr, host.strip("[]"), int(port)
        self.connect_timeout_s = connect_timeout_s
        self._auth_frame = metaframe.auth_frame(token) if token else b""
        self._idle: list[tuple[socket.socket, float]] = []  # with the timeout each has
        self._lock = threading.Lock()
        self._closed = False

    def call(self, method: str, request, timeout_s: float, raw: bool = False):
        """The response message (raw: its serialized bytes); raises the call's MooncakeError,
        NotSent or MaybeSent."""
        method_id = metaframe.METHOD_IDS[method]
        response_type = metaframe.METHODS[method_id][2]
        payload = request.SerializeToString()
        frame = metaframe.REQUEST.pack(metaframe.MAGIC, method_id, len(payload)) + payload
        conn, applied = self._checkout(timeout_s)
        try:
            if applied != timeout_s:
                metaframe.use_kernel_timeouts(conn, timeout_s)
            status, body = self._exchange(conn, frame)
        except OSError as exc:
            conn.close()
            raise MaybeSent(str(exc) or type(exc).__name__) from exc
        if status == metaframe.STATUS_BUSY:
            conn.close()
            raise NotSent(f"framed metadata port {self.addr}: {body.decode(errors='replace')}")
        self._checkin(conn, timeout_s)
        if status == ErrorCode.RPC_FAIL:  # UnavailableError: a standby refused it, unread
            raise NotSent(f"master {self.addr} {method}: {body.decode(errors='replace')}")
        if status != 0:
            raise error_for_code(status, f"master {self.addr} {method}: {body.decode(errors='replace')}")
        if raw:
            return body if type(body) is bytes else bytes(body)
        return response_type.FromString(body)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn, _ in self._idle:
                conn.close()
            self._idle.clear()

    @staticmethod
    def _exchange(conn: socket.socket, frame: bytes) -> tuple[int, bytes]:
        conn.sendall(frame)
        spin_readable(conn.fileno())  # the answer of a small call comes within microseconds
        # one recv takes a small answer whole; the master sends nothing after it, so a read
        # past the frame's end means the peer is not a mooncake master
        first = conn.recv(FIRST_READ_BYTES)
        if len(first) < metaframe.RESPONSE.size:
            first += metaframe.recv_exact(conn, metaframe.RESPONSE.size - len(first))
        status, length = metaframe.RESPONSE.unpack_from(first)
        end = metaframe.RESPONSE.size + length
        if length > metaframe.MAX_FRAME_BYTES or len(first) > end:
            raise ConnectionError(f"answer of {length} bytes ({len(first)} read): "
                                  "not a mooncake master?")
        if len(first) == end:
            return status, first[metaframe.RESPONSE.size:]
        body = bytearray(length)  # a large answer: the rest straight into place
        have = len(first) - metaframe.RESPONSE.size
        body[:have] = memoryview(first)[metaframe.RESPONSE.size:]
        recv_exact_into(conn, memoryview(body)[have:])
        return status, body

    def _checkout(self, timeout_s: float) -> tuple[socket.socket, float | None]:
        """A pooled connection and the timeout it was given, or a new one (None: not yet)."""
        while True:
            with self._lock:
                if self._closed:
                    raise NotSent("the client is closed")
                conn, applied = self._idle.pop() if self._idle else (None, None)
            if conn is None:
                break
            if _idle_and_open(conn):
                return conn, applied
            conn.close()  # the master closed it (restarted, idle timeout): never send into it
        try:
            conn = socket.create_connection((self._host, self._port), self.connect_timeout_s)
        except OSError as exc:
            raise NotSent(f"framed metadata port {self.addr}: {exc}") from exc
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        metaframe.use_kernel_timeouts(conn, timeout_s)
        if self._auth_frame:
            self._authenticate(conn)
        return conn, timeout_s

    def _authenticate(self, conn: socket.socket) -> None:
        """Presents the token on a new connection: UnauthenticatedError when the master does
        not know it (gRPC would say the same), NotSent when the port cannot take it."""
        try:
            status, body = self._exchange(conn, self._auth_frame)
        except OSError as exc:
            conn.close()
            raise NotSent(f"framed metadata port {self.addr}: auth: {exc}") from exc
        if status == 0:
            return
        conn.close()
        message = f"master {self.addr}: {body.decode(errors='replace')}"
        if status == ErrorCode.UNAUTHENTICATED:
            raise error_for_code(status, message)
        raise NotSent(message)  # busy, or a master without auth frames: gRPC instead

    def _checkin(self, conn: socket.socket, timeout_s: float) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE:
                self._idle.append((conn, timeout_s))
                return
        conn.close()


def _idle_and_open(conn: socket.socket) -> bool:
    """An idle connection has nothing to read; anything readable is a close (or garbage)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
