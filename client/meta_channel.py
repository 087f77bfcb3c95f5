"""The client side of the master's framed metadata port (proto/metaframe.py).

Pooled blocking connections, one call in flight on each. A call whose connection could not
be made is `NotSent` (the caller uses gRPC instead); one whose answer was lost after the frame
left is `MaybeSent` (only idempotent calls may then be sent again, over gRPC).
"""
from __future__ import annotations

import socket
import threading

from mooncake_proto import metaframe
from mooncake_proto.errors import error_for_code


class NotSent(Exception):
    """The framed port could not be reached; the call was not made."""


class MaybeSent(Exception):
    """The connection failed after the frame was sent: the master may have acted on it."""


class MetaChannel:
    def __init__(self, addr: str, connect_timeout_s: float):
        host, _, port = addr.rpartition(":")
        self.addr, self._host, self._port = addr, host.strip("[]"), int(port)
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def call(self, method: str, request, timeout_s: float):
        """The response message; raises the call's MooncakeError, NotSent or MaybeSent."""
        method_id = metaframe.METHOD_IDS[method]
        response_type = metaframe.METHODS[method_id][2]
        payload = request.SerializeToString()
        frame = metaframe.REQUEST.pack(metaframe.MAGIC, method_id, len(payload)) + payload
        conn, reused = self._checkout()
        try:
            status, body = self._exchange(conn, frame, timeout_s)
        except _NoAnswer as exc:
            conn.close()
            if not reused:
                raise MaybeSent(str(exc.__cause__ or exc)) from exc
            # an idle connection to a master that has since gone (restarted): the frame was
            # never read by anyone who could act on it; once more on a fresh connection
            conn, _ = self._checkout(fresh=True)
            try:
                status, body = self._exchange(conn, frame, timeout_s)
            except _NoAnswer as again:
                conn.close()
                raise MaybeSent(str(again.__cause__ or again)) from again
        self._checkin(conn)
        if status != 0:
            raise error_for_code(status, f"master {self.addr} {method}: {body.decode(errors='replace')}")
        return response_type.FromString(body)

    def close(self) -> None:
        with self._lock:
            for conn in self._idle:
                conn.close()
            self._idle.clear()

    @staticmethod
    def _exchange(conn: socket.socket, frame: bytes, timeout_s: float) -> tuple[int, bytes]:
        conn.settimeout(timeout_s)
        try:
            conn.sendall(frame)
            head = _recv_exact(conn, metaframe.RESPONSE.size)
            status, length = metaframe.RESPONSE.unpack(head)
            if length > metaframe.MAX_FRAME_BYTES:
                raise ConnectionError(f"answer of {length} bytes")
            return status, _recv_exact(conn, length)
        except OSError as exc:
            raise _NoAnswer() from exc

    def _checkout(self, fresh: bool = False) -> tuple[socket.socket, bool]:
        if not fresh:
            with self._lock:
                if self._idle:
                    return self._idle.pop(), True
        try:
            conn = socket.create_connection((self._host, self._port), self.connect_timeout_s)
        except OSError as exc:
            raise NotSent(f"framed metadata port {self.addr}: {exc}") from exc
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    def _checkin(self, conn: socket.socket) -> None:
        with self._lock:
            self._idle.append(conn)


class _NoAnswer(Exception):
    pass


def _recv_exact(conn: socket.socket, length: int) -> bytes:
    data = conn.recv(length, socket.MSG_WAITALL) if length else b""
    if len(data) == length:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        chunk = conn.recv(length - got)
        if not chunk:
            raise ConnectionError("master closed the connection mid-answer")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)
