"""The worker's TCP data-plane server: one-sided READ/WRITE of granted segment ranges.

Blocking sockets, one thread per persistent connection: recv_into and sendall release the GIL,
and bytes go socket <-> segment with no intermediate copy. Every request carries a grant the
master signed for this worker; anything else gets an error and loses its connection.
(The C server of issue 3 replaces this module behind the same wire format.)
"""
from __future__ import annotations

import logging
import socket
import threading
import time

from mooncake_proto import dataplane as wire
from mooncake_proto.daemon import kv
from mooncake_proto.errors import ErrorCode
from mooncake_proto.grants import GrantError, verify

log = logging.getLogger("mooncake.worker.data")

LINGER_S = 1.0               # total time a refused connection may keep sending before close
IDLE_TIMEOUT_S = 300.0       # a connection silent this long (also mid-request) is dropped
MAX_CONNECTIONS = 1024       # each holds a thread; more are refused at accept


class RequestRefused(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code


class DataServer:
    def __init__(self, worker_id: str, segments: dict[int, memoryview]):
        self.worker_id = worker_id
        self.segments = segments
        self.grant_key: bytes | None = None  # set once the master accepts our registration
        self.bytes_in = 0
        self.bytes_out = 0
        self.refused = 0
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = False

    def start(self, host: str, port: int) -> str:
        listener = socket.create_server((host, port), backlog=128, reuse_port=False)
        self._listener = listener
        threading.Thread(target=self._accept_loop, name="data-accept", daemon=True).start()
        return f"{host}:{listener.getsockname()[1]}"

    def stop(self) -> None:
        self._stopping = True
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            for conn in list(self._conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                conn, peer = self._listener.accept()
            except OSError as exc:
                if self._stopping:
                    return
                log.error(kv("data_accept_failed", error=exc))  # e.g. EMFILE: keep serving
                time.sleep(0.05)
                continue
            try:
                self._start_connection(conn, peer)
            except Exception as exc:  # one connection's failure must not end the accept loop
                log.error(kv("data_connection_refused", peer=f"{peer[0]}:{peer[1]}", error=exc))
                with self._lock:
                    self._conns.discard(conn)
                conn.close()

    def _start_connection(self, conn: socket.socket, peer) -> None:
        with self._lock:
            if len(self._conns) >= MAX_CONNECTIONS:
                raise RuntimeError(f"{MAX_CONNECTIONS} connections already open")
            self._conns.add(conn)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        conn.settimeout(IDLE_TIMEOUT_S)
        threading.Thread(target=self._serve, args=(conn, peer), name="data-conn",
                         daemon=True).start()

    def _serve(self, conn: socket.socket, peer) -> None:
        header = bytearray(wire.REQUEST.size)
        try:
            while True:
                try:
                    wire.recv_exact_into(conn, memoryview(header))
                except ConnectionError:
                    return  # a clean close between requests
                self._handle(conn, header)
        except RequestRefused as exc:
            self.refused += 1
            log.warning(kv("data_request_refused", peer=f"{peer[0]}:{peer[1]}", code=exc.code,
                           reason=str(exc)))
            self._refuse(conn, exc.code)
        except OSError as exc:
            log.info(kv("data_connection_lost", peer=f"{peer[0]}:{peer[1]}", error=exc))
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    @staticmethod
    def _refuse(conn: socket.socket, code: int) -> None:
        """Sends the error, then a lingering close: closing with unread input would send RST and
        the peer would lose the error reply."""
        try:
            conn.sendall(wire.RESPONSE.pack(code, 0))
            conn.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_S
            while (left := deadline - time.monotonic()) > 0:
                conn.settimeout(left)
                if not conn.recv(1 << 20):
                    break
        except OSError:
            pass

    def _handle(self, conn: socket.socket, header: bytearray) -> None:
        magic, op, _flags, grant_len, segment_id, offset, length = wire.REQUEST.unpack(header)
        if magic != wire.MAGIC or op not in (wire.OP_READ, wire.OP_WRITE):
            raise RequestRefused(ErrorCode.INVALID_PARAMS, "malformed request header")
        if grant_len > wire.MAX_GRANT_LEN:
            raise RequestRefused(ErrorCode.INVALID_PARAMS, f"grant of {grant_len} bytes")
        grant = bytearray(grant_len)
        wire.recv_exact_into(conn, memoryview(grant))
        expiry_ms, target = self._authorize(bytes(grant), op, segment_id, offset, length)
        if op == wire.OP_WRITE:
            self._receive_payload(conn, target, expiry_ms)
            self.bytes_in += length
            conn.sendall(wire.RESPONSE.pack(0, length))
        else:
            wire.send_parts(conn, [wire.RESPONSE.pack(0, length), target])
            self.bytes_out += length

    @staticmethod
    def _receive_payload(conn: socket.socket, target: memoryview, expiry_ms: int) -> None:
        """recv_into the segment, stopping when the grant expires: after that the master may
        have handed the range to another object, so no late byte may land in it."""
        while target.nbytes:
            if time.time() * 1000 > expiry_ms:
                raise RequestRefused(ErrorCode.LEASE_EXPIRED, "write grant expired mid-payload")
            n = conn.recv_into(target)
            if n == 0:
                raise ConnectionError("peer closed mid-payload")
            target = target[n:]

    def _authorize(self, token: bytes, op: int, segment_id: int, offset: int,
                   length: int) -> tuple[int, memoryview]:
        if self.grant_key is None:
            raise RequestRefused(ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS, "worker not registered yet")
        try:
            grant = verify(self.grant_key, token, self.worker_id, int(time.time() * 1000))
        except GrantError as exc:
            raise RequestRefused(ErrorCode.PERMISSION_DENIED, str(exc))
        if not grant.covers(op, segment_id, offset, length):
            raise RequestRefused(ErrorCode.PERMISSION_DENIED, "request is outside its grant")
        segment = self.segments.get(segment_id)
        if segment is None or offset + length > segment.nbytes:
            raise RequestRefused(ErrorCode.INVALID_PARAMS, "range is outside the segment")
        return grant.expiry_ms, segment[offset:offset + length]
